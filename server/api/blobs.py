"""Stored adapters as HTTP answers: the one way the adapter downloads send a blob.

A blob that fits in one chunk (``DEFAULT_CHUNK_SIZE``: the demos' adapters, a small encoder's)
is read whole on the route's thread and sent in one piece. Streaming it would cost two more
thread hand-offs (``StreamingResponse`` reads a sync iterator one ``next()`` per hop: the chunk,
then the end), each a turn of the event loop and a wait for a request thread under load. A
larger blob (an LLM's adapter) is streamed, so a download holds one chunk in memory at a time.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import Response
from fastapi.responses import StreamingResponse

from server.storage.base import DEFAULT_CHUNK_SIZE, AdapterStore

MEDIA_TYPE = "application/octet-stream"


def blob_response(
    store: AdapterStore,
    key: str,
    *,
    size: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    """The blob under ``key`` (``size`` bytes, asked of the store when not known) with
    ``headers``; ``NotFound`` is raised here, before any answer starts."""
    size = store.size(key) if size is None else size
    sent = {"Content-Length": str(size), **(headers or {})}
    if size <= DEFAULT_CHUNK_SIZE:
        return Response(store.get_bytes(key), media_type=MEDIA_TYPE, headers=sent)
    return StreamingResponse(store.iter_chunks(key), media_type=MEDIA_TYPE, headers=sent)
