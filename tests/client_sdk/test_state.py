"""DeviceState: credentials, progress, pending update and private tensors survive restarts."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from client_sdk.state import AcceptedUpload, Credentials, DeviceState

REPO = Path(__file__).resolve().parents[2]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_survive_a_restart_with_private_permissions(tmp_path):
    state = DeviceState(tmp_path / "s")
    assert state.load_credentials() is None
    state.save_credentials("client-7", "s3cret")
    again = DeviceState(tmp_path / "s")  # a new process would do exactly this
    assert again.load_credentials() == Credentials(client_id="client-7", token="s3cret")
    assert _mode(tmp_path / "s" / "credentials.json") == 0o600
    state.save_credentials("client-7", "rotated")
    assert DeviceState(tmp_path / "s").load_credentials().token == "rotated"
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["credentials.json"]  # no temp files


def test_the_enrolment_credential_is_drawn_once_kept_private_and_replaced_on_enrolment(tmp_path):
    drawn = DeviceState(tmp_path).enrolment_credential()
    assert drawn.startswith("flc_") and len(drawn) == 4 + 43
    assert DeviceState(tmp_path).enrolment_credential() == drawn  # after a restart: the same
    assert stat.S_IMODE(os.stat(tmp_path / "enrolment.json").st_mode) == 0o600
    DeviceState(tmp_path).save_credentials("c1", drawn, "phone")
    assert not (tmp_path / "enrolment.json").exists()
    assert DeviceState(tmp_path).enrolment_credential() != drawn  # a next enrolment: new


def test_credentials_keep_the_enrolled_name_and_read_files_without_one(tmp_path):
    DeviceState(tmp_path / "s").save_credentials("client-7", "s3cret", name="phone-1")
    assert DeviceState(tmp_path / "s").load_credentials() == Credentials(
        "client-7", "s3cret", "phone-1"
    )
    (tmp_path / "old").mkdir()  # a file written before names were stored
    (tmp_path / "old" / "credentials.json").write_text('{"client_id": "c", "token": "t"}')
    assert DeviceState(tmp_path / "old").load_credentials() == Credentials("c", "t", None)


def test_corrupt_credentials_raise_a_clear_error(tmp_path):
    state = DeviceState(tmp_path)
    (tmp_path / "credentials.json").write_text("{not json")
    with pytest.raises(ValueError, match="corrupt state file"):
        state.load_credentials()


def test_one_directory_per_coordinator_and_job(tmp_path):
    a = DeviceState.for_job(tmp_path, "https://coord.example:8443", "job-1")
    b = DeviceState.for_job(tmp_path, "https://coord.example:8443", "job-2")
    c = DeviceState.for_job(tmp_path, "http://coord.example:8443", "job-1")
    assert len({a.directory, b.directory, c.directory}) == 3
    assert DeviceState.for_job(tmp_path, "https://coord.example:8443", "job-1").directory == (
        a.directory
    )
    assert a.directory.parent == tmp_path and "coord.example" in a.directory.name


def test_accepted_round_survives_a_restart(tmp_path):
    state = DeviceState(tmp_path)
    assert state.last_accepted() is None and not state.already_uploaded(1)
    state.record_accepted(3, "ab" * 32)
    again = DeviceState(tmp_path)
    assert again.last_accepted() == AcceptedUpload(round=3, sha256="ab" * 32)
    assert again.already_uploaded(3) and again.already_uploaded(2)
    assert not again.already_uploaded(4)


def test_pending_update_is_resent_byte_for_byte_and_cleared_on_accept(tmp_path):
    state = DeviceState(tmp_path)
    assert state.load_pending() is None
    payload = b"\x00safetensors-bytes" * 10
    sha = state.save_pending(4, payload)
    assert sha == hashlib.sha256(payload).hexdigest()
    assert DeviceState(tmp_path).load_pending() == (4, payload)
    # A torn write (bytes replaced, JSON not) is ignored rather than resent.
    (tmp_path / "pending.safetensors").write_bytes(b"other")
    assert DeviceState(tmp_path).load_pending() is None
    state.save_pending(4, payload)
    DeviceState(tmp_path).record_accepted(4, sha)
    assert DeviceState(tmp_path).load_pending() is None


def test_a_pending_update_is_durable_after_one_directory_sync(tmp_path, monkeypatch):
    """Both files are synced before their renames, and the directory once, after both: what
    makes the renames survive a power loss, once a round instead of once a file."""
    events: list[str] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append("sync directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "sync file")
        fsync(fd)

    def recording_replace(source: str, target: str | Path) -> None:
        events.append(f"rename {Path(target).name}")
        replace(source, target)

    state = DeviceState(tmp_path)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    state.save_pending(4, b"update bytes")
    assert events == [
        "sync file",
        "rename pending.safetensors",
        "sync file",
        "rename pending.json",
        "sync directory",
    ]


def test_private_tensors_survive_a_restart_bit_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    state = DeviceState(tmp_path)
    assert state.load_private() is None
    tensors = {
        "base_model.model.fc1.lora_B.weight": torch.randn(128, 8),
        "base_model.model.fc3.bias": torch.randn(10),
        "half": torch.randn(4, 4).to(torch.bfloat16),
    }
    state.save_private(tensors, metadata={"round": "2"})
    loaded = DeviceState(tmp_path).load_private()
    assert loaded is not None and loaded.keys() == tensors.keys()
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    assert _mode(tmp_path / "private.safetensors") == 0o600
    state.save_private({"only": torch.zeros(2)})  # replaces the whole set
    assert list(DeviceState(tmp_path).load_private()) == ["only"]
    state.clear_private()
    assert DeviceState(tmp_path).load_private() is None


def test_state_directory_is_private(tmp_path):
    DeviceState(tmp_path / "new")
    assert _mode(tmp_path / "new") & 0o077 == 0


def test_state_module_does_not_import_torch():
    code = "import sys, client_sdk.state; assert 'torch' not in sys.modules"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=env, timeout=60)
