"""The base of the stored and returned models (``records.py``): plain classes, checked field
by field from their annotations, with pydantic (2 or 1.10) validating whatever is not
plainly right.

Why not pydantic models themselves: importing pydantic and building the models cost about
80 ms, a third of a whole ``up`` that applies three migrations (docs/benchmarks.md, figure
6). What a run builds and reads is nearly always plainly typed (its own values, documents
this library wrote), so :func:`_plainly` accepts a value only when its type is exactly
what the annotation allows. Anything else (a hand-edited record, a string where a number
belongs, a naive or foreign type) goes to a pydantic twin of the model, built on first use
from the same annotations, which coerces it or refuses it (``InvalidData``) as pydantic
always did. Either way the result is the same plain object, and so a field's rules live
in one place: its annotation.

The models keep pydantic's method names: ``model_validate``, ``model_dump`` (``mode=
"json"``: ISO-8601 times, BSON values as Extended JSON), ``model_dump_json``,
``model_copy``.
"""

from __future__ import annotations

import functools
import json
import typing
from datetime import datetime
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    ClassVar,
    Dict,
    Iterable,
    List,
    Literal,
    Mapping,
    Optional,
    Tuple,
    Type,
    TypeVar,
    Union,
)

from .errors import InvalidData
from .valuetypes import BSONData, UTCDateTime, as_utc, bson_to_json

M = TypeVar("M", bound="Model")

_REQUIRED: Any = object()  # a field without a default


class FieldSpec:
    """A field's default (or factory) and its bound (``gt``)."""

    __slots__ = ("default", "factory", "gt")

    def __init__(self, default: Any = _REQUIRED,
                 factory: Optional[Callable[[], Any]] = None, gt: Optional[int] = None) -> None:
        self.default, self.factory, self.gt = default, factory, gt

    @property
    def required(self) -> bool:
        """No default and no factory."""
        return self.default is _REQUIRED and self.factory is None

    def value(self) -> Any:
        """A fresh default."""
        return self.factory() if self.factory is not None else self.default


def Field(default: Any = _REQUIRED, *, default_factory: Optional[Callable[[], Any]] = None,
          gt: Optional[int] = None) -> Any:
    """A field with a factory or a bound (pydantic's ``Field``, the parts used here)."""
    return FieldSpec(default, default_factory, gt)


if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**kwargs: Any) -> Any:
        """Only for type checkers: they check each model's keyword arguments."""
        return lambda cls: cls


@dataclass_transform(kw_only_default=True, field_specifiers=(Field,))
class Model:
    """Base of the records' models: keyword construction, checked as the module says."""

    _fields: ClassVar[Dict[str, FieldSpec]] = {}
    #: What happens to keys that are no field: ``ignore`` (dropped) or ``allow`` (kept).
    _extra: ClassVar[str] = "ignore"

    def __init_subclass__(cls, extra: str = "ignore", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._extra = extra
        fields = dict(cls._fields)
        # The class's own annotations (Python 3.8 has no inspect.get_annotations).
        for name in cls.__dict__.get("__annotations__", {}):  # noqa: RUF063
            if name.startswith("_"):
                continue
            spec = cls.__dict__.get(name, _REQUIRED)
            if isinstance(spec, FieldSpec):
                delattr(cls, name)
            fields[name] = spec if isinstance(spec, FieldSpec) else FieldSpec(spec)
        cls._fields = fields

    def __init__(self, **data: Any) -> None:
        self.__dict__.update(_validated(type(self), data))

    @classmethod
    def model_validate(cls: Type[M], obj: Any) -> M:
        """``obj`` (a mapping) as this model, or ``InvalidData``."""
        if isinstance(obj, cls):
            return obj
        if not isinstance(obj, Mapping):
            raise InvalidData(cls.__name__, [
                {"loc": (), "msg": f"expected a mapping, got {type(obj).__name__}"}])
        return _made(cls, _validated(cls, dict(obj)))

    def model_dump(self, *, mode: str = "python",
                   include: Optional[Iterable[str]] = None) -> Dict[str, Any]:
        """Fields (then kept extras) as a dict; ``mode="json"``: JSON-ready values."""
        hints, as_json = _hints(type(self)), mode == "json"
        keep = None if include is None else set(include)
        return {name: _dump(hints.get(name, Any), value, as_json)
                for name, value in self.__dict__.items() if keep is None or name in keep}

    def model_dump_json(self, *, include: Optional[Iterable[str]] = None) -> str:
        """``model_dump(mode="json")`` as compact JSON text."""
        return json.dumps(self.model_dump(mode="json", include=include), separators=(",", ":"))

    def model_copy(self: M, *, update: Optional[Mapping[str, Any]] = None) -> M:
        """A shallow copy with ``update`` applied as given (not checked, as in pydantic)."""
        return _made(type(self), {**self.__dict__, **(update or {})})

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Model):
            return NotImplemented
        return type(other) is type(self) and other.__dict__ == self.__dict__

    __hash__ = None  # type: ignore[assignment]  # mutable, like pydantic's models

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.__dict__.items())})"


def field_names(model: Type[Model]) -> frozenset[str]:
    """The field names of a model class."""
    return frozenset(model._fields)


def _made(cls: Type[M], attributes: Dict[str, Any]) -> M:
    """An instance of ``cls`` holding ``attributes`` as they are (already checked)."""
    made = cls.__new__(cls)
    made.__dict__.update(attributes)
    return made


# -- checking: plainly, else by the pydantic twin -------------------------------------------

class _NotPlain(Exception):
    """A value that is not exactly of its annotated type: pydantic decides."""


_HINTS: Dict[type, Dict[str, Any]] = {}

#: Checks a value against one annotation: returns it (UTC made explicit, dicts made models)
#: or raises ``_NotPlain``.
_Check = Callable[[Any], Any]

#: Per model: each field's name, spec and check, built once from the annotations.
_CHECKS: Dict[type, List[Tuple[str, FieldSpec, _Check]]] = {}


def _hints(cls: type) -> Dict[str, Any]:
    """``cls``'s resolved annotations (cached)."""
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    return hints


def _validated(cls: Type[Model], data: Dict[str, Any]) -> Dict[str, Any]:
    """``data`` as ``cls``'s attributes: plainly if it is, else through pydantic."""
    try:
        return _plainly(cls, data)
    except _NotPlain:
        return _by_pydantic(cls, data)


def _plainly(cls: Type[Model], data: Mapping[str, Any]) -> Dict[str, Any]:
    """The attributes when every value is exactly of its type; else ``_NotPlain``."""
    checks = _CHECKS.get(cls)
    if checks is None:
        hints = _hints(cls)
        checks = _CHECKS[cls] = [(name, spec, _check_for(hints[name]))
                                 for name, spec in cls._fields.items()]
    out = {}
    for name, spec, check in checks:
        if name in data:
            value = check(data[name])
            if spec.gt is not None and not value > spec.gt:
                raise _NotPlain(name)
        elif spec.required:
            raise _NotPlain(name)
        else:
            value = spec.value()
        out[name] = value
    if cls._extra == "allow":
        out.update((k, v) for k, v in data.items() if k not in out)
    return out


def _check_for(tp: Any) -> _Check:
    """The check of annotation ``tp``: exact types only; anything else is not plain."""
    if tp is Any or tp is BSONData:
        return lambda value: value
    if tp is UTCDateTime:
        return _exact(datetime, as_utc)
    if tp in (str, int, float, bool):
        return _exact(tp, lambda value: value)
    if isinstance(tp, type) and issubclass(tp, Model):
        return _exact(dict, lambda value: _made(tp, _plainly(tp, value)), also=tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return _union([_check_for(a) for a in args if a is not type(None)],
                      nullable=type(None) in args)
    if origin is Literal:
        allowed = {(type(a), a) for a in args}
        return _exact(str, lambda value: value if (str, value) in allowed else _not(value))
    if origin is list:
        item = _check_for(args[0])
        return _exact(list, lambda value: [item(v) for v in value])
    if origin is dict:
        key, val = _check_for(args[0]), _check_for(args[1])
        return _exact(dict, lambda value: {key(k): val(v) for k, v in value.items()})
    return _not


def _exact(kind: type, then: _Check, also: Optional[type] = None) -> _Check:
    """A check that takes values of exactly ``kind`` through ``then`` (``also``: as is)."""
    def check(value: Any) -> Any:
        if type(value) is kind:
            return then(value)
        if also is not None and type(value) is also:
            return value
        raise _NotPlain(value)
    return check


def _union(options: List[_Check], nullable: bool) -> _Check:
    """``Optional[...]``/``Union[...]``: ``None`` if allowed, else the first option that fits."""
    def check(value: Any) -> Any:
        if value is None:
            return None if nullable else _not(value)
        for option in options:
            try:
                return option(value)
            except _NotPlain:
                pass
        raise _NotPlain(value)
    return check


def _not(value: Any) -> Any:
    """Not plain: pydantic decides."""
    raise _NotPlain(value)


def _pydantic() -> Any:
    """pydantic, imported when first needed."""
    import pydantic

    return pydantic


@functools.lru_cache(maxsize=None)
def _is_v2() -> bool:
    """pydantic 2 (else 1.10), read once."""
    return int(_pydantic().VERSION.split(".")[0]) >= 2


_TWINS: Dict[type, Any] = {}  # plain model -> its pydantic twin
_PLAIN: Dict[Any, Type[Model]] = {}  # and back


def _twin(cls: Type[Model]) -> Any:
    """The pydantic model with ``cls``'s fields, types and defaults (built once)."""
    twin = _TWINS.get(cls)
    if twin is None:
        pydantic = _pydantic()
        fields: Dict[str, Any] = {}
        for name, spec in cls._fields.items():
            kwargs: Dict[str, Any] = {} if spec.gt is None else {"gt": spec.gt}
            if spec.factory is not None:
                kwargs["default_factory"] = spec.factory
                default = pydantic.Field(**kwargs)
            else:
                default = pydantic.Field(... if spec.required else spec.default, **kwargs)
            fields[name] = (_twin_type(_hints(cls)[name]), default)
        config: Any = {"extra": cls._extra} if _is_v2() else type("Config", (), {
            "extra": cls._extra})
        twin = _TWINS[cls] = pydantic.create_model(cls.__name__, __config__=config, **fields)
        _PLAIN[twin] = cls
    return twin


def _twin_type(tp: Any) -> Any:
    """``tp`` with every model in it replaced by its twin."""
    if isinstance(tp, type) and issubclass(tp, Model):
        return _twin(tp)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return Union[tuple(_twin_type(a) for a in args)]
    if origin is list:
        return List[_twin_type(args[0])]  # type: ignore[misc]
    if origin is dict:
        return Dict[args[0], _twin_type(args[1])]  # type: ignore[misc, valid-type]
    return tp


def _by_pydantic(cls: Type[Model], data: Dict[str, Any]) -> Dict[str, Any]:
    """The attributes as the pydantic twin validates ``data``; else ``InvalidData``."""
    pydantic, twin = _pydantic(), _twin(cls)
    try:
        made = twin.model_validate(data) if _is_v2() else twin.parse_obj(data)
    except pydantic.ValidationError as exc:
        raise InvalidData(cls.__name__, list(exc.errors())) from None
    return _attributes(cls, made)


def _attributes(cls: Type[Model], made: Any) -> Dict[str, Any]:
    """A validated twin's fields (then its kept extras), twins turned back into models."""
    out = {name: _from_twin(getattr(made, name)) for name in cls._fields}
    if cls._extra == "allow":
        extra = made.model_extra if _is_v2() else made.__dict__
        out.update((k, v) for k, v in (extra or {}).items() if k not in out)
    return out


def _from_twin(value: Any) -> Any:
    """A validated value with each twin instance made its plain model."""
    plain = _PLAIN.get(type(value))
    if plain is not None:
        return _made(plain, _attributes(plain, value))
    if isinstance(value, list):
        return [_from_twin(v) for v in value]
    if isinstance(value, dict):
        return {k: _from_twin(v) for k, v in value.items()}
    return value


# -- dumping ---------------------------------------------------------------------------------

#: Values a dump keeps as they are in either mode (JSON's own types).
_SCALARS = frozenset({str, int, float, bool, type(None)})


def _dump(tp: Any, value: Any, as_json: bool) -> Any:
    """``value`` (annotated ``tp``) as a dump holds it: models as dicts, containers copied;
    in JSON mode, times as ISO-8601 text and BSON values as Extended JSON."""
    kind = type(value)
    if kind in _SCALARS or (kind is datetime and not as_json):
        return value  # most values: nothing to look up
    if isinstance(value, Model):
        return value.model_dump(mode="json" if as_json else "python")
    tp = _unwrap_optional(tp)
    if as_json and tp is BSONData and value is not None:
        return bson_to_json(value)
    args = typing.get_args(tp)
    if isinstance(value, (list, tuple)):
        return [_dump(args[0] if args else Any, v, as_json) for v in value]
    if isinstance(value, dict):
        return {k: _dump(args[1] if len(args) == 2 else Any, v, as_json)
                for k, v in value.items()}
    if as_json and isinstance(value, datetime):
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    if as_json and value is not None and not isinstance(value, (str, int, float)):
        return bson_to_json(value)
    return value


def _unwrap_optional(tp: Any) -> Any:
    """``X`` for ``Optional[X]``; else ``tp``."""
    if typing.get_origin(tp) is Union:
        rest = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return tp

