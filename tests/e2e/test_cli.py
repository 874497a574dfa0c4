"""The `flaas` CLI: zero-configuration `serve`, and job commands against a live coordinator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.live import LiveCoordinator, enrol_clients, free_port
from tests.support import OPERATOR_KEY, job_spec

ROOT = Path(__file__).resolve().parents[2]


def flaas(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_serve_works_with_zero_configuration(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAAS_")}
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline and process.poll() is None
                time.sleep(0.2)
        assert ready.status_code == 200
        assert (tmp_path / "flaas-data" / "flaas.db").is_file()
        assert (tmp_path / "flaas-data" / "adapters").is_dir()
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_production_refuses_the_development_key(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAAS_")}
    env["FLAAS_ENVIRONMENT"] = "production"
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "development operator key is refused outside development" in result.stderr


def test_job_create_list_show(tmp_path: Path) -> None:
    live = LiveCoordinator(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path)
    live.start()
    try:
        common = ["--server", live.url, "--operator-key", OPERATOR_KEY]
        created = flaas("job", "create", "--file", str(ROOT / "examples" / "job.yaml"), *common)
        assert created.returncode == 0, created.stderr
        job = json.loads(created.stdout)
        assert job["strategy"] == "rbla-shrink" and job["join_token"].startswith("flj_")
        # The browser link carries the token in its fragment, which no server log sees.
        assert f"{live.url}/join/{job['id']}#t={job['join_token']}" in created.stderr
        listed = flaas("job", "list", *common)
        assert listed.returncode == 0 and job["id"] in listed.stdout
        shown = flaas("job", "show", job["id"], *common)
        assert json.loads(shown.stdout)["spec"]["rank"]["r_max"] == 16
        bad = tmp_path / "bad.yaml"
        bad.write_text("name: x\nmodules: {}\n")
        refused = flaas("job", "create", "--file", str(bad), *common)
        assert refused.returncode != 0 and "422" in refused.stderr
        wrong_key = flaas("job", "list", "--server", live.url, "--operator-key", "nope")
        assert wrong_key.returncode != 0 and "401" in wrong_key.stderr
    finally:
        live.stop()


def test_adapter_export_writes_a_peft_directory(tmp_path: Path) -> None:
    import hashlib

    from peft import PeftModel

    from client_sdk.model_spec import ModelSpec
    from client_sdk.models import build_base

    model = {"source": "flaas:digits", "task_type": "SEQ_CLS", "target_modules": ["fc1", "fc2"]}
    one_client = {"min_clients": 1, "target_clients": 1, "timeout_s": 300}
    live = LiveCoordinator(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path)
    live.start()
    try:
        jobs = {}
        with live.operator() as http:
            for strategy in ("rbla", "fedsa"):
                spec = job_spec(
                    model=model, modules={}, extra={}, strategy=strategy, enrolment=one_client
                )
                jobs[strategy] = http.post("/api/v1/jobs", json=spec).raise_for_status().json()
                enrol_clients(http, jobs[strategy], 1)  # starts the job: round 0 is closed
        common = ["--server", live.url, "--operator-key", OPERATOR_KEY]
        out = tmp_path / "exported"
        done = flaas("adapter", "export", "--job", jobs["rbla"]["id"], "--out", str(out), *common)
        assert done.returncode == 0, done.stderr
        assert sorted(p.name for p in out.iterdir()) == [
            "adapter_config.json",
            "adapter_model.safetensors",
            "flaas_lineage.json",
        ]
        digest = hashlib.sha256((out / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert f"round 0: rank 8, lora_alpha 16.0, adapter_model.safetensors sha256 {digest}" in (
            done.stdout
        )
        PeftModel.from_pretrained(build_base(ModelSpec.model_validate(model)), str(out))

        refused = flaas(
            "adapter", "export", "--job", jobs["fedsa"]["id"], "--out", str(out), *common
        )
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert refused.stderr.startswith("error: 409:") and "no global B" in refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    finally:
        live.stop()


def test_migrate_reports_the_revision(tmp_path: Path) -> None:
    result = flaas("migrate", "--database-url", f"sqlite:///{tmp_path / 'm.db'}")
    assert result.returncode == 0, result.stderr
    assert "database at revision" in result.stdout


# `flaas client join` run in a fresh interpreter that reports whether torch got imported.
_JOIN = """
import sys
from server.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    print(exc.code if isinstance(exc.code, str) else f"exit {exc.code}", file=sys.stderr)
print("torch imported" if "torch" in sys.modules else "torch not imported", file=sys.stderr)
"""


def _join(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _JOIN, "client", "join", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def test_client_join_checks_token_model_and_data_before_importing_torch(tmp_path: Path) -> None:
    from tests.hf_models import tiny_gpt2, tiny_llama, write_causal_lm_jsonl

    llama, gpt2 = tiny_llama(tmp_path / "llama"), tiny_gpt2(tmp_path / "gpt2")
    good = write_causal_lm_jsonl(tmp_path / "good.jsonl", n=20)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n')
    live = LiveCoordinator(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path)
    live.start()
    try:
        spec = {
            "name": "byom",
            "model": {"source": str(llama), "task_type": "CAUSAL_LM"},
            "enrolment": {"min_clients": 2},
        }
        with live.operator() as http:
            job = http.post("/api/v1/jobs", json=spec).json()
        common = ["--server", live.url, "--job", job["id"], "--state-dir", str(tmp_path / "s")]
        token = ["--token", job["join_token"]]

        wrong_token = _join(*common, "--token", "flj_wrong", "--data", str(good))
        assert "invalid join token" in wrong_token.stderr, wrong_token.stderr
        other_model = _join(*common, *token, "--model", str(gpt2), "--data", str(good))
        assert "is not the job's model" in other_model.stderr, other_model.stderr
        missing = _join(*common, *token, "--model", str(tmp_path / "nope"), "--data", str(good))
        assert "not found: no directory" in missing.stderr, missing.stderr
        typo = _join(*common, *token, "--data", str(bad))
        assert f"{bad}:2:" in typo.stderr and "completion" in typo.stderr, typo.stderr
        no_file = _join(*common, *token, "--data", str(tmp_path / "absent.jsonl"))
        assert "absent.jsonl" in no_file.stderr, no_file.stderr
        for result in (wrong_token, other_model, missing, typo, no_file):
            assert "torch not imported" in result.stderr and "Traceback" not in result.stderr
        with live.operator() as http:
            assert http.get(f"/api/v1/jobs/{job['id']}/clients").json()["total"] == 0
    finally:
        live.stop()


def test_job_cancel_watch_and_id_prefixes(tmp_path: Path) -> None:
    live = LiveCoordinator(f"sqlite:///{tmp_path / 'cli.db'}", tmp_path)
    live.start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLAAS_")}
        env.update(FLAAS_SERVER=live.url, FLAAS_OPERATOR_KEYS=f"{OPERATOR_KEY},another-key")
        with live.operator() as http:
            ids = [http.post("/api/v1/jobs", json=job_spec()).json()["id"] for _ in range(3)]
        # The shortest start of the first id that no other id shares (ambiguous starts are
        # tested in tests/test_cli_errors.py, where the ids are chosen).
        unique = next(
            ids[0][:n] for n in range(1, 37) if not any(i.startswith(ids[0][:n]) for i in ids[1:])
        )
        shown = flaas("job", "show", unique, env=env)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["id"] == ids[0]
        unknown = flaas("job", "show", "ffffffff-ffff", env=env)
        if not any(i.startswith("ffffffff-ffff") for i in ids):
            assert unknown.returncode == 1
            assert unknown.stderr.startswith("error: no job id starts with 'ffffffff-ffff'")

        watcher = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "job", "watch", unique],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)  # the watcher has seen the job enrolling
        cancelled = flaas("job", "cancel", unique, env=env)
        assert cancelled.returncode == 0, cancelled.stderr
        assert f"job {ids[0]} cancelled" in cancelled.stdout
        out, err = watcher.communicate(timeout=60)
        assert watcher.returncode == 1, err  # the job ended, but not finished
        assert "enrolling  enrolment open" in out and "cancelled  round 0/2" in out
        assert out.strip().endswith(f"job {ids[0]} cancelled: cancelled by an operator")
        again = flaas("job", "cancel", ids[0], env=env)
        assert again.returncode == 1 and again.stderr.startswith("error: 409: ")
        assert len(again.stderr.strip().splitlines()) == 1
    finally:
        live.stop()
