"""Single proposals written together (group commit): `POST /v1/trades` requests that reach an
API process while it writes others wait, then are written in ONE transaction, each with its
own answer, as if they had been made one after the other in the order they arrived.

Why: a single proposal's own work (the node reads, about ten statements, a durable commit)
costs many times what the same proposal costs as an item of a batch. Grouped, the requests
share one titles read, one statement per table and one commit (`gateway.api.coalescing`
gathers them: a request alone is written at once, alone).

Each request is still judged on its own, in arrival order, as `create_trade` judges it: its
replay or key reuse; the counterparty; the checks; a hashlock in use (by an earlier request
of the group as well); the buyer's cap (counting its earlier requests of the group). A
request refused so writes nothing and does not hold the others back. Whatever else fails
the group (a unique constraint lost to another process's request with the same key or
hashlock, the database, a node) runs each request on its own, which answers as it always
does; so does a request repeating an earlier one's Idempotency-Key (it then replays it).
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog

from gateway.api.context import ApiContext, read_titles_and_now
from gateway.api.enterprises import Enterprise
from gateway.api.housekeeping import idempotency_cutoff
from gateway.api.problems import Problem
from gateway.api.proposals import (
    Made,
    Proposal,
    create_trade,
    judge_single,
    made_views,
    proposal_hash,
)
from gateway.api.refusals import cap_problem, hashlock_in_use
from gateway.api.replays import replayed
from gateway.api.schemas import TradeCreate
from gateway.chain.titles import Title
from gateway.db.enterprises import EnterpriseRepository
from gateway.db.idempotency import IdempotencyKeys
from gateway.db.trade_records import TradeRecords
from gateway.domain.trade import AWAITING_HASHLOCK
from gateway.engine import metrics
from gateway.engine.unit import Unit

log = structlog.get_logger("gateway.api")

Outcome = tuple[int, dict] | Exception


@dataclass(frozen=True)
class Single:
    """One `POST /v1/trades` request, admitted."""

    caller: Enterprise
    body: TradeCreate
    key: str


def create_trade_group(ctx: ApiContext, singles: list[Single]) -> list[Outcome]:
    """Each request's answer (status and body) or the exception it raises, in order."""
    if len(singles) == 1:
        return [_alone(ctx, singles[0])]
    seen: set[tuple[str, str]] = set()
    together: list[int] = []
    for i, single in enumerate(singles):
        if (single.caller.id, single.key) not in seen:
            seen.add((single.caller.id, single.key))
            together.append(i)
    outcomes: dict[int, Outcome] = {}
    try:
        now, titles = read_titles_and_now(ctx, [int(singles[i].body.delivery.token_id)
                                                for i in together])
        with ctx.dispatcher.unit() as unit:
            written = _write_group(ctx, unit, [singles[i] for i in together], now, titles)
        outcomes.update(zip(together, written, strict=True))
        metrics.PROPOSAL_GROUPS.labels("together").inc()
        metrics.PROPOSAL_GROUP_SIZE.observe(len(together))
    except Exception as exc:  # noqa: BLE001 - each request on its own answers it
        metrics.PROPOSAL_GROUPS.labels("alone").inc()
        log.info("proposal_group_alone", requests=len(together),
                 error=f"{type(exc).__name__}: {exc}"[:300])
    for i, single in enumerate(singles):
        if i not in outcomes:
            outcomes[i] = _alone(ctx, single)
    return [outcomes[i] for i in range(len(singles))]


def _alone(ctx: ApiContext, single: Single) -> Outcome:
    try:
        return create_trade(ctx, single.caller, single.body, single.key)
    except Exception as exc:  # noqa: BLE001 - raised by the request's own handler
        return exc


def _write_group(ctx: ApiContext, unit: Unit, singles: list[Single], now: int,
                 titles: dict[int, Title | None]) -> list[Outcome]:
    """The group's transaction: every request judged in order, then the trades, their parties
    and the stored answers of those made, one statement per table."""
    records = TradeRecords(unit.session)
    hashes = [proposal_hash(s.body) for s in singles]
    stored = IdempotencyKeys(unit.session).stored_many(
        [(s.caller.id, s.key) for s in singles], idempotency_cutoff(ctx))
    others = EnterpriseRepository(unit.session).fields_many(
        {s.body.counterparty for s in singles})
    outcomes: list[Outcome | None] = [None] * len(singles)
    judged: list[tuple[int, Proposal]] = []
    for i, single in enumerate(singles):
        try:
            answer = replayed(stored.get((single.caller.id, single.key)), hashes[i])
            if answer is not None:
                outcomes[i] = answer
                continue
            judged.append((i, judge_single(ctx, records, single.caller, single.body,
                                             others.get(single.body.counterparty), now,
                                             titles)))
        except Problem as problem:
            outcomes[i] = problem
    kept = _within_limits(ctx, unit, records, singles, judged, outcomes)
    if not kept:
        return outcomes  # type: ignore[return-value]
    states = unit.propose_many([p.action for _, p in kept])
    parties = records.add_parties([
        (p.action.trade_id, p.buyer.id, p.seller.id, singles[i].caller.id, p.amount,
         ctx.cipher.encrypt(p.secret) if ctx.cipher and p.secret else None) for i, p in kept])
    answers = []
    for (i, proposal), state, row in zip(kept, states, parties, strict=True):
        view = made_views(records, ctx, singles[i].caller, [Made(state, proposal, row)])[0]
        outcomes[i] = (201, view.model_dump(mode="json"))
        answers.append((singles[i].caller.id, singles[i].key, hashes[i], 201, outcomes[i][1]))
    IdempotencyKeys(unit.session).store_many(answers)
    assert all(outcome is not None for outcome in outcomes)
    return outcomes  # type: ignore[return-value]


def _within_limits(ctx: ApiContext, unit: Unit, records: TradeRecords, singles: list[Single],
                   judged: list[tuple[int, Proposal]], outcomes: list[Outcome | None]
                   ) -> list[tuple[int, Proposal]]:
    """The proposals that may be made, in order: a hashlock in use (a trade's, or an earlier
    request's of the group) is refused; so is a buyer's proposal that its cap cannot take,
    read under the buyer's exposure lock (taken in a fixed order: no deadlock between
    groups), counting its earlier proposals of the group."""
    used = records.hashlocks_in_use([p.action.terms.hashlock for _, p in judged
                                     if p.action.terms.hashlock != AWAITING_HASHLOCK])
    buyers = sorted({singles[i].caller.id for i, p in judged if p.body.role == "buyer"})
    open_now: dict[str, int] = {}
    for buyer in buyers:
        unit.lock_name(f"exposure:{buyer}")
        open_now[buyer] = records.open_exposure(buyer)
    kept: list[tuple[int, Proposal]] = []
    for i, proposal in judged:
        hashlock = proposal.action.terms.hashlock
        if hashlock != AWAITING_HASHLOCK and hashlock in used:
            outcomes[i] = hashlock_in_use()
            continue
        if proposal.body.role == "buyer":
            buyer = singles[i].caller.id
            if open_now[buyer] + proposal.amount > ctx.limits.exposure_cap:
                outcomes[i] = cap_problem(ctx, open_now[buyer])
                continue
            open_now[buyer] += proposal.amount
        used.add(hashlock)
        kept.append((i, proposal))
    return kept
