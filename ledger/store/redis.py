"""The shared store: one ledger in Redis, for executors on several hosts.

URL: ``redis://[:password@]host:port/db?ledger=NAME`` (``rediss://`` for TLS,
``redis+cluster://host:port/?ledger=NAME`` for a Redis Cluster). Options in
the query: ``views=PATH`` (the local read-model file, default
``tradeledger-NAME.views.db``), ``wait_replicas=N`` (acknowledge only once N
replicas have the write), ``require_durable=1``, ``allow_eviction=1``.

Every key of a ledger carries the hash tag ``{NAME}``: a ledger lives in one
cluster slot and many ledgers spread over a cluster. Redis Lua has no SHA-256,
so this client stages and hashes a group of appends against the head it
expects, and one script checks the head, the event ids and the stream versions
before its first write (a script cannot roll back); a lost race on the head is
staged again against the new head.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import msgspec
import structlog
from redis import exceptions as redis_errors
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from ledger.chain import GENESIS, timestamp
from ledger.codec import decode_event
from ledger.errors import (
    ConcurrencyError,
    IncompatibleStore,
    IntegrityError,
    InvalidEvent,
    LedgerClosed,
    LedgerError,
    OutcomeUnknown,
    StoreUnavailable,
)
from ledger.events import SignalEmitted, TradeOpened
from ledger.failpoints import FailPoints
from ledger.readmodel import LocalReadModel
from ledger.record import Record
from ledger.store.protocol import Checkpoint, Clock, Head, Proposal, Rules
from ledger.store.staging import Stage, stage_batch
from ledger.trade import StreamState

__all__ = ["RedisStore"]

T = TypeVar("T")

_APPEND = """#!lua
-- KEYS: head, ids, versions, types, log, then one stream list per record
-- ARGV: expected head position, expected head hash, record count, then 12 fields per record
local head = redis.call('HMGET', KEYS[1], 'position', 'hash')
local position = tonumber(head[1] or '0')
local digest = head[2] or ARGV[2]
if position ~= tonumber(ARGV[1]) or (position > 0 and digest ~= ARGV[2]) then
  return {'HEAD', tostring(position)}
end
local n = tonumber(ARGV[3])
local seen = {}
for i = 0, n - 1 do
  local b = 4 + i * 12
  if redis.call('HEXISTS', KEYS[2], ARGV[b + 3]) == 1 then
    return {'DUP', ARGV[b + 3]}
  end
  local stream = ARGV[b + 1]
  if not seen[stream] then
    local current = tonumber(redis.call('HGET', KEYS[3], stream) or '0')
    if current ~= tonumber(ARGV[b + 2]) - 1 then
      return {'VERSION', stream, tostring(current)}
    end
    seen[stream] = true
  end
end
for i = 0, n - 1 do
  local b = 4 + i * 12
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
local last = 4 + (n - 1) * 12
redis.call('HSET', KEYS[1], 'position', ARGV[last], 'hash', ARGV[last + 11],
  'recorded_at', ARGV[last + 7])
return {'OK'}
"""

_PAGE = 1000
_STREAM_CACHE = 20_000
_MAX_GROUP_EVENTS = 2000
_RACE_RETRIES = 20
_TRIP_AFTER = 3
_COOL_DOWN = 1.0

_parse_time = dt.datetime.fromisoformat


class _Options(msgspec.Struct, kw_only=True):
    url: str
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


def _options(url: str) -> _Options:
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
    wait_replicas = int(query.pop("wait_replicas", ["0"])[0])
    require_durable = flag("require_durable")
    allow_eviction = flag("allow_eviction")
    scheme = "redis" if parts.scheme == "redis+cluster" else parts.scheme
    rest = urllib.parse.urlencode({k: v[0] for k, v in query.items()})
    client_url = urllib.parse.urlunsplit((scheme, parts.netloc, parts.path, rest, ""))
    host = parts.hostname or "localhost"
    address = f"{parts.scheme}://{host}:{parts.port or 6379}{parts.path or ''}?ledger={name}"
    return _Options(
        url=client_url,
        name=name,
        cluster=cluster,
        views=views,
        wait_replicas=wait_replicas,
        require_durable=require_durable,
        allow_eviction=allow_eviction,
        address=address,
    )


class _Request:
    __slots__ = ("batch", "future", "sent")

    def __init__(self, batch: Sequence[Proposal], future: asyncio.Future[list[Record]]) -> None:
        self.batch = batch
        self.future = future
        self.sent = False


class _Lost(Exception):
    """The script found the log other than staged: stage again."""


def _record(entry_id: str, fields: dict[str, str]) -> Record:
    try:
        return Record(
            int(entry_id.split("-", 1)[0]),
            fields["stream_id"],
            int(fields["version"]),
            fields["event_id"],
            fields["type"],
            int(fields["schema_version"]),
            _parse_time(fields["occurred_at"]),
            _parse_time(fields["recorded_at"]),
            fields["data"],
            fields["metadata"],
            fields["prev_hash"],
            fields["hash"],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise IntegrityError(f"the record {entry_id} is malformed: {e}") from e


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
        self.options = _options(url)
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
        self.durability = "unknown"
        self.persistence: dict[str, str] = {}
        tag = f"tradeledger:{{{self.options.name}}}:"
        self._prefix = tag
        self._keys = {
            k: tag + k for k in ("log", "head", "ids", "versions", "types", "checkpoints", "meta")
        }
        self._client: Any = None
        self._script: Any = None
        self._views = LocalReadModel(self.options.views, timeout=timeout)
        self._queue: asyncio.Queue[_Request] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._head: Head | None = None
        self._streams: dict[str, tuple[int, StreamState]] = {}
        self._failures = 0
        self._open_until = 0.0
        self._closing = False
        self._closed = False
        self._log = structlog.get_logger("tradeledger")

    # lifecycle

    async def open(self) -> None:
        if self._client is not None or self._closed:
            raise LedgerClosed("a store opens once")
        options = self.options
        common: dict[str, Any] = {
            "socket_timeout": self.timeout,
            "socket_connect_timeout": self.timeout,
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),
        }
        try:
            if options.cluster:
                self._client = RedisCluster.from_url(options.url, **common)
            else:
                self._client = Redis.from_url(options.url, **common)
        except (ValueError, redis_errors.RedisError) as e:
            raise ValueError(f"bad redis URL {self.url}: {type(e).__name__}") from None
        self._script = self._client.register_script(_APPEND)
        try:
            await self._call(self._client.ping(), sent=False)
            await self._check_server()
            await self._identify()
            await self._views.open()
        except BaseException:
            await self.aclose()
            raise
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop())

    async def _check_server(self) -> None:
        try:
            settings = await self._call(self._client.config_get("*"), sent=False)
        except StoreUnavailable:
            raise
        except LedgerError:
            settings = None
        if not settings:
            self.durability = "unknown: the server does not allow CONFIG; ask its operator"
            self.persistence = {}
        else:
            self.persistence = {
                k: str(settings.get(k, ""))
                for k in ("appendonly", "appendfsync", "save", "maxmemory-policy")
            }
            aof = self.persistence["appendonly"] == "yes"
            fsync = self.persistence["appendfsync"]
            if aof and fsync == "always":
                self.durability = "durable on this server: appendonly yes, appendfsync always"
            elif aof:
                self.durability = (
                    f"not durable: appendfsync {fsync}; a crash of the Redis host can lose about "
                    "the last second of acknowledged records"
                )
            else:
                self.durability = (
                    "not durable: appendonly no; a crash of the Redis host loses every record "
                    "since the last RDB snapshot"
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
            if self.require_durable and not self.options.wait_replicas:
                raise IncompatibleStore(f"{self.url} is {self.durability} (require_durable)")

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
        if self._closed or self._closing:
            return
        self._closing = True
        if self._writer is not None:
            assert self._queue is not None
            await self._queue.join()
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        self._closed = True
        await self._views.aclose()
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
        now = time.monotonic()
        if now < self._open_until:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise StoreUnavailable(
                f"{self.url} failed {self._failures} times in a row; not trying again for "
                f"{self._open_until - now:.1f}s"
            )
        try:
            async with asyncio.timeout(self.timeout):
                result = await awaitable
        except (
            redis_errors.ConnectionError,
            redis_errors.TimeoutError,
            TimeoutError,
            OSError,
        ) as e:
            self._trip()
            connecting = isinstance(e, redis_errors.ConnectionError) and "connecting" in str(e)
            kind = type(e).__name__
            if connecting or not sent:
                raise StoreUnavailable(
                    f"{self.url} is unreachable ({kind}); nothing was written"
                ) from None
            raise OutcomeUnknown(
                f"{self.url} did not answer after the append was sent ({kind}); "
                "retry with the same event_id"
            ) from None
        except redis_errors.NoScriptError:
            raise
        except redis_errors.ResponseError as e:
            message = str(e)
            if "OOM" in message:
                raise StoreUnavailable(
                    f"{self.url} is out of memory and refused the write"
                ) from None
            if "NOPERM" in message or "unknown command" in message:
                raise LedgerError(f"{self.url} refused: {message}") from None
            raise StoreUnavailable(f"{self.url} refused: {message}") from None
        except redis_errors.RedisError as e:
            self._trip()
            raise StoreUnavailable(f"{self.url} failed ({type(e).__name__})") from None
        self._failures = 0
        return result

    def _trip(self) -> None:
        self._failures += 1
        if self._failures >= _TRIP_AFTER:
            self._open_until = time.monotonic() + _COOL_DOWN
            self._log.error("store_fault", store="redis", address=self.url, failures=self._failures)

    # writes

    async def append(self, batch: Sequence[Proposal]) -> list[Record]:
        if self._queue is None or self._closing:
            raise LedgerClosed("the store is not open")
        request = _Request(batch, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(request)
        try:
            return await asyncio.wait_for(asyncio.shield(request.future), self.timeout * 2)
        except TimeoutError:
            if not request.sent:
                request.future.cancel()
                raise StoreUnavailable(f"{self.url}: the write did not start in time") from None
            raise OutcomeUnknown(
                f"{self.url}: no answer in time after the append was sent; retry with the same event_id"
            ) from None

    async def _write_loop(self) -> None:
        assert self._queue is not None
        while True:
            first = await self._queue.get()
            group = [first]
            events = len(first.batch)
            while events < _MAX_GROUP_EVENTS and not self._queue.empty():
                request = self._queue.get_nowait()
                group.append(request)
                events += len(request.batch)
            live = [r for r in group if not r.future.done()]
            try:
                if live:
                    await self._commit_group(live)
            except Exception as e:  # never let the writer die with callers waiting
                error = e if isinstance(e, LedgerError) else StoreUnavailable(f"{self.url}: {e!r}")
                for request in live:
                    if not request.future.done():
                        request.future.set_exception(error)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _commit_group(self, group: list[_Request]) -> None:
        known: dict[str, Record] = {}
        for _attempt in range(_RACE_RETRIES):
            outcomes, stage, new = await self._stage(group, known)
            if not new:
                break
            for request in group:
                request.sent = True
            try:
                await self._send(new)
            except _Lost as lost:
                await self._learn(lost, known)
                continue
            except LedgerError as e:
                self._head = None
                self._streams.clear()
                for request in group:
                    if not request.future.done():
                        request.future.set_exception(e)
                return
            self._head = stage.head
            for stream_id, entry in stage.streams.items():
                self._remember(stream_id, entry)
            self.failpoints.hit("after_commit")
            if self.options.wait_replicas:
                await self._wait_replicas(group)
            break
        else:
            for request in group:
                if not request.future.done():
                    request.future.set_exception(
                        StoreUnavailable(
                            f"{self.url}: lost the race for the head {_RACE_RETRIES} times"
                        )
                    )
            return
        for request, outcome in zip(group, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    async def _learn(self, lost: _Lost, known: dict[str, Record]) -> None:
        """Bring the caches up to what the script found, before staging again."""
        kind, detail = lost.args
        self._log.debug("redis_race", kind=kind, detail=detail)
        if kind == "HEAD":
            self._head = None
        elif kind == "DUP":
            found = await self.find(detail)
            if found is not None:
                known[found.event_id] = found
        else:
            self._streams.pop(detail, None)

    async def _wait_replicas(self, group: list[_Request]) -> None:
        wanted = self.options.wait_replicas
        got = await self._call(self._client.wait(wanted, int(self.timeout * 1000)), sent=True)
        if got < wanted:
            error = OutcomeUnknown(
                f"{self.url}: written on the primary but only {got} of {wanted} replicas confirmed; "
                "retry with the same event_id"
            )
            for request in group:
                if not request.future.done():
                    request.future.set_exception(error)

    async def _stage(
        self, group: list[_Request], known: dict[str, Record]
    ) -> tuple[list[list[Record] | LedgerError], Stage, list[Record]]:
        """Stage the group in memory on what this client knows of the log.

        Optimistic: the cached head, cached streams, and new event ids are
        assumed and the script checks all three; a stream seen for the first
        time is loaded unless its first event creates it. A refusal is only
        believed once the refused streams' versions are checked against Redis.
        """
        if self._head is None:
            self._head = await self.head()
        for request in group:
            for proposal in request.batch:
                stream_id = proposal.stream_id
                if stream_id in self._streams:
                    continue
                if isinstance(proposal.event, TradeOpened | SignalEmitted):
                    self._streams[stream_id] = (0, None)  # the script checks the version
                else:
                    self._streams[stream_id] = await self._load_stream(stream_id)
        checked: set[str] = set()
        while True:
            stage = Stage(self._head)
            outcomes = self._stage_all(group, stage, known)
            refused = [
                request.batch
                for request, outcome in zip(group, outcomes, strict=True)
                if isinstance(outcome, InvalidEvent | ConcurrencyError)
            ]
            # a refusal is believed only after idempotency (is it a retry of a
            # recorded event?) and the refused streams' versions are checked
            doubtful = {p.stream_id for batch in refused for p in batch} - checked
            unknown = {p.event_id for batch in refused for p in batch} - checked - known.keys()
            if not doubtful and not unknown:
                break
            checked |= doubtful | unknown
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
            self._head = await self.head()
            for stream_id in stale:
                self._streams[stream_id] = await self._load_stream(stream_id)
        base = self._head.position
        new = sorted(
            (r for r in stage.by_event_id.values() if r.position > base), key=lambda r: r.position
        )
        return outcomes, stage, new

    def _stage_all(
        self, group: list[_Request], stage: Stage, known: dict[str, Record]
    ) -> list[list[Record] | LedgerError]:
        now = self.clock()
        outcomes: list[list[Record] | LedgerError] = []
        for request in group:
            child = Stage(stage.head, stage)
            try:
                records = stage_batch(
                    request.batch,
                    child,
                    find=known.get,
                    stream=self._streams.__getitem__,
                    rules=self.rules,
                    now=now,
                )
            except LedgerError as refused:
                outcomes.append(refused)
                continue
            child.merge_into_parent()
            outcomes.append(records)
        return outcomes

    async def _send(self, new: list[Record]) -> None:
        first = new[0]
        keys = [self._keys[k] for k in ("head", "ids", "versions", "types", "log")]
        keys += [self._prefix + "s:" + r.stream_id for r in new]
        args: list[Any] = [first.position - 1, first.prev_hash, len(new)]
        for r in new:
            args += [
                r.position,
                r.stream_id,
                r.version,
                r.event_id,
                r.type,
                r.schema_version,
                timestamp(r.occurred_at),
                timestamp(r.recorded_at),
                r.data,
                r.metadata,
                r.prev_hash,
                r.hash,
            ]
        self.failpoints.hit("before_commit")
        answer = await self._call(self._script(keys=keys, args=args), sent=True)
        if answer[0] != "OK":
            raise _Lost(answer[0], answer[1])

    def _remember(self, stream_id: str, entry: tuple[int, StreamState]) -> None:
        self._streams[stream_id] = entry
        if len(self._streams) > _STREAM_CACHE:
            self._streams.pop(next(iter(self._streams)))

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

    async def read(self, start: int = 1, stop: int | None = None) -> AsyncIterator[Record]:
        position = max(start, 1)
        while stop is None or position <= stop:
            end = "+" if stop is None else f"{stop}-1"
            entries = await self._call(
                self._client.xrange(self._keys["log"], f"{position}-1", end, count=_PAGE),
                sent=False,
            )
            for entry_id, fields in entries:
                record = _record(entry_id, fields)
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
        """Facts for ``info``: durability, persistence settings, memory used by the ledger."""
        memory = 0
        keys = [key async for key in self._client.scan_iter(match=self._prefix + "*", count=1000)]
        for key in keys:
            used = await self._call(self._client.memory_usage(key, samples=0), sent=False)
            memory += int(used or 0)
        return {
            "persistence": self.persistence,
            "ledger_keys": len(keys),
            "ledger_memory_bytes": memory,
            "read_model": self.options.views,
            "wait_replicas": self.options.wait_replicas,
        }
