"""What the daemon's search service (service.py) and the CLI (client.py) agree on.

Where: `config.runtime_dir()` ($XDG_RUNTIME_DIR/searchfs, else /tmp/searchfs-<uid>; 0700), one socket per
library, `search-<16 hex digits of the catalog's real path>.sock`, 0600. The daemon holds the library's
writer lock, so one library has one daemon: a socket file left by a killed one is replaced at the next start.

Protocol: one request line of JSON (at most MAX_REQUEST bytes), one response line of JSON, then the
connection closes.

    {"v": 1, "op": "search", "settings": {...}, "text": str|null, "image": str|null,
     "similar_to": [root, relpath]|null, "where": [str, ...], "limit": int|null, "min_score": float|null}
    {"v": 1, "op": "status"}

    {"hits": [[rank, score, root, relpath, abspath, file_id, content_id], ...], "pid": N}
    {"error": "one line", "exit_code": 2}   the answer: the CLI prints `searchfs: <error>`, exits with it
    {"decline": "why"}                      no answer: the CLI searches itself (other settings, busy, ...)

Paths are strings as `os.fsdecode` makes them; JSON's \\udcXX escapes carry bytes that are not UTF-8.
`settings` is what of the client's settings can change an answer (model, search defaults): a daemon
started with others declines, so the answer never depends on who gives it.

Imports only the standard library and config.py: the CLI's side must stay cheap.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import sys
from pathlib import Path
from typing import Any

from .config import runtime_dir

VERSION = 1
MAX_REQUEST = 64 * 1024  # bytes of one request line
MAX_RESPONSE = 64 * 1024 * 1024  # a bigger answer is declined: the client streams it from SQLite itself
MAX_SUN_PATH = 104  # sockaddr_un's path, the smallest of Linux (108) and macOS/BSD (104), with its NUL

# The settings that can change an answer: a daemon whose own differ declines, and the client searches.
SAME_SETTINGS = (
    "model_name",
    "model_pretrained",
    "model_config_file",
    "model_text_tower",
    "search_limit",
    "search_min_score",
    "search_exact_below",
    "index_max_pixels",
)


def socket_path(settings, create: bool = False) -> Path:
    """The socket of `settings`' library (named after the catalog's real path; `create` makes the folder)."""
    digest = hashlib.sha256(os.fsencode(os.path.realpath(settings.catalog_path))).hexdigest()[:16]
    return runtime_dir(create=create) / f"search-{digest}.sock"


def fingerprint(settings) -> dict[str, Any]:
    return {name: getattr(settings, name) for name in SAME_SETTINGS}


def peer_uid(sock: socket.socket) -> int | None:
    """The uid of the process at the other end of a Unix socket; None where the system has no way to ask
    (the socket's mode and the 0700 folder then guard it alone). An OSError means it could not be read."""
    if hasattr(socket, "SO_PEERCRED"):  # Linux: struct ucred {pid_t pid; uid_t uid; gid_t gid;}
        pid, uid, gid = struct.unpack("=iII", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        return uid
    if sys.platform == "darwin" or "bsd" in sys.platform:  # struct xucred {u_int cr_version; uid_t cr_uid; ...}
        level, option = getattr(socket, "SOL_LOCAL", 0), getattr(socket, "LOCAL_PEERCRED", 1)
        version, uid = struct.unpack_from("=II", sock.getsockopt(level, option, 76))
        return uid
    return None


class TooLong(Exception):
    pass


def encode_line(response: dict) -> bytes:
    """One message of the protocol: compact JSON, ASCII, one line."""
    return json.dumps(response, separators=(",", ":")).encode("ascii") + b"\n"
