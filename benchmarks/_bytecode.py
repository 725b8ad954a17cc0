"""Compile searchfs's bytecode before timing fresh processes.

An installed package has its .pyc files (pip writes them; a source checkout writes them on its first
run). An environment with PYTHONDONTWRITEBYTECODE=1, as these benchmark machines have, never writes them,
so every fresh `searchfs` process would compile each module it imports from source (0.26 s for the whole
package here), a cost no user's install pays. py_compile writes them whatever that variable says.
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "searchfs"


def ensure_bytecode() -> bool:
    """Write any missing or stale .pyc of the package; True when all of them compiled."""
    return bool(compileall.compile_dir(str(PACKAGE), quiet=1))
