"""Adaptive batching: concurrent /predict requests scored together, one forward pass a batch.

Under ``mlkit serve --batch-max K --batch-wait-ms M`` a validated request does not score its
inputs itself: it joins the queue of the version that answers it, and that version's task
gathers requests into batches, in the style of BentoML and Ray Serve. The first request of a
batch waits at most M ms for others; a batch holding K examples goes at once. A request
with several examples (``"inputs"``) counts as its examples; one with more than K goes alone.
Each version (an A/B arm, the version an alias moved to) has its own queue and task, so a
batch never mixes versions, and the task ends once its queue is empty.

The forward pass runs in a thread, so the event loop reads, checks and logs the next
requests meanwhile (torch releases the GIL). Every forward pass has the same shape, K rows:
a smaller batch is padded with zero rows, a larger request is cut into K-row chunks. That is
what makes a request's answer independent of the requests it shares a batch with: torch's
CPU matrix kernels sum in an order that depends on the number of rows (one row takes another
kernel than several), so the same example scored among 3 or among 20 rows can differ in its
last bits, while for a fixed shape a row's result depends on that row alone (the tests check
it on a 64-feature model). Answers are therefore bitwise those of the same server scoring
the request alone. Against a server without batching (one pass of the request's own size)
they agree to float32 rounding, not bitwise. The price: a lone request pays a K-row pass.

An exception in a forward pass fails the requests of that batch (the endpoint answers each
with a logged 500); the task goes on with the next batch.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlkit.errors import ParameterError
from mlkit.registry.loading import score

if TYPE_CHECKING:
    from mlkit.registry.loading import LoadedModel

__all__ = ["Batcher", "check_batching"]


def check_batching(batch_max: int, batch_wait_ms: float) -> None:
    """Refuse a batch size or wait that makes no sense, naming the flag to fix.

    Raises:
        ParameterError: ``batch_max`` is not an int >= 1 or ``batch_wait_ms`` not a number
            of milliseconds >= 0.
    """
    if isinstance(batch_max, bool) or not isinstance(batch_max, int) or batch_max < 1:
        raise ParameterError(
            f"The 'batch_max' parameter of mlkit serve must be an int >= 1. Got {batch_max!r} "
            "instead. Pass --batch-max 32 to score up to 32 examples in one forward pass, or 1 "
            "for none."
        )
    if (
        isinstance(batch_wait_ms, bool)
        or not isinstance(batch_wait_ms, int | float)
        or not 0 <= batch_wait_ms < float("inf")
    ):
        raise ParameterError(
            f"The 'batch_wait_ms' parameter of mlkit serve must be a number of milliseconds "
            f">= 0. Got {batch_wait_ms!r} instead. Pass --batch-wait-ms 2."
        )


@dataclass
class _Waiting:
    """One request in a queue: its inputs, when it came, and where its predictions go."""

    X: Any
    arrived: float
    done: asyncio.Future[list[dict[str, Any]]]


@dataclass
class _Lane:
    """The queue of one version and the state of the task that drains it."""

    loaded: LoadedModel
    queue: collections.deque[_Waiting] = field(default_factory=collections.deque)
    examples: int = 0  # in the queue
    full: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class Batcher:
    """Batches of up to ``max_examples`` examples per version; see the module docstring.

    Args:
        max_examples: K, the rows of every forward pass.
        wait_s: how long the first request of a batch waits for others, in seconds.
    """

    def __init__(self, max_examples: int, wait_s: float) -> None:
        self.max_examples = max_examples
        self.wait_s = wait_s
        # Keyed by the loaded model itself: a lane holds its model while requests wait, and
        # goes once its queue is empty, so an id is never reused while its lane lives.
        self.lanes: dict[int, _Lane] = {}

    async def score(self, loaded: LoadedModel, X: Any) -> list[dict[str, Any]]:
        """The predictions of ``X`` (validated float32 inputs, batch first) by ``loaded``.

        Raises:
            Exception: whatever the batch's forward pass raised.
        """
        loop = asyncio.get_running_loop()
        lane = self.lanes.get(id(loaded))
        if lane is None:
            lane = self.lanes[id(loaded)] = _Lane(loaded)
        waiting = _Waiting(X, loop.time(), loop.create_future())
        lane.queue.append(waiting)
        lane.examples += len(X)
        if lane.examples >= self.max_examples:
            lane.full.set()
        if lane.task is None:
            lane.task = loop.create_task(self._drain(lane))
        return await waiting.done

    async def _drain(self, lane: _Lane) -> None:
        """Score the lane's batches until its queue is empty, then end (the lane with it)."""
        loop = asyncio.get_running_loop()
        try:
            while lane.queue:
                wait = lane.queue[0].arrived + self.wait_s - loop.time()
                if lane.examples < self.max_examples and wait > 0:
                    try:
                        async with asyncio.timeout(wait):
                            await lane.full.wait()
                    except TimeoutError:
                        pass
                batch = self._take(lane)
                await self._run(lane.loaded, batch)
        finally:
            lane.task = None
            if not lane.queue:
                self.lanes.pop(id(lane.loaded), None)

    def _take(self, lane: _Lane) -> list[_Waiting]:
        """The oldest requests whose examples fit in one batch (at least one request)."""
        batch: list[_Waiting] = []
        size = 0
        while lane.queue and (not batch or size + len(lane.queue[0].X) <= self.max_examples):
            waiting = lane.queue.popleft()
            lane.examples -= len(waiting.X)
            if waiting.done.done():  # its client went away while it waited
                continue
            batch.append(waiting)
            size += len(waiting.X)
        if lane.examples < self.max_examples:
            lane.full.clear()
        return batch

    async def _run(self, loaded: LoadedModel, batch: list[_Waiting]) -> None:
        """Score ``batch`` in a thread and hand each request its own predictions."""
        if not batch:
            return
        loop = asyncio.get_running_loop()
        try:
            preds = await loop.run_in_executor(None, self._forward, loaded, [w.X for w in batch])
        except Exception as exc:  # the model failed: this batch's requests, not the server
            for waiting in batch:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)
            return
        start = 0
        for waiting in batch:
            end = start + len(waiting.X)
            if not waiting.done.done():
                waiting.done.set_result(preds[start:end])
            start = end

    def _forward(self, loaded: LoadedModel, inputs: list[Any]) -> list[dict[str, Any]]:
        """Predictions for the concatenated inputs, in K-row passes (runs in a thread)."""
        import numpy as np

        X = np.concatenate(inputs) if len(inputs) > 1 else inputs[0]
        k, n = self.max_examples, len(X)
        preds: list[dict[str, Any]] = []
        for start in range(0, n, k):
            chunk = X[start : start + k]
            if len(chunk) < k:  # same shape every pass: see the module docstring
                padded = np.zeros((k, *X.shape[1:]), dtype=np.float32)
                padded[: len(chunk)] = chunk
                chunk = padded
            preds.extend(score(loaded, chunk))
        return preds[:n]
