"""What every `searchfs` command shares: the `Context` that the global options (--config, --library,
-v) make, with the settings and the library it opens; `pass_context`; and `handle_errors`, which turns an
expected failure into one line on stderr and an exit code (see errors.py for which code means what).
Used by cli.py and cli_mount.py.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import sys
from pathlib import Path

import click

from .config import load_settings
from .errors import DiskFull, SearchfsError, disk_full_message, is_disk_full


def fail(message: str, code: int = 1) -> None:
    click.echo(f"searchfs: {message}", err=True)
    sys.exit(code)


class PipeClosed(Exception):
    """The reader of our output went away (`searchfs status | head -1`): a normal end, not an error."""


def handle_errors(func):
    """Turn expected errors into one line on stderr and an exit code; unexpected ones too, with a hint."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SearchfsError as exc:
            fail(str(exc), exc.exit_code)
        except sqlite3.Error as exc:  # the catalog maps damage to CatalogError; anything else still gets one line
            fail(f"catalog: {' '.join(str(exc).split())}", 1)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except BrokenPipeError:
            raise PipeClosed() from None  # click would make an EPIPE exit 1; main() ends quietly instead
        except OSError as exc:
            if is_disk_full(exc):
                fail(disk_full_message(os.path.dirname(exc.filename or "") or "searchfs's files"), DiskFull.exit_code)
            fail(f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc), 1)

    return wrapper


class Context:
    def __init__(self, config: str | None, library: str | None, verbose: int):
        self.config = config
        self.library_name = library
        self.verbose = verbose

    def settings(self, **flags):
        return load_settings(Path(self.config) if self.config else None, library=self.library_name, **flags)

    def library(self, create: bool = False, **flags):
        """The library; only `index`, `watch` and `mount` pass create=True."""
        from .library import Library

        return Library(self.settings(**flags), create=create)


pass_context = click.make_pass_decorator(Context)
