"""A poll's read of its plan, and the one way it learns: when the device refuses a read
with exception 2 (illegal data address), the plan's requests are read one by one and each
refused one is split in two between its points, down to single points; a point refused
alone is unavailable. The poll goes on with what answered.

Splitting stays within the poll's budget (`PollTarget.budget`), which the endpoint lock's
lifetime and the batch's deadline were computed from before the poll began, so raising it
here could let the lock expire under a read. What the budget leaves unsplit is kept in the
learnt plan as is and split by the next polls' refusals: a map with many holes is learnt
over a few polls, each still on time. A poll learns only on a refusal; otherwise this is
one `ModbusPool.read` of the whole plan, as before.

A timeout or a dropped connection on one of the smaller reads fails the poll as before, but
what its splitting had proven (the reads that answered, the halves of those refused) is
kept as the learnt plan, with the rest still to split: the next poll goes on from there
instead of asking the device the refused reads again.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DeviceExceptionResponse, GatewayTimeout, ModbusError
from .learnedplan import Split, halves
from .modbus import ModbusPool
from .plan import PollTarget, Request

#: Modbus exception 2: the request reaches an address the device does not have.
ILLEGAL_ADDRESS = 2
#: The share of the poll's budget, and the seconds, splitting leaves unused.
SPLIT_MARGIN = 0.1
SPLIT_MARGIN_S = 0.05


@dataclass(frozen=True)
class PlanRead:
    #: The requests answered, with their answers in the same order.
    requests: Sequence[Request]
    answers: Sequence[Any]
    #: What splitting found, when the device refused a read (None: the plan held).
    split: Split | None = None
    #: The device's refusal that started the splitting.
    refusal: str = ""
    #: The error that stopped the splitting (the poll fails with it; `split` is kept).
    failure: ModbusError | None = None


async def read_plan(pool: ModbusPool, target: PollTarget) -> PlanRead:
    """Every request of the target's plan within its budget; on a refusal with exception
    2, the requests split as the module says. Other errors are raised as before."""
    config = target.config
    loop = asyncio.get_running_loop()
    # Splitting stops short of the budget: the batch's own deadline (polling/pipeline.py)
    # counts the same budget from the slot's start, and a poll begins a little after it.
    deadline = loop.time() + target.budget * (1 - SPLIT_MARGIN) - SPLIT_MARGIN_S
    requests = list(target.requests)
    if not requests and target.unavailable:
        gone = ", ".join(p.name for p in target.unavailable)
        raise DeviceExceptionResponse(
            f"every point of {config.name} is unavailable (each refused alone with exception 2 "
            f"(illegal data address) when learnt): {gone}; `pollctl gateway replan "
            f"{config.name}` tries them again",
            function_code=0,
            exception_code=ILLEGAL_ADDRESS,
        )
    try:
        read = pool.read(config.host, config.port, config.timeout, requests, config.transport)
        return PlanRead(requests, await asyncio.wait_for(read, target.budget))
    except TimeoutError:
        raise GatewayTimeout(
            f"no answer from {config.host}:{config.port} within {target.budget:.1f} s"
        ) from None
    except DeviceExceptionResponse as exc:
        if exc.exception_code != ILLEGAL_ADDRESS:
            raise
        refusal = str(exc)
    split, answers, failure = await _split(pool, target, requests, deadline)
    if failure is not None and not split.refused:
        raise failure  # stopped before it proved anything: nothing to keep
    return PlanRead(split.answered, answers, split, refusal, failure)


async def _split(
    pool: ModbusPool, target: PollTarget, requests: list[Request], deadline: float
) -> tuple[Split, list[Any], ModbusError | None]:
    """Read the requests one at a time, splitting the refused ones (depth first, so the
    answered ones stay in address order), until done, the deadline, or an error other
    than a refusal (returned, with what was split until then)."""
    config = target.config
    loop = asyncio.get_running_loop()
    queue = deque(requests)
    answered: list[Request] = []
    answers: list[Any] = []
    pending: list[Request] = []
    unavailable = []
    refused: list[Request] = []
    originals = set(map(id, requests))
    failure: ModbusError | None = None
    while queue:
        request = queue.popleft()
        remaining = deadline - loop.time()
        if remaining <= 0:
            pending += [request, *queue]
            break
        read = pool.read(config.host, config.port, config.timeout, [request], config.transport)
        try:
            answer = await asyncio.wait_for(read, remaining)
        except TimeoutError:  # the poll's deadline, not the device's timeout
            pending += [request, *queue]
            break
        except ModbusError as exc:
            if not _refused(exc):  # a timeout, a dropped connection: the poll fails
                pending += [request, *queue]
                failure = exc
                break
            if id(request) in originals:
                refused.append(request)
            if len(request.points) == 1:
                unavailable.append(request.points[0])
            else:
                queue.extendleft(reversed(halves(request)))
            continue
        answered.append(request)
        answers.append(answer[0])
    interrupted = "" if failure is None else str(failure)
    split = Split(tuple(answered), tuple(pending), tuple(unavailable), tuple(refused), interrupted)
    return split, answers, failure


def _refused(exc: ModbusError) -> bool:
    return isinstance(exc, DeviceExceptionResponse) and exc.exception_code == ILLEGAL_ADDRESS
