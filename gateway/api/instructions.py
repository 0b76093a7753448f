"""Self-custody instructions: the unsigned transactions of a party's next step, for a party
that signs itself (`GET /v1/trades/{id}/instructions`). Never a step that could lose it money:
no payment lock against a hashlock the seller chose, no delivery claim that cannot be mined
before T_deliver (a reverted claim still publishes the secret)."""

from __future__ import annotations

from gateway.api.actions import hashlock_from_buyer
from gateway.api.context import ApiContext
from gateway.api.enterprises import Enterprise
from gateway.api.schemas import Instructions, UnsignedTx
from gateway.api.views import parties_of
from gateway.chain import calls
from gateway.db.trade_records import TradeRecords
from gateway.db.trade_store import decode_state
from gateway.domain.trade import TradeState


def instructions(ctx: ApiContext, caller: Enterprise, trade_id: bytes) -> Instructions:
    """The unsigned transactions of the caller's next step, for a party that signs itself."""
    with ctx.session_factory() as session:
        records = TradeRecords(session)
        parties = parties_of(records, trade_id, caller)
        state = decode_state(records.trade_rows([trade_id])[trade_id].state)
    role = "buyer" if caller.id == parties.buyer_id else "seller"
    phase = state.phase.value
    if caller.managed:
        return Instructions(step="none", transactions=[],
                            note="the gateway signs for this managed enterprise")
    if role == "buyer" and phase == "agreed" and not hashlock_from_buyer(state, parties):
        return Instructions(step="wait", transactions=[],
                            note="do not lock a payment: the seller chose this trade's hashlock "
                                 "and could claim your payment without delivering; cancel the "
                                 "trade and propose again with a hashlock of your own secret")
    if role == "buyer" and phase == "agreed" and state.payment is None:
        return _lock_payment(ctx, state)
    if role == "seller" and phase == "payment_locked" and state.delivery is None:
        return _lock_delivery(ctx, state)
    if role == "buyer" and phase == "delivery_locked" and state.delivery is not None:
        return _take_delivery(ctx, state)
    waiting = {"proposed": "the counterparty has to accept the proposal"}
    return Instructions(step="wait", transactions=[],
                        note=waiting.get(phase, f"nothing for you to sign in phase {phase}; "
                                                "refunds after the deadlines are automatic"))


def _tx(ctx: ApiContext, chain: str, to: str, data: bytes, description: str) -> UnsignedTx:
    view = ctx.payment if chain == "payment" else ctx.business
    return UnsignedTx(chain=chain, chain_id=view.chain_id, to=to,  # type: ignore[arg-type]
                      data="0x" + data.hex(), description=description)


def _lock_payment(ctx: ApiContext, state: TradeState) -> Instructions:
    t, txs = state.terms, []
    if calls.token_allowance(ctx.payment.client, ctx.payment.asset, t.buyer_payment,
                             ctx.payment.htlc) < t.amount:
        txs.append(_tx(ctx, "payment", ctx.payment.asset,
                       calls.token_approve_calldata(ctx.payment.htlc, t.amount),
                       f"approve the PaymentHTLC to take {t.amount} units"))
    txs.append(_tx(ctx, "payment", ctx.payment.htlc,
                   calls.payment_lock_calldata(t.seller_payment, t.amount, t.hashlock, t.t_pay),
                   f"lock {t.amount} units for the seller until T_pay {t.t_pay}"))
    return Instructions(step="lock_payment", transactions=txs)


def _lock_delivery(ctx: ApiContext, state: TradeState) -> Instructions:
    t, txs = state.terms, []
    if not calls.title_approved(ctx.business.client, ctx.business.asset, t.seller_business,
                                ctx.business.htlc, t.token_id):
        txs.append(_tx(ctx, "business", ctx.business.asset,
                       calls.title_approve_calldata(ctx.business.htlc, t.token_id),
                       f"approve the DeliveryHTLC to take title #{t.token_id}"))
    txs.append(_tx(ctx, "business", ctx.business.htlc, calls.delivery_lock_calldata(
        t.buyer_business, t.token_id, t.document_hash, state.trade_id, t.hashlock, t.t_deliver),
        f"lock title #{t.token_id} for the buyer until T_deliver {t.t_deliver}"))
    return Instructions(step="lock_delivery", transactions=txs,
                        note="the payment lock was verified against the terms on chain")


def _take_delivery(ctx: ApiContext, state: TradeState) -> Instructions:
    """A claim that reverts still publishes the secret in its calldata: never hand one out
    that cannot be mined before T_deliver, judged by the node's latest block."""
    assert state.delivery is not None
    timelock, now = state.delivery.lock.timelock, ctx.business.now()
    if now + 1 >= timelock:
        return Instructions(step="wait", transactions=[], note=(
            f"too late to take delivery: the next business block cannot be before "
            f"T_deliver {timelock} (chain time {now}); a claim now would revert and still "
            "publish your secret. Do not send it: the title and your payment go back."))
    warning = "" if ctx.policy.delivery_claim_is_safe(now, timelock) else (
        f"WARNING: chain time {now} is within {ctx.policy.delivery_claim_lead_time} s of "
        f"T_deliver {timelock}: the claim may not be mined and final in time, and a claim "
        "that reverts still publishes your secret. ")
    data = calls.delivery_claim_template(state.delivery.lock)
    return Instructions(step="take_delivery", transactions=[_tx(
        ctx, "business", ctx.business.htlc, data,
        "take delivery: claim the title with your secret")],
        note=warning + "the last 32 bytes of data are a placeholder: put your 32-byte "
             "secret there before signing; the gateway then claims the payment for the "
             "seller")
