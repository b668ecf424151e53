"""Realized PnL: gross, fees, funding and net per currency, optionally grouped.

Realized means booked by exits, fees and funding so far, open trades included
(an open trade's entry fees count in full); amounts in different currencies
are never added together.
"""

from __future__ import annotations

import decimal
from decimal import Decimal

import msgspec

from ledger.events import TRADE_EVENTS, StopMoved, TargetMoved
from ledger.projection import StateProjection, Step
from ledger.trade import TradeState
from projections.grouping import check_group, keys

_ZERO = Decimal(0)
# An open trade's realized gross after a partial exit may not terminate (C*q/Q);
# the totals add and later take back such amounts, so they sum exactly: addition
# and subtraction at the maximum precision never round.
_EXACT = decimal.Context(prec=decimal.MAX_PREC, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)


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
        return _EXACT.add(_EXACT.subtract(self.gross, self.fees), self.funding)


class _Totals(msgspec.Struct, array_like=True):
    kind: str
    value: str
    currency: str
    gross: Decimal = _ZERO
    fees: Decimal = _ZERO
    funding: Decimal = _ZERO
    closed: int = 0


class _Settled(msgspec.Struct, array_like=True):
    """What of an open trade is already in the totals."""

    gross: Decimal = _ZERO
    fees: Decimal = _ZERO
    funding: Decimal = _ZERO


class _State(msgspec.Struct, array_like=True):
    totals: list[_Totals]
    settled: dict[str, _Settled]


class Pnl(StateProjection):
    """Realized gross, fees, funding and net per currency, optionally by group.

    for row in book.view(Pnl).totals(group_by="symbol"):
        print(row.currency, row.group, row.net)
    """

    name = "pnl"
    version = 1
    # the events that move money
    reads = frozenset(kind for kind in TRADE_EVENTS if kind not in (StopMoved, TargetMoved))

    def __init__(self) -> None:
        self._totals: dict[tuple[str, str, str], _Totals] = {}
        # An open trade's figures move with each fill; they reach the group totals
        # when it closes or when someone looks, so a fill costs one dict write.
        self._changed: dict[str, TradeState] = {}
        self._settled: dict[str, _Settled] = {}

    def apply(self, step: Step) -> None:
        after = step.after
        if after is None:
            return
        before = step.before
        closing = after.closed_at is not None
        if (
            before is not None
            and not closing
            and after.gross == before.gross
            and after.fees == before.fees
            and after.funding == before.funding
        ):
            return
        self._changed[after.trade_id] = after
        if closing:
            self._settle(after.trade_id)

    def _settle(self, trade_id: str) -> None:
        trade = self._changed.pop(trade_id)
        closing = trade.closed_at is not None
        base = self._settled.pop(trade_id, None) if closing else self._settled.get(trade_id)
        ctx = _EXACT
        gross, fees, funding = trade.gross, trade.fees, trade.funding
        if base is not None:
            gross = ctx.subtract(gross, base.gross)
            fees = ctx.subtract(fees, base.fees)
            funding = ctx.subtract(funding, base.funding)
        for kind, value in keys(trade):
            key = (kind, value, trade.currency)
            totals = self._totals.get(key)
            if totals is None:
                totals = self._totals[key] = _Totals(kind, value, trade.currency)
            totals.gross = ctx.add(totals.gross, gross)
            totals.fees = ctx.add(totals.fees, fees)
            totals.funding = ctx.add(totals.funding, funding)
            totals.closed += closing
        if not closing:
            self._settled[trade_id] = _Settled(trade.gross, trade.fees, trade.funding)

    def _settle_all(self) -> None:
        for trade_id in list(self._changed):
            self._settle(trade_id)

    def reset(self) -> None:
        self._totals = {}
        self._changed = {}
        self._settled = {}

    def snapshot(self) -> bytes:
        self._settle_all()
        totals = sorted(self._totals.values(), key=lambda t: (t.kind, t.value, t.currency))
        return msgspec.msgpack.encode(_State(totals, dict(sorted(self._settled.items()))))

    def restore(self, data: bytes) -> None:
        state = msgspec.msgpack.decode(data, type=_State)
        self._totals = {(t.kind, t.value, t.currency): t for t in state.totals}
        self._settled = state.settled
        self._changed = {}

    def totals(self, group_by: str | None = None, *, currency: str | None = None) -> list[PnlRow]:
        """One row per currency, or per (group, currency) with ``group_by``."""
        self.ready()
        kind = check_group(group_by)
        self._settle_all()
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
