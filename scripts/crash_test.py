"""Kill a recording bot with SIGKILL, over and over, and check that nothing it was told is lost.

Each round forks a child that records realistic trade lifecycles (signals,
opens, scale-ins, stop moves, partial exits, fees, funding, closes, parameter
changes) through the public API, from several concurrent tasks, some as
atomic ``record_batch`` batches. Before each call the child writes its intent
(event id, batch id, the event's canonical data and metadata) to a side file;
only after ``record`` returned does it write the acknowledgement and fsync it.
The parent kills the child with SIGKILL: at a fail point (``kill@N``, N
random) or at a random moment; some children run with a short timeout and a
stalled commit, so they meet ``OutcomeUnknown`` and retry with the same event
ids. On Redis, some rounds also SIGKILL the redis-server and restart it, and
some stop it (SIGSTOP) for a second while appends are in flight, so that sent
appends go unanswered (``OutcomeUnknown``) and land once it resumes. With
``--backend spool`` the ledger has a local spool: appends made while Redis is
down or stalled are acknowledged as ``Pending``, and half of the rounds that
kill the server also kill the child while it forwards its spool (``spool_drain``).

After every kill the parent reopens the ledger (and, with a spool, waits for it
to drain) and checks: every acknowledged event, ``Pending`` ones included, is
present with identical data and metadata, and nothing was quarantined; each
producer task's events are in the log in the order it made them; no record
exists that no child meant to write; no batch is partly present; no event id
or payload is recorded twice; positions are dense and the chain verifies (``replay.verify``);
the views reopened from checkpoints plus the tail equal a full rebuild from
the log. The ledger carries over from round to round and starts afresh every
``--epoch`` rounds. One summary line; exit 1 on any loss, duplicate or mismatch.

    .venv/bin/python scripts/crash_test.py --rounds 20                     # sqlite
    .venv/bin/python scripts/crash_test.py --rounds 1000 --seed 1
    .venv/bin/python scripts/crash_test.py --backend redis --rounds 200    # starts its own redis-server
    .venv/bin/python scripts/crash_test.py --backend spool --rounds 200    # redis with a local spool

Children are forked from the parent (no interpreter start per round), so this
runs on Linux and macOS only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import msgspec  # noqa: E402
import structlog  # noqa: E402

import projections  # noqa: E402
from ledger import (  # noqa: E402
    Append,
    Event,
    OutcomeUnknown,
    ParameterChanged,
    SignalEmitted,
    StoreUnavailable,
    open_ledger,
)
from ledger.codec import encode_data, encode_metadata  # noqa: E402
from ledger.events import validate  # noqa: E402
from ledger.failpoints import ENV, POINTS  # noqa: E402
from ledger.record import Record  # noqa: E402
from projections import OpenPositions, Parameters, Performance, Pnl, Signals, TradeHistory  # noqa: E402
from projections.grouping import GROUPS  # noqa: E402
from replay.travel import travel  # noqa: E402
from replay.verify import verify  # noqa: E402
from tests.lifecycles import T0, random_lifecycle  # noqa: E402
from tests.servers import RedisServer  # noqa: E402

SQLITE_POINTS = tuple(sorted(POINTS - {"spool_drain"}))  # spool_drain: the spool's own rounds
REDIS_POINTS = ("before_commit", "after_commit", "checkpoint_write")
EVERYTHING = 10_000_000
ROUND_SECONDS = 30.0


# the child: a bot that records and acknowledges


@dataclass
class ChildPlan:
    url: str
    round: int
    seed: int
    intents: Path
    acks: Path
    tasks: int
    lifecycles: int
    checkpoint_every: int
    timeout: float


class Journal:
    """The child's side files: intents before each call, acknowledgements after."""

    def __init__(self, plan: ChildPlan) -> None:
        self.intents = os.open(plan.intents, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self.acks = os.open(plan.acks, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def intend(self, batch: str | None, items: Sequence[Append]) -> None:
        lines = []
        for item in items:
            event = validate(item.event)
            lines.append(
                {
                    "event_id": item.event_id,
                    "batch": batch,
                    "type": type(event).__name__,
                    "data": encode_data(event),
                    "metadata": encode_metadata({**event.metadata, **(item.metadata or {})}),
                }
            )
        # written by one write(2) each: a kill leaves whole lines (the OS keeps them)
        os.write(self.intents, b"".join(json.dumps(line).encode() + b"\n" for line in lines))

    def unknown(self, items: Sequence[Append]) -> None:
        os.write(
            self.intents, json.dumps({"unknown": [i.event_id for i in items]}).encode() + b"\n"
        )

    def acknowledge(self, batch: str | None, records: Sequence[Any]) -> None:
        lines = [  # a Pending (spooled) has no position yet
            json.dumps(
                {"event_id": r.event_id, "batch": batch, "position": getattr(r, "position", None)}
            )
            for r in records
        ]
        os.write(self.acks, ("\n".join(lines) + "\n").encode())
        os.fsync(self.acks)

    def done(self) -> None:
        os.write(self.acks, b'{"done": true}\n')
        os.fsync(self.acks)


async def record_until_known(
    book: Any, journal: Journal, batch: str | None, items: list[Append]
) -> None:
    """Record ``items`` atomically, retrying with the same event ids until the ledger answers."""
    journal.intend(batch, items)
    while True:
        try:
            records = await book.record_batch(items)
        except OutcomeUnknown:
            journal.unknown(items)
            continue
        except StoreUnavailable:
            await asyncio.sleep(0.02)
            continue
        journal.acknowledge(batch, records)
        return


def lifecycle_calls(
    rng: random.Random, prefix: str, n: int
) -> Iterator[tuple[str | None, list[Append]]]:
    """One trade's events (with its signal, sometimes a parameter change), grouped into calls."""
    trade_id = f"{prefix}-t{n}"
    start = T0 + dt.timedelta(days=rng.randint(0, 200), seconds=rng.randint(0, 86_400))
    events: list[Event] = []
    if rng.random() < 0.5:
        events.append(
            SignalEmitted(
                signal_id=f"{trade_id}-s",
                symbol=rng.choice(["BTCUSDT", "ETHUSDT", "SOLUSDT"]),
                side=rng.choice(["long", "short"]),
                confidence=Decimal(rng.randint(0, 100)) / 100,
                strategy=rng.choice(["trend", "meanrev"]),
                occurred_at=start - dt.timedelta(seconds=1),
            )
        )
    events += random_lifecycle(
        rng, trade_id, start=start, steps=rng.randint(1, 8), close=rng.random() < 0.8
    )
    if rng.random() < 0.2:
        events.append(
            ParameterChanged(
                name=rng.choice(["risk_pct", "max_positions"]),
                new_value=str(rng.randint(1, 99)),
                changed_by="learning_agent",
                occurred_at=start,
            )
        )
    items = [
        Append(e, event_id=f"{trade_id}-e{i}", metadata={"bot": prefix, "n": i})
        for i, e in enumerate(events)
    ]
    shape = rng.choice(["single", "single", "opening", "whole", "pairs"])
    if shape == "single":
        calls = [[item] for item in items]
    elif shape == "whole":
        calls = [items]
    elif shape == "opening":
        size = rng.randint(2, 3)
        calls = [items[:size]] + [[item] for item in items[size:]]
    else:
        size = rng.randint(2, 3)
        calls = [items[k : k + size] for k in range(0, len(items), size)]
    for j, call in enumerate(calls):
        yield (f"{trade_id}-b{j}" if len(call) > 1 else None), call


async def child_main(plan: ChildPlan) -> None:
    journal = Journal(plan)
    rng = random.Random(plan.seed)
    while True:
        try:
            book = await open_ledger(
                plan.url,
                projections.standard(),
                checkpoint_every=plan.checkpoint_every,
                timeout=plan.timeout,
            )
            break
        except (StoreUnavailable, OutcomeUnknown):
            await asyncio.sleep(0.05)

    async def producer(task: int) -> None:
        prefix = f"r{plan.round}w{task}"
        mine = random.Random(rng.random())
        for n in range(plan.lifecycles):
            for batch, items in lifecycle_calls(mine, prefix, n):
                await record_until_known(book, journal, batch, items)

    await asyncio.gather(*(producer(task) for task in range(plan.tasks)))
    journal.done()
    await asyncio.sleep(3600)  # wait to be killed


def run_child(plan: ChildPlan, failpoints: str | None) -> None:
    """The forked child's body: never returns."""
    code = 0
    try:
        if failpoints:
            os.environ[ENV] = failpoints
        else:
            os.environ.pop(ENV, None)
        random.seed(plan.seed)
        asyncio.run(child_main(plan))
    except BaseException:
        traceback.print_exc()
        code = 3
    finally:
        sys.stderr.flush()
        os._exit(code)


# the parent: kill, reopen, check


@dataclass
class Totals:
    rounds: int = 0
    kills: int = 0
    server_kills: int = 0
    server_pauses: int = 0
    failpoint_kills: Counter[str] = field(default_factory=Counter)
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    mismatches: int = 0
    unknown_retried: int = 0
    pending: int = 0
    restored: int = 0
    stalls: int = 0
    problems: list[str] = field(default_factory=list)

    def problem(self, text: str) -> None:
        if len(self.problems) < 50:
            self.problems.append(text)


def read_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    found = []
    for line in path.read_bytes().split(b"\n"):
        if line.strip():
            found.append(json.loads(line))
    return found


def count_acks(path: Path) -> tuple[int, bool]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return 0, False
    return data.count(b"\n"), b'"done"' in data


async def view_answers(source: Any) -> Any:
    """Every standard view's whole answer, as plain data that compares with ==."""
    performance = source.view(Performance)
    pnl = source.view(Pnl)
    found: dict[str, Any] = {
        "positions": source.view(OpenPositions).positions(),
        "daily": await performance.daily(),
        "history": await source.view(TradeHistory).trades(limit=EVERYTHING),
        "signals": await source.view(Signals).signals(limit=EVERYTHING),
        "parameters": await source.view(Parameters).changes(limit=EVERYTHING),
        "current": await source.view(Parameters).current(),
    }
    for group in (None, *GROUPS):
        found[f"pnl/{group}"] = pnl.totals(group)
        found[f"performance/{group}"] = await performance.figures(group)
    return msgspec.to_builtins(found, builtin_types=(Decimal, dt.datetime))


async def check(
    url: str,
    intents: dict[str, dict[str, Any]],
    round_intents: list[dict[str, Any]],
    acks: list[dict[str, Any]],
    unknown: set[str],
    totals: Totals,
    note: str,
) -> None:
    """Everything the parent checks after a kill (see the module docstring)."""
    async with open_ledger(url, create=False) as book:
        store: Any = book.store
        if hasattr(store, "quarantined"):  # a spool: what the child left in it goes first
            deadline = time.monotonic() + ROUND_SECONDS
            while store.counts()[0] and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            pending, quarantined = store.counts()
            if pending or quarantined:
                totals.mismatches += 1
                totals.problem(f"{note}: the spool kept {pending} and quarantined {quarantined}")
        records: list[Record] = [r async for r in store.read()]
    by_id: dict[str, Record] = {}
    payloads: Counter[tuple[str, str, str]] = Counter()
    for number, record in enumerate(records, start=1):
        if record.position != number:
            totals.mismatches += 1
            totals.problem(f"{note}: position {record.position} where {number} was due")
            break
    for record in records:
        if record.event_id in by_id:
            totals.duplicated += 1
            totals.problem(f"{note}: event id {record.event_id} recorded twice")
        by_id[record.event_id] = record
        payloads[(record.stream_id, record.type, record.data)] += 1
        intent = intents.get(record.event_id)
        if intent is None:
            totals.mismatches += 1
            totals.problem(
                f"{note}: position {record.position} holds {record.event_id}, which no child meant"
            )
        elif (intent["type"], intent["data"], intent["metadata"]) != (
            record.type,
            record.data,
            record.metadata,
        ):
            totals.mismatches += 1
            totals.problem(f"{note}: {record.event_id} differs from what was meant")
    twice = sum(n - 1 for n in payloads.values() if n > 1)
    if twice:
        totals.duplicated += twice
        totals.problem(f"{note}: {twice} payload(s) recorded more than once")
    for ack in acks:
        if "done" in ack:
            continue
        totals.acknowledged += 1
        found = by_id.get(ack["event_id"])
        if found is None:
            totals.lost += 1
            totals.problem(f"{note}: acknowledged {ack['event_id']} is missing")
        elif ack["position"] is None:
            totals.pending += 1
        elif found.position != ack["position"]:
            totals.mismatches += 1
            totals.problem(
                f"{note}: {ack['event_id']} was acknowledged at {ack['position']}, is at {found.position}"
            )
    # each producer task awaits every call before the next: its events are in the log in
    # the order it made them (a spool queues later appends behind what it holds)
    last: dict[str, int] = {}
    for intent in round_intents:
        task = intent["event_id"].split("-t")[0]
        found = by_id.get(intent["event_id"])
        if found is None:
            continue
        if found.position < last.get(task, 0):
            totals.mismatches += 1
            totals.problem(f"{note}: {intent['event_id']} landed before an earlier call of {task}")
        last[task] = max(last.get(task, 0), found.position)
    batches: dict[str, list[str]] = {}
    for intent in round_intents:
        if intent.get("batch"):
            batches.setdefault(intent["batch"], []).append(intent["event_id"])
    for batch, ids in batches.items():
        present = sum(i in by_id for i in ids)
        if 0 < present < len(ids):
            totals.mismatches += 1
            totals.problem(f"{note}: batch {batch} is partly present ({present} of {len(ids)})")
    totals.unknown_retried += len(unknown)
    report = await verify(url)
    if not report.ok or report.records != len(records):
        totals.mismatches += 1
        first = report.first_bad
        totals.problem(f"{note}: verify failed: {first.reason if first else report.records}")
    async with open_ledger(url, projections.standard(), create=False) as book:
        if book.runner.restored:
            totals.restored += 1
        recovered = await view_answers(book)
        head = (await book.store.head()).position
    async with travel(url, projections.standard(), at_position=head) as cut:
        rebuilt = await view_answers(cut)
    if recovered != rebuilt:
        totals.mismatches += 1
        differing = sorted(k for k in rebuilt if recovered.get(k) != rebuilt[k])
        totals.problem(f"{note}: views from checkpoints differ from a rebuild: {differing}")


class Backend:
    """Where the ledger lives: a file per epoch, or a ledger name per epoch on a redis-server."""

    def __init__(self, kind: str, work: Path) -> None:
        self.kind = kind
        self.work = work
        self.server: RedisServer | None = None
        if kind in ("redis", "spool"):
            directory = work / "redis"
            directory.mkdir()
            self.server = RedisServer(directory)
            self.server.start()

    def url(self, epoch: int) -> str:
        if self.server is None:
            return f"sqlite:///{self.work / f'epoch{epoch}.db'}"
        if self.kind == "spool":
            spool = str(self.work / f"spool{epoch}.db")
            return self.server.url(self.work, name=f"crash{epoch}", spool=spool)
        return self.server.url(self.work, name=f"crash{epoch}")

    @property
    def points(self) -> tuple[str, ...]:
        return REDIS_POINTS if self.server else SQLITE_POINTS

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


def wait_for(pid: int, acks: Path, *, at_least: int, deadline: float) -> int | None:
    """Poll until the child has acknowledged ``at_least`` (or finished); its wait status if it died."""
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        count, finished = count_acks(acks)
        if count >= at_least or finished:
            return None
        time.sleep(0.003)
    return None


def kill(pid: int) -> int:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]


def one_round(
    backend: Backend,
    url: str,
    number: int,
    rng: random.Random,
    work: Path,
    intents: dict[str, dict[str, Any]],
    totals: Totals,
) -> None:
    modes = ["failpoint", "failpoint", "failpoint", "random", "unknown"]
    if backend.server is not None:
        modes += ["server", "pause"]
    mode = rng.choice(modes)
    plan = ChildPlan(
        url=url,
        round=number,
        seed=rng.randrange(2**32),
        intents=work / f"round{number}.intents",
        acks=work / f"round{number}.acks",
        tasks=rng.randint(1, 4),
        lifecycles=rng.randint(3, 10),
        checkpoint_every=rng.randint(3, 40),
        timeout=5.0,
    )
    spec = None
    point = None
    if mode == "failpoint":
        point = rng.choice(backend.points)
        at = rng.randint(1, 4) if point == "checkpoint_write" else rng.randint(1, 30)
        spec = f"{point}=kill@{at}"
    elif mode == "pause":
        plan.timeout = 0.3
    elif mode == "unknown":
        plan.timeout = 0.2
        stall = 0.5 if backend.server is None else 0.7  # Redis waits 2 x timeout
        spec = f"before_commit=sleep:{stall}@{rng.randint(1, 12)}"
    elif mode == "server" and backend.kind == "spool" and rng.random() < 0.5:
        point = "spool_drain"  # it dies forwarding what it spooled while the server was down
        spec = f"{point}=kill@{rng.randint(1, 4)}"
    note = f"round {number} ({mode}{' ' + spec if spec else ''}, seed {plan.seed})"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        run_child(plan, spec)
    deadline = time.monotonic() + ROUND_SECONDS
    status: int | None
    if mode == "server":
        assert backend.server is not None
        status = wait_for(pid, plan.acks, at_least=rng.randint(1, 30), deadline=deadline)
        if status is None:
            backend.server.kill()
            totals.server_kills += 1
            totals.kills += 1
            time.sleep(rng.random() * 0.5)
            backend.server.start()
            before, _ = count_acks(plan.acks)
            status = wait_for(
                pid, plan.acks, at_least=before + rng.randint(1, 20), deadline=deadline
            )
    elif mode == "pause":
        assert backend.server is not None and backend.server.process is not None
        server = backend.server.process
        status = wait_for(pid, plan.acks, at_least=rng.randint(1, 30), deadline=deadline)
        if status is None:
            server.send_signal(signal.SIGSTOP)  # sent appends get no answer: OutcomeUnknown
            totals.server_pauses += 1
            time.sleep(0.4 + rng.random())
            server.send_signal(signal.SIGCONT)
            before, _ = count_acks(plan.acks)
            status = wait_for(
                pid, plan.acks, at_least=before + rng.randint(1, 20), deadline=deadline
            )
    elif mode == "failpoint":
        status = wait_for(pid, plan.acks, at_least=EVERYTHING, deadline=deadline)
    else:
        status = wait_for(pid, plan.acks, at_least=rng.randint(1, 80), deadline=deadline)
        if status is None:
            time.sleep(rng.random() * 0.03)
    if status is None:
        if time.monotonic() >= deadline and not count_acks(plan.acks)[1]:
            totals.stalls += 1
        status = kill(pid)
        totals.kills += 1
    elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
        totals.kills += 1
        totals.failpoint_kills[point or "?"] += 1
    else:
        totals.mismatches += 1
        totals.problem(f"{note}: the child exited by itself with status {status}")
    round_intents = [line for line in read_lines(plan.intents) if "event_id" in line]
    unknown = {i for line in read_lines(plan.intents) for i in line.get("unknown", [])}
    for line in round_intents:
        intents[line["event_id"]] = line
    acks = read_lines(plan.acks)
    asyncio.run(check(url, intents, round_intents, acks, unknown, totals, note))
    totals.rounds += 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="children to kill (default 20)")
    parser.add_argument("--backend", choices=["sqlite", "redis", "spool"], default="sqlite")
    parser.add_argument("--seed", type=int, help="the random seed (default: random, printed)")
    parser.add_argument("--epoch", type=int, default=25, help="rounds per ledger (default 25)")
    parser.add_argument("--dir", type=Path, help="work here instead of a temporary directory")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument("-v", "--verbose", action="store_true", help="print each round")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    rng = random.Random(seed)
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL))
    work = Path(tempfile.mkdtemp(prefix="crash-", dir=args.dir))
    started = time.monotonic()
    totals = Totals()
    backend = Backend(args.backend, work)
    intents: dict[str, dict[str, Any]] = {}
    try:
        for number in range(args.rounds):
            epoch = number // args.epoch
            if number % args.epoch == 0:
                intents = {}
            url = backend.url(epoch)
            one_round(backend, url, number, rng, work, intents, totals)
            if args.verbose:
                print(
                    f"round {number}: kills={totals.kills} acknowledged={totals.acknowledged} "
                    f"lost={totals.lost} duplicated={totals.duplicated} mismatches={totals.mismatches}",
                    flush=True,
                )
    finally:
        backend.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    for problem in totals.problems:
        print(f"problem: {problem}", file=sys.stderr)
    points = ",".join(f"{k}:{v}" for k, v in sorted(totals.failpoint_kills.items()))
    print(
        f"crash_test backend={args.backend} seed={seed} rounds={totals.rounds} kills={totals.kills} "
        f"(at fail points {sum(totals.failpoint_kills.values())} [{points}], "
        f"redis-server {totals.server_kills}, redis-server paused {totals.server_pauses}) "
        f"acknowledged={totals.acknowledged} "
        f"lost={totals.lost} duplicated={totals.duplicated} mismatches={totals.mismatches} "
        f"outcome_unknown_retried={totals.unknown_retried} pending_acknowledged={totals.pending} "
        f"restored_from_checkpoints={totals.restored} "
        f"stalls={totals.stalls} seconds={time.monotonic() - started:.0f}",
        flush=True,
    )
    return 1 if totals.lost or totals.duplicated or totals.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
