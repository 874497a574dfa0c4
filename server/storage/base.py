"""The adapter store interface and the key rules every implementation enforces."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

# Keys end up as file paths (local store) and object names (S3), and are stored in
# String(400) columns: one conservative alphabet keeps them portable and unable to escape
# the store root.
MAX_KEY_LENGTH = 400
_KEY_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")

DEFAULT_CHUNK_SIZE = 1 << 20


def validate_key(key: str) -> str:
    """Return ``key`` unchanged if it is a valid store key, else raise ``ValueError``.

    A key is one or more ``/``-separated segments of ``[A-Za-z0-9._-]``; no leading, trailing
    or doubled ``/``, and no segment may start with ``.`` (which rules out ``.``, ``..`` and
    the local store's private ``.staging`` directory).
    """
    if not isinstance(key, str) or not key:
        raise ValueError(f"store key must be a non-empty string, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"store key is {len(key)} characters; the limit is {MAX_KEY_LENGTH}")
    if key.startswith("/"):
        raise ValueError(f"store key {key!r} must be relative (no leading '/')")
    for segment in key.split("/"):
        if not segment:
            raise ValueError(f"store key {key!r} has an empty segment ('//' or a trailing '/')")
        if not _KEY_SEGMENT.fullmatch(segment):
            raise ValueError(
                f"store key {key!r} may only contain letters, digits, '.', '_', '-' and '/'"
            )
        if segment.startswith("."):
            raise ValueError(f"store key {key!r} has a segment starting with '.' ({segment!r})")
    return key


@contextlib.contextmanager
def staging_file_in(directory: Path) -> Iterator[Path]:
    """A fresh empty file in ``directory``; removed on exit unless it was consumed (moved)."""
    fd, name = tempfile.mkstemp(dir=directory, suffix=".part")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


@runtime_checkable
class AdapterStore(Protocol):
    """Where adapter blobs live: the local filesystem or an S3-compatible object store.

    Every write is atomic: a reader sees either no blob or the whole blob, never a part of
    one. Reads of a missing key raise ``NotFound``; a store that cannot be reached raises
    ``ServiceUnavailable``; an invalid key raises ``ValueError`` before any I/O.
    """

    url: str

    def put_file(self, key: str, source: Path) -> None:
        """Store the finished local file ``source`` under ``key``; ``source`` is consumed.

        If the call raises, nothing is stored and ``source`` is left in place.
        """
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any previous blob atomically."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole blob (for small objects; stream large ones with ``iter_chunks``)."""
        ...

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The blob in chunks of at most ``chunk_size`` bytes.

        ``NotFound`` is raised by this call itself, not on the first ``next()``, so an HTTP
        route can answer 404 before it starts a streaming response.
        """
        ...

    def local_path(self, key: str) -> AbstractContextManager[Path]:
        """A context manager giving a local file holding the blob (for ``safe_open``).

        The file must be treated as read-only; remote stores delete their copy on exit.
        """
        ...

    def exists(self, key: str) -> bool:
        """Whether a blob is stored under ``key``."""
        ...

    def size(self, key: str) -> int:
        """The blob's size in bytes."""
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error."""
        ...

    def check(self) -> None:
        """Raise ``ServiceUnavailable`` with a clear message if the store is unusable."""
        ...

    def staging_file(self) -> AbstractContextManager[Path]:
        """A context manager giving a fresh, empty local file to stream an upload into.

        The file is removed on exit unless ``put_file`` consumed it.
        """
        ...
