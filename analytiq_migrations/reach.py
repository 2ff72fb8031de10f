"""First contact with the server: fail at once when nothing listens at any seed (a refused
connection, an unknown host) instead of waiting out server selection, and name both
replica-set names when the URI's ``replicaSet`` is not the server's."""

from __future__ import annotations

import socket
from typing import Any, Dict, List, Optional, Tuple

from pymongo import monitoring

from .server import client_options, topology

Address = Tuple[str, int]

#: How long the probe waits for a TCP connection to one seed. A refused connection or an
#: unknown host answers at once; a port that drops packets (a firewall) or a slow link
#: waits this long and is then left to the driver's server selection, as before.
PROBE_TIMEOUT_S = 2.0


class SetNames(monitoring.ServerHeartbeatListener):
    """Each server's replica-set name, from its heartbeats: the driver drops a server whose
    name is not the URI's, and its own error names only the URI's."""

    def __init__(self) -> None:
        self.names: Dict[Address, Optional[str]] = {}

    def started(self, event: Any) -> None:
        """Nothing to remember before the reply."""

    def succeeded(self, event: Any) -> None:
        """Remember the ``setName`` the server answered with (``None``: not a member)."""
        self.names[tuple(event.connection_id)] = getattr(event.reply, "replica_set_name", None)

    def failed(self, event: Any) -> None:
        """A failed heartbeat says nothing about the name."""


def seeds(client: Any) -> List[Address]:
    """The addresses the client will contact first (read before contact: the driver drops
    a server from its description once it turns out to be the wrong set)."""
    try:
        return [(str(h), int(p)) for h, p in topology(client).server_descriptions()]
    except (AttributeError, TypeError, ValueError):
        return []


def show(addresses: List[Address]) -> str:
    """``host:port, ...`` for messages (``?`` when unknown)."""
    return ", ".join(f"{host}:{port}" for host, port in addresses) or "?"


def nobody_listens(client: Any, addresses: List[Address]) -> Optional[str]:
    """Why no seed can answer, when every one refused the connection or has a name that
    does not resolve; ``None`` when any may answer (or the probe cannot tell: a Unix
    socket, a proxy, SRV-less DNS trouble that is only slow)."""
    if not addresses or _proxied(client):
        return None
    causes = []
    for host, port in addresses:
        if host.endswith(".sock") or "/" in host:
            return None  # a Unix domain socket: the driver's business
        cause = _probe(host, port)
        if cause is None:
            return None
        causes.append(f"{host}:{port}: {cause}")
    return "; ".join(causes)


def _probe(host: str, port: int) -> Optional[str]:
    """``connection refused`` / ``unknown host (...)``, or ``None`` (it may answer)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"unknown host ({exc.strerror or exc})"
    except OSError:
        return None
    refused = 0
    for family, kind, proto, _, address in infos:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(PROBE_TIMEOUT_S)
                sock.connect(address)
            return None  # something listens
        except ConnectionRefusedError:
            refused += 1
        except OSError:
            return None  # timed out, unreachable network...: let server selection decide
    return "connection refused" if refused else None


def _proxied(client: Any) -> bool:
    """Does the client connect through a SOCKS5 proxy (pymongo 4.5+ ``proxyHost``)?"""
    pool = getattr(client_options(client), "pool_options", None)
    return bool(getattr(pool, "_PoolOptions__proxy", None))


def set_name_mismatch(client: Any) -> Optional[str]:
    """``replicaSet=X in the URI, but HOST:PORT is in set 'Y'`` when the heartbeats say so."""
    options = client_options(client)
    wanted = getattr(options, "replica_set_name", None)
    listener = _set_names(options)
    if not wanted or listener is None:
        return None
    seen = [(address, name) for address, name in listener.names.items() if name != wanted]
    if not seen:
        return None
    servers = "; ".join(
        f"{host}:{port} is " + (f"a member of replica set '{name}'" if name else
                                "not a replica-set member")
        for (host, port), name in seen)
    return f"the URI asks for replicaSet={wanted}, but {servers}"


def _set_names(options: Any) -> Optional[SetNames]:
    """Our heartbeat listener on a client made by ``connect.client_for``, if any."""
    listeners = getattr(options, "event_listeners", None)
    if listeners is None:  # pymongo 3: on the pool options, ...
        listeners = getattr(getattr(options, "pool_options", None), "event_listeners", None)
    listed = getattr(listeners, "event_listeners", None)
    if callable(listed):  # ... an object that lists them by kind (a tuple of lists)
        listeners = [x for kind in listed() for x in kind]
    return next((x for x in listeners or () if isinstance(x, SetNames)), None)
