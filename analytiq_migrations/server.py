"""Across every supported pymongo and server: our codec, ``hello``, wire versions."""

from __future__ import annotations

from typing import Any

from bson.binary import STANDARD
from bson.codec_options import CodecOptions
from pymongo.errors import OperationFailure

#: Codec options of the library's own collections (records, history, lock), whatever the
#: client's: pymongo 3 decodes UUIDs as ``pythonLegacy`` by default and pymongo 4 refuses to
#: encode them at all, so stored session ids would not round-trip to ``killSessions``
#: (``bson.binary.STANDARD``: pymongo before 3.11 has no ``UuidRepresentation``).
OWN_CODEC: CodecOptions[Any] = CodecOptions(uuid_representation=STANDARD)

#: MongoDB 4.0 is wire version 7: sessions, replica-set transactions, ``killSessions``.
MIN_WIRE_VERSION = 7

#: MongoDB 4.2 is wire version 8: pipeline updates (the lease writes ``$$NOW`` with one) and
#: transactions through mongos.
PIPELINE_UPDATE_WIRE_VERSION = 8

#: Server selection timeout for clients this library creates from a URI: long enough
#: for a replica-set election (~12 s worst case on defaults), short enough that a cron
#: job pointed at a dead host fails within a minute instead of hanging.
SERVER_SELECTION_TIMEOUT_MS = 15_000

#: First-batch size when reading all records: the server's default (101 documents)
#: would add a ``getMore`` from the 102nd migration on; the server caps a batch at
#: 16 MB anyway, which at ~0.5 KB a record is some 30,000 versions in one round trip.
RECORDS_BATCH = 100_000

#: "no such command": what servers before 4.4.2 (and 5.0) answer to ``hello``.
COMMAND_NOT_FOUND = 59


def own_collection(db: Any, name: str) -> Any:
    """``db[name]`` with :data:`OWN_CODEC` (mongomock's collections as they are)."""
    try:
        return db.get_collection(name, codec_options=OWN_CODEC)
    except (TypeError, NotImplementedError):
        return db[name]


def hello(client: Any) -> dict[str, Any]:
    """The server's ``hello`` reply, from ``isMaster`` on servers that predate ``hello``."""
    try:
        reply: dict[str, Any] = client.admin.command("hello")
    except OperationFailure as exc:
        if exc.code != COMMAND_NOT_FOUND:
            raise
        reply = client.admin.command("isMaster")
    return reply


def mongodb_release(wire_version: int) -> str:
    """The MongoDB release a wire version stands for, for messages."""
    releases = {6: "3.6", 7: "4.0", 8: "4.2", 9: "4.4", 13: "5.0", 17: "6.0", 21: "7.0",
                25: "8.0"}
    known = [w for w in releases if w <= wire_version]
    return releases[max(known)] if known else "before 3.6"


def client_options(client: Any) -> Any:
    """The client's ``ClientOptions`` (``client.options`` on pymongo 4; pymongo 3 has no such
    property, and ``client.options`` there is the database named "options")."""
    if isinstance(getattr(type(client), "options", None), property):
        return client.options
    return getattr(client, "_MongoClient__options", None)


def topology(client: Any) -> Any:
    """The client's ``TopologyDescription`` (the ``topology_description`` property is
    pymongo 3.12+; before it, ``client.topology_description`` is a database by that name)."""
    if getattr(type(client), "topology_description", None) is not None:
        return client.topology_description
    return client._topology.description


def hosts(client: Any) -> str:
    """host:port list of a client, for messages (never credentials)."""
    try:
        addresses = list(topology(client).server_descriptions().keys())
    except AttributeError:
        return "?"
    if not addresses:  # the driver dropped them (another replica set): the URI's seeds
        addresses = sorted(getattr(getattr(client, "_topology_settings", None), "seeds", ()))
    return ", ".join(f"{h}:{p}" for h, p in addresses) or "?"


def describe_client(client: Any) -> str:
    """``MongoClient at host:port (appname ..., made by Flask-PyMongo)``, never credentials."""
    text = f"{type(client).__name__} at {hosts(client)}"
    try:
        metadata = client_options(client).pool_options.metadata
    except AttributeError:
        return text
    notes = []
    if metadata.get("application", {}).get("name"):
        notes.append(f"appname {metadata['application']['name']!r}")
    wrappers = [w for w in str(metadata.get("driver", {}).get("name", "")).split("|")[1:]
                if w and w != "c"]
    if wrappers:
        notes.append(f"made by {', '.join(wrappers)}")
    return f"{text} ({'; '.join(notes)})" if notes else text
