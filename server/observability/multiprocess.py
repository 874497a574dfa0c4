"""prometheus_client's multiprocess mode: the directory a process tree's samples go to.

prometheus_client decides at import whether values live in memory or in files of
``PROMETHEUS_MULTIPROC_DIR`` (one per process and metric kind, ``counter_<pid>.db``), so a
process that must count in files prepares the directory before anything imports it: this
module imports only the standard library. ``flaas worker`` does (``process_samples``): its
prefork pool's children count, and its exporter sums their files; so does ``flaas serve
--workers N``, whose processes each answer a scrape with the sum of all of them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The sample directory, when this process runs in multiprocess mode."""
    return os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_samples(directory: Path) -> None:
    """Delete the sample files no running process writes (prometheus_client wants them gone
    before a run: a new process that got an old pid would add to its counts).

    A file named after this process's pid is stale too: this process has not imported
    prometheus_client yet. Files of running processes (a coordinator's, say) are kept."""
    for path in directory.glob("*.db"):
        pid = path.stem.rpartition("_")[2]
        if pid.isdigit() and (int(pid) == os.getpid() or not _running(int(pid))):
            path.unlink(missing_ok=True)


@contextmanager
def process_samples(private: bool) -> Iterator[str | None]:
    """The sample directory of a process tree (a worker and its pool, a coordinator's
    processes) for as long as it runs (``None``: counts stay in each process's memory).
    Entered before prometheus_client is imported.

    ``PROMETHEUS_MULTIPROC_DIR``, when set, is created if missing and cleared of stale
    files. Unset and ``private``, a temporary directory of this process tree's own is used and
    removed at the end."""
    directory = multiprocess_dir()
    if not directory and not private:
        yield None
        return
    if "prometheus_client" in sys.modules:
        raise RuntimeError(
            f"prometheus_client was imported before {MULTIPROC_ENV} was prepared: it picks "
            "where values live at import, so the exporter would miss the pool's counts"
        )
    if directory:
        Path(directory).mkdir(parents=True, exist_ok=True)
        remove_stale_samples(Path(directory))
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="flaas-metrics-") as made:
        os.environ[MULTIPROC_ENV] = made
        try:
            yield made
        finally:
            del os.environ[MULTIPROC_ENV]
