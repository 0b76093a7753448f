"""The trade routes (`/v1/trades...`): HTTP in and out, nothing else. Each route reads its
input, runs one service in a worker thread (proposals, actions, views, instructions: each one
unit of work) and answers. The pattern every router follows: `router(ctx, caller)` returns an
`APIRouter` that `create_app` includes."""


from datetime import datetime
from functools import partial
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.routing import Match
from starlette.types import Receive, Scope, Send

from gateway.api import problems
from gateway.api.actions import accept_trades, act
from gateway.api.coalescing import Coalescer
from gateway.api.context import ApiContext
from gateway.api.enterprises import Enterprise
from gateway.api.instructions import instructions
from gateway.api.proposal_groups import Single, create_trade_group
from gateway.api.proposals import create_trade, create_trades
from gateway.api.schemas import (
    ENTERPRISE_ID_PATTERN,
    Instructions,
    Trade,
    TradeAccept,
    TradeBatchResult,
    TradeCreate,
    TradePage,
    batch_models,
)
from gateway.api.views import list_trades, parse_trade_id, trade_view
from gateway.db.trade_records import TradeRecords
from gateway.domain.trade import Phase

PHASES = tuple(p.value for p in Phase)
IdempotencyKey = Annotated[str, Header(min_length=1, max_length=200)]


def router(ctx: ApiContext, caller: Any) -> APIRouter:  # noqa: ANN401 - a FastAPI dependency
    """Routes in matching order: the batch paths before `/v1/trades/{trade_id}`."""
    routes = APIRouter(tags=["trades"])
    who = Annotated[Enterprise, Depends(caller)]
    _batch_routes(routes, ctx, who)
    _proposal_routes(routes, ctx, who)
    _read_routes(routes, ctx, who)
    _action_routes(routes, ctx, who)
    return routes


def _batch_routes(routes: APIRouter, ctx: ApiContext, Caller: Any) -> None:  # noqa: ANN401, N803
    TradeBatch, TradeAcceptBatch = batch_models(ctx.limits.batch_max)  # noqa: N806

    def batch_post(path: str, **kw: Any):  # noqa: ANN202
        """POST `path`, its validation errors naming items (`ItemIndexedRoute`)."""
        def add(endpoint):  # noqa: ANN001, ANN202
            routes.add_api_route(path, endpoint, methods=["POST"],
                                 route_class_override=ItemIndexedRoute, **kw)
            return endpoint
        return add

    @batch_post(
        "/v1/trades/batch", status_code=201, response_model=TradeBatchResult,
        response_description="The trades proposed, in the request's order. A replay (the same "
                             "Idempotency-Key and body) answers the original's status, 201, "
                             "and body.",
        responses=problems.documented({
            409: "an item would take the buyer's open exposure over its cap, counting the "
                 "batch's earlier items (type exposure-cap, field trades[i].payment.amount), "
                 "or an item's hashlock is already in use (type hashlock-reused, field "
                 "trades[i].hashlock)",
            422: "invalid request: every invalid item's fields are named (trades[i].<field>), "
                 "including two items with one hashlock or one title; more than "
                 f"{ctx.limits.batch_max} items; or an Idempotency-Key reused with another "
                 "request",
            503: "no secrets key to keep a managed buyer's secret, or the database is "
                 "unavailable"}))
    async def propose_batch(body: TradeBatch, who: Caller,  # type: ignore[valid-type]
                            idempotency_key: IdempotencyKey) -> JSONResponse:
        """Propose several trades at once, each as `POST /v1/trades` would, in ONE
        transaction: all are made or none. Every item is checked before anything is written,
        and every problem is answered at once, each naming its item (`trades[3].payment.
        amount`). The buyer's cap and hashlock uniqueness hold across the batch's own items
        too. Idempotent as a whole by `Idempotency-Key` (the keys of single proposals and
        batches share one namespace: a key used for the other kind is a 422)."""
        status, payload = await run_in_threadpool(create_trades, ctx, who,
                                                  body.trades, idempotency_key)
        return JSONResponse(payload, status_code=status)

    @batch_post(
        "/v1/trades/accept-batch", response_model=TradeBatchResult,
        response_description="The trades accepted, in the request's order.",
        responses=problems.documented({
            409: "an item may not be accepted in its phase or by the caller (field "
                 "trades[i]); the buyer's open exposure would exceed its cap, counting the "
                 "batch's earlier items (type exposure-cap, field trades[i].payment.amount); "
                 "or an item's hashlock is already in use (type hashlock-reused)",
            422: "invalid request: an item's trade does not exist or is not the caller's "
                 "(field trades[i].id), is named twice, or its hashlock is missing, "
                 f"malformed or unexpected; more than {ctx.limits.batch_max} items"}))
    def accept_batch(body: TradeAcceptBatch, who: Caller) -> TradeBatchResult:  # type: ignore[valid-type]
        """Accept several proposals at once, each as `POST /v1/trades/{trade_id}/accept`
        would, in ONE transaction: all are accepted or none. As buyer, the caller's cap is
        checked across all of them."""
        return TradeBatchResult(trades=accept_trades(
            ctx, who, [(item.id, item.hashlock) for item in body.trades]))


def _proposal_routes(routes: APIRouter, ctx: ApiContext, Caller: Any) -> None:  # noqa: ANN401, N803
    # Concurrent proposals of this process written together (gateway.api.proposal_groups).
    group = Coalescer(partial(create_trade_group, ctx), ctx.limits.request_group_max) \
        if ctx.limits.request_group_max > 1 else None

    @routes.post("/v1/trades", status_code=201, response_model=Trade,
                 response_description="The trade proposed. A replay (the same Idempotency-Key "
                                      "and body) answers the original's status, 201, and body.",
                 responses=problems.documented({
                     409: "the buyer's open exposure would exceed its cap (type exposure-cap, "
                          "field payment.amount), or the hashlock is already in use (type "
                          "hashlock-reused, field hashlock)",
                     422: "invalid request, or an Idempotency-Key reused with another body",
                     503: "no secrets key to keep a managed buyer's secret, or the database "
                          "is unavailable"}))
    async def propose(body: TradeCreate, who: Caller,
                      idempotency_key: IdempotencyKey) -> JSONResponse:
        """Propose a trade as buyer or seller. Idempotent by `Idempotency-Key`: a replay
        with the same body answers exactly what the original answered (201 and the same
        trade, even after the trade moved on); the same key with another body is a 422."""
        if group is None:
            status, payload = await run_in_threadpool(create_trade, ctx, who, body,
                                                      idempotency_key)
        else:
            status, payload = await group.submit(Single(who, body, idempotency_key))
        return JSONResponse(payload, status_code=status)


def _read_routes(routes: APIRouter, ctx: ApiContext, Caller: Any) -> None:  # noqa: ANN401, N803
    @routes.get("/v1/trades", response_model=TradePage)
    async def trades(who: Caller,
                     phase: Annotated[Literal[PHASES] | None, Query()] = None,  # type: ignore[valid-type]
                     role: Annotated[Literal["buyer", "seller"] | None, Query()] = None,
                     counterparty: Annotated[str | None, Query(
                         max_length=64, pattern=ENTERPRISE_ID_PATTERN)] = None,
                     created_from: Annotated[datetime | None, Query()] = None,
                     created_to: Annotated[datetime | None, Query()] = None,
                     cursor: Annotated[str | None, Query(max_length=500)] = None,
                     limit: Annotated[int, Query(ge=1, le=ctx.limits.max_page_size)] = min(
                         50, ctx.limits.max_page_size)) -> TradePage:
        return await run_in_threadpool(list_trades, ctx, who, phase=phase, role=role,
                                       counterparty=counterparty, created_from=created_from,
                                       created_to=created_to, cursor=cursor, limit=limit)

    @routes.get("/v1/trades/{trade_id}", response_model=Trade,
                responses={404: {"description": "no such trade (problem+json)"}})
    async def trade(trade_id: str, who: Caller) -> Trade:
        raw = parse_trade_id(trade_id)

        def read() -> Trade:
            with ctx.session_factory() as session:
                return trade_view(TradeRecords(session), ctx, raw, who, timeline=True)
        return await run_in_threadpool(read)

    @routes.get("/v1/trades/{trade_id}/instructions", response_model=Instructions,
                responses={404: {"description": "no such trade"}})
    async def trade_instructions(trade_id: str, who: Caller) -> Instructions:
        return await run_in_threadpool(instructions, ctx, who, parse_trade_id(trade_id))


def _action_routes(routes: APIRouter, ctx: ApiContext, Caller: Any) -> None:  # noqa: ANN401, N803
    @routes.post("/v1/trades/{trade_id}/accept", response_model=Trade, name="accept",
                 responses=problems.documented({
                     404: "no such trade",
                     409: "not allowed in this phase or by this party; the buyer's open "
                          "exposure would exceed its cap (type exposure-cap, field "
                          "payment.amount); or the hashlock is already in use (type "
                          "hashlock-reused, field hashlock)",
                     422: "invalid request (a missing, malformed or unexpected hashlock)"}))
    def accept(trade_id: str, who: Caller,
               body: Annotated[TradeAccept | None, Body()] = None) -> Trade:
        """The counterparty accepts. A self-custody buyer accepting a seller's proposal gives
        the hashlock of its own secret here: only the buyer sets it."""
        hashlock = bytes.fromhex(body.hashlock[2:]) if body and body.hashlock else None
        return act(ctx, who, parse_trade_id(trade_id), "accept", hashlock)

    @routes.post("/v1/trades/{trade_id}/cancel", response_model=Trade, name="cancel",
                 responses={404: {"description": "no such trade"},
                            409: {"description": "not allowed in this phase"}})
    def cancel(trade_id: str, who: Caller) -> Trade:
        return act(ctx, who, parse_trade_id(trade_id), "cancel")

    @routes.post("/v1/trades/{trade_id}/take-delivery", response_model=Trade,
                 name="take-delivery", responses={404: {"description": "no such trade"},
                                                  409: {"description": "not allowed in this "
                                                                       "phase"}})
    def take_delivery(trade_id: str, who: Caller) -> Trade:
        return act(ctx, who, parse_trade_id(trade_id), "take-delivery")


class ItemIndexedRoute(APIRoute):
    """A batch route: its validation errors name an item's field as `trades[3].payment.amount`
    (by default a list index reads as one more dotted part, `trades.3.payment.amount`). Its
    path is its own: another method on it is a 405 whose Allow names this route's methods
    only, never routed on to `/v1/trades/{trade_id}` (which would read `batch` as a trade
    id)."""

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        match, child_scope = super().matches(scope)
        return (Match.FULL if match is Match.PARTIAL else match), child_scope

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.methods and scope["method"] not in self.methods:
            response = problems.problem_response(
                405, "Method Not Allowed", headers={"Allow": ", ".join(sorted(self.methods))},
                instance=scope["path"])
            await response(scope, receive, send)
            return
        await super().handle(scope, receive, send)

    def get_route_handler(self):  # noqa: ANN201
        handler = super().get_route_handler()

        async def indexed(request: Request):  # noqa: ANN202
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise RequestValidationError([_indexed(e) for e in exc.errors()],
                                             body=exc.body) from None
        return indexed


def _indexed(error: dict) -> dict:
    loc, out = tuple(error.get("loc", ())), []
    for part in loc:
        if isinstance(part, int) and out and isinstance(out[-1], str) and \
                out[-1] not in ("body", "query", "path", "header"):
            out[-1] = f"{out[-1]}[{part}]"
        else:
            out.append(part)
    return {**error, "loc": tuple(out)}
