"""``Client``: join a job, then train and upload round after round until the job ends.

The loop is resumable. Everything needed to continue lives in a :class:`DeviceState` directory
(credentials, the last accepted round, a trained-but-unaccepted update, FedSA's private
tensors), written before the network is touched, so a client killed at any point and started
again with the same ``state_dir`` picks up where it was:

* killed while training: the round is trained again (the round is still open);
* killed during the upload: the pending update is re-sent byte for byte;
* killed after the coordinator accepted but before the client recorded it: the re-sent update
  carries ``Flaas-Content-Sha256`` and the coordinator answers 200 without counting it twice.

This module does not import torch: ``train`` is any callable taking a :class:`RoundContext`, or
a :class:`~client_sdk.trainer.LoraTrainer` (then ``data`` is required).
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from client_sdk.api import ApiClient, Conflict, Gone, NotFound, RetryPolicy, Unavailable
from client_sdk.model_spec import ModelSpec
from client_sdk.profile import ComplexityStats
from client_sdk.rounds import Progress, RoundContext, RoundTask, RunResult, TrainFn
from client_sdk.state import Credentials, DeviceState

if TYPE_CHECKING:
    from client_sdk.text_data import LocalDataset
    from client_sdk.trainer import LoraTrainer

DEFAULT_STATE_DIR = Path(os.environ.get("FLAAS_STATE_DIR", Path.home() / ".flaas" / "state"))


class Client:
    """A device taking part in one job on one coordinator.

    ``server`` is the coordinator's base URL, ``join_token`` the token the operator got when
    creating the job (needed only the first time: later runs resume from ``state_dir``).
    ``max_rank`` caps the rank the coordinator may assign (the device's capacity).
    ``on_progress`` receives :class:`Progress` events (from the calling thread).
    ``task_wait_s`` is how long the coordinator may hold a task request until there is work
    (long-poll; 0 polls): a coordinator that does not hold it, or is too busy to, answers
    with ``retry_after`` and the client polls as before.
    """

    def __init__(
        self,
        server: str,
        job_id: str,
        *,
        join_token: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        name: str | None = None,
        max_rank: int | None = None,
        on_progress: Callable[[Progress], None] | None = None,
        retry: RetryPolicy | None = None,
        max_poll_s: float = 30.0,
        task_wait_s: float = 25.0,
        offline_limit_s: float = 900.0,
        api: ApiClient | None = None,
    ) -> None:
        self.server = server.rstrip("/")
        self.job_id = str(job_id)
        self.join_token = join_token
        self.name = name
        self.max_rank = max_rank
        self.state = DeviceState.for_job(state_dir or DEFAULT_STATE_DIR, self.server, self.job_id)
        self.api = api or ApiClient(self.server, retry=retry)
        self.max_poll_s = max_poll_s
        self.task_wait_s = task_wait_s
        self.offline_limit_s = offline_limit_s
        self._on_progress = on_progress
        self._stop = threading.Event()

    # ------------------------------------------------------------------ public

    @property
    def credentials(self) -> Credentials | None:
        """The stored credentials, or None before :meth:`join`."""
        return self.state.load_credentials()

    def model_spec(self) -> ModelSpec | None:
        """The job's model section (what to load and adapt), or None for a job whose modules
        were written by hand. Asked of the coordinator with the join token once, then kept in
        the state directory, so a device can load and check its model before it enrols."""
        stored = self.state.load_job()
        if stored is None:
            if self.join_token is None:
                raise ValueError("not enrolled yet: a join_token is needed for the first run")
            model = self.api.job_model(self.job_id, self.join_token).get("model")
            stored = {"server": self.server, "job_id": self.job_id, "model": model}
            self.state.save_job(stored)
        return None if stored.get("model") is None else ModelSpec.model_validate(stored["model"])

    def join(
        self,
        stats: ComplexityStats | Mapping[str, Any] | None = None,
        *,
        model_sha256: str | None = None,
    ) -> Credentials:
        """Enrol with ``stats`` (see :func:`client_sdk.profile`), or resume stored credentials.

        ``model_sha256`` (the device's model config hash) lets the coordinator refuse a device
        whose model is not the job's (409) before it trains.
        """
        stored = self.state.load_credentials()
        if stored is None:
            if self.join_token is None:
                raise ValueError("not enrolled yet: a join_token is needed for the first run")
            if stats is None:
                raise ValueError("enrolling needs the data's stats: pass stats=profile(labels)")
            values = stats.as_dict() if isinstance(stats, ComplexityStats) else dict(stats)
            self.model_spec()  # kept in the state: what an export needs after the job
            enrolled = self.api.enrol(
                self.job_id,
                self.join_token,
                values,
                name=self.name,
                max_rank=self.max_rank,
                model_sha256=model_sha256,
                credential=self.state.enrolment_credential(),
            )
            stored = Credentials(str(enrolled["client_id"]), str(enrolled["credential"]), self.name)
            self.state.save_credentials(stored.client_id, stored.token, stored.name)
            self._emit("enrolled", message=f"client {stored.client_id}")
        else:
            self._emit("resumed", message=f"client {stored.client_id}")
        self.api.token = stored.token
        return stored

    def stop(self) -> None:
        """Ask a running :meth:`run` (in another thread) to return at its next wait."""
        self._stop.set()

    def run(
        self,
        train: TrainFn | LoraTrainer,
        *,
        data: LocalDataset | None = None,
        val_data: LocalDataset | None = None,
        stats: ComplexityStats | Mapping[str, Any] | None = None,
    ) -> RunResult:
        """Join (or resume), then train every round this client is sampled for until the job
        ends. ``train`` is a callback or a ``LoraTrainer`` (with ``data``, a
        :class:`~client_sdk.text_data.LocalDataset`, and optionally ``val_data``; ``stats`` are
        then profiled from the data when needed)."""
        train_fn = self._as_train_fn(train, data, val_data)
        if stats is None and self.state.load_credentials() is None:
            profile_of = getattr(train_fn, "stats", None)
            stats = profile_of() if callable(profile_of) else None
        credentials = self.join(stats, model_sha256=getattr(train_fn, "model_sha256", None))
        result = RunResult(status="running", reason=None, client_id=credentials.client_id)
        self._resend_pending(result)
        offline_since: float | None = None
        while not self._stop.is_set():
            try:
                delay = self._step(train_fn, credentials, result)
                offline_since = None
            except Unavailable as exc:
                offline_since = offline_since or time.monotonic()
                if time.monotonic() - offline_since > self.offline_limit_s:
                    raise
                self._emit("offline", message=str(exc))
                delay = self.max_poll_s
            if result.status != "running":
                return result
            # Jitter so that many clients told the same retry_after do not poll in lockstep.
            self._stop.wait(min(delay, self.max_poll_s) * random.uniform(0.9, 1.1))
        result.status, result.reason = "stopped", "stop() was called"
        return result

    # ------------------------------------------------------------------ one iteration

    def _step(self, train_fn: TrainFn, credentials: Credentials, result: RunResult) -> float:
        """Ask for a task and act on it; returns seconds to wait before asking again."""
        task = self.api.task(wait=self.task_wait_s)
        action = task.get("action")
        if action == "finished":
            result.status, result.reason = str(task.get("status")), task.get("reason")
            self._emit("finished", message=f"job {result.status}")
            return 0.0
        if action != "train":
            self._emit("waiting", message=str(task.get("reason", "")))
            return float(task.get("retry_after", 1.0))
        rt = RoundTask.from_json(task)
        if self.state.already_uploaded(rt.round_number):
            return 1.0  # the coordinator has not seen our accepted upload yet
        pending = self.state.load_pending()
        if pending is not None and pending[0] == rt.round_number:
            info = {**self.state.pending_info(), "upload_url": rt.upload_url}
            data = pending[1]
        else:
            self.state.clear_pending()
            data, info = self._train(train_fn, rt, credentials, result)
        self._upload(rt.round_number, data, info, result)
        return 0.0

    def _train(
        self, train_fn: TrainFn, rt: RoundTask, credentials: Credentials, result: RunResult
    ) -> tuple[bytes, dict[str, Any]]:
        n = rt.round_number
        if rt.adapter_bytes is not None:  # sent with the task: nothing to download
            adapter = rt.adapter_bytes
            self._emit("download", n, len(adapter), len(adapter))
        else:
            adapter = self.api.download(
                rt.adapter_url, lambda done, total: self._emit("download", n, done, total)
            )
        result.bytes_downloaded += len(adapter)
        ctx = RoundContext(
            task=rt,
            adapter=adapter,
            private=self.state.load_private_bytes(),
            client_id=credentials.client_id,
            client_name=credentials.name,
            report=lambda done, total: self._emit("train", n, done, total),
        )
        local = train_fn(ctx)
        info = {
            "round_id": rt.round_id,
            "upload_url": rt.upload_url,
            "n_samples": int(local.n_samples),
            "metrics": _clean_metrics(local.metrics),
        }
        # Crash-safe order (see client_sdk.state): pending first, then the private tensors.
        self.state.save_pending(n, local.update, info)
        if local.private is not None:
            self.state.save_private_bytes(local.private)
        return local.update, info

    def _upload(
        self, round_number: int, data: bytes, info: Mapping[str, Any], result: RunResult
    ) -> None:
        sha = hashlib.sha256(data).hexdigest()
        try:
            status, _ = self.api.upload(
                info["upload_url"],
                data,
                n_samples=int(info["n_samples"]),
                sha256=sha,
                metrics=info.get("metrics") or None,
                on_bytes=lambda done, total: self._emit("upload", round_number, done, total),
            )
        except (Gone, Conflict, NotFound) as exc:
            # The round closed, or we were not (or no longer) expected in it: this update
            # can never count. Drop it; the private tensors keep what it learnt.
            self.state.clear_pending()
            self._emit("skipped", round_number, message=str(exc.detail))
            return
        if status == 201:
            result.bytes_uploaded += len(data)
        self.state.record_accepted(round_number, sha)
        result.accepted_rounds.append(round_number)
        self._emit("accepted", round_number, len(data), len(data), message=f"HTTP {status}")

    def _resend_pending(self, result: RunResult) -> None:
        """After a restart: finish an upload that was cut off (or answered but unrecorded)."""
        pending = self.state.load_pending()
        info = self.state.pending_info()
        if pending is None or "upload_url" not in info:
            return
        # Unreachable now: the loop re-sends it when the coordinator hands out the round again.
        with contextlib.suppress(Unavailable):
            self._upload(pending[0], pending[1], info, result)

    # ------------------------------------------------------------------ helpers

    def _as_train_fn(
        self,
        train: TrainFn | LoraTrainer,
        data: LocalDataset | None,
        val_data: LocalDataset | None,
    ) -> TrainFn:
        if callable(train):
            return train
        if data is None:
            raise ValueError("a LoraTrainer needs data (a LocalDataset)")
        from client_sdk.lora_round import LoraRound

        return LoraRound(train, data, val_data)

    def _emit(
        self,
        event: str,
        round: int | None = None,
        done: int = 0,
        total: int | None = None,
        message: str = "",
    ) -> None:
        if self._on_progress is not None:
            self._on_progress(Progress(event, round, done, total, message))


def _clean_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Finite float metrics only: the coordinator refuses NaN/Inf and non-numbers."""
    out: dict[str, float] = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if math.isfinite(float(value)):
            out[str(key)] = float(value)
    return out
