"""`import torch` without stopping the process's other threads while its libraries are mapped.

Why: importing an extension module holds the GIL through its dlopen, and torch's `torch._C` pulls in
libtorch (and, in the CUDA wheels PyPI serves on Linux, libtorch_cuda and the CUDA libraries): 0.24 s
here, during which the scan's hashing and the decoders, which release the GIL for their own work, could
not even start a file. A fresh `searchfs index` imports torch on its model-loading thread beside them.

How: for the one import of `torch._C`, a meta-path finder asks the normal path finder for its spec and
hands it a loader that, as the module is created, first dlopens the file through a ctypes function call,
which releases the GIL, with the flags Python's import then uses; the import's own dlopen finds the
library loaded. (Not in the finder itself: finders run under the global import lock, which would stop
every other thread's imports for as long.) Everything torch does before
that (its global deps, the CUDA wheels' preloads, in their order) runs unchanged. Best effort: anything
unexpected (no dlopen to call, another loader, a failing dlopen) leaves the plain import to do the work
and report its errors.

An interpreter that exits while such a dlopen runs on another thread first waits for it (atexit): the C
library's exit handlers running beside a half-mapped libtorch crash the process (with the GIL held
throughout, as a plain import does, exiting had to wait anyway).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.abc
import importlib.machinery
import os
import sys
import threading
from types import ModuleType

PRELOADED = "torch._C"
_mapping = threading.Lock()  # held through a dlopen outside the GIL


def import_torch() -> ModuleType:
    """The torch module, imported with `torch._C` mapped outside the GIL (once per process)."""
    if "torch" in sys.modules:  # imported, or being imported by another thread: `import` waits for that
        import torch

        return torch
    finder = _MapOutsideTheGil(PRELOADED)
    sys.meta_path.insert(0, finder)
    try:
        import torch
    finally:
        sys.meta_path.remove(finder)
    return torch


class _MapOutsideTheGil(importlib.abc.MetaPathFinder):
    def __init__(self, name: str) -> None:
        self.name = name
        self.mapped: str | None = None  # the file dlopened outside the GIL (for tests)

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = spec.loader if spec is not None else None
        if spec is not None and type(loader) is importlib.machinery.ExtensionFileLoader:
            spec.loader = _MapFirst(loader.name, loader.path, self)
        return spec  # None: the other finders are asked, as without this one


class _MapFirst(importlib.machinery.ExtensionFileLoader):
    def __init__(self, name: str, path: str, finder: _MapOutsideTheGil) -> None:
        super().__init__(name, path)
        self.finder = finder

    def create_module(self, spec):
        if dlopen_outside_the_gil(self.path, sys.getdlopenflags()):
            self.finder.mapped = self.path
        return super().create_module(spec)


def dlopen_outside_the_gil(path: str, flags: int) -> bool:
    """Map a shared library while other Python threads run: ctypes releases the GIL around calls into
    a CDLL's functions (not around its own dlopen). The handle is kept: the library stays loaded, as an
    import leaves it. False when it could not be done; the caller's plain dlopen will say why."""
    if os.name != "posix":
        return False
    try:
        dlopen = ctypes.CDLL(None).dlopen
        dlopen.restype, dlopen.argtypes = ctypes.c_void_p, (ctypes.c_char_p, ctypes.c_int)
        with _mapping:
            return bool(dlopen(os.fsencode(path), flags))
    except (OSError, AttributeError):
        return False


@atexit.register
def _let_a_mapping_finish() -> None:
    with _mapping:
        pass
