"""The errors searchfs raises on purpose.

Every error a user can cause or meet carries a one-line message that says what went wrong and, where
there is one, what to do about it. The CLI prints that line and exits with `exit_code`; the FUSE adapter
maps each class to one errno in a single helper (fs/fuse_ops.py).
"""

from __future__ import annotations


class SearchfsError(Exception):
    """Base class: an expected failure with a message meant for the user."""

    exit_code = 1


class ConfigError(SearchfsError):
    """A setting is missing, malformed or contradictory."""

    exit_code = 2


class QueryError(SearchfsError):
    """A query, filter or path in the query grammar cannot be understood."""

    exit_code = 2


class NotFound(SearchfsError):
    """A root, file, library or saved query does not exist."""

    exit_code = 3


class ModelUnavailable(SearchfsError):
    """The CLIP model or its weights cannot be loaded (no network, missing checkpoint, bad config)."""

    exit_code = 4


class ExiftoolError(SearchfsError):
    """exiftool is missing, died, or timed out."""

    exit_code = 5


class ImageError(SearchfsError):
    """A file cannot be decoded as an image. The file is quarantined with this message as its reason."""


class LibraryBusy(SearchfsError):
    """Another process holds the library's writer lock (a running daemon or index)."""

    exit_code = 6


class DiskFull(SearchfsError):
    """No space left where searchfs writes (the catalog, the vector files). What was committed stays."""

    exit_code = 8


def one_line(exc: BaseException, limit: int = 300) -> str:
    """Any exception as the one line searchfs shows: the OS's words for an OSError, our own message for a
    SearchfsError, else "Type: message" (a library's bare message rarely says what failed); whitespace
    folded, at most `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    if not isinstance(exc, (OSError, SearchfsError)):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def disk_full_message(where: object) -> str:
    return (
        f"no space left on the disk holding {where}: free some space and run it again (nothing indexed so far is lost)"
    )


def is_disk_full(exc: BaseException) -> bool:
    """SQLite's SQLITE_FULL, or ENOSPC/EDQUOT from the operating system."""
    import errno
    import sqlite3

    if isinstance(exc, sqlite3.Error):
        return getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or "disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


class ReadOnly(SearchfsError):
    """A write was attempted where searchfs only reads (source folders, result folders)."""
