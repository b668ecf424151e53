"""The shared store: one ledger in Redis, for executors on several hosts.

URLs: ``redis://[[user]:password@]host:port/db?ledger=NAME``, ``rediss://`` for
TLS, and ``redis+cluster://host:port/0?ledger=NAME`` (any node of the cluster
will do; the client learns the rest) for a Redis Cluster. Options in the
query: ``views=PATH`` (the local read-model file, default
``tradeledger-NAME.views.db``), ``wait_replicas=N``, ``require_durable=1``,
``allow_eviction=1``, and ``spool=PATH`` (see :mod:`ledger.store.spool`).

Every key of a ledger carries the hash tag ``{NAME}``: a ledger lives in one
cluster slot and many ledgers spread over a cluster. Redis Lua has no SHA-256,
so this client stages and hashes a group of appends against the head it
expects, and one script checks the head, the event ids and the stream versions
before its first write (a script cannot roll back; its ``#!lua`` shebang
declares it a writer, so a server out of memory refuses it before it runs). A
lost race on the head is staged again against the new head. An append that
finds nothing in flight is committed at once in its caller's task; appends
that arrive while one is in flight are grouped by a writer task into the next
script call. Scripts go over a connection of the writer's own (on a single
server), packed by hiredis: the client, not the server, is the bottleneck.

Durability is read, not assumed: on open the store reads ``appendonly``,
``appendfsync`` and ``maxmemory-policy`` (``unknown`` where CONFIG is not
allowed), warns when acknowledged records can be lost, refuses with
``require_durable=1``, and refuses an evicting policy unless
``allow_eviction=1``. Redis is one primary: a failover promotes a replica that
may lack the last acknowledged records. ``wait_replicas=N`` acknowledges only
after ``WAIT`` saw N replicas take the write, within half the timeout; when
fewer confirm, the append raises ``OutcomeUnknown`` although the primary has
the record, and so does every retry until N replicas confirm (a retry finds
the record and waits for the replicas again).

Faults: ``StoreUnavailable`` when nothing was sent, ``OutcomeUnknown`` when the
script may have run; the address appears in messages, the password never.
After three failures in a row the store fails fast for a second, then lets one
call through to probe; connections are re-made as needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import itertools
import random
import re
import select
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Collection, Sequence
from typing import Any, TypeVar

import hiredis
import msgspec
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio import connection as redis_connection
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

from ledger.chain import GENESIS, parse_timestamp, timestamp
from ledger.codec import decode_event
from ledger.errors import (
    ConcurrencyError,
    IncompatibleStore,
    IntegrityError,
    InvalidEvent,
    LedgerClosed,
    LedgerError,
    OutcomeUnknown,
    StoreError,
    StoreUnavailable,
)
from ledger.events import SignalEmitted, TradeOpened
from ledger.failpoints import FailPoints
from ledger.logs import get_logger
from ledger.readmodel import LocalReadModel
from ledger.record import Record
from ledger.store.protocol import Checkpoint, Clock, Head, Proposal, Rules
from ledger.store.staging import Row, Stage, stage_each
from ledger.trade import StreamState

__all__ = ["RedisStore"]

T = TypeVar("T")

_APPEND = """#!lua
-- KEYS: head, ids, versions, types, log, then one stream list per record
-- ARGV: expected head position, expected head hash, then 12 per record: position,
--   stream_id, version, event_id, type, schema_version, occurred_at, recorded_at,
--   data, metadata, prev_hash, hash
-- Checks everything before the first write; on any mismatch writes nothing and
-- returns {'LOST', position, hash, recorded_at, #ids, ids..., #streams, stream, version...}
local head = redis.call('HMGET', KEYS[1], 'position', 'hash', 'recorded_at')
local position = tonumber(head[1] or '0')
local lost = position ~= tonumber(ARGV[1]) or (position > 0 and head[2] ~= ARGV[2])
local n = (#ARGV - 2) / 12
local dups, stale, seen = {}, {}, {}
for i = 0, n - 1 do
  local b = 3 + i * 12
  if redis.call('HEXISTS', KEYS[2], ARGV[b + 3]) == 1 then
    dups[#dups + 1] = ARGV[b + 3]
  end
  local stream = ARGV[b + 1]
  if not seen[stream] then
    seen[stream] = true
    local current = redis.call('HGET', KEYS[3], stream) or '0'
    if tonumber(current) ~= tonumber(ARGV[b + 2]) - 1 then
      stale[#stale + 1] = stream
      stale[#stale + 1] = current
    end
  end
end
if lost or #dups > 0 or #stale > 0 then
  local answer = {'LOST', tostring(position), head[2] or '', head[3] or '', #dups}
  for _, id in ipairs(dups) do answer[#answer + 1] = id end
  answer[#answer + 1] = #stale / 2
  for _, item in ipairs(stale) do answer[#answer + 1] = item end
  return answer
end
for i = 0, n - 1 do
  local b = 3 + i * 12
  redis.call('XADD', KEYS[5], ARGV[b] .. '-1',
    'stream_id', ARGV[b + 1], 'version', ARGV[b + 2], 'event_id', ARGV[b + 3],
    'type', ARGV[b + 4], 'schema_version', ARGV[b + 5], 'occurred_at', ARGV[b + 6],
    'recorded_at', ARGV[b + 7], 'data', ARGV[b + 8], 'metadata', ARGV[b + 9],
    'prev_hash', ARGV[b + 10], 'hash', ARGV[b + 11])
  redis.call('HSET', KEYS[2], ARGV[b + 3], ARGV[b])
  redis.call('HSET', KEYS[3], ARGV[b + 1], ARGV[b + 2])
  redis.call('RPUSH', KEYS[6 + i], ARGV[b])
  redis.call('HINCRBY', KEYS[4], ARGV[b + 4], 1)
end
local last = 3 + (n - 1) * 12
redis.call('HSET', KEYS[1], 'position', ARGV[last], 'hash', ARGV[last + 11],
  'recorded_at', ARGV[last + 7])
return {'OK'}
"""
_SHA = hashlib.sha1(_APPEND.encode()).hexdigest()

_PAGE = 1000
_STREAM_CACHE = 20_000
_MAX_GROUP_EVENTS = 2000
_BACKOFF_AFTER = 2  # lost races in a row before a jittered pause, to break lockstep
_TRIP_AFTER = 3
# redis-py's words for a connection that failed to open (nothing was sent on it): "Error
# [errno or reasons] connecting to HOST:PORT." or "Timeout connecting to server". A failure
# later on names the host too, and a host name may hold "connecting", but no spaces.
_CONNECTING = re.compile(r"(Timeout|Error)\b.*? connecting to ")
_COOL_DOWN = 1.0
_MEMORY_SAMPLE = 1000
_IDLE = 0.05  # seconds without an answer after which a pooled connection may be dead
_QUIET = 0.002  # seconds without an answer after which the writer's socket is polled first
_FIXED_KEYS = ("log", "head", "ids", "versions", "types", "checkpoints", "meta")

_parse_time = dt.datetime.fromisoformat


class _Options(msgspec.Struct, kw_only=True):
    """What a redis URL asks for; never the password (the client URL is kept apart)."""

    name: str
    cluster: bool
    views: str
    wait_replicas: int
    require_durable: bool
    allow_eviction: bool
    address: str


def spool_path(url: str) -> str | None:
    """The ``spool=PATH`` of a redis URL, if it has one."""
    found = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("spool")
    return found[0] if found else None


# redis-py's own URL options that are not in its parser table (taken as client arguments)
_CLIENT_OPTIONS = frozenset({"password", "username", "client_name"})


def _options(url: str) -> tuple[_Options, str, str | None]:
    """The options, the URL for redis-py, and the password (to scrub from messages)."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qs(parts.query)
    names = query.pop("ledger", [])
    if len(names) != 1 or not names[0] or "}" in names[0] or "{" in names[0]:
        raise ValueError("a redis URL names its ledger: redis://host:port/db?ledger=NAME")
    name = names[0]
    cluster = parts.scheme == "redis+cluster" or query.pop("cluster", ["0"])[0] in ("1", "true")

    def flag(key: str) -> bool:
        return query.pop(key, ["0"])[0] in ("1", "true", "yes")

    views = query.pop("views", [f"tradeledger-{name}.views.db"])[0]
    query.pop("spool", None)
    try:
        wait_replicas = int(query.pop("wait_replicas", ["0"])[0])
    except ValueError:
        raise ValueError("wait_replicas must be a whole number of replicas") from None
    if wait_replicas < 0:
        raise ValueError("wait_replicas must be 0 or more")
    require_durable = flag("require_durable")
    allow_eviction = flag("allow_eviction")
    unknown = sorted(
        key
        for key in query
        if key not in _CLIENT_OPTIONS
        and key not in redis_connection.URL_QUERY_ARGUMENT_PARSERS
        and not key.startswith("ssl_")
    )
    if unknown:  # a misspelt option (spool, views) silently ignored would cost a bot dearly
        raise ValueError(
            f"unknown option(s) in the redis URL: {', '.join(unknown)}; tradeledger's are "
            "ledger, views, spool, wait_replicas, require_durable, allow_eviction, cluster"
        )
    password = urllib.parse.unquote(parts.password) if parts.password else None
    if "password" in query:
        password = query["password"][0]
    scheme = "redis" if parts.scheme == "redis+cluster" else parts.scheme
    rest = urllib.parse.urlencode({k: v[0] for k, v in query.items()})
    client_url = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, rest, ""))
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError("the redis URL has a bad port") from None
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    address = f"{parts.scheme}://{host}:{port}{parts.path or ''}?ledger={name}"
    options = _Options(
        name=name,
        cluster=cluster,
        views=views,
        wait_replicas=wait_replicas,
        require_durable=require_durable,
        allow_eviction=allow_eviction,
        address=address,
    )
    return options, client_url, password


class _Request:
    __slots__ = ("batch", "future", "sent")

    def __init__(self, batch: Sequence[Proposal], future: asyncio.Future[list[Record]]) -> None:
        self.batch = batch
        self.future = future
        self.sent = False  # its script went out, or is about to: it may land whatever happens


class _Lost(Exception):
    """The script found the log other than staged, and says how: stage again."""

    def __init__(self, answer: list[Any]) -> None:
        super().__init__("lost the race")
        position, digest, recorded_at, count = answer[1:5]
        self.head = (
            Head(int(position), digest, _parse_time(recorded_at))
            if int(position)
            else Head(0, GENESIS, None)
        )
        self.ids: list[str] = answer[5 : 5 + int(count)]
        rest = answer[6 + int(count) :]
        self.streams: list[str] = rest[0::2]


def _record(entry_id: str, fields: dict[str, str]) -> Record:
    try:
        return Record(
            int(entry_id.split("-", 1)[0]),
            fields["stream_id"],
            int(fields["version"]),
            fields["event_id"],
            fields["type"],
            int(fields["schema_version"]),
            parse_timestamp(fields["occurred_at"]),
            parse_timestamp(fields["recorded_at"]),
            fields["data"],
            fields["metadata"],
            fields["prev_hash"],
            fields["hash"],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"the record {entry_id} is malformed: {e}") from e


def _readable(connection: Any) -> bool:
    """Whether an idle connection's socket has something to read: an EOF the event loop
    has not taken in yet, when the server closed it. Sending on it could only end in
    OutcomeUnknown; reconnecting first says StoreUnavailable when the server is gone."""
    writer = getattr(connection, "_writer", None)  # redis-py keeps its StreamWriter here
    sock = writer.get_extra_info("socket") if writer is not None else None
    if sock is None:
        return False
    ready, _, _ = select.select([sock.fileno()], [], [], 0)
    return bool(ready)


def _settle(future: asyncio.Future[list[Record]], outcome: list[Record] | BaseException) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class RedisStore:
    """The log in Redis; see the module docstring for how it appends."""

    def __init__(
        self,
        url: str,
        *,
        rules: Rules,
        clock: Clock,
        timeout: float = 5.0,
        failpoints: FailPoints | None = None,
        create: bool = True,
        require_durable: bool | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        self.options, self._client_url, self._password = _options(url)
        self.url = self.options.address
        self.rules = rules
        self.clock = clock
        self.timeout = timeout
        self.failpoints = failpoints or FailPoints()
        self.create = create
        self.require_durable = (
            self.options.require_durable if require_durable is None else require_durable
        )
        self.poll_interval = poll_interval
        self.durability = "unknown: not opened yet"
        self.persistence: dict[str, str] = {}
        tag = f"tradeledger:{{{self.options.name}}}:"
        self._prefix = tag
        self._keys = {k: tag + k for k in _FIXED_KEYS}
        self._script_keys = [self._keys[k] for k in ("head", "ids", "versions", "types", "log")]
        self._client: Any = None
        self._wire: Any = None  # the writer's own connection (one server, not a cluster)
        self._script_loaded = False
        self._wait_ms = max(1, int(timeout * 500))
        self._views = LocalReadModel(self.options.views, timeout=timeout)
        self._queue: asyncio.Queue[_Request] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._idle: asyncio.Event | None = None  # set while no group is being committed
        self._holding = False  # the writer task holds requests it has not committed yet
        self._head: Head | None = None
        self._highest = 0  # the furthest position this client saw the log reach
        self._streams: dict[str, tuple[int, StreamState]] = {}
        self._failures = 0
        self._open_until = 0.0
        self._answered_at = 0.0
        self._closing = False
        self._closed = False
        self._shutdown: asyncio.Future[None] | None = None
        self._log = get_logger("tradeledger")

    # lifecycle

    async def open(self) -> None:
        if self._client is not None or self._closed:
            raise LedgerClosed("a store opens once")
        common: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
            # with maintenance notifications on, the pool skips its check that a pooled
            # connection is still open before sending on it
            "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        }
        try:
            if self.options.cluster:
                self._client = RedisCluster.from_url(self._client_url, **common)
            else:
                self._client = Redis.from_url(self._client_url, **common)
                # no socket timeout on the writer's connection: _call bounds each call, and
                # redis-py would otherwise wrap every send in a task of its own
                pool = self._client.connection_pool
                self._wire = pool.connection_class(
                    **{**pool.connection_kwargs, "socket_timeout": None}
                )
        except (ValueError, redis_errors.RedisError, redis_errors.RedisClusterException) as e:
            raise ValueError(f"bad redis URL {self.url}: {type(e).__name__}") from None
        try:
            await self._call(self._client.ping(), sent=False)
            await self._check_server()
            await self._identify()
            await self._views.open()
        except BaseException:
            await self.aclose()
            raise
        self._queue = asyncio.Queue()
        self._idle = asyncio.Event()
        self._idle.set()
        self._writer = asyncio.create_task(self._write_loop())

    def _target(self) -> dict[str, Any]:
        """Where a keyless command about this ledger goes: the node serving its slot."""
        if not self.options.cluster:
            return {}
        return {"target_nodes": self._client.get_node_from_key(self._keys["head"])}

    async def _check_server(self) -> None:
        names = (
            "appendonly",
            "appendfsync",
            "no-appendfsync-on-rewrite",
            "save",
            "maxmemory-policy",
        )
        try:
            settings = await self._call(self._config_get(names), sent=False)
        except StoreUnavailable:
            raise
        except StoreError:  # CONFIG renamed away or forbidden by an ACL: a managed service
            settings = None
        if not settings:
            self.durability = "unknown: the server does not allow CONFIG; ask its operator"
            self.persistence = {}
        else:
            self.persistence = {k: str(settings.get(k, "")) for k in names}
            aof = self.persistence["appendonly"] == "yes"
            fsync = self.persistence["appendfsync"]
            if aof and fsync == "always" and self.persistence["no-appendfsync-on-rewrite"] == "yes":
                self.durability = (
                    "not durable: appendfsync always, but no-appendfsync-on-rewrite yes: while "
                    "Redis rewrites its AOF it does not fsync, and a crash of the Redis host "
                    "then loses the records acknowledged meanwhile"
                )
            elif aof and fsync == "always":
                self.durability = (
                    "durable on this server: appendonly yes, appendfsync always "
                    "(a failover to a replica can still lose acknowledged records)"
                )
            elif aof:
                self.durability = (
                    f"not durable: appendfsync {fsync}; a crash of the Redis host can lose "
                    "about the last second of acknowledged records"
                )
            elif self.persistence["save"].strip():
                self.durability = (
                    "not durable: appendonly no; a crash or restart of Redis loses every "
                    "record acknowledged since the last RDB snapshot"
                )
            else:
                self.durability = (
                    "not durable: appendonly no and no snapshots; a restart of Redis loses "
                    "the whole ledger"
                )
            policy = self.persistence["maxmemory-policy"]
            if policy != "noeviction" and not self.options.allow_eviction:
                raise IncompatibleStore(
                    f"{self.url}: maxmemory-policy is {policy}: Redis could evict ledger keys; "
                    "set it to noeviction (or pass allow_eviction=1 knowingly)"
                )
        if self.options.wait_replicas:
            self.durability += (
                f"; acknowledged after {self.options.wait_replicas} replica(s) have it"
            )
        if not self.durability.startswith("durable"):
            self._log.warning("redis_not_durable", address=self.url, durability=self.durability)
            if self.require_durable:
                raise IncompatibleStore(f"{self.url} is {self.durability} (require_durable)")

    async def _config_get(self, names: Sequence[str]) -> dict[str, str]:
        found: dict[str, str] = await self._client.config_get(*names, **self._target())
        return found

    async def _identify(self) -> None:
        meta = self._keys["meta"]
        found = await self._call(self._client.hget(meta, "ledger_id"), sent=False)
        if found is None:
            if not self.create:
                raise IncompatibleStore(
                    f"there is no ledger named {self.options.name} at {self.url}"
                )
            await self._call(self._client.hsetnx(meta, "ledger_id", str(uuid.uuid4())), sent=True)
            await self._call(
                self._client.hsetnx(meta, "created_at", timestamp(self.clock())), sent=True
            )

    async def aclose(self) -> None:
        """Let the appends in flight finish, then close; safe to call twice. Cancelling a
        caller of ``aclose`` does not stop the closing: calling it again waits for it."""
        if self._shutdown is None:
            self._closing = True
            self._shutdown = asyncio.ensure_future(self._close())
        await asyncio.shield(self._shutdown)

    async def _close(self) -> None:
        try:
            if self._writer is not None:
                assert self._queue is not None and self._idle is not None
                await self._queue.join()
                await self._idle.wait()
        finally:  # also when the close itself is cancelled (at the loop's shutdown)
            if self._writer is not None:
                self._writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._writer
            self._closed = True
            await self._views.aclose()
            if self._wire is not None:
                with contextlib.suppress(Exception):
                    await self._wire.disconnect()
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.aclose()

    def read_model(self) -> LocalReadModel:
        """Table projections live in a local SQLite file on this host."""
        return self._views

    # calling Redis, with typed errors and a circuit breaker

    async def _call(self, awaitable: Awaitable[T], *, sent: bool) -> T:
        """Await one Redis operation; ``sent`` says whether a failure may have landed."""
        if self._client is None or self._closed:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise LedgerClosed("the store is not open")
        if self._failures >= _TRIP_AFTER:
            now = time.monotonic()
            if now < self._open_until:
                if asyncio.iscoroutine(awaitable):
                    awaitable.close()
                raise StoreUnavailable(
                    f"{self.url} failed {self._failures} times in a row; not trying again for "
                    f"{self._open_until - now:.1f}s; nothing was written"
                )
        try:
            async with asyncio.timeout(self.timeout):
                result = await awaitable
        except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as e:
            # OSError covers asyncio's TimeoutError; from None: the driver's text may carry the URL
            raise self._error(e, sent=sent) from None
        self._answered_at = time.monotonic()
        if self._failures:
            if self._failures >= _TRIP_AFTER:
                self._log.info("redis_recovered", address=self.url)
            self._failures = 0
        return result

    def _scrub(self, text: str) -> str:
        return text.replace(self._password, "***") if self._password else text

    def _error(self, e: BaseException, *, sent: bool) -> LedgerError:
        """The ledger error for a driver error; trips the breaker on faults of the server."""
        kind = type(e).__name__
        message = self._scrub(str(e).splitlines()[0] if str(e) else kind)
        if isinstance(e, redis_errors.BusyLoadingError):
            self._trip()
            return StoreUnavailable(f"{self.url} is loading its data; nothing was written")
        if isinstance(e, redis_errors.ResponseError):
            if isinstance(e, redis_errors.OutOfMemoryError) or message.startswith("OOM"):
                return StoreUnavailable(
                    f"{self.url} is out of memory (maxmemory) and refused the write; "
                    "nothing was written"
                )
            if isinstance(e, redis_errors.ReadOnlyError):
                return StoreUnavailable(f"{self.url} is a read-only replica; nothing was written")
            if isinstance(e, redis_errors.NoPermissionError) or "unknown command" in message:
                return StoreError(f"{self.url} refused the command: {message}")
            return StoreUnavailable(f"{self.url} refused: {message}")
        if isinstance(
            e, redis_errors.ConnectionError | redis_errors.TimeoutError | TimeoutError | OSError
        ):
            self._trip()
            connecting = _CONNECTING.match(message) is not None or isinstance(
                e, redis_errors.AuthenticationError | redis_errors.MaxConnectionsError
            )
            if connecting or not sent:
                return StoreUnavailable(f"{self.url} is unreachable ({kind}); nothing was written")
            return OutcomeUnknown(
                f"{self.url} did not answer after the append was sent ({kind}); "
                "retry with the same event_id"
            )
        self._trip()
        if sent:
            return OutcomeUnknown(f"{self.url} failed ({kind}); retry with the same event_id")
        return StoreUnavailable(f"{self.url} failed ({kind}); nothing was written")

    def _trip(self) -> None:
        self._failures += 1
        self._script_loaded = False  # the server may come back without its script cache
        if self._failures >= _TRIP_AFTER:
            self._open_until = time.monotonic() + _COOL_DOWN
            if self._failures == _TRIP_AFTER:
                self._log.error(
                    "store_fault", store="redis", address=self.url, failures=self._failures
                )

    # writes

    async def append(self, batch: Sequence[Proposal]) -> list[Record]:
        if self._queue is None or self._idle is None or self._closing:
            raise LedgerClosed("the store is not open")
        loop = asyncio.get_running_loop()
        request = _Request(batch, loop.create_future())
        if self._idle.is_set() and self._queue.empty() and not self._holding:
            # Nothing in flight: commit in the caller's own task, a group of one, sparing
            # two turns of the event loop. Cancelling this caller touches no one else's
            # append; appends arriving meanwhile queue for the writer task. Each call to
            # Redis is bounded, and so is the whole append: its reads, races and script.
            self._idle.clear()
            try:
                async with asyncio.timeout(self.timeout):
                    await self._commit(request)
            except TimeoutError:  # a hung or slow server, as a call's own timeout would say
                self._trip()
                self._forget()  # the caches may be half brought up to date
                _settle(request.future, self._late(sent=request.sent))
            finally:
                self._idle.set()
            return await request.future
        self._queue.put_nowait(request)
        timer = loop.call_later(self.timeout, self._expire, request)
        try:
            return await request.future
        finally:
            timer.cancel()

    def _expire(self, request: _Request) -> None:
        # once sent, the script may run; until then the writer leaves out a caller that is
        # answered (queued, or in a group being staged: see _commit_group)
        _settle(request.future, self._late(sent=request.sent))

    def _late(self, *, sent: bool) -> LedgerError:
        if sent:
            return OutcomeUnknown(
                f"{self.url}: no answer within {self.timeout}s after the append was sent; "
                "retry with the same event_id"
            )
        return StoreUnavailable(
            f"{self.url}: the write did not start within {self.timeout}s; nothing was written"
        )

    async def _write_loop(self) -> None:
        assert self._queue is not None and self._idle is not None
        while True:
            first = await self._queue.get()
            self._holding = True
            while not self._idle.is_set():  # a caller committing in its own task goes first
                await self._idle.wait()
            group = [first]
            events = len(first.batch)
            while events < _MAX_GROUP_EVENTS and not self._queue.empty():
                request = self._queue.get_nowait()
                group.append(request)
                events += len(request.batch)
            self._idle.clear()
            try:
                await self._commit(*group)
            finally:
                self._holding = False
                self._idle.set()
                for _ in group:
                    self._queue.task_done()

    async def _commit(self, *group: _Request) -> None:
        """Commit the requests still waiting; settle every one of them, whatever happens."""
        live = [r for r in group if not r.future.done()]
        try:
            if live:
                await self._commit_group(live)
        except Exception as e:  # never leave a caller waiting, nor let the writer die
            self._forget()
            for request in live:
                if isinstance(e, LedgerError):
                    error: LedgerError = e
                elif request.sent:  # the fault came after its script went out
                    error = OutcomeUnknown(
                        f"{self.url} failed after the append was sent ({e!r}); "
                        "retry with the same event_id"
                    )
                else:
                    error = StoreUnavailable(f"{self.url}: {e!r}; nothing was written")
                _settle(request.future, error)

    def _forget(self) -> None:
        self._head = None
        self._streams.clear()

    def _server_head(self, head: Head) -> Head:
        """``head`` as Redis reports it, refused when it is behind a position this client
        saw: the log never shrinks, so Redis lost acknowledged records (a failover to a
        lagging replica, a restore, a flush) and appending would give their positions
        to other events."""
        if head.position < self._highest:
            raise IntegrityError(
                f"{self.url}: the ledger went back from position {self._highest} to "
                f"{head.position}: Redis lost acknowledged records (or the ledger was "
                "deleted); nothing was written. "
                "Stop every executor and compare the log with your anchors and exports"
            )
        self._highest = head.position
        return head

    async def _commit_group(self, group: list[_Request]) -> None:
        known: dict[str, Record] = {}
        wanted = self.options.wait_replicas
        deadline = time.monotonic() + self.timeout
        losses = 0
        while True:
            outcomes, stage, new = await self._stage(group, known, deadline)
            if any(request.future.done() for request in group):
                # callers whose wait ran out while the group was staged were told nothing
                # was written: leave them out, and stage the others again without them
                group = [request for request in group if not request.future.done()]
                if not group:
                    return
                continue
            confirm = bool(wanted) and any(isinstance(o, list) for o in outcomes)
            if not new and not confirm:
                break
            for request, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, list):
                    request.sent = True  # from here on, its wait running out is unknown
            try:
                replicas = await self._send(new, confirm=confirm)
            except _Lost as lost:  # the script wrote nothing: until it runs again, nothing is sent
                for request in group:
                    request.sent = False
                losses += 1
                if time.monotonic() > deadline:
                    error = StoreUnavailable(
                        f"{self.url}: lost the race for the head {losses} times in "
                        f"{self.timeout}s; nothing was written"
                    )
                    for request in group:
                        _settle(request.future, error)
                    return
                await self._learn(lost, known)
                if losses >= _BACKOFF_AFTER:
                    await asyncio.sleep(random.uniform(0, min(0.002 * losses, 0.02)))
                continue
            except LedgerError as e:
                self._forget()
                for request in group:
                    _settle(request.future, e)
                return
            if new:
                self._head = self._server_head(stage.head)
                self._streams.update(stage.streams)
                while len(self._streams) > _STREAM_CACHE:
                    self._streams.pop(next(iter(self._streams)))
                self.failpoints.hit("after_commit")
            if confirm and replicas < wanted:
                unconfirmed = OutcomeUnknown(
                    f"{self.url}: the primary has it but only {replicas} of {wanted} replica(s) "
                    "confirmed in time; retry with the same event_id"
                )
                outcomes = [unconfirmed if isinstance(o, list) else o for o in outcomes]
            break
        for request, outcome in zip(group, outcomes, strict=True):
            _settle(request.future, outcome)

    async def _learn(self, lost: _Lost, known: dict[str, Record]) -> None:
        """Bring the caches up to what the script found, before staging again."""
        self._log.debug("redis_race", head=lost.head.position, ids=lost.ids, streams=lost.streams)
        self._head = self._server_head(lost.head)
        if lost.ids:
            ids = self._keys["ids"]
            positions = await self._call(self._client.hmget(ids, lost.ids), sent=False)
            for record in await self._records_at([int(p) for p in positions if p is not None]):
                known[record.event_id] = record
        for stream_id in lost.streams:
            self._streams[stream_id] = await self._load_stream(stream_id)

    async def _stage(
        self, group: list[_Request], known: dict[str, Record], deadline: float
    ) -> tuple[list[list[Record] | LedgerError], Stage, list[Row]]:
        """Stage the group in memory on what this client knows of the log.

        Optimistic: the cached head, cached streams, and new event ids are
        assumed and the script checks all three; a stream seen for the first
        time is loaded unless its first event creates it. A refusal is only
        believed once the refused streams' versions are checked against Redis.
        """
        if self._head is None:
            self._head = self._server_head(await self.head())
        streams = self._streams
        for request in group:
            for proposal in request.batch:
                stream_id = proposal.stream_id
                if stream_id in streams:
                    continue
                if isinstance(proposal.event, TradeOpened | SignalEmitted):
                    streams[stream_id] = (0, None)  # the script checks the version
                else:
                    self._in_time(deadline)
                    streams[stream_id] = await self._load_stream(stream_id)
        checked_streams: set[str] = set()
        checked_ids: set[str] = set()
        while True:
            stage = Stage(self._head)
            outcomes = stage_each(
                [request.batch for request in group],
                stage,
                find=known.get,
                stream=streams.__getitem__,
                rules=self.rules,
                now=self.clock(),
            )
            if all(type(outcome) is list for outcome in outcomes):
                break
            refused = [
                request.batch
                for request, outcome in zip(group, outcomes, strict=True)
                if isinstance(outcome, InvalidEvent | ConcurrencyError)
            ]
            # a refusal is believed only after idempotency (is it a retry of a
            # recorded event?) and the refused streams' versions are checked
            doubtful = {p.stream_id for batch in refused for p in batch} - checked_streams
            unknown = {p.event_id for batch in refused for p in batch} - checked_ids - known.keys()
            if not doubtful and not unknown:
                break
            checked_streams |= doubtful
            checked_ids |= unknown
            self._in_time(deadline)
            names, ids = sorted(doubtful), sorted(unknown)
            pipe = self._client.pipeline(transaction=False)
            pipe.hmget(self._keys["versions"], names or ["-"])
            pipe.hmget(self._keys["ids"], ids or ["-"])
            versions, positions = await self._call(pipe.execute(), sent=False)
            retried = [int(p) for p in positions if p is not None] if ids else []
            for record in await self._records_at(retried):
                known[record.event_id] = record
            stale = [
                n
                for n, v in zip(names, versions, strict=False)
                if self._streams[n][0] != int(v or 0)
            ]
            if not stale and not retried:
                break
            self._head = self._server_head(await self.head())
            for stream_id in stale:
                self._in_time(deadline)
                self._streams[stream_id] = await self._load_stream(stream_id)
        # only new records enter a stage, in the order their positions were given
        return outcomes, stage, stage.rows

    def _in_time(self, deadline: float) -> None:
        """Staging reads one call at a time, each bounded; this bounds them all."""
        if time.monotonic() > deadline:
            raise StoreUnavailable(
                f"{self.url}: staging the append took longer than {self.timeout}s; "
                "nothing was written"
            )

    async def _send(self, new: list[Row], *, confirm: bool) -> int:
        """Run the script on the ``new`` rows (and ``WAIT`` with ``confirm``); the replicas
        that confirmed."""
        keys: list[str] = []
        args: list[Any] = []
        if new:
            # a row's columns are the script's twelve arguments per record, in order
            keys = [*self._script_keys, *(self._prefix + "s:" + row[1] for row in new)]
            args = [new[0][0] - 1, new[0][10], *itertools.chain.from_iterable(new)]
            self.failpoints.hit("before_commit")
        if self._wire is None and time.monotonic() - self._answered_at > _IDLE:
            # A server that went away while we were idle left an EOF the loop has not read
            # yet; two turns of the loop let the pool see it and reconnect (StoreUnavailable)
            # instead of sending into a dead socket (which could only be OutcomeUnknown).
            await asyncio.sleep(0)
            await asyncio.sleep(0)
        if self._wire is not None:
            answer, replicas = await self._call(self._run_on_wire(keys, args, confirm), sent=True)
        elif confirm:
            answer, replicas = await self._call(self._eval_and_wait(keys, args), sent=True)
        else:
            answer, replicas = await self._call(self._eval(keys, args), sent=True), 0
        if answer is not None and answer[0] != "OK":
            raise _Lost(answer)
        return replicas

    async def _run_on_wire(
        self, keys: list[str], args: list[Any], confirm: bool
    ) -> tuple[Any, int]:
        """The script (and ``WAIT``) on the writer's own connection: the hot path.

        One connection means ``WAIT`` counts exactly the writes made on it, and
        skipping the pool and the generic command path saves about half of the
        client's time per call. With nothing new (every event a retry) a small
        write of its own lets ``WAIT`` cover what is already in the log.
        """
        wire = self._wire
        if not wire.is_connected:
            await wire.connect()
        elif await wire.can_read() or (
            time.monotonic() - self._answered_at > _QUIET and _readable(wire)
        ):  # an EOF (or stray bytes) left while idle
            await wire.disconnect()
            await wire.connect()
        if keys:
            first: tuple[Any, ...] = ("EVALSHA", _SHA, len(keys), *keys, *args)
        else:
            first = ("HINCRBY", self._keys["meta"], "wait_probes", 1)
        commands = [first]
        if confirm:
            commands.append(("WAIT", self.options.wait_replicas, self._wait_ms))
            if not self._script_loaded:  # WAIT would block for nothing behind a NOSCRIPT
                await self._load_on_wire()
        for _attempt in range(2):
            await wire.send_packed_command(
                b"".join(hiredis.pack_command(c) for c in commands), check_health=False
            )
            answers: list[Any] = []
            for _ in commands:
                try:
                    answers.append(await wire.read_response())
                except redis_errors.ResponseError as e:  # read on: the replies stay in step
                    answers.append(e)
            if isinstance(answers[0], redis_errors.NoScriptError):
                await self._load_on_wire()
                continue
            return self._answered(keys, answers[0], answers[1] if confirm else 0)
        raise StoreUnavailable(f"{self.url} keeps losing the append script; nothing was written")

    async def _load_on_wire(self) -> None:
        await self._wire.send_command("SCRIPT", "LOAD", _APPEND)
        await self._wire.read_response()
        self._script_loaded = True

    async def _eval(self, keys: list[str], args: list[Any]) -> Any:
        client = self._client
        try:
            return await client.evalsha(_SHA, len(keys), *keys, *args)
        except redis_errors.NoScriptError:  # nothing ran: load the script and run it
            await client.script_load(_APPEND)
            return await client.evalsha(_SHA, len(keys), *keys, *args)

    async def _eval_and_wait(self, keys: list[str], args: list[Any]) -> tuple[Any, int]:
        """The script and ``WAIT`` on one connection: WAIT counts the writes made on it.

        With nothing new (every event a retry), a small write of its own lets
        ``WAIT`` cover what is already in the log.
        """
        if not self._script_loaded:
            await self._client.script_load(_APPEND)
            self._script_loaded = True
        for _attempt in range(2):
            pipe = self._client.pipeline(transaction=False)
            if keys:
                pipe.execute_command("EVALSHA", _SHA, len(keys), *keys, *args)
            else:
                pipe.hincrby(self._keys["meta"], "wait_probes", 1)
            pipe.execute_command(
                "WAIT", self.options.wait_replicas, self._wait_ms, **self._target()
            )
            first, replicas = await pipe.execute(raise_on_error=False)
            if isinstance(first, redis_errors.NoScriptError):
                await self._client.script_load(_APPEND)
                continue
            return self._answered(keys, first, replicas)
        raise StoreUnavailable(f"{self.url} keeps losing the append script; nothing was written")

    def _answered(self, keys: list[str], first: Any, replicas: Any) -> tuple[Any, int]:
        """The script's answer and the replicas ``WAIT`` counted, from their replies.

        A refused script raises its error (nothing ran). A refused ``WAIT`` after
        a script that wrote is ``OutcomeUnknown``: the primary has the append, but
        whether enough replicas do is unknown.
        """
        if isinstance(first, Exception):
            raise first
        answer = first if keys else None
        if isinstance(replicas, Exception):
            if answer is not None and answer[0] != "OK":
                return answer, 0  # the script wrote nothing: stage again
            raise OutcomeUnknown(
                f"{self.url} refused WAIT ({self._scrub(str(replicas))}) after the append; "
                "the primary has it, its replicas are unconfirmed; retry with the same event_id"
            )
        return answer, int(replicas)

    async def _load_stream(self, stream_id: str) -> tuple[int, StreamState]:
        state: StreamState = None
        records = await self.read_stream(stream_id)
        for record in records:
            state = self.rules(state, decode_event(record.type, record.schema_version, record.data))
        return (len(records), state)

    async def _records_at(self, positions: Sequence[int]) -> list[Record]:
        if not positions:
            return []
        pipe = self._client.pipeline(transaction=False)
        for position in positions:
            pipe.xrange(self._keys["log"], f"{position}-1", f"{position}-1")
        found = await self._call(pipe.execute(), sent=False)
        return [_record(*entries[0]) for entries in found if entries]

    async def save_checkpoints(self, checkpoints: Sequence[Checkpoint]) -> None:
        self.failpoints.hit("checkpoint_write")
        mapping = {c.name: msgspec.json.encode(c).decode() for c in checkpoints}
        client = self._client
        await self._call(client.hset(self._keys["checkpoints"], mapping=mapping), sent=True)

    # reads

    async def read(
        self, start: int = 1, stop: int | None = None, *, kinds: Collection[str] | None = None
    ) -> AsyncIterator[Record]:
        position = max(start, 1)
        while stop is None or position <= stop:
            end = "+" if stop is None else f"{stop}-1"
            entries = await self._call(
                self._client.xrange(self._keys["log"], f"{position}-1", end, count=_PAGE),
                sent=False,
            )
            for entry_id, fields in entries:
                record = _record(entry_id, fields)  # malformed or not, whatever its kind
                if kinds is None or record.type in kinds:
                    yield record
                position = record.position + 1
            if len(entries) < _PAGE:
                return

    async def read_stream(self, stream_id: str) -> list[Record]:
        positions = await self._call(
            self._client.lrange(self._prefix + "s:" + stream_id, 0, -1), sent=False
        )
        return await self._records_at([int(p) for p in positions])

    async def find(self, event_id: str) -> Record | None:
        position = await self._call(self._client.hget(self._keys["ids"], event_id), sent=False)
        if position is None:
            return None
        return await self.record_at(int(position))

    async def record_at(self, position: int) -> Record | None:
        found = await self._records_at([position])
        return found[0] if found else None

    async def head(self) -> Head:
        row = await self._call(
            self._client.hmget(self._keys["head"], "position", "hash", "recorded_at"), sent=False
        )
        if row[0] is None:
            return Head(0, GENESIS, None)
        return Head(int(row[0]), row[1], _parse_time(row[2]))

    async def position_at(self, recorded_at: dt.datetime) -> int:
        """The last position recorded at or before ``recorded_at``, by binary search."""
        low, high = 0, (await self.head()).position
        while low < high:
            middle = (low + high + 1) // 2
            record = await self.record_at(middle)
            if record is not None and record.recorded_at <= recorded_at:
                low = middle
            else:
                high = middle - 1
        return low

    async def count_by_type(self) -> dict[str, int]:
        found = await self._call(self._client.hgetall(self._keys["types"]), sent=False)
        return {kind: int(count) for kind, count in sorted(found.items())}

    async def subscribe(self, start: int = 1) -> AsyncIterator[Record]:
        """Records from ``start`` on, as they are appended by any host (blocking reads)."""
        async for record in self.read(start):
            yield record
            start = record.position + 1
        last = f"{start - 1}-1" if start > 1 else "0-0"
        block = max(int(self.poll_interval * 1000), 1)
        while not self._closed:
            answer = await self._call(
                self._client.xread({self._keys["log"]: last}, count=_PAGE, block=block), sent=False
            )
            for _stream, entries in answer or []:
                for entry_id, fields in entries:
                    last = entry_id
                    yield _record(entry_id, fields)

    async def load_checkpoints(self) -> dict[str, Checkpoint]:
        found = await self._call(self._client.hgetall(self._keys["checkpoints"]), sent=False)
        checkpoints = {}
        for name, blob in found.items():
            try:
                checkpoints[name] = msgspec.json.decode(blob, type=Checkpoint)
            except msgspec.DecodeError:
                self._log.warning("checkpoint_unreadable", view=name)
        return checkpoints

    async def ledger_id(self) -> str:
        return str(await self._call(self._client.hget(self._keys["meta"], "ledger_id"), sent=False))

    async def describe(self) -> dict[str, Any]:
        """Facts for ``info``: durability, persistence settings, memory the ledger uses in Redis.

        The per-stream lists are measured one by one up to 1,000 streams and
        estimated from a sample of 1,000 beyond that.
        """
        client = self._client
        versions = self._keys["versions"]
        streams = int(await self._call(client.hlen(versions), sent=False))
        if streams <= _MEMORY_SAMPLE:
            names = await self._call(client.hkeys(versions), sent=False)
        else:
            names = await self._call(client.hrandfield(versions, _MEMORY_SAMPLE), sent=False)
        keys = [self._keys[k] for k in _FIXED_KEYS]
        pipe = client.pipeline(transaction=False)
        for key in [*keys, *(self._prefix + "s:" + name for name in names)]:
            pipe.memory_usage(key, samples=0)
        used = [int(u or 0) for u in await self._call(pipe.execute(), sent=False)]
        fixed, lists = sum(used[: len(keys)]), sum(used[len(keys) :])
        if names and streams > len(names):
            lists = round(lists * streams / len(names))
        return {
            "address": self.url,
            "cluster": self.options.cluster,
            "durability": self.durability,
            "persistence": self.persistence,
            "wait_replicas": self.options.wait_replicas,
            "ledger_keys": sum(1 for u in used[: len(keys)] if u) + streams,
            "ledger_memory_bytes": fixed + lists,
            "ledger_memory_exact": streams <= _MEMORY_SAMPLE,
            "read_model": self.options.views,
        }
