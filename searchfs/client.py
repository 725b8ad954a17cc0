"""The CLI's side of the search service (service.py has the protocol): ask this library's daemon, or say
that none answered so the caller searches itself.

Imports only the standard library and service.py's constants at the top: a search a daemon answers must
stay cheap (no numpy, no SQLite, no engine).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from typing import TYPE_CHECKING

from .errors import ConfigError, SearchfsError
from .service import MAX_RESPONSE, MAX_SUN_PATH, VERSION, TooLong, encode_line, fingerprint, peer_uid, socket_path

if TYPE_CHECKING:
    from .records import Hit

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 0.05  # the client's: a live daemon accepts at once
ANSWER_TIMEOUT = 60.0  # the client's wait for a text or metadata answer (a torch load when no export exists)
IMAGE_ANSWER_TIMEOUT = 300.0  # an image query may load the image model first


class DaemonError(SearchfsError):
    """An error the daemon answered with: its own line and exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def search(
    settings,
    *,
    text: str | None = None,
    image: str | None = None,
    similar_to: tuple[str, str] | None = None,
    where: list[str] | tuple[str, ...] = (),
    limit: int | None = None,
    min_score: float | None = None,
) -> list[Hit] | None:
    """The running daemon's answer to a search, or None when no daemon of this library answered (the
    caller searches itself). An error answer raises DaemonError with the daemon's line and exit code."""
    request = {
        "v": VERSION,
        "op": "search",
        "settings": fingerprint(settings),
        "text": text,
        "image": image,
        "similar_to": list(similar_to) if similar_to else None,
        "where": list(where),
        "limit": limit,
        "min_score": min_score,
    }
    response = ask(settings, request, IMAGE_ANSWER_TIMEOUT if image else ANSWER_TIMEOUT)
    if response is None:
        return None
    if "error" in response:
        code = response.get("exit_code")
        raise DaemonError(str(response["error"]), code if isinstance(code, int) and 0 < code < 256 else 1)
    try:
        from .records import Hit

        hits = [
            Hit(int(rank), score, str(root), os.fsencode(relpath), os.fsencode(abspath), int(file_id), int(content_id))
            for rank, score, root, relpath, abspath, file_id, content_id in response["hits"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        log.debug("the daemon's answer is malformed (%s); searching here", exc)
        return None
    log.info("search answered by the searchfs daemon (pid %s)", response.get("pid"))
    return hits


def ask(settings, request: dict, timeout: float = ANSWER_TIMEOUT) -> dict | None:
    """Send one request to this library's daemon and return its response; None when there is no daemon,
    the socket is not the user's own, it does not answer in time, or it declines."""
    try:
        path = socket_path(settings)
        info = os.lstat(path)
        folder = os.lstat(path.parent)
    except (OSError, ConfigError):
        return None  # no daemon (the usual case): nothing to say
    uid = os.getuid()
    if not stat.S_ISSOCK(info.st_mode) or info.st_uid != uid or folder.st_uid != uid or folder.st_mode & 0o077:
        log.debug("not using %s: not a private socket of uid %s", path, uid)
        return None
    if len(os.fsencode(path)) >= MAX_SUN_PATH:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(path))
        owner = peer_uid(sock)
        if owner is not None and owner != uid:
            log.debug("not using %s: it is served by uid %s", path, owner)
            return None
        sock.settimeout(timeout)
        sock.sendall(encode_line(request))
        response = json.loads(_read_line(sock, MAX_RESPONSE))
    except (OSError, ValueError, TooLong) as exc:  # refused (a stale socket), timed out, cut off, garbled
        log.debug("no answer from the daemon at %s: %s", path, exc)
        return None
    finally:
        sock.close()
    if not isinstance(response, dict) or "decline" in response:
        why = response.get("decline") if isinstance(response, dict) else "not an object"
        log.debug("the daemon declined (%s); searching here", why)
        return None
    return response


def _read_line(sock: socket.socket, limit: int) -> bytes:
    chunks, size = [], 0
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            raise ConnectionResetError("the daemon closed the connection without an answer")
        end = chunk.find(b"\n")
        if end >= 0:
            chunks.append(chunk[:end])
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            raise TooLong(f"answer longer than {limit} bytes")
