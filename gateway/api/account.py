"""The caller's own account: `GET /v1/me` (its addresses and, when managed, balances) and
`GET /v1/clock` (chain time and the deadline rules)."""


from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from gateway.api.context import MAX_DEADLINE_AHEAD, ApiContext
from gateway.api.enterprises import Enterprise
from gateway.api.schemas import Balances, Clock, Me
from gateway.chain import calls


def router(ctx: ApiContext, caller: Any) -> APIRouter:  # noqa: ANN401 - a FastAPI dependency
    Caller = Annotated[Enterprise, Depends(caller)]  # noqa: N806
    routes = APIRouter(tags=["enterprise"])

    @routes.get("/v1/me", response_model=Me, tags=["enterprise"])
    async def me(who: Caller) -> Me:
        balances = None
        if who.managed:
            def read() -> Balances:
                return Balances(
                    payment_token=str(calls.token_balance(ctx.payment.client, ctx.payment.asset,
                                                          who.payment_address)),
                    title_documents=calls.title_count(ctx.business.client, ctx.business.asset,
                                                      who.business_address))
            balances = await run_in_threadpool(read)
        return Me(id=who.id, name=who.name, managed=who.managed,
                  payment_address=who.payment_address, business_address=who.business_address,
                  balances=balances)

    @routes.get("/v1/clock", response_model=Clock, tags=["enterprise"])
    async def clock(who: Caller) -> Clock:
        """Chain time, by which every deadline is judged, and the deadline rules."""
        def read() -> Clock:
            pay, biz = ctx.payment.now(), ctx.business.now()
            return Clock(chain_time=max(pay, biz), payment_chain_time=pay,
                         business_chain_time=biz, required_margin=ctx.policy.required_margin,
                         min_lead=ctx.policy.claim_lead_time, max_ahead=MAX_DEADLINE_AHEAD)
        return await run_in_threadpool(read)

    return routes

