"""Offset pagination: one page of a query's rows and how many rows it has in all."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

T = TypeVar("T")


def page(
    session: Session, query: Select[T], *order_by: Any, limit: int, offset: int
) -> tuple[list[T], int]:
    """The rows of ``query`` in ``order_by`` order from ``offset`` (at most ``limit``), and the
    total count of its rows (for the ``total`` of a paged response)."""
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = list(session.scalars(query.order_by(*order_by).limit(limit).offset(offset)))
    return rows, total
