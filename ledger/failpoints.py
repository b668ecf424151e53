"""Named points in the write path where a test can make the process die or stall.

Switched on only by the environment variable ``TRADELEDGER_FAILPOINTS``, read
when a ledger opens; when it is unset a fail point is one dict lookup on an
empty dict. The value is a comma-separated list of ``name=action``:

- ``kill`` (SIGKILL at the first hit) or ``kill@N`` (at the Nth hit);
- ``sleep:SECONDS`` (stall at every hit, to make a caller's wait run out) or
  ``sleep:SECONDS@N`` (stall at the Nth hit only);
- ``error`` or ``error@N`` (raise ``OSError``, as a failing disk would).

Points: ``after_begin`` (the write transaction has begun), ``after_insert``
(a group's records are inserted, not committed), ``before_commit``,
``after_commit`` (committed, the caller not yet told), ``after_answer``
(SQLite: each caller's outcome is settled, its answer sent or held for the
next group), ``checkpoint_write`` (inside the checkpoint's transaction),
``spool_drain`` (a spooled batch is about to be forwarded). A store without
transactions (Redis) passes only ``before_commit``, ``after_commit`` and
``checkpoint_write``.

    TRADELEDGER_FAILPOINTS="after_insert=kill@7,before_commit=sleep:0.5@3" python bot.py
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
        "after_answer",
        "checkpoint_write",
        "spool_drain",
    }
)
_VERBS = ("kill", "sleep", "error")


class FailPoints:
    """The fail points switched on for one open ledger."""

    def __init__(self, spec: str | None = None) -> None:
        # name -> (verb, seconds, the hit it fires at; 0 for every hit)
        self._actions: dict[str, tuple[str, float, int]] = {}
        self._hits: dict[str, int] = {}
        for item in filter(None, (part.strip() for part in (spec or "").split(","))):
            name, _, action = item.partition("=")
            if name not in POINTS:
                raise ValueError(f"unknown fail point {name!r}; known: {', '.join(sorted(POINTS))}")
            verb, _, at = action.partition("@")
            verb, _, arg = verb.partition(":")
            if verb not in _VERBS:
                raise ValueError(f"unknown fail point action {action!r}: kill, sleep or error")
            try:
                seconds = float(arg) if arg else 0.0
                nth = int(at) if at else (0 if verb == "sleep" else 1)
            except ValueError:
                raise ValueError(f"bad fail point action {action!r}") from None
            if (verb == "sleep") != bool(arg) or seconds < 0 or nth < 0 or (at and nth < 1):
                raise ValueError(
                    f"bad fail point action {action!r}: kill[@N], sleep:SECONDS[@N] or error[@N]"
                )
            self._actions[name] = (verb, seconds, nth)

    @classmethod
    def from_env(cls) -> FailPoints:
        """The fail points named in ``TRADELEDGER_FAILPOINTS``, or none."""
        return cls(os.environ.get(ENV))

    def __bool__(self) -> bool:
        return bool(self._actions)

    def hits(self, name: str) -> int:
        """How many times the switched-on point ``name`` has been passed."""
        return self._hits.get(name, 0)

    def hit(self, name: str) -> None:
        """Pass the fail point ``name``: die, stall or fail if it is switched on."""
        action = self._actions.get(name)
        if action is None:
            return
        verb, seconds, nth = action
        count = self._hits[name] = self._hits.get(name, 0) + 1
        if nth and count != nth:
            return
        if verb == "sleep":
            time.sleep(seconds)
        elif verb == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        else:
            raise OSError(f"fail point {name}")
