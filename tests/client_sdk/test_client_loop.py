"""Client's loop against an in-memory coordinator: resume, no double upload, private state."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import httpx
import pytest

from client_sdk import LocalUpdate, RoundContext
from client_sdk.api import ApiClient, RetryPolicy
from client_sdk.client import Client
from client_sdk.state import DeviceState

SERVER = "http://coordinator.test"
JOB = "job-1"


class Crash(Exception):
    """Stands in for the process dying (SIGKILL, power loss) at that exact point."""


class FakeCoordinator:
    """Enrolment, tasks, adapter download and the upload contract's idempotency rules."""

    def __init__(self, rounds: int = 2) -> None:
        self.rounds = rounds
        self.current = 1
        self.waits = 1  # answer "wait" this many times before the first round
        self.accepted: dict[int, str] = {}  # round -> sha256
        self.puts: list[int] = []
        self.crash_next_put_after_accepting = False
        self.crash_next_put_before_reading = False
        self.gone: set[int] = set()
        self.inline = False  # send the adapter with the train task, as a coordinator does
        self.downloads = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == f"/api/v1/jobs/{JOB}/clients":
            assert request.headers["authorization"] == "Bearer join-token"
            body = json.loads(request.content)
            assert body["stats"]["n_samples"] == 30
            return httpx.Response(
                201, json={"client_id": "c1", "job_id": JOB, "credential": "cred", "rank": 4}
            )
        if path == f"/api/v1/jobs/{JOB}/model":
            assert request.headers["authorization"] == "Bearer join-token"
            return httpx.Response(200, json={"job_id": JOB, "name": "j", "model": None})
        assert request.headers["authorization"] == "Bearer cred"
        if path == "/api/v1/clients/me/task":
            return httpx.Response(200, json=self.task())
        if path.endswith("/adapter"):
            self.downloads += 1
            return httpx.Response(200, content=self.adapter())
        if path.endswith("/update"):
            return self.put(int(path.split("/")[-2][1:]), request)
        return httpx.Response(404, json={"detail": "no route"})

    def task(self) -> dict:
        if self.waits > 0:
            self.waits -= 1
            return {"action": "wait", "retry_after": 0.01, "reason": "enrolment is still open"}
        if self.current > self.rounds:
            return {"action": "finished", "status": "finished", "reason": None}
        if self.current in self.accepted:
            return {"action": "wait", "retry_after": 0.01, "reason": "already accepted"}
        n = self.current
        return {
            "action": "train", "job_id": JOB, "round_id": f"r{n}", "round_number": n,
            "deadline_at": "2030-01-01T00:00:00Z", "rank": 4, "lora_alpha": 8.0,
            "use_rslora": False, "adapter_type": "lora", "strategy": "fedsa",
            "shared_parts": ["lora_A"], "frozen_parts": [],
            "training": {"epochs": 1, "steps": None, "lr": 0.01, "batch_size": 16,
                         "optimizer": "adam"},
            "model": None, "seed": 5,
            "adapter_url": f"/api/v1/rounds/r{n}/adapter",
            "upload_url": f"/api/v1/rounds/r{n}/update",
            "adapter": base64.b64encode(self.adapter()).decode() if self.inline else None,
        }  # fmt: skip

    def adapter(self) -> bytes:
        return f"global-{self.current - 1}".encode()

    def put(self, n: int, request: httpx.Request) -> httpx.Response:
        self.puts.append(n)
        sha = request.headers["flaas-content-sha256"]
        if self.crash_next_put_before_reading:
            self.crash_next_put_before_reading = False
            raise Crash("killed during the upload")
        if n in self.gone:
            return httpx.Response(410, json={"detail": f"round {n} is closed"})
        if self.accepted.get(n) == sha:
            return httpx.Response(200, json={"sha256": sha, "status": "accepted"})
        body = b"".join(request.stream)
        assert hashlib.sha256(body).hexdigest() == sha
        assert request.headers["flaas-num-samples"] == "30"
        self.accepted[n] = sha
        self.current = n + 1  # a one-client cohort: the round closes at once
        if self.crash_next_put_after_accepting:
            self.crash_next_put_after_accepting = False
            raise Crash("killed after the coordinator accepted, before the 201 arrived")
        return httpx.Response(201, json={"sha256": sha, "status": "accepted"})


class Trainer:
    """A train callback that records what it was given and returns deterministic bytes."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, bytes, bytes | None]] = []
        self.names: list[str | None] = []

    def __call__(self, ctx: RoundContext) -> LocalUpdate:
        n = ctx.task.round_number
        self.calls.append((n, ctx.adapter, ctx.private))
        self.names.append(ctx.client_name)
        assert ctx.task.train_settings(1)["max_steps"] is None
        ctx.report(1, 1)
        return LocalUpdate(
            update=f"update-{n}".encode() * 100,
            n_samples=30,
            metrics={"val_accuracy": 0.5, "bad": float("nan")},
            private=f"B-after-round-{n}".encode(),
        )


def client(
    tmp_path: Path, fake: FakeCoordinator, events: list | None = None, name: str | None = None
) -> Client:
    api = ApiClient(
        SERVER,
        transport=httpx.MockTransport(fake),
        retry=RetryPolicy(attempts=2, base_s=0.001),
    )
    return Client(
        SERVER,
        JOB,
        join_token="join-token",
        state_dir=tmp_path,
        name=name,
        api=api,
        on_progress=events.append if events is not None else None,
    )


STATS = {"n_samples": 30, "label_entropy": 0.5, "gini_simpson": 0.5, "loss_entropy": None}


def test_full_run_waits_trains_uploads_and_passes_private_state_on(tmp_path: Path) -> None:
    fake, trainer, events = FakeCoordinator(rounds=2), Trainer(), []
    result = client(tmp_path, fake, events).run(trainer, stats=STATS)
    assert result.status == "finished" and result.accepted_rounds == [1, 2]
    assert result.bytes_uploaded == 2 * len(b"update-1") * 100
    assert [c[0] for c in trainer.calls] == [1, 2]
    assert trainer.calls[0][1:] == (b"global-0", None)
    assert trainer.calls[1][1:] == (b"global-1", b"B-after-round-1")
    kinds = [e.event for e in events]
    assert kinds[:2] == ["enrolled", "waiting"] and kinds[-1] == "finished"
    assert {"download", "train", "upload", "accepted"} <= set(kinds)
    state = DeviceState.for_job(tmp_path, SERVER, JOB)
    assert state.last_accepted().round == 2 and state.load_pending() is None


def test_an_adapter_sent_with_the_task_is_trained_from_without_a_download(
    tmp_path: Path,
) -> None:
    fake, trainer, events = FakeCoordinator(rounds=2), Trainer(), []
    fake.inline = True
    result = client(tmp_path, fake, events).run(trainer, stats=STATS)
    assert result.status == "finished" and result.accepted_rounds == [1, 2]
    assert fake.downloads == 0
    assert [c[:2] for c in trainer.calls] == [(1, b"global-0"), (2, b"global-1")]
    done = [(e.done, e.total) for e in events if e.event == "download"]
    assert done == [(len(b"global-0"), len(b"global-0"))] * 2  # progress says it arrived


def test_killed_mid_upload_resends_the_same_bytes_without_training_again(tmp_path: Path) -> None:
    fake, first = FakeCoordinator(rounds=2), Trainer()
    fake.crash_next_put_before_reading = True
    with pytest.raises(Crash):
        client(tmp_path, fake).run(first, stats=STATS)
    assert fake.accepted == {} and [c[0] for c in first.calls] == [1]

    second = Trainer()
    result = client(tmp_path, fake).run(second)  # credentials come from the state directory
    assert result.status == "finished" and result.accepted_rounds == [1, 2]
    assert [c[0] for c in second.calls] == [2]  # round 1 was not trained twice
    assert fake.accepted[1] == hashlib.sha256(b"update-1" * 100).hexdigest()
    assert second.calls[0][2] == b"B-after-round-1"  # private state survived the crash


def test_the_enrolled_name_reaches_training_after_a_restart_without_it(tmp_path: Path) -> None:
    fake, first = FakeCoordinator(rounds=2), Trainer()
    fake.crash_next_put_before_reading = True
    with pytest.raises(Crash):
        client(tmp_path, fake, name="phone-1").run(first, stats=STATS)

    second = Trainer()
    client(tmp_path, fake).run(second)  # no name given: the enrolled one is in the state
    # The name, not the client id, is what the training seed derives from.
    assert first.names == ["phone-1"] and second.names == ["phone-1"]


def test_killed_after_acceptance_is_answered_200_and_counted_once(tmp_path: Path) -> None:
    fake, first = FakeCoordinator(rounds=2), Trainer()
    fake.crash_next_put_after_accepting = True
    with pytest.raises(Crash):
        client(tmp_path, fake).run(first, stats=STATS)
    assert list(fake.accepted) == [1]

    second = Trainer()
    result = client(tmp_path, fake).run(second)
    assert result.accepted_rounds == [1, 2] and [c[0] for c in second.calls] == [2]
    # The re-sent round-1 update hit the identical-retry path: one acceptance, not two.
    assert fake.puts == [1, 1, 2] and len(fake.accepted) == 2
    assert result.bytes_uploaded == len(b"update-2") * 100  # the 200 retry is not counted


def test_a_closed_round_drops_the_pending_update_and_the_loop_goes_on(tmp_path: Path) -> None:
    fake, trainer, events = FakeCoordinator(rounds=2), Trainer(), []
    fake.gone = {1}
    original_put = fake.put

    def put(n: int, request: httpx.Request) -> httpx.Response:
        response = original_put(n, request)
        if n == 1:
            fake.current = 2  # the round closed without us
        return response

    fake.put = put  # type: ignore[method-assign]
    result = client(tmp_path, fake, events).run(trainer, stats=STATS)
    assert result.accepted_rounds == [2] and [c[0] for c in trainer.calls] == [1, 2]
    assert any(e.event == "skipped" and e.round == 1 for e in events)
    assert DeviceState.for_job(tmp_path, SERVER, JOB).load_pending() is None


def test_first_run_needs_a_join_token_and_stats(tmp_path: Path) -> None:
    fake = FakeCoordinator()
    no_token = Client(SERVER, JOB, state_dir=tmp_path, api=ApiClient(SERVER))
    with pytest.raises(ValueError, match="join_token"):
        no_token.run(Trainer())
    with pytest.raises(ValueError, match="stats"):
        client(tmp_path, fake).run(Trainer())
