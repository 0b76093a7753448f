"""Trade services: what the routers call. Every write goes through the dispatcher."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gateway.api.context import MAX_DEADLINE_AHEAD, ApiContext, check_title
from gateway.api.enterprises import Enterprise
from gateway.api.problems import Problem
from gateway.api.schemas import (
    Deadlines,
    DeliveryTerms,
    Leg,
    Party,
    PaymentTerms,
    TimelineEvent,
    Trade,
    TradeCreate,
    TradePage,
)
from gateway.db.models import (
    EnterpriseRow,
    IdempotencyRow,
    InputRow,
    SecretRow,
    TradeEventRow,
    TradePartyRow,
    TradeRow,
)
from gateway.domain.codec import decode
from gateway.domain.locks import hashlock_of
from gateway.domain.marks import EffectKey
from gateway.domain.trade import (
    AWAITING_HASHLOCK,
    ActionAcceptTrade,
    ActionCancelTrade,
    ActionProposeTrade,
    ActionTakeDelivery,
    InvalidTransition,
    Phase,
    Terms,
    TradeState,
    terms_problems,
)
from gateway.engine.dispatcher import ActionsRefused, UnknownTrade

# --- create ------------------------------------------------------------------------------------


def create_trade(ctx: ApiContext, caller: Enterprise, body: TradeCreate,
                 idempotency_key: str) -> tuple[int, dict]:
    request_hash = hashlib.sha256(json.dumps(body.model_dump(mode="json"), sort_keys=True)
                                  .encode()).hexdigest()
    with ctx.session_factory() as session:
        replay = _replay(session, caller, idempotency_key, request_hash)
        if replay is not None:
            return replay
        counterparty = session.get(EnterpriseRow, body.counterparty)
        if counterparty is None or counterparty.id == caller.id:
            raise Problem(422, "no such counterparty enterprise (and not yourself)",
                          field="counterparty")
        other = Enterprise.from_row(counterparty)
        if body.role == "buyer":  # an early answer; decided in the trade's transaction (also)
            check_exposure(ctx, session, caller.id, int(body.payment.amount))
    proposal = _prepare(ctx, caller, other, body, _chain_now(ctx))
    assert proposal is not None  # (not gathering: the first problem was raised)
    trade_id = proposal.action.trade_id
    response: dict = {}

    def also(session: Session) -> None:
        """The parties, the encrypted secret and the idempotency record commit with the
        trade: a concurrent request with the same key loses on the key's primary key. A buyer
        proposing commits itself: its cap is checked here, in the transaction that makes the
        trade (it holds the trade-writes lock), so two concurrent proposals cannot both fit."""
        if body.role == "buyer":
            check_exposure(ctx, session, proposal.buyer.id, proposal.amount)
        _add_parties(ctx, session, caller, proposal)
        session.flush()
        response.update(trade_view(session, ctx, trade_id, caller).model_dump(mode="json"))
        session.add(IdempotencyRow(enterprise_id=caller.id, key=idempotency_key,
                                   request_hash=request_hash, status_code=201,
                                   response=response))

    try:
        ctx.dispatcher.propose(proposal.action, also=also)
    except IntegrityError:
        with ctx.session_factory() as session:
            replay = _replay(session, caller, idempotency_key, request_hash)
        if replay is not None:
            return replay  # the same request, committed first by a concurrent call
        raise hashlock_in_use() from None
    return 201, response


@dataclass
class _Proposal:
    """One proposal checked and built, ready for the dispatcher (`_prepare`)."""

    body: TradeCreate
    buyer: Enterprise
    seller: Enterprise
    amount: int
    secret: bytes | None  # a managed buyer's, drawn by the gateway
    action: ActionProposeTrade


def _prepare(ctx: ApiContext, caller: Enterprise, other: Enterprise | None, body: TradeCreate,
             now: int, gather: list[Problem] | None = None) -> _Proposal | None:
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
    secret = None
    hashlock: bytes | None = None
    buyer = caller if body.role == "buyer" else other
    seller = caller if body.role == "seller" else other
    if buyer is not None:
        if buyer.managed:
            if body.hashlock is not None:
                refuse(Problem(422, "the gateway draws the secret of a managed buyer: omit "
                                    "hashlock", field="hashlock"))
            elif ctx.cipher is None:
                refuse(Problem(503, "this gateway has no secrets key (DVP_SECRETS_KEY) to keep "
                                    "a managed buyer's secret", kind="no-secrets-key"))
            else:
                secret = secrets.token_bytes(32)
                hashlock = hashlock_of(secret)
        elif body.role == "seller":
            # Trust rule 1: a seller who chose the hashlock could claim the buyer's payment
            # itself with a secret of its own, having delivered nothing.
            if body.hashlock is not None:
                refuse(Problem(422, "only the buyer sets the hashlock: a seller's proposal to a "
                                    "buyer that keeps its own secret carries none; the buyer "
                                    "gives it when it accepts", field="hashlock"))
            else:
                hashlock = AWAITING_HASHLOCK
        elif body.hashlock is None:
            refuse(Problem(422, "a self-custody buyer keeps its own secret: give its sha256 "
                                "hashlock", field="hashlock"))
        else:
            hashlock = bytes.fromhex(body.hashlock[2:])
    for problem in _deadline_problems(ctx, body.deadlines, now):
        refuse(problem)
    if seller is not None:
        try:
            check_title(ctx, seller.business_address, body.delivery.token_id,
                        body.delivery.document_hash)
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
    return _Proposal(body, buyer, seller, amount, secret, action)


def _add_parties(ctx: ApiContext, session: Session, caller: Enterprise,
                 proposal: _Proposal) -> None:
    """A new trade's parties and, for a managed buyer, its encrypted secret."""
    trade_id = proposal.action.trade_id.hex()
    session.add(TradePartyRow(trade_id=trade_id, buyer_id=proposal.buyer.id,
                              seller_id=proposal.seller.id, proposer_id=caller.id,
                              amount=str(proposal.amount)))
    if proposal.secret is not None:
        assert ctx.cipher is not None
        session.add(SecretRow(trade_id=trade_id,
                              encrypted_secret=ctx.cipher.encrypt(proposal.secret)))


# --- batches -----------------------------------------------------------------------------------

# A batch's Idempotency-Key shares the namespace of single proposals' keys (one table): its
# stored request hash covers the route as well as the body, so a key used for a proposal and
# then for a batch (or the reverse) is a key reused with another request, never a replay of
# the other kind's response. (A single proposal's hash is of its body alone, as before.)
BATCH_ROUTE = "POST /v1/trades/batch"


def create_trades(ctx: ApiContext, caller: Enterprise, bodies: list[TradeCreate],
                  idempotency_key: str) -> tuple[int, dict]:
    """A batch of proposals (`POST /v1/trades/batch`): one transaction, all or none. Every
    item is checked before anything is written, and every problem found is answered at once,
    each field named under its item (`trades[3].payment.amount`). The buyer's cap and
    hashlock uniqueness hold across the batch's own items as well."""
    request_hash = hashlib.sha256(
        (BATCH_ROUTE + "\n" + json.dumps([b.model_dump(mode="json") for b in bodies],
                                         sort_keys=True)).encode()).hexdigest()
    with ctx.session_factory() as session:
        replay = _replay(session, caller, idempotency_key, request_hash)
        if replay is not None:
            return replay
        ids = {b.counterparty for b in bodies} - {caller.id}
        others = {row.id: Enterprise.from_row(row) for row in session.scalars(
            select(EnterpriseRow).where(EnterpriseRow.id.in_(ids)))} if ids else {}
        exposure = open_exposure(session, caller.id) \
            if any(b.role == "buyer" for b in bodies) else 0
    now = _chain_now(ctx)
    found: list[tuple[int, Problem]] = []
    proposals: list[_Proposal] = []
    hashlocks: dict[str, int] = {}
    titles: dict[int, int] = {}
    over_cap = False
    for i, body in enumerate(bodies):
        gathered: list[Problem] = []
        other = others.get(body.counterparty)
        if other is None:
            gathered.append(Problem(422, "no such counterparty enterprise (and not yourself)",
                                    field="counterparty"))
        proposal = _prepare(ctx, caller, other, body, now, gathered)
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
                gathered.append(_over_cap(ctx, exposure - int(body.payment.amount)))
        found.extend((i, problem) for problem in gathered)
        if proposal is not None:
            proposals.append(proposal)
    if found:
        raise batch_problem(found, len(bodies))
    response: dict = {}

    def also(session: Session) -> None:
        """As a single proposal's: the parties, secrets and idempotency record commit with the
        trades; the caller's cap, as buyer of any, is decided here, across all of them."""
        if session.get(IdempotencyRow, (caller.id, idempotency_key)) is not None:
            raise _KeyTaken  # a concurrent request with this key committed first: replay it
        if any(p.body.role == "buyer" for p in proposals):
            open_now = open_exposure(session, caller.id)
            for i, p in enumerate(proposals):
                if p.body.role == "buyer":
                    if open_now + p.amount > ctx.limits.exposure_cap:
                        raise batch_problem([(i, _over_cap(ctx, open_now))], len(bodies))
                    open_now += p.amount
        for p in proposals:
            _add_parties(ctx, session, caller, p)
        session.flush()
        response["trades"] = _batch_views(session, ctx, caller,
                                          [p.action.trade_id for p in proposals])
        session.add(IdempotencyRow(enterprise_id=caller.id, key=idempotency_key,
                                   request_hash=request_hash, status_code=201,
                                   response=response))

    try:
        ctx.dispatcher.propose_many([p.action for p in proposals], also=also)
    except (IntegrityError, _KeyTaken):
        with ctx.session_factory() as session:
            replay = _replay(session, caller, idempotency_key, request_hash)
            if replay is not None:
                return replay  # the same request, committed first by a concurrent call
            used = _hashlocks_in_use(session, {i: p.action.terms.hashlock
                                               for i, p in enumerate(proposals)})
        raise _hashlocks_problem(used, len(bodies)) from None
    return 201, response


class _KeyTaken(Exception):
    """Inside a batch's transaction: its Idempotency-Key was stored meanwhile."""


def _over_cap(ctx: ApiContext, exposure: int) -> Problem:
    return Problem(409, f"the buyer's open exposure would exceed its cap of "
                        f"{ctx.limits.exposure_cap} units ({exposure} open, counting this "
                        f"batch's earlier items)", field="payment.amount", kind="exposure-cap")


def batch_problem(found: list[tuple[int, Problem]], size: int) -> Problem:
    """One answer for the problems of a batch's items, (item index, problem) each: every
    field named under its item (`trades[3].payment.amount`; `trades[3]` for a problem of the
    item as a whole). Its status: 422 if any item is invalid, else 409 (a conflict: the cap,
    a hashlock in use, a phase), else that of the problems (503); its type that of its
    problems when they share one."""
    status = next(s for s in (422, 409, *sorted({p.status for _, p in found}))
                  if any(p.status == s for _, p in found))
    kinds = {p.kind for _, p in found if p.status == status}
    errors = []
    for i, problem in sorted(found, key=lambda f: f[0]):
        for error in problem.errors or [{"message": problem.detail}]:
            field = error.get("field")
            errors.append({"field": f"trades[{i}]" + (f".{field}" if field else ""),
                           "message": error["message"]})
    items = sorted({i for i, _ in found})
    first_i, first = min(found, key=lambda f: (f[1].status != status, f[0]))
    detail = f"trades[{first_i}]: {first.detail}"
    if len(found) > 1:
        detail = (f"{len(items)} of the {size} trades refused, nothing was made or changed; "
                  f"first: {detail}")
    return Problem(status, detail, errors=errors,
                   kind=kinds.pop() if len(kinds) == 1 else None)


def _hashlocks_in_use(session: Session, hashlocks: dict[int, bytes]) -> list[int]:
    """The items whose hashlock some trade uses (after the unique constraint refused a batch:
    to say which; it tells no more than the constraint did, and nothing of whose)."""
    wanted = {h.hex(): i for i, h in hashlocks.items() if h != AWAITING_HASHLOCK}
    if not wanted:
        return []
    used = session.scalars(select(TradeRow.hashlock).where(TradeRow.hashlock.in_(wanted)))
    return sorted(wanted[h] for h in used)


def _hashlocks_problem(items: list[int], size: int) -> Problem:
    if not items:  # refused by the constraint, gone since (cannot happen: trades stay)
        problem = hashlock_in_use()
        return Problem(409, problem.detail, field="trades", kind=problem.kind)
    return batch_problem([(i, hashlock_in_use()) for i in items], size)


def _batch_views(session: Session, ctx: ApiContext, caller: Enterprise,
                 trade_ids: list[bytes]) -> list[dict]:
    """The views of trades the caller is a party to, in the order given (one query per kind,
    as `_views`)."""
    ids = [t.hex() for t in trade_ids]
    trades = {r.id: r for r in session.scalars(select(TradeRow).where(TradeRow.id.in_(ids)))}
    parties = {r.trade_id: r for r in session.scalars(
        select(TradePartyRow).where(TradePartyRow.trade_id.in_(ids)))}
    return [view.model_dump(mode="json") for view in _views(
        session, ctx, [(trades[t], parties[t]) for t in ids], caller)]


def accept_trades(ctx: ApiContext, caller: Enterprise,
                  items: list[tuple[str, str | None]]) -> list[Trade]:
    """A batch of accepts (`POST /v1/trades/accept-batch`), (trade id, hashlock) each: one
    transaction, all or none, every item judged as `act` judges one accept; the caller's cap,
    as buyer, across all of them. A trade that does not exist or is not the caller's is a 422
    naming its item (`trades[2].id`), the same answer for both."""
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
    with ctx.session_factory() as session:
        rows = {r.trade_id: r for r in session.scalars(select(TradePartyRow).where(
            TradePartyRow.trade_id.in_([t.hex() for t in ids if t])))}
    parties: list[TradePartyRow] = []
    for i, trade_id in enumerate(ids):
        row = rows.get(trade_id.hex())
        if row is None or caller.id not in (row.buyer_id, row.seller_id):
            found.append((i, Problem(422, "no such trade", field="id")))
        else:
            parties.append(row)
    if found:
        raise batch_problem(found, len(items))

    def check(states: list[TradeState], session: Session) -> None:
        refused = [(i, problem) for i, (state, row) in enumerate(zip(states, parties,
                                                                      strict=True))
                   if (problem := _accept_refusal(caller, row, state)) is not None]
        if refused:
            raise batch_problem(refused, len(items))
        committing = [(i, state.terms.amount) for i, (state, row) in
                      enumerate(zip(states, parties, strict=True))
                      if caller.id == row.buyer_id and state.phase is Phase.PROPOSED]
        if committing:
            # The buyer commits itself to each of these now: its cap, across them all, read
            # in the accepts' own transaction.
            exposure = open_exposure(session, caller.id)
            for i, amount in committing:
                if exposure + amount > ctx.limits.exposure_cap:
                    raise batch_problem([(i, _over_cap(ctx, exposure))], len(items))
                exposure += amount

    actions: list = [ActionAcceptTrade(trade_id, bytes.fromhex(hashlock[2:]) if hashlock
                                       else None)
                     for trade_id, (_, hashlock) in zip(ids, items, strict=True)]
    try:
        ctx.dispatcher.apply_actions(actions, check=check)
    except ActionsRefused as exc:
        raise batch_problem([(i, _action_problem(error)) for i, error in exc.refused],
                            len(items)) from None
    except IntegrityError:
        with ctx.session_factory() as session:
            used = _hashlocks_in_use(session, {i: bytes.fromhex(h[2:])
                                               for i, (_, h) in enumerate(items) if h})
        raise _hashlocks_problem(used, len(items)) from None
    with ctx.session_factory() as session:
        trades = {r.id: r for r in session.scalars(
            select(TradeRow).where(TradeRow.id.in_([t.hex() for t in ids])))}
        return _views(session, ctx, [(trades[t.hex()], row)
                                     for t, row in zip(ids, parties, strict=True)], caller)


def _action_problem(error: Exception) -> Problem:
    """What `act` answers for an action the dispatcher refused."""
    if isinstance(error, UnknownTrade):
        return Problem(422, "no such trade", field="id")
    if isinstance(error, InvalidTransition):
        return Problem(409, str(error), kind="invalid-transition")
    field, _, message = str(error).partition(": ")
    return Problem(422, message or field, field=field if message else None)


HASHLOCK_IN_USE = ("this hashlock is already in use: every trade needs its own secret; draw a "
                   "new 32-byte secret and give its sha256")


def hashlock_in_use() -> Problem:
    """The answer to a hashlock that a trade already uses, at proposal or at accept.

    Uniqueness is enforced across all tenants (the unique `trades.hashlock` column): one secret
    opening two trades' locks is a money-safety fault (revealing it for one exposes the other),
    and the relayer routes chain events by hashlock. So a collision must be refused, and the
    refusal necessarily tells the caller one bit: "some trade uses this hashlock".

    Design: that bit is all it tells. The answer is one constant 409 (status, type, detail,
    `errors[0].field == "hashlock"`) whether the other trade is the caller's own or another
    tenant's: it never names, links or counts the other trade, its parties or its phase, and
    it is decided by the same database constraint in both cases (no separate lookup whose
    cost could differ). The remaining bit is harmless: a hashlock is sha256 of a buyer's
    32-byte secret, so nobody can guess one (2**-256); before it is locked on chain only the
    buyer that chose it (it first reaches the gateway in the very request that reserves it)
    and that trade's counterparty know it, both already parties to the trade; and once
    locked it is public anyway (every PaymentHTLC `Locked` event carries it). A tenant can
    only ask about a hashlock it already knows, and learns nothing about whom it belongs to."""
    return Problem(409, HASHLOCK_IN_USE, field="hashlock", kind="hashlock-reused")


REQUEST_FIELDS = {"t_pay": "deadlines.payment", "t_deliver": "deadlines.delivery",
                  "amount": "payment.amount", "token_id": "delivery.token_id",
                  "document_hash": "delivery.document_hash"}


def _replay(session: Session, caller: Enterprise, key: str,
            request_hash: str) -> tuple[int, dict] | None:
    """The stored response of an earlier request with this key, or None if it is new."""
    seen = session.get(IdempotencyRow, (caller.id, key))
    if seen is None:
        return None
    if seen.request_hash != request_hash:
        raise Problem(422, "this Idempotency-Key was used with a different request body",
                      field="Idempotency-Key", kind="idempotency-key-reused")
    return seen.status_code, seen.response


def _chain_now(ctx: ApiContext) -> int:
    """Chain time, by which deadlines are judged: the later of the two chains' latest blocks."""
    return max(ctx.payment.now(), ctx.business.now())


def _deadline_problems(ctx: ApiContext, deadlines: Deadlines, now: int) -> list[Problem]:
    problems = []
    for field, value in (("deadlines.delivery", deadlines.delivery),
                         ("deadlines.payment", deadlines.payment)):
        if value <= now + ctx.policy.claim_lead_time:
            problems.append(Problem(
                422, f"must be in the future, after {now + ctx.policy.claim_lead_time}"
                     f" (chain time now {now})", field=field))
        elif value > now + MAX_DEADLINE_AHEAD:
            problems.append(Problem(422, f"at most {MAX_DEADLINE_AHEAD} s ahead of chain time "
                                         f"(latest allowed {now + MAX_DEADLINE_AHEAD})",
                                    field=field))
    return problems


def open_exposure(session: Session, buyer_id: str) -> int:
    """Payment units the buyer has committed itself to (exact: summed as Python integers):
    its open trades that it proposed itself, or that it accepted (past `proposed`: only the
    buyer's accept moves a seller's proposal on). A proposal made TO the buyer that it has not
    accepted commits it to nothing and does not count: otherwise any tenant could fill a
    victim's cap with proposals naming it as buyer, which stay open until their T_pay (up to
    30 days)."""
    rows = session.scalars(select(TradePartyRow.amount).join(
        TradeRow, TradePartyRow.trade_id == TradeRow.id).where(
        TradePartyRow.buyer_id == buyer_id, TradeRow.active.is_(True),
        or_(TradePartyRow.proposer_id == buyer_id, TradeRow.phase != Phase.PROPOSED.value)))
    return sum(int(amount or 0) for amount in rows)


def check_exposure(ctx: ApiContext, session: Session, buyer_id: str, amount: int) -> None:
    """409 `exposure-cap` (field payment.amount) when committing the buyer to `amount` more
    would take it over the cap. Called only when the buyer itself commits (it proposes, or it
    accepts), inside the dispatcher's transaction that does so: that transaction holds the
    trade-writes lock (`Repository.lock_trade_writes`), so no other proposal or accept can
    commit between this read and the new trade's commit."""
    exposure = open_exposure(session, buyer_id)
    if exposure + amount > ctx.limits.exposure_cap:
        raise Problem(409, f"the buyer's open exposure would exceed its cap of "
                           f"{ctx.limits.exposure_cap} units ({exposure} open)",
                      field="payment.amount", kind="exposure-cap")


# --- read --------------------------------------------------------------------------------------


def _parties(session: Session, trade_id: bytes, caller: Enterprise) -> TradePartyRow:
    """The trade's parties, or 404 when the caller is not one of them (no existence leak)."""
    row = session.get(TradePartyRow, trade_id.hex())
    if row is None or caller.id not in (row.buyer_id, row.seller_id):
        raise Problem(404, "no such trade", kind="not-found")
    return row


def parse_trade_id(text: str) -> bytes:
    try:
        raw = bytes.fromhex(text.removeprefix("0x"))
    except ValueError:
        raw = b""
    if len(raw) != 32:
        raise Problem(404, "no such trade", kind="not-found")
    return raw


def trade_view(session: Session, ctx: ApiContext, trade_id: bytes, caller: Enterprise,
               timeline: bool = False) -> Trade:
    parties = _parties(session, trade_id, caller)
    row = session.get(TradeRow, trade_id.hex())
    assert row is not None
    return _views(session, ctx, [(row, parties)], caller, timeline)[0]


def _views(session: Session, ctx: ApiContext, rows: list[tuple[TradeRow, TradePartyRow]],
           caller: Enterprise, timeline: bool = False) -> list[Trade]:
    """The API view of trades, with what they refer to read in one query per kind (never
    one per trade)."""
    if not rows:
        return []
    ids = {e for _, p in rows for e in (p.buyer_id, p.seller_id)}
    enterprises = {e.id: e for e in session.scalars(
        select(EnterpriseRow).where(EnterpriseRow.id.in_(ids)))}
    locks: dict[str, dict[tuple[str, str], InputRow]] = {}
    for r in session.scalars(select(InputRow).where(
            InputRow.trade_id.in_([t.id for t, _ in rows]), InputRow.orphaned.is_(False),
            InputRow.kind.in_(LEG_INPUTS)).order_by(InputRow.id)):
        step = "lock" if r.kind.endswith("Locked") else "exit"
        locks.setdefault(r.trade_id, {}).setdefault((step, r.payload["lock_id"]), r)
    return [_to_trade(session, ctx, row, parties, caller, timeline, enterprises, locks)
            for row, parties in rows]


LEG_INPUTS = ("ContractReceivePaymentLocked", "ContractReceiveDeliveryLocked",
              "ContractReceiveClaimed", "ContractReceiveRefunded")


def _to_trade(session: Session, ctx: ApiContext, row: TradeRow, parties: TradePartyRow,
              caller: Enterprise, timeline: bool, enterprises: dict[str, EnterpriseRow],
              all_locks: dict[str, dict[tuple[str, str], InputRow]]) -> Trade:
    state = decode(TradeState, row.state)
    t = state.terms
    buyer = enterprises.get(parties.buyer_id)
    seller = enterprises.get(parties.seller_id)
    locks = all_locks.get(row.id, {})

    def leg(leg_state) -> Leg | None:  # noqa: ANN001
        if leg_state is None:
            return None
        lock_id = "0x" + leg_state.lock_id.hex()
        seen, exit_ = locks.get(("lock", lock_id)), locks.get(("exit", lock_id))
        return Leg(lock_id=lock_id, status=leg_state.status.value,
                   tx_hash="0x" + seen.tx_hash if seen and seen.tx_hash else None,
                   block_number=seen.block_number if seen else None,
                   timelock=leg_state.lock.timelock,
                   exit_tx_hash="0x" + exit_.tx_hash if exit_ and exit_.tx_hash else None,
                   exit_block_number=exit_.block_number if exit_ else None)

    events = None
    if timeline:
        events = [TimelineEvent(at=e.created_at, kind=e.kind,
                                detail={k: v for k, v in e.payload.items()
                                        if k not in ("__type__", "trade_id")},
                                chain_id=e.chain_id, block_number=e.block_number,
                                tx_hash="0x" + e.tx_hash if e.tx_hash else None)
                  for e in session.scalars(select(TradeEventRow).where(
                      TradeEventRow.trade_id == row.id).order_by(TradeEventRow.id))]

    def party(ent: EnterpriseRow | None) -> Party:
        assert ent is not None
        return Party(enterprise_id=ent.id, payment_address=ent.payment_address,
                     business_address=ent.business_address, managed=ent.managed)

    return Trade(
        id="0x" + row.id, phase=state.phase.value,
        role="buyer" if caller.id == parties.buyer_id else "seller",
        buyer=party(buyer), seller=party(seller),
        payment=PaymentTerms(token=ctx.payment.asset, amount=str(t.amount)),
        delivery=DeliveryTerms(token_id=str(t.token_id),
                               document_hash="0x" + t.document_hash.hex()),
        hashlock="0x" + t.hashlock.hex() if t.hashlock else None,
        deadlines=Deadlines(delivery=t.t_deliver, payment=t.t_pay),
        margin=t.t_pay - t.t_deliver, required_margin=ctx.policy.required_margin,
        legs={"payment": leg(state.payment), "delivery": leg(state.delivery)},
        pending=sorted(EffectKey(k).kind.value for k in state.pending), flags=list(state.flags),
        created_at=parties.created_at, timeline=events)


def list_trades(ctx: ApiContext, caller: Enterprise, *, phase: str | None, role: str | None,
                counterparty: str | None, created_from: datetime | None,
                created_to: datetime | None, cursor: str | None, limit: int) -> TradePage:
    with ctx.session_factory() as session:
        query = select(TradeRow, TradePartyRow).join(
            TradePartyRow, TradePartyRow.trade_id == TradeRow.id)
        if role == "buyer":
            query = query.where(TradePartyRow.buyer_id == caller.id)
        elif role == "seller":
            query = query.where(TradePartyRow.seller_id == caller.id)
        else:
            query = query.where(or_(TradePartyRow.buyer_id == caller.id,
                                    TradePartyRow.seller_id == caller.id))
        if phase:
            query = query.where(TradeRow.phase == phase)
        if counterparty:
            query = query.where(or_(
                and_(TradePartyRow.buyer_id == caller.id, TradePartyRow.seller_id == counterparty),
                and_(TradePartyRow.seller_id == caller.id, TradePartyRow.buyer_id == counterparty)))
        if created_from:
            query = query.where(TradePartyRow.created_at >= created_from)
        if created_to:
            query = query.where(TradePartyRow.created_at < created_to)
        if cursor:
            at, last_id = _decode_cursor(cursor)
            query = query.where(or_(TradePartyRow.created_at < at,
                                    and_(TradePartyRow.created_at == at,
                                         TradePartyRow.trade_id < last_id)))
        query = query.order_by(TradePartyRow.created_at.desc(),
                               TradePartyRow.trade_id.desc()).limit(limit + 1)
        rows = session.execute(query).all()
        items = _views(session, ctx, [(t, p) for t, p in rows[:limit]], caller)
        next_cursor = None
        if len(rows) > limit:
            last = rows[limit - 1][1]
            next_cursor = _encode_cursor(last.created_at, last.trade_id)
    return TradePage(items=items, next_cursor=next_cursor)


def _encode_cursor(at: datetime, trade_id: str) -> str:
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{trade_id}".encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, trade_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(at), trade_id
    except Exception:  # noqa: BLE001 - any malformed cursor is the client's error
        raise Problem(422, "not a cursor returned by this API", field="cursor") from None


def count_trades(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(TradeRow)) or 0


# --- actions -----------------------------------------------------------------------------------


def act(ctx: ApiContext, caller: Enterprise, trade_id: bytes, action: str,
        hashlock: bytes | None = None) -> Trade:
    with ctx.session_factory() as session:
        parties = _parties(session, trade_id, caller)

    def check(state: TradeState, session: Session) -> None:
        if action == "accept" and (refusal := _accept_refusal(caller, parties, state)):
            raise refusal
        if action == "take-delivery":
            if caller.id != parties.buyer_id or not state.managed_buyer:
                raise Problem(409, "only a managed buyer takes delivery through the gateway; "
                                   "a self-custody buyer claims on chain (see /instructions)",
                              kind="conflict")
            if request.secret is None:  # type: ignore[union-attr]
                raise Problem(503, "the gateway cannot read this trade's secret (no secrets "
                                   "key configured)", kind="no-secrets-key")
        if action == "accept" and caller.id == parties.buyer_id and \
                state.phase is Phase.PROPOSED:
            # The buyer commits itself now: its cap, read in the accept's own transaction.
            check_exposure(ctx, session, caller.id, state.terms.amount)

    match action:
        case "accept":
            request: ActionAcceptTrade | ActionCancelTrade | ActionTakeDelivery = \
                ActionAcceptTrade(trade_id, hashlock)
        case "cancel":
            request = ActionCancelTrade(trade_id)
        case "take-delivery":
            request = ActionTakeDelivery(trade_id, _buyer_secret(ctx, trade_id))
        case _:
            raise ValueError(f"unknown action {action!r}")
    try:
        ctx.dispatcher.apply_action(request, check=check)
    except InvalidTransition as exc:
        raise Problem(409, str(exc), kind="invalid-transition") from None
    except UnknownTrade:
        raise Problem(404, "no such trade", kind="not-found") from None
    except ValueError as exc:  # the machine refused the request's content (the hashlock)
        field, _, message = str(exc).partition(": ")
        raise Problem(422, message or field, field=field if message else None) from None
    except IntegrityError:
        raise hashlock_in_use() from None
    with ctx.session_factory() as session:
        return trade_view(session, ctx, trade_id, caller)


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


def _buyer_secret(ctx: ApiContext, trade_id: bytes) -> bytes | None:
    """A managed buyer's secret, decrypted from the secret store for taking delivery."""
    with ctx.session_factory() as session:
        row = session.get(SecretRow, trade_id.hex())
    if row is None or ctx.cipher is None:
        return None
    return ctx.cipher.decrypt(row.encrypted_secret)


# --- self-custody instructions -------------------------------------------------------------------


def instructions(ctx: ApiContext, caller: Enterprise, trade_id: bytes):  # noqa: ANN201
    """The unsigned transactions of the caller's next step, for a party that signs itself."""
    from gateway.api.schemas import Instructions, UnsignedTx
    from gateway.contracts import load_artifact

    with ctx.session_factory() as session:
        parties = _parties(session, trade_id, caller)
        row = session.get(TradeRow, trade_id.hex())
        assert row is not None
        state = decode(TradeState, row.state)
    role = "buyer" if caller.id == parties.buyer_id else "seller"
    t, phase = state.terms, state.phase.value
    if caller.managed:
        return Instructions(step="none", transactions=[],
                            note="the gateway signs for this managed enterprise")
    pay, biz = ctx.payment.client, ctx.business.client

    def tx(chain: str, to: str, data: str, description: str) -> UnsignedTx:
        view = ctx.payment if chain == "payment" else ctx.business
        return UnsignedTx(chain=chain, chain_id=view.chain_id, to=to,  # type: ignore[arg-type]
                          data=data if data.startswith("0x") else "0x" + data,
                          description=description)

    if role == "buyer" and phase == "agreed" and not hashlock_from_buyer(state, parties):
        return Instructions(step="wait", transactions=[],
                            note="do not lock a payment: the seller chose this trade's hashlock "
                                 "and could claim your payment without delivering; cancel the "
                                 "trade and propose again with a hashlock of your own secret")
    if role == "buyer" and phase == "agreed" and state.payment is None:
        token = pay.contract(ctx.payment.asset, load_artifact("PaymentToken"))
        htlc = pay.contract(ctx.payment.htlc, load_artifact("PaymentHTLC"))
        txs = []
        if token.functions.allowance(t.buyer_payment, ctx.payment.htlc).call() < t.amount:
            txs.append(tx("payment", token.address,
                          token.encode_abi("approve", [htlc.address, t.amount]),
                          f"approve the PaymentHTLC to take {t.amount} units"))
        txs.append(tx("payment", htlc.address,
                      htlc.encode_abi("lock", [t.seller_payment, t.amount, t.hashlock, t.t_pay]),
                      f"lock {t.amount} units for the seller until T_pay {t.t_pay}"))
        return Instructions(step="lock_payment", transactions=txs)
    if role == "seller" and phase == "payment_locked" and state.delivery is None:
        titles = biz.contract(ctx.business.asset, load_artifact("TitleDocument"))
        htlc = biz.contract(ctx.business.htlc, load_artifact("DeliveryHTLC"))
        txs = []
        if not titles.functions.isApprovedForAll(t.seller_business, htlc.address).call() and \
                titles.functions.getApproved(t.token_id).call() != htlc.address:
            txs.append(tx("business", titles.address,
                          titles.encode_abi("approve", [htlc.address, t.token_id]),
                          f"approve the DeliveryHTLC to take title #{t.token_id}"))
        txs.append(tx("business", htlc.address, htlc.encode_abi(
            "lock", [t.buyer_business, t.token_id, t.document_hash, state.trade_id, t.hashlock,
                     t.t_deliver]),
            f"lock title #{t.token_id} for the buyer until T_deliver {t.t_deliver}"))
        return Instructions(step="lock_delivery", transactions=txs,
                            note="the payment lock was verified against the terms on chain")
    if role == "buyer" and phase == "delivery_locked" and state.delivery is not None:
        # A claim that reverts still publishes the secret in its calldata: never hand one out
        # that cannot be mined before T_deliver, judged by the node's latest block.
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
        htlc = biz.contract(ctx.business.htlc, load_artifact("DeliveryHTLC"))
        data = htlc.encode_abi("claim", [state.delivery.lock.as_tuple(), bytes(32)])
        return Instructions(step="take_delivery", transactions=[tx(
            "business", htlc.address, data, "take delivery: claim the title with your secret")],
            note=warning + "the last 32 bytes of data are a placeholder: put your 32-byte "
                 "secret there before signing; the gateway then claims the payment for the "
                 "seller")
    waiting = {"proposed": "the counterparty has to accept the proposal"}
    return Instructions(step="wait", transactions=[],
                        note=waiting.get(phase, f"nothing for you to sign in phase {phase}; "
                                                "refunds after the deadlines are automatic"))
