"""Searches answered by a running daemon over a private Unix socket (the CLI's side is client.py).

Why: a `searchfs search` from a fresh process pays for its imports, SQLite, the vector index and the text
tower every time (0.2-0.3 s); a mount or watch daemon has all of them loaded already. While one runs, the
CLI sends it the query and prints its answer; when none answers, the CLI does the work itself, with the
same output, exit codes and error lines.

Where and what (the socket's place, the protocol): wire.py.

Security: nothing listens outside the user's own 0700 runtime folder, and each side checks the other's
uid (SO_PEERCRED on Linux, LOCAL_PEERCRED on macOS and the BSDs; where neither exists the modes alone
guard it). The client also refuses a socket file that is not a socket owned by the user. Nothing here
logs a query's words.

Threads: one I/O thread reads requests and writes answers for every connection (non-blocking, each
with a deadline: a client that sends nothing, or never reads, is dropped after READ_TIMEOUT or
WRITE_TIMEOUT and holds no worker meanwhile); complete requests go to WORKERS threads through a bounded
queue (full: the request is declined and the client searches itself). The service only reads the
library (its catalog readers, the published vector index, the embedder's text cache and tower); the
daemon's writer thread never waits for it.

The CLI's side imports wire.py and client.py only, never this module (its threads, queues, selectors).
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import selectors
import socket
import threading
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, SearchfsError
from .wire import MAX_REQUEST, MAX_RESPONSE, MAX_SUN_PATH, VERSION, encode_line, fingerprint, peer_uid, socket_path

if TYPE_CHECKING:
    from .library import Library

log = logging.getLogger(__name__)

READ_TIMEOUT = 5.0  # seconds from connect to a complete request
WRITE_TIMEOUT = 30.0  # seconds to take the whole answer
WORKERS = 4  # searches at once (as the mount's own limit)
QUEUED = 16  # complete requests waiting for a worker
MAX_CONNECTIONS = 64  # open connections; more are declined at once


# ---------------------------------------------------------------------------------------------- the daemon


class _Conn:
    __slots__ = ("sock", "inbox", "outbox", "deadline", "state")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.inbox = bytearray()
        self.outbox = b""
        self.deadline = time.monotonic() + READ_TIMEOUT
        self.state = "reading"  # reading -> working (a worker has it) -> writing -> closed


class SearchService:
    """The daemon's side: answers searches for one library on its socket until `stop()`."""

    def __init__(self, library: Library, path: Path):
        self.library = library
        self.path = path
        self.counts = {"served": 0, "errors": 0, "declined": 0, "bad_requests": 0, "refused": 0, "dropped": 0}
        self._counts_lock = threading.Lock()
        self._uid = os.getuid()
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._wake_r, self._wake_w = socket.socketpair()
        self._done: list[tuple[_Conn, bytes]] = []  # answers from workers, for the I/O thread to write
        self._done_lock = threading.Lock()
        self._requests: queue.Queue[tuple[_Conn, bytes] | None] = queue.Queue(QUEUED)
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if len(os.fsencode(self.path)) >= MAX_SUN_PATH:
            raise OSError(errno.ENAMETOOLONG, "socket path too long (set XDG_RUNTIME_DIR to a short folder)")
        # Bound under a temporary name, made 0600, then renamed over whatever a killed daemon left: the
        # name is never a socket with looser modes, nor missing while a stale file is cleared.
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        temporary.unlink(missing_ok=True)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(temporary))
            os.chmod(temporary, 0o600)
            listener.listen(MAX_CONNECTIONS)
            listener.setblocking(False)
            os.replace(temporary, self.path)
        except BaseException:
            listener.close()
            temporary.unlink(missing_ok=True)
            raise
        info = os.stat(self.path)
        self._listener, self._inode = listener, (info.st_dev, info.st_ino)
        self._wake_r.setblocking(False)
        self._threads = [threading.Thread(target=self._loop, name="searchfs-service-io", daemon=True)]
        self._threads += [
            threading.Thread(target=self._work, name=f"searchfs-service-{n}", daemon=True) for n in range(WORKERS)
        ]
        for thread in self._threads:
            thread.start()
        log.info("answering searches on %s", self.path)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop listening, remove the socket (if it is still ours), let the workers finish what they hold."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._wake()
        with suppress(OSError):
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._inode:
                self.path.unlink()
        for _ in range(WORKERS):
            try:
                self._requests.put(None, timeout=timeout / 2)
            except queue.Full:
                break
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for sock in (self._wake_r, self._wake_w):
            sock.close()

    def status(self) -> dict:
        with self._counts_lock:
            return {"socket": str(self.path), **self.counts}

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self.counts[name] += 1

    # -- the I/O thread ----------------------------------------------------------------------------------

    def _loop(self) -> None:
        assert self._listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        open_conns: set[_Conn] = set()
        try:
            while not self._stopping.is_set():
                waits = [c.deadline for c in open_conns if c.state != "working"]
                timeout = max(0.0, min(waits) - time.monotonic()) if waits else None
                for key, _ in selector.select(timeout):
                    if key.data == "accept":
                        self._accept(selector, open_conns)
                    elif key.data == "wake":
                        self._take_answers(selector)
                    elif key.data.state == "reading":
                        self._read(selector, key.data)
                    elif key.data.state == "writing":
                        self._write(selector, key.data)
                now = time.monotonic()
                for conn in [c for c in open_conns if c.state == "closed"]:
                    open_conns.discard(conn)
                for conn in [c for c in open_conns if c.state in ("reading", "writing") and c.deadline < now]:
                    log.debug("dropped a client that did not %s in time", "send" if conn.state == "reading" else "read")
                    self._count("dropped")
                    self._close(selector, conn)
                    open_conns.discard(conn)
        except Exception:  # the service is an extra: the daemon (writer, mount) keeps running without it
            log.exception("the search service stopped")
        finally:
            for conn in open_conns:
                with suppress(OSError):
                    conn.sock.close()
            self._listener.close()
            selector.close()

    def _accept(self, selector: selectors.BaseSelector, open_conns: set[_Conn]) -> None:
        assert self._listener is not None
        while True:
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: the client finds no answer and searches itself
                log.debug("accept failed: %s", exc)
                time.sleep(0.1)  # the listener stays readable: do not spin on it
                return
            try:
                uid = peer_uid(sock)
            except OSError as exc:
                uid = -1
                log.debug("cannot read a client's credentials: %s", exc)
            if uid is not None and uid != self._uid:
                log.info("refused a connection from uid %s (only uid %s may search here)", uid, self._uid)
                self._count("refused")
                sock.close()
                continue
            sock.setblocking(False)
            conn = _Conn(sock)
            open_conns.add(conn)
            if len(open_conns) > MAX_CONNECTIONS:
                self._count("declined")
                self._answer_now(selector, conn, {"decline": "busy"}, registered=False)
            else:
                selector.register(sock, selectors.EVENT_READ, conn)

    def _read(self, selector: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(selector, conn)
            return
        conn.inbox += data
        end = conn.inbox.find(b"\n")
        if end < 0 and len(conn.inbox) > MAX_REQUEST:
            self._count("bad_requests")
            self._answer_now(selector, conn, _error(f"request longer than {MAX_REQUEST} bytes"))
            return
        if end < 0 and data:
            return
        if end < 0 and not conn.inbox:  # connected and went away: nothing to answer
            self._close(selector, conn)
            return
        line = bytes(conn.inbox if end < 0 else conn.inbox[:end])  # a last line without its newline is fine
        if len(line) > MAX_REQUEST:
            self._count("bad_requests")
            self._answer_now(selector, conn, _error(f"request longer than {MAX_REQUEST} bytes"))
            return
        selector.unregister(conn.sock)
        conn.state = "working"
        try:
            self._requests.put_nowait((conn, line))
        except queue.Full:
            self._count("declined")
            self._answer_now(selector, conn, {"decline": "busy"}, registered=False)

    def _answer_now(self, selector, conn: _Conn, response: dict, registered: bool = True) -> None:
        if registered:
            selector.unregister(conn.sock)
        self._start_writing(selector, conn, encode_line(response))

    def _start_writing(self, selector: selectors.BaseSelector, conn: _Conn, data: bytes) -> None:
        conn.state, conn.outbox, conn.deadline = "writing", data, time.monotonic() + WRITE_TIMEOUT
        selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._write(selector, conn)

    def _write(self, selector: selectors.BaseSelector, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.outbox)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # the client went away
            self._close(selector, conn)
            return
        conn.outbox = conn.outbox[sent:]
        if not conn.outbox:
            self._close(selector, conn)

    def _close(self, selector: selectors.BaseSelector, conn: _Conn) -> None:
        if conn.state in ("reading", "writing"):
            with suppress(OSError, KeyError, ValueError):
                selector.unregister(conn.sock)
        conn.state = "closed"
        with suppress(OSError):
            conn.sock.close()

    def _take_answers(self, selector: selectors.BaseSelector) -> None:
        with suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        with self._done_lock:
            done, self._done = self._done, []
        for conn, data in done:
            if conn.state == "working":
                self._start_writing(selector, conn, data)

    def _wake(self) -> None:
        with suppress(OSError):
            self._wake_w.send(b"x")

    # -- the workers -------------------------------------------------------------------------------------

    def _work(self) -> None:
        while True:
            item = self._requests.get()
            if item is None or self._stopping.is_set():
                return  # what is still queued gets no answer: its client searches itself
            conn, line = item
            try:
                data = encode_line(self._answer(line))
            except Exception:  # noqa: BLE001 - a bug answering one request must not end a worker
                log.exception("could not answer a search request")
                data = encode_line({"decline": "the daemon failed to answer; searching here"})
            if len(data) > MAX_RESPONSE:
                self._count("declined")
                data = encode_line({"decline": "answer too large"})
            with self._done_lock:
                self._done.append((conn, data))
            self._wake()

    def _answer(self, line: bytes) -> dict:
        try:
            request = json.loads(line)
        except ValueError:  # UnicodeDecodeError too
            self._count("bad_requests")
            return _error("request is not a line of JSON")
        if not isinstance(request, dict) or request.get("v") != VERSION:
            self._count("bad_requests")
            return _error(f"request is not a version {VERSION} object")
        if request.get("op") == "status":
            return {"pid": os.getpid(), "library": self.library.settings.library, **self.status()}
        if request.get("op") != "search":
            self._count("bad_requests")
            return _error(f"unknown request {str(request.get('op'))[:40]!r}")
        if request.get("settings") != fingerprint(self.library.settings):
            self._count("declined")
            return {"decline": "this daemon runs with other settings"}
        try:
            arguments = _search_arguments(request)
        except ValueError as exc:
            self._count("bad_requests")
            return _error(str(exc))
        return self._search(arguments)

    def _search(self, arguments: dict) -> dict:
        import sqlite3

        started = time.perf_counter()
        try:
            hits = self.library.search(**arguments)
        except SearchfsError as exc:
            self._count("errors")
            return {"error": str(exc), "exit_code": exc.exit_code}
        except sqlite3.Error as exc:  # as the CLI words it (cli.handle_errors)
            self._count("errors")
            return {"error": f"catalog: {' '.join(str(exc).split())}", "exit_code": 1}
        except Exception as exc:  # noqa: BLE001 - e.g. an OSError: the CLI meets it itself and says it its way
            self._count("declined")
            log.debug("a search failed here; the client searches itself: %s", exc)
            return {"decline": "the search failed in the daemon"}
        self._count("served")
        kind = next((name for name in ("text", "image", "similar_to") if arguments[name]), "metadata")
        log.debug("served a %s search: %d hits in %.1f ms", kind, len(hits), 1000 * (time.perf_counter() - started))
        rows = [
            [h.rank, h.score, h.root, os.fsdecode(h.relpath), os.fsdecode(h.abspath), h.file_id, h.content_id]
            for h in hits
        ]
        return {"hits": rows, "pid": os.getpid()}


def _search_arguments(request: dict) -> dict:
    """Library.search's arguments from a request, every field checked (ValueError says which is wrong)."""

    def optional(name: str, kinds: tuple[type, ...]) -> Any:
        value = request.get(name)
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            raise ValueError(f"request field {name!r} has the wrong type")
        return value

    where = request.get("where") or []
    if not isinstance(where, list) or not all(isinstance(w, str) for w in where):
        raise ValueError("request field 'where' is not a list of strings")
    similar = request.get("similar_to")
    if similar is not None and not (
        isinstance(similar, list) and len(similar) == 2 and all(isinstance(s, str) for s in similar)
    ):
        raise ValueError("request field 'similar_to' is not [root, path]")
    return {
        "text": optional("text", (str,)),
        "image": optional("image", (str,)),
        "similar_to": tuple(similar) if similar else None,
        "where": where,
        "limit": optional("limit", (int,)),
        "min_score": optional("min_score", (int, float)),
    }


def _error(message: str) -> dict:
    return {"error": f"bad request to the search service: {message}", "exit_code": 2}


def start_service(library: Library) -> SearchService | None:
    """Start answering searches for `library` (the daemon calls this once it owns the library). Any trouble
    (no runtime folder, a path too long) leaves the daemon without a service: the CLI then searches itself."""
    try:
        service = SearchService(library, socket_path(library.settings, create=True))
        service.start()
    except (OSError, ConfigError) as exc:
        log.info("not answering searches over a socket (searches from the CLI run on their own): %s", exc)
        return None
    threading.Thread(target=_prepare_texts, args=(library,), name="searchfs-service-warm", daemon=True).start()
    return service


def _prepare_texts(library: Library) -> None:
    """The text tower opened before the first search needs it (a fraction of a second, once)."""
    try:
        library.embedder.prepare_texts()
    except Exception as exc:  # noqa: BLE001 - only a head start: the first search opens it otherwise
        log.debug("could not prepare the text tower: %s", exc)
