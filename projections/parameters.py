"""Parameters: the ordered trail of every parameter change."""

from __future__ import annotations

import datetime as dt
import sqlite3
from collections.abc import Callable
from typing import Any

import msgspec

from ledger.chain import timestamp
from ledger.events import ParameterChanged
from ledger.projection import Step, TableProjection

_COLUMNS = (
    "position",
    "occurred_at",
    "name",
    "new_value",
    "old_value",
    "reason",
    "changed_by",
    "scope",
)
_value = msgspec.json.Encoder().encode
_decode = msgspec.json.decode


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One parameter change, in log order."""

    position: int
    occurred_at: dt.datetime
    name: str
    new_value: str | int | bool | None
    old_value: str | int | bool | None
    reason: str | None
    changed_by: str
    scope: str | None


class Parameters(TableProjection):
    """The parameter-change trail, filterable by name and who changed it.

    for change in await book.view(Parameters).changes(name="risk_per_trade"):
        print(change.occurred_at, change.old_value, "->", change.new_value)
    """

    name = "parameters"
    version = 1
    reads = frozenset({ParameterChanged})
    tables = ("parameter_changes",)
    indexes = (("parameter_changes_by_name", "parameter_changes (name, position)"),)

    def __init__(self) -> None:
        self._rows: list[tuple[Any, ...]] = []

    def setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS parameter_changes ({', '.join(_COLUMNS)}, PRIMARY KEY (position))"
        )

    def apply(self, step: Step) -> None:
        event = step.event
        if isinstance(event, ParameterChanged):
            self._rows.append(
                (
                    step.record.position,
                    timestamp(event.occurred_at),
                    event.name,
                    _value(event.new_value).decode(),
                    _value(event.old_value).decode(),
                    event.reason,
                    event.changed_by,
                    event.scope,
                )
            )

    def take(self) -> Callable[[sqlite3.Connection], None]:
        rows, self._rows = self._rows, []

        def write(conn: sqlite3.Connection) -> None:
            marks = ", ".join("?" * len(_COLUMNS))
            conn.executemany(f"INSERT OR REPLACE INTO parameter_changes VALUES ({marks})", rows)

        return write

    async def changes(
        self,
        *,
        name: str | None = None,
        changed_by: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[Change]:
        """Changes in log order, optionally of one parameter or by one kind of changer."""
        self.ready()
        where: list[str] = []
        params: list[Any] = []
        for column, value in (("name", name), ("changed_by", changed_by)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        rows = await self.db.query(
            f"SELECT {', '.join(_COLUMNS)} FROM parameter_changes{clause} ORDER BY position LIMIT ? OFFSET ?",
            [*params, max(limit, 0), max(offset, 0)],
        )
        return [_change(tuple(row)) for row in rows]

    async def current(self) -> dict[str, str | int | bool | None]:
        """The latest value of every parameter."""
        self.ready()
        rows = await self.db.query(
            "SELECT name, new_value FROM parameter_changes WHERE position IN "
            "(SELECT max(position) FROM parameter_changes GROUP BY name) ORDER BY name"
        )
        return {name: _decode(value) for name, value in rows}


def _change(row: tuple[Any, ...]) -> Change:
    fields: dict[str, Any] = dict(zip(_COLUMNS, row, strict=True))
    fields["occurred_at"] = dt.datetime.fromisoformat(fields["occurred_at"])
    fields["new_value"] = _decode(fields["new_value"])
    fields["old_value"] = _decode(fields["old_value"])
    return Change(**fields)
