"""Stores: the narrow interface and its backends, opened from a URL."""

from __future__ import annotations

from ledger.failpoints import FailPoints
from ledger.store.protocol import Checkpoint, Clock, EventStore, Head, Proposal, Rules

__all__ = [
    "Checkpoint",
    "Clock",
    "EventStore",
    "Head",
    "Proposal",
    "Rules",
    "open_store",
    "safe_url",
]


def safe_url(url: str) -> str:
    """The URL with any password replaced, fit for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest.split("/", 1)[0]:
        return url
    credentials, _, host = rest.partition("@")
    user = credentials.split(":", 1)[0]
    return f"{scheme}://{user + ':' if user else ':'}***@{host}"


def open_store(
    url: str,
    *,
    rules: Rules,
    clock: Clock,
    timeout: float,
    failpoints: FailPoints,
    create: bool = True,
) -> EventStore:
    """The store for ``url`` (not yet opened): ``sqlite:///path`` or ``redis://...?ledger=NAME``."""
    scheme = url.split(":", 1)[0].lower()
    if scheme == "sqlite":
        from ledger.store.sqlite import SqliteStore

        return SqliteStore(
            url, rules=rules, clock=clock, timeout=timeout, failpoints=failpoints, create=create
        )
    if scheme in ("redis", "rediss", "redis+cluster"):
        from ledger.store.redis import RedisStore, spool_path
        from ledger.store.spool import SpoolStore

        store = RedisStore(
            url, rules=rules, clock=clock, timeout=timeout, failpoints=failpoints, create=create
        )
        spool = spool_path(url)
        return store if spool is None else SpoolStore(store, spool)
    raise ValueError(
        f"unsupported ledger URL {safe_url(url)!r}: expected sqlite:///path or redis://host:port/db?ledger=NAME"
    )
