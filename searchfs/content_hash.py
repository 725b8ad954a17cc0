"""The content hash: what makes two files one photo to searchfs (a copy, a move, a rename keep its vector).

Each catalog records which hash its contents carry (meta 'content_hash'), so the choice can change for new
libraries without rehashing old ones:

* "sha256-160", new catalogs: SHA-256, its first 160 bits (the first 40 hex digits of `sha256sum`).
  OpenSSL runs it on the CPU's SHA instructions (x86 since Zen and Ice Lake, ARMv8): 1.6 GB/s here,
  against 0.5 GB/s for BLAKE2b, about a second less of CPU per 700 MB of 12 MP photos.
* "blake2b-160", catalogs made before schema 4: BLAKE2b with a 20-byte digest.

Both are 20 bytes, the catalog's `contents.hash`. Nothing here touches a catalog.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

NEW = "sha256-160"
LEGACY = "blake2b-160"  # every catalog before schema 4
NAMES = (NEW, LEGACY)
DIGEST_SIZE = 20

_READ_SIZE = 8 << 20  # few GIL round trips per file: each can wait 5 ms behind a busy Python thread

_CONSTRUCTORS: dict[str, Callable[[], Any]] = {  # -> a hashlib object
    NEW: hashlib.sha256,
    LEGACY: lambda: hashlib.blake2b(digest_size=DIGEST_SIZE),
}


def known(name: str) -> bool:
    return name in _CONSTRUCTORS


def hash_file(path: bytes | str, name: str = NEW) -> tuple[str, int]:
    """The hex digest (40 digits) of the whole file under hash `name`, and its size. Raises OSError, and
    KeyError for a name this searchfs does not know (the catalog's open has refused it already)."""
    digest = _CONSTRUCTORS[name]()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_READ_SIZE):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest()[: 2 * DIGEST_SIZE], size
