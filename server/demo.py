"""``flaas demo``: the whole product on one machine with one command.

Starts a local coordinator (``flaas serve`` in a child process on a free local port, SQLite
and adapter files in a temporary directory or ``--data-dir``, aggregation in that process),
creates a job for a built-in task, runs simulated SDK clients over real HTTP in this process,
prints one line per closed round and a summary table.

Accuracy per round: strategies with a global model (rbla, fedit, ffa, flexlora, ...) are scored
by downloading the round's global adapter (rank R, scale-folded, so it is loaded at scale 1)
and evaluating it on the task's held-out test set here. The FedSA family has no global model
(B and the head stay on the devices), so it reports the sample-weighted mean (and spread) of
the clients' personalised ``val_accuracy`` from the round's updates.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from server.local_coordinator import LocalCoordinator

if TYPE_CHECKING:  # imported inside the functions: `flaas --help` must stay light
    import httpx

DEFAULTS: dict[str, Any] = {
    "task": "digits",
    "strategy": "rbla-shrink",
    "clients": 10,
    "rounds": 20,
    "alpha": 0.5,
    "concurrency": 2,
}


@dataclass
class RoundLine:
    """One closed round as the demo reports it."""

    number: int
    participants: int
    ranks: list[int]
    accuracy: float
    spread: float | None
    seconds: float
    bytes_up: int


@dataclass
class DemoResult:
    """What a demo run measured."""

    job_id: str
    strategy: str
    baseline: float
    rounds: list[RoundLine] = field(default_factory=list)
    wall_seconds: float = 0.0
    status: str = ""

    @property
    def final_accuracy(self) -> float:
        return self.rounds[-1].accuracy if self.rounds else math.nan


class Evaluator:
    """Scores rounds: the global adapter on the test set, or the clients' own val_accuracy."""

    def __init__(self, task_name: str, strategy: str, r_max: int) -> None:
        from client_sdk.tasks import get_task
        from client_sdk.trainer import LoraTrainer
        from server.aggregation import get_strategy

        task = get_task(task_name)
        data = task.load(seed=0)
        self.test = task.dataset(data.x_test, data.y_test)
        self.trainer = LoraTrainer(task.model_spec(), device="cpu")
        # Strategies that keep adapter parts on the devices (FedSA's B) have no global model.
        self.personalised = bool(get_strategy(strategy).private_parts)
        self.r_max = r_max

    def baseline(self) -> float:
        """Test accuracy of the untrained base model (every LoRA B is zero before round 1)."""
        return self._evaluate({}, rank=1)

    def score(
        self, http: httpx.Client, job_id: str, detail: dict[str, Any]
    ) -> tuple[float, float | None]:
        """(accuracy, spread across clients or None) of one closed round."""
        if not self.personalised:
            return self._global(http, job_id, detail["number"]), None
        pairs = [
            (float(u["metrics"]["val_accuracy"]), float(u["n_samples"]))
            for u in detail["updates"]
            if u["status"] == "accepted" and "val_accuracy" in (u["metrics"] or {})
        ]
        if not pairs:
            return math.nan, None
        total = sum(w for _, w in pairs)
        mean = sum(a * w for a, w in pairs) / total
        spread = math.sqrt(sum(w * (a - mean) ** 2 for a, w in pairs) / total)
        return mean, spread

    def _global(self, http: httpx.Client, job_id: str, number: int) -> float:
        from client_sdk.wire_format import decode_update

        response = http.get(f"/api/v1/jobs/{job_id}/adapter", params={"round": number})
        response.raise_for_status()
        tensors, _ = decode_update(response.content)
        return self._evaluate(tensors, rank=self.r_max)

    def _evaluate(self, tensors: dict[str, Any], rank: int) -> float:
        from client_sdk.trainer_settings import AdapterConfig

        # The global adapter is stored scale-folded (dW = B'A'): load it at scale 1.
        adapter = AdapterConfig(rank, lora_alpha=float(rank))
        return self.trainer.evaluate(adapter, incoming=tensors, data=self.test)["accuracy"]


def _seconds(detail: dict[str, Any]) -> float:
    from datetime import datetime

    opened, closed = detail.get("opened_at"), detail.get("closed_at")
    if not opened or not closed:
        return math.nan
    return (datetime.fromisoformat(closed) - datetime.fromisoformat(opened)).total_seconds()


def run_demo(
    *,
    task: str = DEFAULTS["task"],
    strategy: str = DEFAULTS["strategy"],
    clients: int = DEFAULTS["clients"],
    rounds: int = DEFAULTS["rounds"],
    alpha: float = DEFAULTS["alpha"],
    concurrency: int = DEFAULTS["concurrency"],
    data_dir: Path | None = None,
    seed: int = 0,
    out: Callable[[str], None] = print,
    spec: dict[str, Any] | None = None,
    on_finished: Callable[[httpx.Client, str, Path], None] | None = None,
    max_ranks: Sequence[int] | None = None,
) -> DemoResult:
    """Run the demo end to end and return what it measured (lines go to ``out``).

    ``spec`` replaces the job spec built from the arguments (its strategy, rounds and rank
    bounds then rule; ``clients`` must match its enrolment); ``on_finished(http, job_id,
    clients_dir)`` runs after the last round while the coordinator still serves (benchmarks
    score the devices' own models there); ``max_ranks`` caps each device's rank."""
    from client_sdk.simulate import run_simulation
    from client_sdk.tasks.job_spec import task_job_spec
    from server.aggregation import AggregationError, strategy_class

    if data_dir is None:
        with tempfile.TemporaryDirectory(prefix="flaas-demo-") as scratch:
            return run_demo(
                task=task, strategy=strategy, clients=clients, rounds=rounds, alpha=alpha,
                concurrency=concurrency, data_dir=Path(scratch), seed=seed, out=out,
                spec=spec, on_finished=on_finished, max_ranks=max_ranks,
            )  # fmt: skip
    started = time.monotonic()
    workdir = Path(data_dir)
    workdir.mkdir(parents=True, exist_ok=True)
    if spec is None:
        try:
            equal_ranks = strategy_class(strategy).equal_ranks
        except AggregationError as exc:
            raise SystemExit(f"error: {exc}") from None
        spec = task_job_spec(
            task, strategy=strategy, clients=clients, rounds=rounds, seed=seed,
            equal_ranks=equal_ranks,
        )  # fmt: skip
    strategy, rounds = spec["strategy"], spec["rounds"]
    coordinator = LocalCoordinator(workdir).start()
    # Built on a thread while the coordinator starts and reads the job's model: seconds of
    # imports on each side, in two processes.
    pool = ThreadPoolExecutor(1, thread_name_prefix="flaas-demo-evaluator")
    evaluator_built = pool.submit(Evaluator, task, strategy, spec["rank"]["r_max"])
    pool.shutdown(wait=False)
    with coordinator, coordinator.operator() as http:
        response = http.post("/api/v1/jobs", json=spec)
        if response.status_code != 201:
            raise SystemExit(f"error: the job was refused: {response.text}")
        job = response.json()
        evaluator = evaluator_built.result()
        out(f"coordinator  {coordinator.url}   (data in {workdir})")
        out(f"dashboard    {coordinator.url}/dashboard   operator key: {coordinator.operator_key}")
        out(
            f"job          {job['id']}: {task}, {strategy}, {clients} clients, {rounds} rounds, "
            f"Dirichlet alpha={alpha}, ranks {spec['rank']['policy']} "
            f"[{spec['rank']['r_min']}, {spec['rank']['r_max']}]"
        )
        stop = threading.Event()
        outcome: dict[str, Any] = {}

        def simulate() -> None:
            try:
                outcome["results"] = run_simulation(
                    coordinator.url, job["id"], job["join_token"], task=task, clients=clients,
                    alpha=alpha, concurrency=concurrency, seed=seed, stop=stop,
                    state_dir=workdir / "clients", max_ranks=max_ranks,
                )  # fmt: skip
            except BaseException as exc:  # reported by the main thread
                outcome["error"] = exc

        result = DemoResult(job["id"], strategy, baseline=evaluator.baseline())
        kind = "clients' personalised val" if evaluator.personalised else "global model's test"
        out(f"accuracy     {kind} accuracy per round; untrained base: {result.baseline:.3f}")
        sim = threading.Thread(target=simulate, name="flaas-demo-clients")
        sim.start()
        try:
            _follow(http, job["id"], rounds, evaluator, result, sim, out)
        finally:
            stop.set()
            sim.join()
        if "error" in outcome:
            raise outcome["error"]
        result.status = http.get(f"/api/v1/jobs/{job['id']}").json()["status"]
        result.wall_seconds = time.monotonic() - started
        _summary(http, job["id"], result, out)
        if on_finished is not None and result.status == "finished":
            on_finished(http, job["id"], workdir / "clients")
    return result


def _follow(
    http: httpx.Client,
    job_id: str,
    rounds: int,
    evaluator: Evaluator,
    result: DemoResult,
    sim: threading.Thread,
    out: Callable[[str], None],
) -> None:
    """Print each round as it closes, until the last one or the job ends otherwise."""
    from server.db.models import JobStatus

    number = 1
    while number <= rounds:
        job = http.get(f"/api/v1/jobs/{job_id}").json()
        detail = None
        # A round is closed once the next one is open or the job has ended: asking for its
        # detail only then keeps this loop's load on the coordinator to one request a poll.
        if job["current_round"] > number or (
            job["current_round"] == number and JobStatus(job["status"]).ended
        ):
            detail = http.get(f"/api/v1/jobs/{job_id}/rounds/{number}").json()
        if detail is not None and detail["status"] == "closed":
            accuracy, spread = evaluator.score(http, job_id, detail)
            accepted = [u for u in detail["updates"] if u["status"] == "accepted"]
            line = RoundLine(
                number=number,
                participants=len(accepted),
                ranks=sorted(u["rank"] for u in accepted),
                accuracy=accuracy,
                spread=spread,
                seconds=_seconds(detail),
                bytes_up=sum(u["size_bytes"] or 0 for u in accepted),
            )
            result.rounds.append(line)
            plus = f" ± {spread:.3f}" if spread is not None else "        "
            ranks = f"{line.ranks[0]}-{line.ranks[-1]}" if line.ranks else "-"
            out(
                f"round {number:4d}  {line.participants:3d} clients  ranks {ranks:7}"
                f"  accuracy {accuracy:.3f}{plus}  {line.seconds:5.1f} s"
                f"  {line.bytes_up / 1024:8.1f} KiB up"
            )
            number += 1
            continue
        ended = JobStatus(job["status"]).ended or not sim.is_alive()
        if ended and (job["status"] != "finished" or job["current_round"] < number):
            out(f"job {job['status']}: {job.get('failure_reason') or 'clients stopped'}")
            return
        time.sleep(0.2)


def _summary(
    http: httpx.Client, job_id: str, result: DemoResult, out: Callable[[str], None]
) -> None:
    page = http.get(f"/api/v1/jobs/{job_id}/clients", params={"limit": 500}).json()
    out("")
    out(f"{'client':10} {'rank':>4} {'samples':>8} {'updates':>7}")
    for client in sorted(page["items"], key=lambda c: c["name"] or ""):
        samples = client["stats"].get("n_samples", 0)
        out(
            f"{client['name'] or client['id'][:8]:10} {client['rank'] or 0:4d} {samples:8d} "
            f"{client['rounds_contributed']:7d}"
        )
    total_up = sum(r.bytes_up for r in result.rounds)
    per_round = total_up / len(result.rounds) if result.rounds else 0
    out("")
    out(f"strategy         {result.strategy}  (job {result.status})")
    out(f"accuracy         {result.baseline:.3f} untrained -> {result.final_accuracy:.3f} final")
    out(f"uploaded         {total_up / 1024:.1f} KiB in all, {per_round / 1024:.1f} KiB per round")
    out(f"wall time        {result.wall_seconds:.1f} s")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``flaas demo`` options."""
    parser.add_argument(
        "--task",
        default=DEFAULTS["task"],
        help="a built-in task: digits, mnist (pretrained bases), digits-random, mnist-random, "
        "mnist-rbla (random bases) or trec",
    )
    parser.add_argument("--strategy", default=DEFAULTS["strategy"], help="rbla, fedsa, ...")
    parser.add_argument("--clients", type=int, default=DEFAULTS["clients"])
    parser.add_argument("--rounds", type=int, default=DEFAULTS["rounds"])
    parser.add_argument("--alpha", type=float, default=DEFAULTS["alpha"], help="Dirichlet skew")
    parser.add_argument("--concurrency", type=int, default=DEFAULTS["concurrency"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help="keep the database, adapters and client states here (default: a temporary "
        "directory, deleted at the end)",
    )


def main(args: argparse.Namespace) -> int:
    """``flaas demo``."""
    result = run_demo(
        task=args.task,
        strategy=args.strategy,
        clients=args.clients,
        rounds=args.rounds,
        alpha=args.alpha,
        concurrency=args.concurrency,
        seed=args.seed,
        data_dir=args.data_dir,
    )
    return 0 if result.status == "finished" else 1
