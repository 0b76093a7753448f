"""Proposals: `POST /v1/trades` and `POST /v1/trades/batch`.

The chains are read first (chain time, the titles on the business chain), outside any
transaction; then ONE transaction (`Dispatcher.unit`) reads and writes the rest: the replay of
the Idempotency-Key, the counterparty, the checks, the buyer's cap, the trades, their parties
and secrets, the stored response (the view, built in that transaction) and the idempotency
record commit together. A unique constraint that refuses the commit (a concurrent request with
the same key or the same hashlock won) runs the unit once more, which then answers the replay
or the conflict. A node that cannot be reached is a 503, except to a request already answered:
its stored answer is replayed.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Row
from sqlalchemy.exc import IntegrityError

from gateway.api.context import (
    ApiContext,
    check_title,
    deadline_problems,
    read_titles_and_now,
)
from gateway.api.enterprises import Enterprise
from gateway.api.problems import Problem, batch_problem
from gateway.api.refusals import (
    HASHLOCK_IN_USE,
    batch_over_cap,
    cap_problem,
    check_exposure,
    hashlock_in_use,
)
from gateway.api.replays import replay
from gateway.api.schemas import Trade, TradeCreate
from gateway.api.views import new_trade_views
from gateway.chain.sending import node_unavailable
from gateway.chain.titles import Title
from gateway.db.enterprises import EnterpriseRepository
from gateway.db.idempotency import IdempotencyKeys
from gateway.db.models import TradePartyRow
from gateway.db.trade_records import TradeRecords
from gateway.domain.locks import hashlock_of
from gateway.domain.trade import (
    AWAITING_HASHLOCK,
    ActionProposeTrade,
    Terms,
    TradeState,
    terms_problems,
)
from gateway.engine.unit import Unit

# A batch's Idempotency-Key shares the namespace of single proposals' keys (one table): its
# stored request hash covers the route as well as the body, so a key used for a proposal and
# then for a batch (or the reverse) is a key reused with another request, never a replay of
# the other kind's response. (A single proposal's hash is of its body alone, as before.)
BATCH_ROUTE = "POST /v1/trades/batch"


def proposal_hash(body: TradeCreate) -> str:
    """What a single proposal's Idempotency-Key is stored with: the hash of its body."""
    return hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True)
                          .encode()).hexdigest()


def create_trade(ctx: ApiContext, caller: Enterprise, body: TradeCreate,
                 idempotency_key: str) -> tuple[int, dict]:
    request_hash = proposal_hash(body)
    read = _read_chains(ctx, caller, idempotency_key, request_hash,
                        [int(body.delivery.token_id)])
    if isinstance(read, _Replay):
        return read.answer
    now, titles = read

    def prepare(records: TradeRecords) -> list[Proposal]:
        other = EnterpriseRepository(records.session).fields(body.counterparty)
        return [judge_single(ctx, records, caller, body, other, now, titles)]

    def refuse_used(used: list[int]) -> Problem:
        return hashlock_in_use()

    def view(records: TradeRecords, made: list[Made]) -> dict:
        return made_views(records, ctx, caller, made)[0].model_dump(mode="json")

    return _commit(ctx, caller, prepare, idempotency_key, request_hash,
                   _Answers(view, refuse_used, lambda _, exposure: cap_problem(ctx, exposure)))


def judge_single(ctx: ApiContext, records: TradeRecords, caller: Enterprise, body: TradeCreate,
                 other: Row | None, now: int, titles: dict[int, Title | None]) -> Proposal:
    """A single proposal's checks, in order, and its action (a Problem refuses it): the
    counterparty (`other`, its row if it exists), the buyer's cap as an early answer
    (decided under the exposure lock by the writing transaction), `prepare_proposal`."""
    if other is None or other.id == caller.id:
        raise Problem(422, "no such counterparty enterprise (and not yourself)",
                      field="counterparty")
    if body.role == "buyer":
        check_exposure(ctx, records, caller.id, int(body.payment.amount))
    proposal = prepare_proposal(ctx, caller, Enterprise.from_row(other), body, now, titles)
    assert proposal is not None  # (not gathering: the first problem was raised)
    return proposal


def create_trades(ctx: ApiContext, caller: Enterprise, bodies: list[TradeCreate],
                  idempotency_key: str) -> tuple[int, dict]:
    """A batch of proposals (`POST /v1/trades/batch`): one transaction, all or none. Every
    item is checked before anything is written, and every problem found is answered at once,
    each field named under its item (`trades[3].payment.amount`). The buyer's cap and
    hashlock uniqueness hold across the batch's own items as well."""
    request_hash = hashlib.sha256(
        (BATCH_ROUTE + "\n" + json.dumps([b.model_dump(mode="json") for b in bodies],
                                         sort_keys=True)).encode()).hexdigest()
    read = _read_chains(ctx, caller, idempotency_key, request_hash,
                        [int(b.delivery.token_id) for b in bodies])
    if isinstance(read, _Replay):
        return read.answer
    now, on_chain = read

    def prepare(records: TradeRecords) -> list[Proposal]:
        others = {e.id: Enterprise.from_row(e) for e in EnterpriseRepository(
            records.session).by_ids({b.counterparty for b in bodies} - {caller.id}).values()}
        exposure = records.open_exposure(caller.id) \
            if any(b.role == "buyer" for b in bodies) else 0
        return _prepare_batch(ctx, caller, bodies, others, exposure, now, on_chain)

    def refuse_used(used: list[int]) -> Problem:
        if not used:  # refused by the constraint, gone since (cannot happen: trades stay)
            return Problem(409, HASHLOCK_IN_USE, field="trades", kind="hashlock-reused")
        return batch_problem([(i, hashlock_in_use()) for i in used], len(bodies))

    def view(records: TradeRecords, made: list[Made]) -> dict:
        return {"trades": [v.model_dump(mode="json")
                           for v in made_views(records, ctx, caller, made)]}

    def over_cap(i: int, exposure: int) -> Problem:
        return batch_problem([(i, batch_over_cap(ctx, exposure))], len(bodies))

    return _commit(ctx, caller, prepare, idempotency_key, request_hash,
                   _Answers(view, refuse_used, over_cap))


@dataclass(frozen=True)
class _Replay:
    answer: tuple[int, dict]


def _read_chains(ctx: ApiContext, caller: Enterprise, key: str, request_hash: str,
                 token_ids: list[int]) -> tuple[int, dict[int, Title | None]] | _Replay:
    """Chain time and the titles, read before the writing transaction (which holds no lock
    while a node answers). A node that cannot be reached: a request already answered gets
    its stored answer; any other the node's error (503)."""
    try:
        return read_titles_and_now(ctx, token_ids)
    except Exception as exc:
        if not node_unavailable(exc):
            raise
        with ctx.session_factory() as session:
            answer = replay(ctx, TradeRecords(session), caller, key, request_hash)
        if answer is None:
            raise
        return _Replay(answer)


def _prepare_batch(ctx: ApiContext, caller: Enterprise, bodies: list[TradeCreate],
                   others: dict[str, Enterprise], exposure: int, now: int,
                   on_chain: dict[int, Title | None]) -> list[Proposal]:
    """Every item checked (as `_prepare` checks one, and against the batch's other items:
    one hashlock or one title twice, the cap across them); every problem raised at once."""
    found: list[tuple[int, Problem]] = []
    proposals: list[Proposal] = []
    hashlocks: dict[str, int] = {}
    titles: dict[int, int] = {}
    over_cap = False
    for i, body in enumerate(bodies):
        gathered: list[Problem] = []
        other = others.get(body.counterparty)
        if other is None:
            gathered.append(Problem(422, "no such counterparty enterprise (and not yourself)",
                                    field="counterparty"))
        proposal = prepare_proposal(ctx, caller, other, body, now, on_chain, gathered)
        if body.hashlock is not None:
            first = hashlocks.setdefault(body.hashlock, i)
            if first != i:
                gathered.append(Problem(422, f"the same hashlock as trades[{first}]: every "
                                             "trade needs its own secret", field="hashlock"))
        token_id = int(body.delivery.token_id)
        first = titles.setdefault(token_id, i)
        if first != i:
            gathered.append(Problem(422, f"title #{token_id} is already offered in "
                                         f"trades[{first}] of this batch",
                                    field="delivery.token_id"))
        if body.role == "buyer" and not over_cap and not gathered:
            # An early answer, as for a single proposal: decided in the batch's transaction.
            exposure += int(body.payment.amount)
            if exposure > ctx.limits.exposure_cap:
                over_cap = True
                gathered.append(batch_over_cap(ctx, exposure - int(body.payment.amount)))
        found.extend((i, problem) for problem in gathered)
        if proposal is not None:
            proposals.append(proposal)
    if found:
        raise batch_problem(found, len(bodies))
    return proposals


@dataclass
class _Answers:
    """How a proposal request answers, single or batch: its response body, built from the
    writing transaction's records; its problem for items whose hashlock is in use (by index);
    its problem for the item that takes the buyer over its cap (index, exposure open)."""

    view: Callable[[TradeRecords, list[Made]], dict]
    hashlocks_used: Callable[[list[int]], Problem]
    over_cap: Callable[[int, int], Problem]


def _commit(ctx: ApiContext, caller: Enterprise,
            prepare: Callable[[TradeRecords], list[Proposal]], key: str, request_hash: str,
            answers: _Answers) -> tuple[int, dict]:
    """The transaction of a proposal request; once more after a unique constraint refused
    its commit (a concurrent request won the key or a hashlock): the second run answers the
    winner's replay or the hashlock problem."""
    for attempt in (1, 2):
        try:
            with ctx.dispatcher.unit() as unit:
                return _write(ctx, unit, caller, prepare, key, request_hash, answers)
        except IntegrityError:
            if attempt == 2:
                raise answers.hashlocks_used([]) from None
    raise AssertionError("unreachable")


def _write(ctx: ApiContext, unit: Unit, caller: Enterprise,
           prepare: Callable[[TradeRecords], list[Proposal]], key: str, request_hash: str,
           answers: _Answers) -> tuple[int, dict]:
    records = TradeRecords(unit.session)
    answer = replay(ctx, records, caller, key, request_hash)
    if answer is not None:
        return answer  # answered before, or committed first by a concurrent call
    proposals = prepare(records)  # checked (Problem: nothing written)
    used = records.hashlocks_in_use([p.action.terms.hashlock for p in proposals
                                     if p.action.terms.hashlock != AWAITING_HASHLOCK])
    if used:
        raise answers.hashlocks_used([i for i, p in enumerate(proposals)
                                      if p.action.terms.hashlock in used])
    if any(p.body.role == "buyer" for p in proposals):
        # The buyer commits itself: its cap, read under its exposure lock in the transaction
        # that makes the trades, so two concurrent proposals cannot both fit.
        unit.lock_name(f"exposure:{caller.id}")
        open_now = records.open_exposure(caller.id)
        for i, p in enumerate(proposals):
            if p.body.role == "buyer":
                if open_now + p.amount > ctx.limits.exposure_cap:
                    raise answers.over_cap(i, open_now)
                open_now += p.amount
    states = unit.propose_many([p.action for p in proposals])
    parties = records.add_parties([
        (p.action.trade_id, p.buyer.id, p.seller.id, caller.id, p.amount,
         ctx.cipher.encrypt(p.secret) if ctx.cipher and p.secret else None) for p in proposals])
    made = [Made(state, p, row) for state, p, row in zip(states, proposals, parties,
                                                          strict=True)]
    response = answers.view(records, made)
    IdempotencyKeys(unit.session).store(caller.id, key, request_hash, 201, response)
    return 201, response


@dataclass(frozen=True)
class Made:
    """A trade as `_write` made it: its state, its proposal, its parties' row."""

    state: TradeState
    proposal: Proposal
    parties: TradePartyRow


def made_views(records: TradeRecords, ctx: ApiContext, caller: Enterprise,
               made: list[Made]) -> list[Trade]:
    enterprises = {e.id: e for m in made for e in (m.proposal.buyer, m.proposal.seller)}
    return new_trade_views(records, ctx, caller, [(m.state, m.parties) for m in made],
                           enterprises)


@dataclass
class Proposal:
    """One proposal checked and built, ready for the dispatcher (`prepare_proposal`)."""

    body: TradeCreate
    buyer: Enterprise
    seller: Enterprise
    amount: int
    secret: bytes | None  # a managed buyer's, drawn by the gateway
    action: ActionProposeTrade


def prepare_proposal(ctx: ApiContext, caller: Enterprise, other: Enterprise | None,
                     body: TradeCreate, now: int, titles: dict[int, Title | None],
                     gather: list[Problem] | None = None) -> Proposal | None:
    """Check a proposal against everything but the buyer's cap and the hashlock's
    uniqueness (decided in the transaction that makes the trade) and build its action.

    `gather` None (a single proposal): the first problem is raised. A list (an item of a
    batch): every problem found is appended to it and None returned, so the client hears of
    them all at once; checks that need what an earlier one refused are skipped (those that
    need the counterparty, when `other` is None: the caller has already been told)."""
    def refuse(problem: Problem) -> None:
        if gather is None:
            raise problem
        gather.append(problem)

    found = len(gather) if gather is not None else 0
    if body.payment.token != ctx.payment.asset:
        refuse(Problem(422, f"the payment token of this gateway is {ctx.payment.asset}",
                       field="payment.token"))
    amount = int(body.payment.amount)
    if amount > ctx.limits.exposure_cap:
        # Whoever proposes: no buyer could ever accept it. This reads nothing of the buyer's
        # (the cap is the gateway's), so it tells a seller nothing about its counterparty.
        refuse(Problem(409, f"the amount exceeds the open exposure a buyer may have, "
                            f"{ctx.limits.exposure_cap} units", field="payment.amount",
                       kind="exposure-cap"))
    buyer = caller if body.role == "buyer" else other
    seller = caller if body.role == "seller" else other
    secret, hashlock = _hashlock(ctx, body, buyer, refuse) if buyer is not None else (None, None)
    for problem in deadline_problems(ctx, body.deadlines, now):
        refuse(problem)
    if seller is not None:
        try:
            check_title(ctx, seller.business_address, body.delivery.token_id,
                        body.delivery.document_hash,
                        titles[int(body.delivery.token_id)])
        except Problem as problem:
            refuse(problem)
    if buyer is None or seller is None:
        return None
    terms = Terms(buyer.payment_address, seller.payment_address, buyer.business_address,
                  seller.business_address, amount, int(body.delivery.token_id),
                  bytes.fromhex(body.delivery.document_hash[2:]),
                  AWAITING_HASHLOCK if hashlock is None else hashlock,
                  body.deadlines.delivery, body.deadlines.payment)
    problems = terms_problems(terms, ctx.policy)
    if problems:
        refuse(Problem(422, problems[0][1], errors=[
            {"field": REQUEST_FIELDS.get(name, name), "message": message}
            for name, message in problems]))
    if hashlock is None or (gather is not None and len(gather) > found):
        return None
    action = ActionProposeTrade(secrets.token_bytes(32), terms, managed_buyer=buyer.managed,
                                managed_seller=seller.managed)
    return Proposal(body, buyer, seller, amount, secret, action)


def _hashlock(ctx: ApiContext, body: TradeCreate, buyer: Enterprise,
              refuse: Callable[[Problem], None]) -> tuple[bytes | None, bytes | None]:
    """(secret, hashlock) of a proposal, by trust rule 1: only the buyer chooses the hashlock.
    A managed buyer's secret is drawn here (the gateway keeps it); a self-custody buyer gives
    the hashlock when it proposes, or when it accepts a seller's proposal (AWAITING_HASHLOCK
    until then). None for a hashlock that was refused."""
    if buyer.managed:
        if body.hashlock is not None:
            refuse(Problem(422, "the gateway draws the secret of a managed buyer: omit "
                                "hashlock", field="hashlock"))
        elif ctx.cipher is None:
            refuse(Problem(503, "this gateway has no secrets key (DVP_SECRETS_KEY) to keep "
                                "a managed buyer's secret", kind="no-secrets-key"))
        else:
            secret = secrets.token_bytes(32)
            return secret, hashlock_of(secret)
    elif body.role == "seller":
        # A seller who chose the hashlock could claim the buyer's payment itself with a
        # secret of its own, having delivered nothing.
        if body.hashlock is None:
            return None, AWAITING_HASHLOCK
        refuse(Problem(422, "only the buyer sets the hashlock: a seller's proposal to a "
                            "buyer that keeps its own secret carries none; the buyer "
                            "gives it when it accepts", field="hashlock"))
    elif body.hashlock is None:
        refuse(Problem(422, "a self-custody buyer keeps its own secret: give its sha256 "
                            "hashlock", field="hashlock"))
    else:
        return None, bytes.fromhex(body.hashlock[2:])
    return None, None


REQUEST_FIELDS = {"t_pay": "deadlines.payment", "t_deliver": "deadlines.delivery",
                  "amount": "payment.amount", "token_id": "delivery.token_id",
                  "document_hash": "delivery.document_hash"}
