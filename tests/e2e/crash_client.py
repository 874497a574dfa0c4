"""One SDK client as its own process, for the crash tests of test_federated_digits.py.

Usage: crash_client.py SERVER JOB TOKEN STATE_DIR INDEX N_CLIENTS MODE MARKER_FILE

MODE ``slow-upload`` prints ``UPLOADING`` once the first chunk of an update is on the wire and
then stalls, so the test can SIGKILL it mid-PUT; ``die-after-accept`` SIGKILLs itself right
after the coordinator accepted an update, before the client records it; any other mode runs
to the end. Every local training appends ``trained <round>`` to MARKER_FILE.
"""

from __future__ import annotations

import os
import signal
import sys
import time

from client_sdk.api import ApiClient
from client_sdk.client import Client
from client_sdk.lora_round import LoraRound
from client_sdk.rounds import LocalUpdate, Progress, RoundContext
from client_sdk.simulate import make_shards
from client_sdk.state import DeviceState
from client_sdk.tasks import get_task
from client_sdk.trainer import LoraTrainer


def main() -> int:
    server, job, token, state_dir, index, n_clients, mode, marker = sys.argv[1:9]
    task = get_task("digits")
    data = task.load(seed=0)
    shard = make_shards(data.y_train, data.x_train, int(n_clients), 0.5, seed=0)[int(index)]
    inner = LoraRound(
        LoraTrainer(task.model_spec()),
        task.dataset(shard.x_train, shard.y_train),
        task.dataset(shard.x_val, shard.y_val),
    )

    def train(ctx: RoundContext) -> LocalUpdate:
        with open(marker, "a") as handle:
            handle.write(f"trained {ctx.task.round_number}\n")
        return inner(ctx)

    train.stats = inner.stats  # type: ignore[attr-defined]

    def progress(p: Progress) -> None:
        if mode == "slow-upload" and p.event == "upload" and p.total and p.done < p.total:
            print("UPLOADING", flush=True)
            time.sleep(120)  # the test kills us here, with the body half sent

    if mode == "die-after-accept":
        original = DeviceState.record_accepted

        def record_then_die(self: DeviceState, round: int, sha256: str) -> None:
            print("ACCEPTED", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
            original(self, round, sha256)  # never reached

        DeviceState.record_accepted = record_then_die  # type: ignore[method-assign]

    client = Client(
        server,
        job,
        join_token=token,
        state_dir=state_dir,
        name=f"process-{index}",
        on_progress=progress,
        api=ApiClient(server, chunk_bytes=2048),
    )
    result = client.run(train)
    print(f"DONE {result.status} {result.accepted_rounds}", flush=True)
    return 0 if result.status == "finished" else 1


if __name__ == "__main__":
    sys.exit(main())
