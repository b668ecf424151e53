"""A Redis Cluster of three masters on loopback: each ledger lives whole on the node of its slot."""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from ledger import OutcomeUnknown, open_ledger
from projections import OpenPositions
from tests.lifecycles import closed, opened, signal, stop_moved
from tests.redis.support import all_records, chain_problems
from tests.servers import RedisServer

pytestmark = pytest.mark.timeout(120)


def cluster_port(taken: set[int]) -> int:
    """A free port whose cluster bus port (10,000 higher) is free too, so at most 55535."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 45_000)
        if {port, port + 10_000} & taken:
            continue
        try:
            for candidate in (port, port + 10_000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        taken.update((port, port + 10_000))
        return port


class Cluster:
    """Three redis-servers joined by ``redis-cli --cluster create``, no replicas."""

    def __init__(self, directory: Path) -> None:
        self.nodes: list[RedisServer] = []
        taken: set[int] = set()
        for n in range(3):
            node_dir = directory / f"node{n}"
            node_dir.mkdir()
            extra = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf")
            extra += ("--cluster-node-timeout", "5000")
            self.nodes.append(RedisServer(node_dir, port=cluster_port(taken), extra=extra))

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        assert cli is not None, "redis-cli is not installed"
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while not all(self.info(node)["cluster_state"] == "ok" for node in self.nodes):
            assert time.monotonic() < deadline, "the cluster never reached cluster_state:ok"
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    @staticmethod
    def info(node: RedisServer) -> dict[str, str]:
        with contextlib.closing(node.client()) as client:
            text = client.execute_command("CLUSTER INFO")
        if isinstance(text, bytes):
            text = text.decode()
        if isinstance(text, dict):
            return {str(k): str(v) for k, v in text.items()}
        return dict(line.split(":", 1) for line in text.split() if ":" in line)

    def owner_of(self, key: str) -> int:
        """The port of the master that serves ``key``'s slot, from CLUSTER KEYSLOT and SLOTS."""
        with contextlib.closing(self.nodes[0].client()) as client:
            slot = int(client.execute_command("CLUSTER KEYSLOT", key))
            for start, end, master, *_replicas in client.execute_command("CLUSTER SLOTS"):
                if start <= slot <= end:
                    return int(master[1])
        raise AssertionError(f"no master serves slot {slot}")

    def holders(self, key: str) -> list[int]:
        """The ports of the nodes that actually hold ``key``."""
        found = []
        for node in self.nodes:
            # EXISTS on a node that does not serve the slot answers MOVED
            with (
                contextlib.closing(redis.Redis(port=node.port, socket_timeout=2)) as client,
                contextlib.suppress(redis.exceptions.ResponseError),
            ):
                if client.exists(key):
                    found.append(node.port)
        return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A three-master Redis Cluster for this module's tests."""
    made = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        made.start()
        yield made
    finally:
        made.stop()


def names_on_each_node(cluster: Cluster) -> dict[int, str]:
    """One ledger name per master, chosen so that its keys hash to a slot that master serves."""
    chosen: dict[int, str] = {}
    number = 0
    while len(chosen) < len(cluster.nodes):
        name = f"acct-{number}"
        chosen.setdefault(cluster.owner_of(f"tradeledger:{{{name}}}:head"), name)
        number += 1
    return chosen


def cluster_url(cluster: Cluster, name: str, tmp_path: Path, **options: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in options.items())
    url = f"redis+cluster://127.0.0.1:{cluster.nodes[0].port}/0?ledger={name}"
    return f"{url}&views={tmp_path / name}.views.db" + (f"&{query}" if query else "")


async def lifecycle(url: str) -> dict[str, Any]:
    """Record a short trade's life, read it back every way, reopen, and say what was seen."""
    async with open_ledger(url, [OpenPositions()]) as book:
        await book.record(signal("s1"))
        await book.record(opened("t1"))
        await book.record(stop_moved("t1"), event_id="m1")
        open_now = [t.trade_id for t in book.view(OpenPositions).positions()]
        await book.record(closed("t1"))
        async with contextlib.aclosing(book.store.subscribe(4)) as feed:
            followed = (await asyncio.wait_for(anext(feed), 5)).type
        found = await book.store.find("m1")
        stream = [r.type for r in await book.store.read_stream("trade-t1")]
        facts = await book.store.describe()
    async with open_ledger(url, [OpenPositions()]) as again:
        records = await all_records(again)
        restored = again.runner.restored
    return {
        "types": [r.type for r in records],
        "problems": chain_problems(records),
        "open_then": open_now,
        "followed": followed,
        "found": found is not None and found.position == 3,
        "stream": stream,
        "memory": facts["ledger_memory_bytes"] > 0,
        "restored": restored,
    }


def test_three_ledgers_on_three_masters_each_live_whole_on_their_own_node(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Ledgers whose names hash to slots of different masters each pass a lifecycle through one redis+cluster URL, and every key of each sits on its own master."""
    chosen = names_on_each_node(cluster)
    for port, name in chosen.items():
        seen = asyncio.run(lifecycle(cluster_url(cluster, name, tmp_path)))
        assert seen == {
            "types": ["SignalEmitted", "TradeOpened", "StopMoved", "TradeClosed"],
            "problems": [],
            "open_then": ["t1"],
            "followed": "TradeClosed",
            "found": True,
            "stream": ["TradeOpened", "StopMoved", "TradeClosed"],
            "memory": True,
            "restored": {"open_positions": 4},
        }, name
        for key in ("head", "log", "ids", "versions", "meta", "checkpoints", "s:trade-t1"):
            assert cluster.holders(f"tradeledger:{{{name}}}:{key}") == [port], (name, key)
    assert len(set(chosen)) == 3


def test_waiting_for_replicas_in_a_cluster_asks_the_ledgers_own_master(
    cluster: Cluster, tmp_path: Path
) -> None:
    """wait_replicas on a cluster without replicas raises OutcomeUnknown from the ledger's master, and the record is there."""
    name = names_on_each_node(cluster)[cluster.nodes[2].port]
    url = cluster_url(cluster, f"{name}-wait", tmp_path, wait_replicas="1")
    name = f"{name}-wait"
    port = cluster.owner_of(f"tradeledger:{{{name}}}:head")

    async def body() -> list[str]:
        async with open_ledger(url, timeout=0.6) as book:
            with pytest.raises(OutcomeUnknown, match="0 of 1 replica"):
                await book.record(opened("t1"))
            return [r.type for r in await all_records(book)]

    assert asyncio.run(body()) == ["TradeOpened"]
    assert cluster.holders(f"tradeledger:{{{name}}}:log") == [port]
