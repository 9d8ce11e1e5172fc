"""The C heap as a model's work wants it (models.heap): once a model has loaded, a decode step's
few-MB tensors reuse pages already faulted in instead of fresh ones each time."""

import subprocess
import sys

import pytest

# a sampling step's pattern at four rows of a 262,144-token vocabulary (the temperature, then the
# rows' logsumexp), 100 times after a warm-up; the process's minor page faults, before and after
# argv[1] (`call`: keep_freed itself; else a model folder that load_model loads)
FAULTS = """
import resource, sys, torch
from simlab.models import heap
logits = torch.randn(4, 262144)
def steps():
    for _ in range(400):
        scaled = logits / 0.8
        total = torch.logsumexp(scaled, dim=-1, keepdim=True)
        del scaled, total
def faults():
    steps()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    steps()
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
plain = faults()
if sys.argv[1] == "call":
    heap.keep_freed()
else:
    from simlab.config import Settings
    from simlab.models.load import load_model
    load_model(sys.argv[1], Settings(device="cpu", dtype="float32"))
print(plain, faults(), heap.keep_freed())
"""


def _faults(how: str) -> tuple[int, int]:
    done = subprocess.run([sys.executable, "-c", FAULTS, how], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    plain, kept, took = done.stdout.split()
    if took != "True":
        pytest.skip("not glibc's malloc: nothing to set")
    if int(plain) < 400 * 50:  # (with transparent huge pages always on, a page fault brings 2 MiB)
        pytest.skip(f"the pattern faulted {plain} pages before the setting here: nothing to tell apart")
    return int(plain), int(kept)


def test_a_steps_tensors_reuse_their_pages_once_the_heap_keeps_them():
    plain, kept = _faults("call")  # (before: pages handed back and faulted in again, step after step)
    assert kept <= 2048, (plain, kept)  # the heap's own pages, at most a block or two grown once


def test_loading_a_model_keeps_freed_memory_for_its_steps(tiny_dir):
    plain, kept = _faults(str(tiny_dir))
    assert kept <= 2048, (plain, kept)
