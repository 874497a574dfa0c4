"""Deterministic key helpers: stable layout, key-safe, and refusing ids that could escape."""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from server.storage import (
    distributed_key,
    encode_scale,
    global_key,
    partial_key,
    update_key,
    validate_key,
)

JOB = uuid.UUID("12345678-1234-5678-1234-567812345678")
CLIENT = uuid.UUID("87654321-4321-8765-4321-876543218765")
SHA = "0123456789abcdef" + "f" * 48


def test_layout() -> None:
    prefix = f"jobs/{JOB}/rounds/00007"
    assert update_key(JOB, 7, CLIENT, SHA) == (
        f"{prefix}/updates/{CLIENT}-0123456789abcdef.safetensors"
    )
    assert global_key(JOB, 7) == f"{prefix}/global.safetensors"
    assert distributed_key(JOB, 7, 8, 2.0) == f"{prefix}/distributed/r8-s2.0.safetensors"
    assert partial_key(JOB, 7, 3) == f"{prefix}/partials/3.safetensors"


def test_ids_may_be_strings() -> None:
    assert global_key(str(JOB), 0) == global_key(JOB, 0)
    assert update_key("job-a", 1, "client_b", SHA).startswith("jobs/job-a/rounds/00001/updates/")


@pytest.mark.parametrize("bad", ["../x", "a/b", "", "a.b", "x y"])
def test_ids_that_could_escape_are_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        global_key(bad, 1)
    with pytest.raises(ValueError):
        update_key(JOB, 1, bad, SHA)


@pytest.mark.parametrize("bad", ["ABC", "0" * 63, "g" * 64, SHA.upper()])
def test_sha256_must_be_a_lowercase_hex_digest(bad: str) -> None:
    with pytest.raises(ValueError):
        update_key(JOB, 1, CLIENT, bad)


@pytest.mark.parametrize("bad_round", [-1, 1.0, True])
def test_round_numbers_must_be_non_negative_ints(bad_round: object) -> None:
    with pytest.raises(ValueError):
        global_key(JOB, bad_round)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [0, -1, True])
def test_rank_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError):
        distributed_key(JOB, 1, bad, 1.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_scale_must_be_finite(bad: float) -> None:
    with pytest.raises(ValueError):
        distributed_key(JOB, 1, 4, bad)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_scale_encoding_is_key_safe_and_exact(scale: float) -> None:
    text = encode_scale(scale)
    assert float(text) == scale
    validate_key(distributed_key(JOB, 1, 4, scale))


@given(
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False),
)
def test_different_scales_get_different_keys(a: float, b: float) -> None:
    if a != b:
        assert distributed_key(JOB, 1, 4, a) != distributed_key(JOB, 1, 4, b)


def test_keys_are_deterministic() -> None:
    assert update_key(JOB, 2, CLIENT, SHA) == update_key(JOB, 2, CLIENT, SHA)
    assert distributed_key(JOB, 2, 4, 0.1 + 0.2) != distributed_key(JOB, 2, 4, 0.3)
