"""Named points in the write path where a test can make the process die or stall.

Switched on only by the environment variable ``TRADELEDGER_FAILPOINTS``, read
when a ledger opens; when it is unset a fail point is one dict lookup on an
empty dict. The value is a comma-separated list of ``name=action``:

- ``kill`` (SIGKILL at the first hit) or ``kill@N`` (at the Nth hit);
- ``sleep:SECONDS`` (stall at every hit, to make a caller's wait run out);
- ``error`` or ``error@N`` (raise ``OSError``, as a failing disk would).

Points: ``after_begin``, ``after_insert``, ``before_commit``, ``after_commit``
(committed, the caller not yet told), ``checkpoint_write``, ``spool_drain``.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "TRADELEDGER_FAILPOINTS"
POINTS = frozenset(
    {
        "after_begin",
        "after_insert",
        "before_commit",
        "after_commit",
        "checkpoint_write",
        "spool_drain",
    }
)


class FailPoints:
    """The fail points switched on for one open ledger."""

    def __init__(self, spec: str | None = None) -> None:
        self._actions: dict[str, tuple[str, float, int]] = {}
        self._hits: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            name, _, action = item.partition("=")
            if name not in POINTS:
                raise ValueError(f"unknown fail point {name!r}; known: {', '.join(sorted(POINTS))}")
            verb, _, at = action.partition("@")
            verb, _, arg = verb.partition(":")
            if verb not in ("kill", "sleep", "error"):
                raise ValueError(f"unknown fail point action {action!r}")
            self._actions[name] = (verb, float(arg or 0), int(at or 1))

    @classmethod
    def from_env(cls) -> FailPoints:
        """The fail points named in ``TRADELEDGER_FAILPOINTS``, or none."""
        return cls(os.environ.get(ENV))

    def __bool__(self) -> bool:
        return bool(self._actions)

    def hit(self, name: str) -> None:
        """Pass the fail point ``name``: die, stall or fail if it is switched on."""
        action = self._actions.get(name)
        if action is None:
            return
        verb, arg, at = action
        count = self._hits[name] = self._hits.get(name, 0) + 1
        if verb == "sleep":
            time.sleep(arg)
        elif count == at:
            if verb == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise OSError(f"fail point {name}")
