"""What a database holds, comparable: documents, indexes and options of every collection.

    before = take_snapshot(db)
    ...                               # run a migration's up, then its down
    after = take_snapshot(db)
    assert before == after, before.diff(after)

Documents compare by value whatever their field order (``$rename`` moves a field to
the end of its document; that is not a difference here), with their BSON types
(``1`` and ``1.0`` differ). Indexes compare by name and definition, options by value
(``validator``, ``validationLevel``, ``validationAction``, ``capped``, ...). An empty
collection with no options and no index but ``_id``'s counts as absent: MongoDB creates
one on the fly (a ``create_index`` dropped again leaves it behind). Every document is
read into memory: this is for test and scratch databases.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

from bson import json_util
from bson.json_util import CANONICAL_JSON_OPTIONS, RELAXED_JSON_OPTIONS

#: Index fields that say nothing about the index itself.
_INDEX_NOISE = ("v", "ns")

#: How many differing documents ``diff`` shows per collection and kind.
DIFF_EXAMPLES = 5

#: Longest value ``diff`` shows before it cuts it.
DIFF_VALUE_WIDTH = 200


def _canonical(value: Any) -> str:
    """One string per BSON value: sorted keys, exact types (NaN equals NaN here)."""
    return str(json_util.dumps(value, sort_keys=True, json_options=CANONICAL_JSON_OPTIONS))


def _show(value: Any) -> str:
    text = str(json_util.dumps(value, json_options=RELAXED_JSON_OPTIONS))
    if len(text) > DIFF_VALUE_WIDTH:
        text = text[: DIFF_VALUE_WIDTH - 3] + "..."
    return text


@dataclass(frozen=True)
class CollectionSnapshot:
    """One collection: its documents (by ``_id``), indexes (by name) and options."""

    name: str
    #: The documents as read, in ``_id`` order of their canonical form.
    documents: List[Dict[str, Any]] = field(compare=False)
    indexes: Dict[str, Dict[str, Any]] = field(compare=False)
    options: Dict[str, Any] = field(compare=False)
    _docs_key: Tuple[Tuple[str, str], ...] = field(repr=False)
    _indexes_key: Tuple[Tuple[str, str], ...] = field(repr=False)
    _options_key: str = field(repr=False)

    @classmethod
    def build(cls, name: str, documents: Iterable[Mapping[str, Any]],
              indexes: Mapping[str, Mapping[str, Any]],
              options: Mapping[str, Any]) -> CollectionSnapshot:
        keyed = sorted(((_canonical(d.get("_id")), _canonical(d), dict(d)) for d in documents),
                       key=lambda item: item[0])
        clean_indexes = {
            index_name: {k: v for k, v in spec.items() if k not in _INDEX_NOISE}
            for index_name, spec in indexes.items()
        }
        return cls(
            name=name,
            documents=[doc for _, _, doc in keyed],
            indexes=clean_indexes,
            options=dict(options),
            _docs_key=tuple((id_key, doc_key) for id_key, doc_key, _ in keyed),
            _indexes_key=tuple(sorted((n, _canonical(s)) for n, s in clean_indexes.items())),
            _options_key=_canonical(dict(options)),
        )

    def diff(self, other: CollectionSnapshot) -> List[str]:
        """Lines saying how ``other`` (after) differs from this one (before); empty when
        they are equal."""
        lines: List[str] = []
        lines += self._diff_documents(other)
        lines += self._diff_indexes(other)
        if self._options_key != other._options_key:
            lines.append(f"options: {_show(self.options)} -> {_show(other.options)}")
        return lines

    def _diff_documents(self, other: CollectionSnapshot) -> List[str]:
        mine = {id_key: (doc_key, doc) for (id_key, doc_key), doc
                in zip(self._docs_key, self.documents)}
        theirs = {id_key: (doc_key, doc) for (id_key, doc_key), doc
                  in zip(other._docs_key, other.documents)}
        changed = [k for k in mine if k in theirs and mine[k][0] != theirs[k][0]]
        gone = [k for k in mine if k not in theirs]
        new = [k for k in theirs if k not in mine]
        lines: List[str] = []
        for key in changed[:DIFF_EXAMPLES]:
            before, after = mine[key][1], theirs[key][1]
            lines.append(f"document _id {_show(before.get('_id'))} changed:")
            lines += [f"  {line}" for line in _field_diff(before, after)]
        lines += _more(changed, "changed document")
        for key in gone[:DIFF_EXAMPLES]:
            lines.append(f"document missing after: {_show(mine[key][1])}")
        lines += _more(gone, "missing document")
        for key in new[:DIFF_EXAMPLES]:
            lines.append(f"document only after: {_show(theirs[key][1])}")
        lines += _more(new, "new document")
        return lines

    def _diff_indexes(self, other: CollectionSnapshot) -> List[str]:
        lines: List[str] = []
        for name in sorted(set(self.indexes) | set(other.indexes)):
            before, after = self.indexes.get(name), other.indexes.get(name)
            if before is None:
                lines.append(f"index {name!r} only after: {_show_index(after)}")
            elif after is None:
                lines.append(f"index {name!r} missing after: {_show_index(before)}")
            elif _canonical(before) != _canonical(after):
                lines.append(f"index {name!r} changed: {_show_index(before)} -> "
                             f"{_show_index(after)}")
        return lines

    def summary(self) -> str:
        """``3 documents, 2 indexes``."""
        docs, indexes = len(self.documents), len(self.indexes)
        return (f"{docs} document{'' if docs == 1 else 's'}, "
                f"{indexes} index{'' if indexes == 1 else 'es'}")


def _show_index(spec: Any) -> str:
    """An index as ``{"key": {"a": 1, "b": -1}, "unique": true}`` (key order kept)."""
    shown = dict(spec or {})
    if isinstance(shown.get("key"), list):
        shown["key"] = dict((str(field), order) for field, order in shown["key"])
    return _show(shown)


def _more(keys: List[str], what: str) -> List[str]:
    extra = len(keys) - DIFF_EXAMPLES
    return [f"... and {extra} more {what}{'' if extra == 1 else 's'}"] if extra > 0 else []


def _field_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> List[str]:
    lines: List[str] = []
    for key in list(before) + [k for k in after if k not in before]:
        if key not in after:
            lines.append(f"{key}: {_show(before[key])} -> (missing)")
        elif key not in before:
            lines.append(f"{key}: (missing) -> {_show(after[key])}")
        elif _canonical(before[key]) != _canonical(after[key]):
            lines.append(f"{key}: {_show(before[key])} -> {_show(after[key])}")
    return lines


@dataclass(frozen=True)
class Snapshot:
    """Every collection of a database but the excluded ones (by name)."""

    database: str = field(compare=False)
    collections: Dict[str, CollectionSnapshot] = field(compare=False)
    _key: Tuple[CollectionSnapshot, ...] = field(repr=False)

    @classmethod
    def build(cls, database: str, collections: Iterable[CollectionSnapshot]) -> Snapshot:
        ordered = sorted(collections, key=lambda c: c.name)
        return cls(database=database, collections={c.name: c for c in ordered},
                   _key=tuple(ordered))

    def __getitem__(self, name: str) -> CollectionSnapshot:
        return self.collections[name]

    def __contains__(self, name: object) -> bool:
        return name in self.collections

    def differing_collections(self, other: Snapshot) -> List[str]:
        """Names of the collections that differ between the two snapshots, sorted."""
        names = set(self.collections) | set(other.collections)
        return sorted(n for n in names
                      if self.collections.get(n) != other.collections.get(n))

    def diff(self, other: Snapshot, before: str = "before", after: str = "after") -> str:
        """A readable account of how ``other`` differs from this snapshot (empty when equal),
        one block per collection."""
        blocks: List[str] = []
        for name in self.differing_collections(other):
            mine, theirs = self.collections.get(name), other.collections.get(name)
            if theirs is None:
                assert mine is not None
                blocks.append(f"collection {name!r}: only {before} ({mine.summary()})")
            elif mine is None:
                blocks.append(f"collection {name!r}: only {after} ({theirs.summary()})")
            else:
                lines = mine.diff(theirs)
                blocks.append("\n".join([f"collection {name!r}:"] + [f"  {x}" for x in lines]))
        return "\n".join(blocks)


def take_snapshot(db: Any, exclude: Iterable[str] = (),
                  collections: Optional[Iterable[str]] = None) -> Snapshot:
    """Snapshot of ``db`` (a pymongo ``Database``): every collection, or only
    ``collections``, except ``exclude`` and ``system.*``. Views are included by their
    definition (options), without documents."""
    skip = set(exclude)
    wanted = set(collections) if collections is not None else None
    snaps: List[CollectionSnapshot] = []
    for info in db.list_collections():
        name = str(info["name"])
        if name in skip or name.startswith("system.") or (wanted is not None
                                                          and name not in wanted):
            continue
        options = dict(info.get("options") or {})
        if info.get("type", "collection") != "collection":
            options["type"] = info["type"]
            snaps.append(CollectionSnapshot.build(name, [], {}, options))
            continue
        coll = db[name]
        snap = CollectionSnapshot.build(name, coll.find({}), coll.index_information(), options)
        if snap.documents or set(snap.indexes) - {"_id_"} or snap.options:
            snaps.append(snap)
        # else: empty, plain, no index but _id's: what MongoDB creates on the fly (a
        # create_index that was dropped again leaves one); counted as absent.
    return Snapshot.build(str(db.name), snaps)
