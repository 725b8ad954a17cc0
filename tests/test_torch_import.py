"""torch_import.py: torch's big extension module is mapped while other threads run, and torch works."""

import json
import subprocess
import sys

from searchfs.ingest import torch_import

CHILD = r"""
import importlib.util, json, sys, threading, time
from searchfs.ingest import torch_import

spins, stop, during = [0], [False], []

def spin():
    while not stop[0]:  # a finder's run needs the global import lock; sleeping leaves the import the GIL
        importlib.util.find_spec("searchfs_no_such_module")
        spins[0] += 1
        time.sleep(0.0002)

real = torch_import.dlopen_outside_the_gil

def watched(path, flags):
    before = spins[0]
    done = real(path, flags)
    during.append((path, spins[0] - before, done))
    return done

torch_import.dlopen_outside_the_gil = watched
threading.Thread(target=spin, daemon=True).start()
torch = torch_import.import_torch()
stop[0] = True
print(json.dumps({
    "during": during,
    "finders_left": [type(f).__name__ for f in sys.meta_path if type(f).__name__ == "_MapOutsideTheGil"],
    "sum": float(torch.ones(3).sum()),
    "c_file": torch._C.__file__,
}))
"""


def test_torch_c_is_mapped_while_another_thread_runs_and_torch_works():
    # A fresh interpreter: torch not imported yet, as in a fresh `searchfs index`.
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    seen = json.loads(done.stdout.splitlines()[-1])
    assert len(seen["during"]) == 1, seen
    path, spins, mapped = seen["during"][0]
    assert mapped and path == seen["c_file"]
    # A dlopen holding the GIL (or the global import lock) lets the spinning thread through once at most
    # until it returns; without them it goes round every 0.2 ms or so of the 0.2 s that libtorch takes.
    assert spins >= 20, f"the spinning thread ran {spins} times while torch._C was mapped"
    assert seen["finders_left"] == [] and seen["sum"] == 3.0


def test_a_library_that_cannot_be_mapped_is_left_to_the_plain_import(tmp_path):
    assert torch_import.dlopen_outside_the_gil(str(tmp_path / "missing.so"), 2) is False
    (tmp_path / "not-a-library.so").write_bytes(b"hello")
    assert torch_import.dlopen_outside_the_gil(str(tmp_path / "not-a-library.so"), 2) is False


def test_torch_already_imported_is_returned_as_it_is():
    import torch

    before = list(sys.meta_path)
    assert torch_import.import_torch() is torch
    assert sys.meta_path == before


EXIT_DURING_THE_MAPPING = r"""
import sys, threading, time
from searchfs.ingest import torch_import

threading.Thread(target=torch_import.import_torch, daemon=True).start()
while not torch_import._mapping.locked():  # the loading thread is inside the dlopen now
    time.sleep(0.001)
sys.exit(0)  # as `searchfs doctor --repair` does when its rescan ends before the model has loaded
"""


def test_exiting_while_torch_is_mapped_on_another_thread_waits_for_it_and_does_not_crash():
    # Without the wait, the C library's exit handlers ran beside the half-mapped libtorch: SIGSEGV.
    done = subprocess.run([sys.executable, "-c", EXIT_DURING_THE_MAPPING], capture_output=True, timeout=300)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
