"""On-device state of one client in one job, surviving process restarts.

Layout of a state directory (one per coordinator + job, see :meth:`DeviceState.for_job`)::

    credentials.json   client id, token and the name it enrolled with (0600)
    enrolment.json     the credential drawn for an enrolment not answered yet (0600)
    progress.json      last round whose upload the coordinator accepted, and its sha256
    pending.safetensors / pending.json   an update trained but not yet accepted
    private.safetensors                  tensors that never leave the device (FedSA's B, head)

Every file is written to a temporary file in the same directory, fsynced and renamed over the
old one, so a crash leaves either the old or the new version, never a torn file. Importing this
module does not import torch (the thin client stores credentials without it).

Crash-safe order for one round: ``save_pending(round, update)``, then ``save_private(...)``,
then upload, then ``record_accepted(round, sha)`` (which clears the pending update). A client
restarted after a crash re-sends the pending bytes (same sha) instead of training again, so
private tensors are never trained twice for one round.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_CREDENTIALS = "credentials.json"
_ENROLMENT = "enrolment.json"
#: What a client credential starts with (docs/protocol.md, "Authentication").
CREDENTIAL_PREFIX = "flc_"
_PROGRESS = "progress.json"
_JOB = "job.json"
_PENDING_META = "pending.json"
_PENDING = "pending.safetensors"
_PRIVATE = "private.safetensors"


@dataclass(frozen=True)
class Credentials:
    """The identity a coordinator issued to this client for one job, and the name the client
    enrolled with (its stable identity: the training seeds derive from it)."""

    client_id: str
    token: str
    name: str | None = None


@dataclass(frozen=True)
class AcceptedUpload:
    """The last round whose update the coordinator accepted."""

    round: int
    sha256: str


def _atomic_write(
    path: Path, data: bytes, mode: int = 0o600, *, sync_directory: bool = True
) -> None:
    """Write ``data`` to ``path`` atomically (temp file + fsync + rename), with ``mode``, then
    fsync the directory unless ``sync_directory`` is False (a later write's sync covers it)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp already creates the file 0600; chmod anyway so `mode` is what we asked for.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_directory:
        _sync_directory(path.parent)


def _sync_directory(directory: Path) -> None:
    """fsync ``directory``, so that the renames in it survive a power loss (POSIX only)."""
    if hasattr(os, "O_DIRECTORY"):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def draw_credential() -> str:
    """A new client credential in the coordinator's format: ``flc_`` + 256 random bits."""
    return CREDENTIAL_PREFIX + secrets.token_urlsafe(32)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._-")[:48] or "x"


class DeviceState:
    """Files kept on the device for one client in one job, in ``directory`` (created 0700)."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    @classmethod
    def for_job(cls, root: str | os.PathLike[str], server_url: str, job_id: str) -> DeviceState:
        """The state of ``job_id`` on ``server_url`` under ``root``, one directory per pair.

        The directory name is readable (slug) plus a hash of the exact pair, so two servers
        whose URLs slug identically never share state.
        """
        digest = hashlib.sha256(f"{server_url}\n{job_id}".encode()).hexdigest()[:16]
        name = f"{_slug(server_url.split('://', 1)[-1])}__{_slug(str(job_id))}__{digest}"
        return cls(Path(root) / name)

    # ------------------------------------------------------------------ JSON helpers

    def _read_json(self, name: str) -> dict[str, Any] | None:
        path = self.directory / name
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError as exc:
            raise ValueError(f"corrupt state file {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"corrupt state file {path}: not a JSON object")
        return data

    def _write_json(self, name: str, data: dict[str, Any]) -> None:
        _atomic_write(self.directory / name, json.dumps(data, sort_keys=True).encode())

    # ------------------------------------------------------------------ credentials

    def enrolment_credential(self) -> str:
        """The credential to enrol with: drawn once (256 random bits) and stored before the
        enrolment is sent, so that enrolling again after a lost answer, or after a restart,
        sends the same one and gets the same client back (docs/protocol.md, "2. Enrolment").
        ``save_credentials`` then replaces it."""
        data = self._read_json(_ENROLMENT)
        if data is not None and isinstance(data.get("token"), str):
            return str(data["token"])
        token = draw_credential()
        self._write_json(_ENROLMENT, {"token": token})
        return token

    def save_credentials(self, client_id: str, token: str, name: str | None = None) -> None:
        """Store the client id, its secret token and its name (file mode 0600)."""
        data = {"client_id": str(client_id), "token": str(token), "name": name}
        self._write_json(_CREDENTIALS, data)
        with contextlib.suppress(FileNotFoundError):
            (self.directory / _ENROLMENT).unlink()

    def load_credentials(self) -> Credentials | None:
        """The stored credentials, or None before the client has joined."""
        data = self._read_json(_CREDENTIALS)
        if data is None:
            return None
        try:
            name = data.get("name")  # absent in the files of older versions
            return Credentials(
                client_id=str(data["client_id"]),
                token=str(data["token"]),
                name=None if name is None else str(name),
            )
        except KeyError as exc:
            raise ValueError(f"corrupt credentials file: missing {exc}") from exc

    # ------------------------------------------------------------------ the job's model

    def save_job(self, info: dict[str, Any]) -> None:
        """Keep what identifies the job (``server``, ``job_id``) and its ``model`` section."""
        self._write_json(_JOB, dict(info))

    def load_job(self) -> dict[str, Any] | None:
        """The stored job information, or None before it was fetched."""
        return self._read_json(_JOB)

    # ------------------------------------------------------------------ progress

    def record_accepted(self, round: int, sha256: str) -> None:
        """Remember that the coordinator accepted this round's upload; clears the pending one."""
        self._write_json(_PROGRESS, {"round": int(round), "sha256": str(sha256)})
        self.clear_pending()

    def last_accepted(self) -> AcceptedUpload | None:
        """The last accepted round and sha256, or None if nothing was accepted yet."""
        data = self._read_json(_PROGRESS)
        if data is None:
            return None
        return AcceptedUpload(round=int(data["round"]), sha256=str(data["sha256"]))

    def already_uploaded(self, round: int) -> bool:
        """True when an upload for ``round`` (or a later round) was already accepted."""
        last = self.last_accepted()
        return last is not None and last.round >= round

    def save_pending(self, round: int, update: bytes, info: dict[str, Any] | None = None) -> str:
        """Keep a trained, not yet accepted update for ``round``; returns its sha256.

        ``info`` (JSON-serialisable: round id, n_samples, metrics, ...) is what a restarted
        client needs to re-send the update; :meth:`pending_info` returns it.
        """
        sha = hashlib.sha256(update).hexdigest()
        # Bytes first, then the JSON that points at them: a crash in between leaves an orphan
        # file that load_pending ignores because its sha does not match. The JSON's directory
        # sync makes both renames durable (one sync of the directory a round, not two).
        _atomic_write(self.directory / _PENDING, update, sync_directory=False)
        self._write_json(
            _PENDING_META, {"round": int(round), "sha256": sha, "info": dict(info or {})}
        )
        return sha

    def pending_info(self) -> dict[str, Any]:
        """The ``info`` saved with the pending update ({} when there is none)."""
        meta = self._read_json(_PENDING_META) or {}
        info = meta.get("info")
        return dict(info) if isinstance(info, dict) else {}

    def load_pending(self) -> tuple[int, bytes] | None:
        """``(round, update bytes)`` of the pending update, or None (also if it is torn)."""
        meta = self._read_json(_PENDING_META)
        if meta is None:
            return None
        try:
            data = (self.directory / _PENDING).read_bytes()
        except FileNotFoundError:
            return None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            return None
        return int(meta["round"]), data

    def clear_pending(self) -> None:
        """Forget the pending update (after it was accepted, or when the round moved on)."""
        for name in (_PENDING_META, _PENDING):
            with contextlib.suppress(OSError):
                (self.directory / name).unlink()

    # ------------------------------------------------------------------ private tensors

    def save_private(
        self, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
    ) -> None:
        """Persist the device-only tensors (safetensors, atomic replace of the previous set)."""
        from safetensors.torch import save

        clean = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
        _atomic_write(self.directory / _PRIVATE, save(clean, metadata=metadata))

    def load_private(self) -> dict[str, torch.Tensor] | None:
        """The persisted private tensors (on the CPU), or None if none were saved."""
        path = self.directory / _PRIVATE
        if not path.exists():
            return None
        from safetensors.torch import load

        return load(path.read_bytes())

    def save_private_bytes(self, data: bytes) -> None:
        """Persist the device-only tensors already serialised as safetensors (no torch needed)."""
        _atomic_write(self.directory / _PRIVATE, data)

    def load_private_bytes(self) -> bytes | None:
        """The persisted private tensors as safetensors bytes, or None if none were saved."""
        try:
            return (self.directory / _PRIVATE).read_bytes()
        except FileNotFoundError:
            return None

    def clear_private(self) -> None:
        """Delete the private tensors (e.g. when the job's rank for this client changed)."""
        with contextlib.suppress(OSError):
            (self.directory / _PRIVATE).unlink()
