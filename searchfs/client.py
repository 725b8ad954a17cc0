"""The CLI's side of the search service (wire.py has the protocol, service.py the daemon's side): ask this
library's daemon, or say that none answered so the caller searches itself.

Imports only the standard library and wire.py at the top, not even logging: a search a daemon answers must
stay cheap (no numpy, no SQLite, no engine; cli_quick.py's fast path imports little more than this).
"""

from __future__ import annotations

import json
import os
import socket
import stat
import sys
from typing import TYPE_CHECKING

from .errors import ConfigError, SearchfsError
from .wire import MAX_RESPONSE, MAX_SUN_PATH, VERSION, TooLong, encode_line, fingerprint, peer_uid, socket_path

if TYPE_CHECKING:
    from .records import Hit


DEBUG, INFO = 10, 20  # logging's levels, without importing logging (see _log)
CONNECT_TIMEOUT = 0.05  # the client's: a live daemon accepts at once
ANSWER_TIMEOUT = 60.0  # the client's wait for a text or metadata answer (a torch load when no export exists)
IMAGE_ANSWER_TIMEOUT = 300.0  # an image query may load the image model first


class DaemonError(SearchfsError):
    """An error the daemon answered with: its own line and exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def search(settings, **query) -> list[Hit] | None:
    """The running daemon's answer to a search (`query`: search_rows' keywords), or None when no daemon of
    this library answered (the caller searches itself). An error answer raises DaemonError with the
    daemon's line and exit code."""
    rows = search_rows(settings, **query)
    if rows is None:
        return None
    from .records import Hit

    return [
        Hit(rank, score, root, os.fsencode(relpath), os.fsencode(abspath), file_id, content_id)
        for rank, score, root, relpath, abspath, file_id, content_id in rows
    ]


def search_rows(
    settings,
    *,
    text: str | None = None,
    image: str | None = None,
    similar_to: tuple[str, str] | None = None,
    where: list[str] | tuple[str, ...] = (),
    limit: int | None = None,
    min_score: float | None = None,
) -> list[tuple[int, float | None, str, str, str, int, int]] | None:
    """As `search`, with each hit as the row the daemon sent: (rank, score, root, relpath, abspath,
    file_id, content_id), paths as `os.fsdecode` made them. No records import: the CLI's fast path
    (cli_quick.py) prints these as they are."""
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
        rows = [
            (int(rank), _score(score), _text(root), _text(relpath), _text(abspath), int(file_id), int(content_id))
            for rank, score, root, relpath, abspath, file_id, content_id in response["hits"]
        ]
    except (KeyError, TypeError, ValueError) as exc:
        _log(DEBUG, "the daemon's answer is malformed (%s); searching here", exc)
        return None
    _log(INFO, "search answered by the searchfs daemon (pid %s)", response.get("pid"))
    return rows


def _score(value) -> float | None:
    return None if value is None else float(value)


def _text(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a path is {type(value).__name__}, not text")
    return value


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
        _log(DEBUG, "not using %s: not a private socket of uid %s", path, uid)
        return None
    if len(os.fsencode(path)) >= MAX_SUN_PATH:
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(CONNECT_TIMEOUT)
        sock.connect(str(path))
        owner = peer_uid(sock)
        if owner is not None and owner != uid:
            _log(DEBUG, "not using %s: it is served by uid %s", path, owner)
            return None
        sock.settimeout(timeout)
        sock.sendall(encode_line(request))
        response = json.loads(_read_line(sock, MAX_RESPONSE))
    except (OSError, ValueError, TooLong) as exc:  # refused (a stale socket), timed out, cut off, garbled
        _log(DEBUG, "no answer from the daemon at %s: %s", path, exc)
        return None
    finally:
        sock.close()
    if not isinstance(response, dict) or "decline" in response:
        why = response.get("decline") if isinstance(response, dict) else "not an object"
        _log(DEBUG, "the daemon declined (%s); searching here", why)
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


def _log(level: int, message: str, *args) -> None:
    """A record for `logging` when something imported it. The CLI's fast path (cli_quick.py) imports no
    logging, so no handler exists there that could show the record: nothing is lost by not making it."""
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.getLogger(__name__).log(level, message, *args)
