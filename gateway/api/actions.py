"""Actions on trades: accept, cancel, take delivery, and a batch of accepts.

One writing transaction per request (`Dispatcher.unit`): the caller's parties and the trades'
states are read with the trades' rows locked, the request is judged on them (who may act, the
buyer's cap, a managed buyer's secret), applied, and the answer is built from the same
transaction before it commits.
"""

from __future__ import annotations

from sqlalchemy.exc import IntegrityError

from gateway.api.context import ApiContext
from gateway.api.enterprises import Enterprise
from gateway.api.problems import Problem, batch_problem
from gateway.api.refusals import HASHLOCK_IN_USE, batch_over_cap, check_exposure, hashlock_in_use
from gateway.api.schemas import Trade
from gateway.api.views import parse_trade_id, parties_of, trade_view, trade_views
from gateway.db.models import TradePartyRow
from gateway.db.trade_records import TradeRecords
from gateway.domain.trade import (
    AWAITING_HASHLOCK,
    ActionAcceptTrade,
    ActionCancelTrade,
    ActionTakeDelivery,
    Input,
    InvalidTransition,
    Phase,
    TradeState,
)
from gateway.engine.unit import ActionsRefused, Unit, UnknownTrade


def act(ctx: ApiContext, caller: Enterprise, trade_id: bytes, action: str,
        hashlock: bytes | None = None) -> Trade:
    try:
        with ctx.dispatcher.unit() as unit:
            records = TradeRecords(unit.session)
            parties = parties_of(records, trade_id, caller)
            state = unit.trades([trade_id]).get(trade_id)
            if state is None:
                raise Problem(404, "no such trade", kind="not-found")
            unit.apply(_judge(ctx, unit, records, caller, parties, state, action, hashlock))
            return trade_view(records, ctx, trade_id, caller)
    except InvalidTransition as exc:
        raise Problem(409, str(exc), kind="invalid-transition") from None
    except UnknownTrade:
        raise Problem(404, "no such trade", kind="not-found") from None
    except ValueError as exc:  # the machine refused the request's content (the hashlock)
        field, _, message = str(exc).partition(": ")
        raise Problem(422, message or field, field=field if message else None) from None
    except IntegrityError:
        raise hashlock_in_use() from None


def _judge(ctx: ApiContext, unit: Unit, records: TradeRecords, caller: Enterprise,
           parties: TradePartyRow, state: TradeState, action: str,
           hashlock: bytes | None) -> Input:
    """The action to apply, or the Problem that refuses it, judged on the locked state."""
    match action:
        case "accept":
            if refusal := _accept_refusal(caller, parties, state):
                raise refusal
            if caller.id == parties.buyer_id and state.phase is Phase.PROPOSED:
                # The buyer commits itself now: its cap, under its exposure lock.
                unit.lock_name(f"exposure:{caller.id}")
                check_exposure(ctx, records, caller.id, state.terms.amount)
            return ActionAcceptTrade(state.trade_id, hashlock)
        case "cancel":
            return ActionCancelTrade(state.trade_id)
        case "take-delivery":
            if caller.id != parties.buyer_id or not state.managed_buyer:
                raise Problem(409, "only a managed buyer takes delivery through the gateway; "
                                   "a self-custody buyer claims on chain (see /instructions)",
                              kind="conflict")
            encrypted = records.encrypted_secret(state.trade_id)
            if encrypted is None or ctx.cipher is None:
                raise Problem(503, "the gateway cannot read this trade's secret (no secrets "
                                   "key configured)", kind="no-secrets-key")
            return ActionTakeDelivery(state.trade_id, ctx.cipher.decrypt(encrypted))
    raise ValueError(f"unknown action {action!r}")


def _accept_refusal(caller: Enterprise, parties: TradePartyRow,
                    state: TradeState) -> Problem | None:
    """Why the caller may not accept this trade whatever its phase, or None."""
    if caller.id == parties.proposer_id:
        return Problem(409, "only the counterparty can accept a proposal", kind="conflict")
    if not hashlock_from_buyer(state, parties):
        return Problem(409, "the seller chose this trade's hashlock, and only the buyer may "
                            "(a seller who knows the secret can take the payment without "
                            "delivering): cancel it and propose again", kind="conflict")
    return None


def hashlock_from_buyer(state: TradeState, parties: TradePartyRow) -> bool:
    """Trust rule 1: the trade's hashlock came from the buyer (its proposal or its accept), or
    the gateway drew it for a managed buyer. Trades proposed by a seller with a hashlock of its
    own choosing (possible before this rule) are refused."""
    return state.managed_buyer or parties.proposer_id == parties.buyer_id or \
        state.terms.hashlock == AWAITING_HASHLOCK or "hashlock_from_buyer" in state.flags


def accept_trades(ctx: ApiContext, caller: Enterprise,
                  items: list[tuple[str, str | None]]) -> list[Trade]:
    """A batch of accepts (`POST /v1/trades/accept-batch`), (trade id, hashlock) each: one
    transaction, all or none, every item judged as `act` judges one accept; the caller's cap,
    as buyer, across all of them. A trade that does not exist or is not the caller's is a 422
    naming its item (`trades[2].id`), the same answer for both."""
    ids, found = _batch_ids(items)
    hashlocks = [bytes.fromhex(h[2:]) if h else None for _, h in items]
    try:
        with ctx.dispatcher.unit() as unit:
            records = TradeRecords(unit.session)
            rows = records.parties([t for t in ids if t])
            states = unit.trades([t for t in ids if t])
            for i, trade_id in enumerate(ids):
                row = rows.get(trade_id)
                if row is None or caller.id not in (row.buyer_id, row.seller_id) or \
                        trade_id not in states:
                    found.append((i, Problem(422, "no such trade", field="id")))
            if found:
                raise batch_problem(found, len(items))
            _judge_accepts(ctx, unit, records, caller, [rows[t] for t in ids],
                           [states[t] for t in ids])
            unit.apply_many([ActionAcceptTrade(t, h) for t, h in zip(ids, hashlocks,
                                                                      strict=True)])
            return trade_views(records, ctx, caller, ids)
    except ActionsRefused as exc:
        raise batch_problem([(i, _action_problem(error)) for i, error in exc.refused],
                            len(items)) from None
    except IntegrityError:
        with ctx.session_factory() as session:
            used = TradeRecords(session).hashlocks_in_use([h for h in hashlocks if h])
        refused = [(i, hashlock_in_use()) for i, h in enumerate(hashlocks) if h in used]
        if not refused:
            raise Problem(409, HASHLOCK_IN_USE, field="trades", kind="hashlock-reused") from None
        raise batch_problem(refused, len(items)) from None


def _batch_ids(items: list[tuple[str, str | None]]) -> tuple[list[bytes],
                                                              list[tuple[int, Problem]]]:
    """The items' trade ids (b"" for one that cannot be a trade's) and the problems of the
    batch as a request: a trade or a hashlock named twice."""
    found: list[tuple[int, Problem]] = []
    ids: list[bytes] = []
    seen_ids: dict[bytes, int] = {}
    seen_hashlocks: dict[str, int] = {}
    for i, (text, hashlock) in enumerate(items):
        try:
            trade_id = parse_trade_id(text)
        except Problem:
            trade_id = b""
        ids.append(trade_id)
        first = seen_ids.setdefault(trade_id, i)
        if trade_id and first != i:
            found.append((i, Problem(422, f"the same trade as trades[{first}]", field="id")))
        if hashlock is not None:
            first = seen_hashlocks.setdefault(hashlock, i)
            if first != i:
                found.append((i, Problem(422, f"the same hashlock as trades[{first}]: every "
                                              "trade needs its own secret", field="hashlock")))
    return ids, found


def _judge_accepts(ctx: ApiContext, unit: Unit, records: TradeRecords, caller: Enterprise,
                   parties: list[TradePartyRow], states: list[TradeState]) -> None:
    """Refuse the batch if the caller may not accept an item, or if as buyer its cap cannot
    take them all (read under its exposure lock)."""
    size = len(states)
    refused = [(i, problem) for i, (state, row) in enumerate(zip(states, parties, strict=True))
               if (problem := _accept_refusal(caller, row, state)) is not None]
    if refused:
        raise batch_problem(refused, size)
    committing = [(i, state.terms.amount) for i, (state, row) in
                  enumerate(zip(states, parties, strict=True))
                  if caller.id == row.buyer_id and state.phase is Phase.PROPOSED]
    if committing:
        # The buyer commits itself to each of these now: its cap, across them all.
        unit.lock_name(f"exposure:{caller.id}")
        exposure = records.open_exposure(caller.id)
        for i, amount in committing:
            if exposure + amount > ctx.limits.exposure_cap:
                raise batch_problem([(i, batch_over_cap(ctx, exposure))], size)
            exposure += amount


def _action_problem(error: Exception) -> Problem:
    """What `act` answers for an action the dispatcher refused."""
    if isinstance(error, UnknownTrade):
        return Problem(422, "no such trade", field="id")
    if isinstance(error, InvalidTransition):
        return Problem(409, str(error), kind="invalid-transition")
    field, _, message = str(error).partition(": ")
    return Problem(422, message or field, field=field if message else None)
