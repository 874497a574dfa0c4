"""retain_freed_memory: a freed buffer is reused by the next allocation instead of re-faulted."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")

# Allocate, touch and free 16 MB twice through the C allocator; print the page faults of the
# second round (a worker's second aggregation round, in miniature).
_PROBE = """
import ctypes, resource, sys
from server.memory import retain_freed_memory
if sys.argv[1] == "retain":
    assert retain_freed_memory()
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 16 << 20
def cycle():
    buffer = libc.malloc(SIZE)
    ctypes.memset(buffer, 1, SIZE)
    libc.free(buffer)
cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
cycle()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _second_round_faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True
    )
    return int(out.stdout)


def test_a_retaining_process_reuses_freed_memory() -> None:
    pages = (16 << 20) // 4096
    assert _second_round_faults("default") > pages // 2  # glibc hands it back and re-faults it
    assert _second_round_faults("retain") < pages // 20
