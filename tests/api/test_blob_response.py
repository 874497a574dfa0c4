"""Adapter downloads: a blob of one chunk is sent whole, a larger one streamed, both exact."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from server.api.blobs import blob_response
from server.errors import NotFound
from server.storage.base import DEFAULT_CHUNK_SIZE
from server.storage.local import LocalAdapterStore


@pytest.fixture
def store(tmp_path: Path) -> LocalAdapterStore:
    return LocalAdapterStore(tmp_path / "adapters")


def _served(store: LocalAdapterStore, key: str) -> TestClient:
    app = FastAPI()
    app.get("/blob")(lambda: blob_response(store, key, headers={"ETag": '"x"'}))
    return TestClient(app)


@pytest.mark.parametrize(
    ("size", "streamed"),
    [(0, False), (10_000, False), (DEFAULT_CHUNK_SIZE, False), (2 * DEFAULT_CHUNK_SIZE + 7, True)],
)
def test_a_blob_is_sent_exactly_whole_or_in_chunks(
    store: LocalAdapterStore, size: int, streamed: bool
) -> None:
    data = bytes(i % 251 for i in range(size))
    store.put_bytes("jobs/a/global.safetensors", data)
    response = blob_response(store, "jobs/a/global.safetensors")
    assert hasattr(response, "body_iterator") is streamed  # a StreamingResponse iff large
    with _served(store, "jobs/a/global.safetensors") as http:
        got = http.get("/blob")
    assert got.status_code == 200
    assert got.content == data
    assert got.headers["content-length"] == str(size)
    assert got.headers["content-type"] == "application/octet-stream"
    assert got.headers["etag"] == '"x"'


def test_a_missing_blob_is_not_found_before_any_answer(store: LocalAdapterStore) -> None:
    with pytest.raises(NotFound):
        blob_response(store, "jobs/a/missing.safetensors")
