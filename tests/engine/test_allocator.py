"""keep_freed_memory: a large block freed and allocated again reuses the pages the process has,
where glibc's default faults in fresh (kernel-zeroed) pages every time."""
import platform
import subprocess
import sys

import pytest

BLOCK_MB = 64  # over glibc's largest mmap threshold (32 MiB): by default always fresh pages

FAULTED_MB = f"""
import resource, sys, torch
from detector.engine.allocator import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faulted_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt * resource.getpagesize() / 2**20
# The heap grows to fit. posix_memalign's leftover can sit just past a freed block and keep it from
# the next (larger) request, so the heap settles with room for two blocks: three rounds at most.
for _ in range(4):
    block = torch.ones({BLOCK_MB} * 2**20 // 4); del block
before = faulted_mb()
for _ in range(5):
    block = torch.ones({BLOCK_MB} * 2**20 // 4); del block
print(faulted_mb() - before)
"""


def faulted_mb(mode: str) -> float:
    result = subprocess.run([sys.executable, "-c", FAULTED_MB, mode], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_freed_memory_is_reused_without_new_page_faults():
    assert faulted_mb("default") > 0.9 * 5 * BLOCK_MB  # fresh pages for every allocation
    assert faulted_mb("keep") < 0.1 * BLOCK_MB  # the same pages again
