"""Flower 1.42 on ``bench/round_floor.py``'s task: the peer in its ``--flower-python`` runs.

Needs an interpreter with flwr (not a dependency of this project; round_floor's docstring
shows the venv). Flower's gRPC server (``flwr.server.start_server``, FedAvg over every
client each round, the global model scored on the test set by ``evaluate_fn``) runs in this
process; its 10 clients (``flwr.client.start_client``, one ``NumPyClient`` and one peft model
each, at most two training at a time) run as threads of one child process, as ``flaas demo``
runs its simulated clients. Local training is round_floor's ``Digits.train``, the same code
the plain loop runs. Prints one JSON line: seconds from start to round 1's first fit, the gaps
between successive rounds' aggregations, the final test accuracy.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()  # before the heavy imports, as round_floor times `flaas demo`

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

# No telemetry and no update check: both would wait on the network (flwr reads these at import).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

import flwr  # noqa: E402
import torch  # noqa: E402
from flwr.common import ndarrays_to_parameters  # noqa: E402
from flwr.server.strategy import FedAvg  # noqa: E402
from peft import get_peft_model_state_dict  # noqa: E402
from round_floor import CLIENTS, CONCURRENCY, Digits  # noqa: E402

Arrays = list[Any]  # numpy arrays in KEYS order, Flower's parameter format


def keys_of(digits: Digits) -> list[str]:
    return sorted(get_peft_model_state_dict(digits.model()))


def as_state(keys: list[str], arrays: Arrays) -> dict[str, torch.Tensor]:
    return {key: torch.from_numpy(array.copy()) for key, array in zip(keys, arrays, strict=True)}


class TimedFedAvg(FedAvg):
    """FedAvg that notes when round 1 starts and when each round's aggregation ends."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first_fit: float | None = None
        self.closed: list[float] = []

    def configure_fit(self, server_round, parameters, client_manager):  # type: ignore[no-untyped-def]
        if self.first_fit is None:
            self.first_fit = time.perf_counter()
        return super().configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round, results, failures):  # type: ignore[no-untyped-def]
        aggregated = super().aggregate_fit(server_round, results, failures)
        self.closed.append(time.perf_counter())
        return aggregated


def serve(rounds: int) -> None:
    digits = Digits()
    keys, scorer = keys_of(digits), digits.model()
    initial = get_peft_model_state_dict(scorer)
    accuracy: list[float] = []

    def evaluate(server_round: int, arrays: Arrays, config: dict) -> tuple[float, dict]:
        accuracy.append(digits.accuracy(scorer, as_state(keys, arrays)))
        return 0.0, {"accuracy": accuracy[-1]}

    strategy = TimedFedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=CLIENTS,
        min_available_clients=CLIENTS,
        initial_parameters=ndarrays_to_parameters([initial[k].numpy() for k in keys]),
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda server_round: {"round": server_round},
    )
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    clients = subprocess.Popen([sys.executable, __file__, "--clients-of", address])
    try:
        flwr.server.start_server(
            server_address=address,
            config=flwr.server.ServerConfig(num_rounds=rounds),
            strategy=strategy,
        )
    finally:
        clients.wait(timeout=60)
    assert strategy.first_fit is not None
    closed = strategy.closed
    print(
        json.dumps(
            {
                "startup_s": strategy.first_fit - STARTED,
                "gaps": [b - a for a, b in zip(closed, closed[1:], strict=False)],
                "accuracy": accuracy[-1],
            }
        )
    )


def run_clients(address: str) -> None:
    digits = Digits()
    keys, gate = keys_of(digits), threading.Semaphore(CONCURRENCY)

    class DigitsClient(flwr.client.NumPyClient):  # type: ignore[misc]
        def __init__(self, index: int) -> None:
            self.index, self.model = index, digits.model()

        def fit(self, parameters: Arrays, config: dict) -> tuple[Arrays, int, dict]:
            with gate:
                seed = int(config["round"]) * 1000 + self.index
                state, n = digits.train(self.model, self.index, as_state(keys, parameters), seed)
            return [state[k].numpy() for k in keys], n, {}

    def one(index: int) -> None:
        client = DigitsClient(index).to_client()
        flwr.client.start_client(server_address=address, client=client, insecure=True)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--clients-of", metavar="ADDRESS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients_of:
        run_clients(args.clients_of)
    else:
        serve(args.rounds)


if __name__ == "__main__":
    main()
