"""Requests gathered for one worker-thread call (group commit): while an API process runs a
group, the requests that arrive wait; when it is done they go together, up to `max_items`.
A request that arrives while nothing runs goes at once, alone: no timer, no added latency,
and the groups grow only as the load does."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

from fastapi.concurrency import run_in_threadpool

T = TypeVar("T")
R = TypeVar("R")


class Coalescer(Generic[T, R]):
    """`await submit(item)` answers `run([..., item, ...])`'s outcome for the item (a result,
    or the exception it holds, raised). `run` takes a group and returns one outcome per item,
    in order; it runs in a worker thread, one group at a time per event loop (a server has
    one; a test client may run several at once, each with its own queue)."""

    def __init__(self, run: Callable[[list[T]], list[R | Exception]], max_items: int) -> None:
        self._run = run
        self.max_items = max_items
        self._lanes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Lane[T, R]] = \
            weakref.WeakKeyDictionary()

    async def submit(self, item: T) -> R:
        loop = asyncio.get_running_loop()
        lane = self._lanes.get(loop)
        if lane is None:
            lane = self._lanes[loop] = _Lane()
        future: asyncio.Future[R] = loop.create_future()
        lane.queue.append((item, future))
        if lane.draining is None or lane.draining.done():
            lane.draining = loop.create_task(self._drain(lane))
        return await future

    async def _drain(self, lane: _Lane[T, R]) -> None:
        while lane.queue:
            group = lane.queue[:self.max_items]
            del lane.queue[:len(group)]
            try:
                outcomes = await run_in_threadpool(self._run, [item for item, _ in group])
                if len(outcomes) != len(group):
                    raise RuntimeError(f"{len(outcomes)} outcomes for {len(group)} requests")
            except Exception as exc:  # noqa: BLE001 - told to every request of the group
                outcomes = [exc] * len(group)
            for (_, future), outcome in zip(group, outcomes, strict=True):
                if future.done():
                    continue  # the request was cancelled (its client went away)
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)


class _Lane(Generic[T, R]):
    """One event loop's waiting requests and the task that runs their groups."""

    def __init__(self) -> None:
        self.queue: list[tuple[T, asyncio.Future[R]]] = []
        self.draining: asyncio.Task[None] | None = None
