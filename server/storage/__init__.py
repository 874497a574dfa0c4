"""Adapter blob storage: one interface, a local-filesystem and an S3 implementation.

``open_store(settings.storage_url)`` picks the implementation from the URL, so services
never branch on where adapters live.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from server.storage.base import AdapterStore, validate_key
from server.storage.keys import distributed_key, encode_scale, global_key, partial_key, update_key

__all__ = [
    "AdapterStore",
    "distributed_key",
    "encode_scale",
    "global_key",
    "open_store",
    "partial_key",
    "update_key",
    "validate_key",
]

_S3_OPTIONS = {"endpoint_url", "region", "addressing_style", "staging_dir"}


def open_store(url: str) -> AdapterStore:
    """Open the adapter store named by ``url``.

    - ``file://./relative/dir`` (relative to the current directory, resolved now) or
      ``file:///absolute/dir``: the directory is created if missing.
    - ``s3://bucket/optional/prefix?endpoint_url=http://host:port&region=us-east-1``; also
      ``addressing_style`` (``path``/``virtual``) and ``staging_dir`` (local dir for uploads).
      Credentials come from the standard AWS environment variables / boto3 chain.

    Raises ``ValueError`` for an unknown scheme or option.
    """
    if url.startswith("file://"):
        # Parsed by hand: urlsplit would read the "." of file://./dir as a host name.
        rest = unquote(url[len("file://") :])
        if not rest:
            raise ValueError(f"storage URL {url!r} names no directory")
        from server.storage.local import LocalAdapterStore

        return LocalAdapterStore(Path(rest), url=url)
    if url.startswith("s3://"):
        parts = urlsplit(url)
        options = dict(parse_qsl(parts.query, strict_parsing=bool(parts.query)))
        unknown = set(options) - _S3_OPTIONS
        if unknown:
            raise ValueError(
                f"unknown option(s) {sorted(unknown)} in storage URL; known: {sorted(_S3_OPTIONS)}"
            )
        # Imported lazily so that the local store works without boto3 installed.
        from server.storage.s3 import S3AdapterStore

        staging = options.get("staging_dir")
        return S3AdapterStore(
            parts.netloc,
            unquote(parts.path),
            endpoint_url=options.get("endpoint_url"),
            region=options.get("region"),
            addressing_style=options.get("addressing_style"),
            staging_dir=Path(staging) if staging else None,
            url=url,
        )
    raise ValueError(f"storage URL {url!r} must start with file:// or s3://")
