"""``flaas worker`` whose aggregations sleep before folding each update (fault-injection tests).

``python -m tests.tasks.slow_worker SECONDS worker ...`` runs ``server.cli`` with every
``Accumulator.add`` delayed by SECONDS, so that a test can kill the worker while it aggregates.
The Celery pool forks this process, so its children inherit the delay.
"""

from __future__ import annotations

import functools
import sys
import time
from typing import Any

from server import cli
from server.aggregation import Accumulator


def slow_down(seconds: float) -> None:
    """Make every ``Accumulator.add`` of this process sleep ``seconds`` first."""
    add = Accumulator.add

    @functools.wraps(add)
    def slow_add(self: Accumulator, *args: Any, **kwargs: Any) -> None:
        time.sleep(seconds)
        add(self, *args, **kwargs)

    Accumulator.add = slow_add  # type: ignore[method-assign]


if __name__ == "__main__":
    slow_down(float(sys.argv[1]))
    sys.exit(cli.main(sys.argv[2:]))
