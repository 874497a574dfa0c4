"""Pagination parameters shared by every list route (``limit`` is capped by settings).

``async``: it does no I/O, so it takes no request thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Query

from server.api.deps import RuntimeDep
from server.api.errors import INVALID_INPUT, error_responses
from server.errors import InvalidRequest, NotFound


@dataclass(frozen=True)
class Pagination:
    limit: int
    offset: int


async def pagination(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=10_000, description="Page size")] = 50,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> Pagination:
    if limit > runtime.settings.max_page_size:
        raise InvalidRequest(f"limit must be at most {runtime.settings.max_page_size}")
    return Pagination(limit=limit, offset=offset)


PageParams = Annotated[Pagination, Depends(pagination)]


# The answers of a list of a job's rows: no such job, a bad page (``limit`` over the
# coordinator's maximum), a malformed parameter.
PAGE_OF_A_JOB = error_responses(NotFound, InvalidRequest, INVALID_INPUT)
