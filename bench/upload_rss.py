"""Peak RSS growth of a live coordinator while it receives one large adapter upload.

Usage: ``.venv/bin/python bench/upload_rss.py [--mb 200] [--database-url URL]``

Starts ``flaas serve`` (SQLite by default), creates a job whose rank-R adapter is about
``--mb`` MB, enrols one client, downloads its starting adapter (the coordinator's memory
after that is the baseline), then streams the update from a file on disk and samples the
coordinator's RSS every 5 ms until the response arrives. Streaming means the growth must
stay far below the upload's size (target: < 50 MB for 200 MB).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import psutil
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.live import LiveCoordinator  # noqa: E402

WIDTH = 4096


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0)
    parser.add_argument("--rank", type=int, default=256)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()

    per_module = 2 * WIDTH * args.rank * 4
    modules = max(1, round(args.mb * 1e6 / per_module))
    spec = {
        "name": "upload-rss",
        "modules": {f"base_model.model.layers.{i}.proj": [WIDTH, WIDTH] for i in range(modules)},
        "rank": {"policy": "fixed", "r_min": args.rank, "r_max": args.rank},
        "enrolment": {"min_clients": 1, "target_clients": 1},
        "rounds": 1,
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        url = args.database_url or f"sqlite:///{workdir / 'bench.db'}"
        live = LiveCoordinator(url, workdir, FLAAS_MAX_UPLOAD_BYTES=str(2 * 1024**3))
        live.start()
        try:
            with live.operator() as http:
                job = http.post("/api/v1/jobs", json=spec).json()
            with httpx.Client(base_url=live.url, timeout=600) as http:
                enrolled = http.post(
                    f"/api/v1/jobs/{job['id']}/clients",
                    json={"stats": {"n_samples": 100}},
                    headers={"Authorization": f"Bearer {job['join_token']}"},
                ).json()
            client = live.client(enrolled["credential"])
            client.timeout = httpx.Timeout(600)
            task = client.get("/api/v1/clients/me/task").json()
            client.get(task["adapter_url"]).raise_for_status()

            update = workdir / "update.safetensors"
            tensors = {}
            for i in range(modules):
                tensors[f"base_model.model.layers.{i}.proj.lora_A.weight"] = torch.randn(
                    args.rank, WIDTH
                )
                tensors[f"base_model.model.layers.{i}.proj.lora_B.weight"] = torch.randn(
                    WIDTH, args.rank
                )
            save_file(tensors, str(update))
            del tensors
            size = update.stat().st_size

            assert live.process is not None
            server = psutil.Process(live.process.pid)
            time.sleep(1.0)
            baseline = server.memory_info().rss
            peak = baseline
            done = threading.Event()

            def sample() -> None:
                nonlocal peak
                while not done.is_set():
                    peak = max(peak, server.memory_info().rss)
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample)
            sampler.start()
            started = time.perf_counter()

            def body():  # type: ignore[no-untyped-def]
                with update.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        yield chunk

            response = client.put(
                task["upload_url"],
                content=body(),
                headers={"Flaas-Num-Samples": "100", "Content-Length": str(size)},
            )
            elapsed = time.perf_counter() - started
            done.set()
            sampler.join()
            print(f"upload: {size / 1e6:.1f} MB in {elapsed:.2f} s -> HTTP {response.status_code}")
            print(f"coordinator RSS: baseline {baseline / 1e6:.1f} MB, peak {peak / 1e6:.1f} MB")
            print(
                f"peak RSS growth during the upload: {(peak - baseline) / 1e6:.1f} MB "
                f"({(peak - baseline) / size:.1%} of the upload)"
            )
        finally:
            live.stop()


if __name__ == "__main__":
    main()
