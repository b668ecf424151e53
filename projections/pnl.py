"""Realized PnL: gross, fees, funding and net per currency, optionally grouped.

Realized means booked by exits, fees and funding so far, open trades included
(an open trade's entry fees count in full); amounts in different currencies
are never added together.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

import msgspec

from ledger.projection import StateProjection, Step
from ledger.trade import CONTEXT
from projections.grouping import check_group, keys

_ZERO = Decimal(0)


class PnlRow(msgspec.Struct, frozen=True, kw_only=True):
    """Realized figures of one currency (and one group, when grouped)."""

    currency: str
    group_by: str | None = None
    group: str | None = None
    gross: Decimal = _ZERO
    fees: Decimal = _ZERO
    funding: Decimal = _ZERO
    closed_trades: int = 0

    @property
    def net(self) -> Decimal:
        """gross - fees + funding."""
        with decimal.localcontext(CONTEXT):
            return self.gross - self.fees + self.funding


class _Totals(msgspec.Struct, array_like=True):
    kind: str
    value: str
    currency: str
    gross: Decimal = _ZERO
    fees: Decimal = _ZERO
    funding: Decimal = _ZERO
    closed: int = 0


class Pnl(StateProjection):
    """Realized gross, fees, funding and net per currency, optionally by group.

    for row in book.view(Pnl).totals(group_by="symbol"):
        print(row.currency, row.group, row.net)
    """

    name = "pnl"
    version = 1

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str, str], _Totals] = {}

    def apply(self, step: Step) -> None:
        after = step.after
        if after is None:
            return
        before = step.before
        with decimal.localcontext(CONTEXT):
            gross = after.gross - (before.gross if before else _ZERO)
            fees = after.fees - (before.fees if before else _ZERO)
            funding = after.funding - (before.funding if before else _ZERO)
        closed = (
            1 if after.closed_at is not None and (before is None or before.closed_at is None) else 0
        )
        if not (gross or fees or funding or closed):
            return
        for kind, value in keys(after):
            key = (kind, value, after.currency)
            totals = self._totals.get(key)
            if totals is None:
                totals = self._totals[key] = _Totals(kind, value, after.currency)
            with decimal.localcontext(CONTEXT):
                totals.gross += gross
                totals.fees += fees
                totals.funding += funding
            totals.closed += closed

    def reset(self) -> None:
        self._totals = {}

    def snapshot(self) -> bytes:
        return msgspec.msgpack.encode(
            sorted(self._totals.values(), key=lambda t: (t.kind, t.value, t.currency))
        )

    def restore(self, data: bytes) -> None:
        rows = msgspec.msgpack.decode(data, type=list[_Totals])
        self._totals = {(t.kind, t.value, t.currency): t for t in rows}

    def totals(self, group_by: str | None = None, *, currency: str | None = None) -> list[PnlRow]:
        """One row per currency, or per (group, currency) with ``group_by``."""
        self.ready()
        kind = check_group(group_by)
        return [
            PnlRow(
                currency=t.currency,
                group_by=group_by,
                group=t.value if group_by else None,
                gross=t.gross,
                fees=t.fees,
                funding=t.funding,
                closed_trades=t.closed,
            )
            for t in sorted(self._totals.values(), key=lambda t: (t.currency, t.value))
            if t.kind == kind and (currency is None or t.currency == currency)
        ]
