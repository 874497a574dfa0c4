"""Deterministic store keys: the same job, round and inputs always name the same blob.

Determinism is what makes aggregation idempotent: a retried task overwrites the blob it
wrote before instead of leaving an orphan next to it.
"""

from __future__ import annotations

import math
import re
import uuid

from server.storage.base import validate_key

_ID = re.compile(r"[A-Za-z0-9_-]+")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _id(value: uuid.UUID | str | int, what: str) -> str:
    text = str(value)
    if not _ID.fullmatch(text):
        raise ValueError(f"{what} {text!r} may only contain letters, digits, '_' and '-'")
    return text


def _round(round_number: int) -> str:
    if isinstance(round_number, bool) or not isinstance(round_number, int) or round_number < 0:
        raise ValueError(f"round number must be a non-negative int, got {round_number!r}")
    return f"{round_number:05d}"


def _round_prefix(job_id: uuid.UUID | str, round_number: int) -> str:
    return f"jobs/{_id(job_id, 'job id')}/rounds/{_round(round_number)}"


def encode_scale(scale: float) -> str:
    """A key-safe, exact text form of ``scale``: ``float(encode_scale(s)) == s``.

    ``repr`` is the shortest string that round-trips a float; only its ``+`` (as in ``1e+20``)
    is outside the key alphabet, and ``float`` reads the exponent back without it.
    """
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"scale must be finite, got {scale!r}")
    return repr(value).replace("+", "")


def update_key(
    job_id: uuid.UUID | str, round_number: int, client_id: uuid.UUID | str, sha256: str
) -> str:
    """``jobs/{job}/rounds/{n:05d}/updates/{client}-{sha256[:16]}.safetensors``.

    The digest is part of the name so that a different upload never overwrites an accepted one.
    """
    if not _SHA256.fullmatch(sha256):
        raise ValueError(f"sha256 must be 64 lowercase hex digits, got {sha256!r}")
    client = _id(client_id, "client id")
    return validate_key(
        f"{_round_prefix(job_id, round_number)}/updates/{client}-{sha256[:16]}.safetensors"
    )


def global_key(job_id: uuid.UUID | str, round_number: int) -> str:
    """``jobs/{job}/rounds/{n:05d}/global.safetensors``: the round's aggregated adapter."""
    return validate_key(f"{_round_prefix(job_id, round_number)}/global.safetensors")


def distributed_key(job_id: uuid.UUID | str, round_number: int, rank: int, scale: float) -> str:
    """``jobs/{job}/rounds/{n:05d}/distributed/r{rank}-s{scale}.safetensors``.

    The slice of the global adapter sent to clients of one rank and LoRA scale; the scale is
    written with ``encode_scale`` so that two different floats never share a key.
    """
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
        raise ValueError(f"rank must be a positive int, got {rank!r}")
    prefix = _round_prefix(job_id, round_number)
    return validate_key(f"{prefix}/distributed/r{rank}-s{encode_scale(scale)}.safetensors")


def partial_key(job_id: uuid.UUID | str, round_number: int, shard: int | str) -> str:
    """``jobs/{job}/rounds/{n:05d}/partials/{shard}.safetensors``: one shard's partial sums."""
    return validate_key(
        f"{_round_prefix(job_id, round_number)}/partials/{_id(shard, 'shard')}.safetensors"
    )
