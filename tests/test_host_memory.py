"""keep_freed_memory: a batch's freed blocks are reused by the next batch, not faulted in again."""

import subprocess
import sys

import pytest

# Run a batch-like pattern (several blocks alive at once, then all freed) 16 times for the heap
# to settle, then 8 times more; print the minor page faults those 8 took. Each block is over
# 32 MiB, glibc's cap on its self-raising mmap threshold, so by default every block is mmapped
# and unmapped whatever that glibc's history (smaller blocks are on some machines, not others).
_PROBE = """
import resource, sys, torch
from ugsep.host_memory import keep_freed_memory
took = keep_freed_memory() if sys.argv[1] == "keep" else None
def batch():
    blocks = [torch.ones(n << 20) for n in (10, 12, 10)]
    return sum(float(b[0]) for b in blocks)
for _ in range(16):
    batch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    batch()
print(took, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
BATCH_PAGES = (32 << 20) * 4 // 4096


def _faults(mode: str) -> tuple[str, int]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True, capture_output=True, text=True)
    took, faults = out.stdout.split()
    return took, int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_batch_memory_is_reused_instead_of_faulted_in_again():
    _, default = _faults("default")
    took, kept = _faults("keep")
    assert default >= 8 * BATCH_PAGES // 2  # glibc unmaps: most pages fault every batch
    assert took == "True" and kept <= BATCH_PAGES // 10
