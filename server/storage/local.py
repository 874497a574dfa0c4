"""Adapter store on the local filesystem (the embedded, single-machine mode)."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import BinaryIO

from server.errors import NotFound, ServiceUnavailable
from server.storage.base import DEFAULT_CHUNK_SIZE, staging_file_in, validate_key

STAGING_DIR = ".staging"


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform can open a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalAdapterStore:
    """Blobs as files under ``root``; writes go through ``root/.staging`` and ``os.replace``.

    The staging directory lives inside the root so that the final rename never crosses a
    filesystem boundary, which is what makes it atomic.
    """

    def __init__(self, root: Path, url: str | None = None) -> None:
        self.root = root.resolve()
        self.url = url or self.root.as_uri()
        self._staging = self.root / STAGING_DIR
        self._staging.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _open(self, key: str) -> BinaryIO:
        path = self._path(key)
        try:
            return path.open("rb")
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise NotFound(f"no adapter blob stored under {key!r}") from None

    def _install(self, temp: Path, key: str) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, target)
        _fsync_dir(target.parent)

    def put_file(self, key: str, source: Path) -> None:
        """Move ``source`` to ``key`` atomically (copying first if it is on another filesystem)."""
        validate_key(key)
        source = Path(source)
        if source.stat().st_dev == self._staging.stat().st_dev:
            with source.open("rb") as f:
                os.fsync(f.fileno())
            self._install(source, key)
            return
        # Another filesystem: rename would not be atomic (or would fail), so copy into
        # staging first and consume the source only once the blob is in place.
        with self.staging_file() as temp:
            with source.open("rb") as src, temp.open("wb") as dst:
                shutil.copyfileobj(src, dst, DEFAULT_CHUNK_SIZE)
                dst.flush()
                os.fsync(dst.fileno())
            self._install(temp, key)
        source.unlink()

    def put_bytes(self, key: str, data: bytes) -> None:
        """Write ``data`` to a staging file, fsync it, then rename it over ``key``."""
        validate_key(key)
        with self.staging_file() as temp:
            with temp.open("wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            self._install(temp, key)

    def get_bytes(self, key: str) -> bytes:
        """The whole blob."""
        with self._open(key) as f:
            return f.read()

    def iter_chunks(self, key: str, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[bytes]:
        """The blob in chunks; ``NotFound`` is raised here, before iteration starts."""
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        f = self._open(key)

        def chunks() -> Iterator[bytes]:
            with f:
                while chunk := f.read(chunk_size):
                    yield chunk

        return chunks()

    @contextlib.contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        """The blob's own file (no copy); do not modify it."""
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"no adapter blob stored under {key!r}")
        yield path

    def exists(self, key: str) -> bool:
        """Whether a file is stored under ``key``."""
        return self._path(key).is_file()

    def size(self, key: str) -> int:
        """The file's size in bytes."""
        path = self._path(key)
        try:
            if path.is_file():
                return path.stat().st_size
        except FileNotFoundError:
            pass  # deleted between the two calls
        raise NotFound(f"no adapter blob stored under {key!r}")

    def delete(self, key: str) -> None:
        """Remove the file if it exists."""
        self._path(key).unlink(missing_ok=True)

    def check(self) -> None:
        """Raise ``ServiceUnavailable`` unless the root and its staging dir are writable."""
        for directory in (self.root, self._staging):
            if not directory.is_dir():
                raise ServiceUnavailable(f"adapter store directory {directory} does not exist")
            if not os.access(directory, os.W_OK | os.X_OK):
                raise ServiceUnavailable(f"adapter store directory {directory} is not writable")

    def staging_file(self) -> AbstractContextManager[Path]:
        """A fresh empty file in ``root/.staging``; removed on exit unless consumed."""
        return staging_file_in(self._staging)
