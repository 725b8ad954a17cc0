"""What image decoders say while they work goes to the file's record and the log, not the terminal.

Decoders complain in three ways, and each one is caught differently:

* Python warnings (Pillow's "Corrupt EXIF data", "Invalid APNG", "malformed MPO file"): a
  `warnings.showwarning` hook plus an "always" filter for Pillow's modules. `warnings.catch_warnings`
  would not do: it swaps process-wide state and is not thread-safe, and decoding runs in a thread pool.
* Python logging (Pillow's "More samples per pixel than can be decoded" at ERROR): the `PIL` logger
  (and the HEIF/JXL plugins') gets our handler and stops propagating, so the CLI's stderr handler and a
  library user's root handlers never see those records raw.
* C libraries writing to file descriptor 2 (libtiff's "OJPEGReadHeaderInfoSecTablesQTable: Missing JPEG
  tables"): `stderr_to_log()` moves fd 2 to a pipe drained into logging while a long run lasts, and
  points Python's own `sys.stderr` (and the logging handlers that held it) at the real terminal.

Every complaint is attributed through a thread-local "current file" set by `decoding(path)`: it is
appended to that file's notes (which end up in its quarantine reason when decoding fails) and logged on
`searchfs.decode` at INFO with the path. libtiff writes to fd 2 from C, outside any thread-local, so
while the pipe is in place TIFF loads run one at a time between two markers written into the same
pipe; lines read between a file's markers are that file's.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import warnings
from collections.abc import Iterator

log = logging.getLogger("searchfs.decode")

DECODER_LOGGERS = ("PIL", "pillow_heif", "imagecodecs")
_MARK = "\x00searchfs-decode"  # starts our marker lines in the fd-2 pipe; no library writes a NUL

_local = threading.local()
_install_lock = threading.Lock()
_previous_showwarning = warnings.showwarning


def _display(path) -> str:
    return os.fsdecode(path) if isinstance(path, (bytes, str, os.PathLike)) else str(path)


@contextlib.contextmanager
def decoding(path) -> Iterator[list[str]]:
    """While this thread decodes `path`, its decoders' complaints are collected in the yielded list."""
    _install()
    notes: list[str] = []
    outer = getattr(_local, "current", None)
    _local.current = (_display(path), notes)
    try:
        yield notes
    finally:
        _local.current = outer


def note(text: str) -> bool:
    """Attribute one complaint to the file this thread decodes; False when it decodes none."""
    current = getattr(_local, "current", None)
    if current is None:
        return False
    _attribute(current, text)
    return True


def _attribute(current: tuple[str, list[str]], text: str) -> None:
    path, notes = current
    text = " ".join(text.split())
    if text and text not in notes:
        notes.append(text)
        log.info("%s: %s", path, text)


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if not note(f"{category.__name__}: {message}"):
        _previous_showwarning(message, category, filename, lineno, file, line)


class _DecoderLogHandler(logging.Handler):
    """Records of the decoder libraries' loggers: the current file's notes, else our own log at INFO."""

    def emit(self, record: logging.LogRecord) -> None:
        text = f"{record.name}: {record.getMessage()}"
        if not note(text):
            log.info("%s", text)


_handler = _DecoderLogHandler(logging.WARNING)


def _install() -> None:
    """Put the warnings hook (again: pytest and catch_warnings users restore the old one) and the handler."""
    global _previous_showwarning
    if warnings.showwarning is _showwarning and _handler in logging.getLogger("PIL").handlers:
        return
    with _install_lock:
        if warnings.showwarning is not _showwarning:
            # "always": the default filter shows a warning once per code location, so the second file
            # with the same complaint would have no note of it.
            warnings.filterwarnings("always", module=r"(PIL|pillow_heif|imagecodecs|searchfs\.ingest\.jxl)(\.|$)")
            _previous_showwarning = warnings.showwarning
            warnings.showwarning = _showwarning
        for name in DECODER_LOGGERS:
            logger = logging.getLogger(name)
            if _handler not in logger.handlers:
                logger.addHandler(_handler)
            logger.propagate = False


# ---------------------------------------------------------------------------------------------- fd 2


class _Pipe:
    """fd 2 redirected into a pipe; a thread reads it line by line into the log."""

    def __init__(self):
        self.read_end, write_end = os.pipe()
        self.real = os.dup(2)
        os.dup2(write_end, 2)
        os.close(write_end)
        self.owner: tuple[str, list[str]] | None = None
        self.pending: dict[str, tuple[str, list[str]]] = {}
        self.seen: dict[str, threading.Event] = {}
        self.lock = threading.Lock()  # one TIFF load at a time while fd 2 is ours
        self.tokens = itertools.count()
        self.reader = threading.Thread(target=self._read, name="searchfs-stderr", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with open(self.read_end, "rb", closefd=False) as stream:
            for raw in stream:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line.startswith(_MARK):
                    if self._marker(line[len(_MARK) :].split()):
                        return
                elif line.strip():
                    self._attribute(line)

    def _marker(self, words: list[str]) -> bool:
        kind, token = words[0], words[1] if len(words) > 1 else ""
        if kind == "begin":
            self.owner = self.pending.pop(token)
        elif kind == "end":
            self.owner = None
            self.seen.pop(token).set()
        return kind == "stop"

    def _attribute(self, line: str) -> None:
        if self.owner is not None:
            _attribute(self.owner, line)
        else:
            log.info("decoder output on stderr: %s", line)

    @contextlib.contextmanager
    def owned_by(self, current: tuple[str, list[str]]) -> Iterator[None]:
        """C output written between here and the end is `current`'s; waits until the reader got it all."""
        with self.lock:
            token = str(next(self.tokens))
            done = self.seen[token] = threading.Event()
            self.pending[token] = current
            os.write(2, f"{_MARK}begin {token}\n".encode())
            try:
                yield
            finally:
                os.write(2, f"{_MARK}end {token}\n".encode())
                done.wait(5.0)

    def close(self) -> None:
        os.write(2, f"{_MARK}stop\n".encode())
        os.dup2(self.real, 2)
        self.reader.join(5.0)
        os.close(self.real)
        if not self.reader.is_alive():
            os.close(self.read_end)


_pipe: _Pipe | None = None


@contextlib.contextmanager
def c_output() -> Iterator[None]:
    """Around a C decoder call (libtiff): its fd-2 output becomes this thread's file's notes."""
    current = getattr(_local, "current", None)
    pipe = _pipe
    if pipe is None or current is None:
        yield
        return
    with pipe.owned_by(current):
        yield


@contextlib.contextmanager
def stderr_to_log() -> Iterator[None]:
    """For a long run: C-level writes to fd 2 go to the log, Python's own stderr still to the terminal.

    Nested use is a no-op; a process without a usable fd 2 runs unchanged.
    """
    global _pipe
    if _pipe is not None:
        yield
        return
    sys.stderr.flush()
    try:
        pipe = _Pipe()
    except OSError as exc:
        log.debug("cannot redirect stderr: %s", exc)
        yield
        return
    original = sys.stderr
    terminal = open(
        pipe.real,
        "w",
        buffering=1,
        encoding=getattr(original, "encoding", None) or "utf-8",
        errors="backslashreplace",
        closefd=False,
    )
    handlers = _stream_handlers(original)
    for handler in handlers:
        handler.setStream(terminal)
    sys.stderr, _pipe = terminal, pipe
    try:
        yield
    finally:
        sys.stderr, _pipe = original, None
        for handler in handlers:
            handler.setStream(original)
        with contextlib.suppress(OSError):
            terminal.close()  # flushes; the fd it writes to (a dup of the terminal) is closed by the pipe
        pipe.close()


def _stream_handlers(stream: object) -> list[logging.StreamHandler]:
    loggers = [logging.getLogger()] + [
        logger for logger in logging.Logger.manager.loggerDict.values() if isinstance(logger, logging.Logger)
    ]
    return [
        handler
        for logger in loggers
        for handler in logger.handlers
        if isinstance(handler, logging.StreamHandler) and getattr(handler, "stream", None) is stream
    ]
