"""Metadata extraction: exiftool output -> facets (the `exif/<key>/` vocabulary of records.FACETS).

exiftool runs once per extractor in `-stay_open` batch mode (through pyexiftool) with `-n`, so numbers
arrive as numbers and keys are the flat names `exiftool -j -n FILE` prints (no `-G` group prefixes).

What the tags become is tags.py's (`normalize`, EXTRACTOR_VERSION).

Extraction (`ExifExtractor`): paths go to exiftool `batch` at a time. Each call has a deadline
(`timeout`); a call that runs past it, or during which exiftool dies, kills exiftool, and the files of
that call are retried one by one with a fresh exiftool, so only the file that hangs or crashes it gets
a reason ("exiftool timed out after 30s", "exiftool failed: ..."). File names that exiftool's
line-based, UTF-8 argument stream cannot carry (not UTF-8, control characters) are passed as an
ASCII-named symlink in a private folder inside `scratch_dir`, removed after the call. Nothing is ever
written next to the photos.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import pathlib
import re
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import exiftool

from searchfs.config import ensure_private_dir
from searchfs.errors import ExiftoolError, one_line
from searchfs.records import Facet

from .tags import EXTRACTOR_VERSION, normalize

__all__ = [
    "EXTRACTOR_VERSION",
    "ExifExtractor",
    "exiftool_version",
    "normalize",
]  # EXTRACTOR_VERSION, normalize: tags.py's

INSTALL_HINT = "install exiftool: apt install libimage-exiftool-perl / brew install exiftool"


# ---------------------------------------------------------------------------------------------------
# ExifExtractor: exiftool in -stay_open mode, with a per-call timeout and crash recovery
# ---------------------------------------------------------------------------------------------------


class _CallFailed(Exception):
    """One exiftool call gave no usable answer; `reason` is the one-line text for the files in it."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ExifExtractor:
    """Reads metadata of many files through one long-lived exiftool process. Not thread-safe."""

    def __init__(
        self,
        exiftool_path: str = "exiftool",
        timeout: float = 30.0,
        batch: int = 64,
        scratch_dir: pathlib.Path | None = None,
    ) -> None:
        self.exiftool_path = exiftool_path
        self.timeout = timeout
        self.batch = max(1, int(batch))
        self._scratch_root = pathlib.Path(scratch_dir) if scratch_dir is not None else None
        self._link_dir: str | None = None  # private folder for ASCII-named symlinks, made on demand
        self._link_numbers = itertools.count()
        self._tool: exiftool.ExifTool | None = None

    def __enter__(self) -> ExifExtractor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def extract(self, paths: Sequence[bytes]) -> dict[bytes, list[Facet] | str]:
        """Facets for each path, or a one-line reason why exiftool gave nothing for it."""
        paths = list(paths)
        results: dict[bytes, list[Facet] | str] = {}
        for start in range(0, len(paths), self.batch):
            results.update(self._extract_chunk(paths[start : start + self.batch]))
        return results

    def preview(self, path: bytes) -> bytes | None:
        """The largest JPEG embedded in a file, or None. Camera RAW files carry one or more (JpgFromRaw,
        PreviewImage, ...): what a RAW is embedded from when Pillow cannot decode its sensor data."""
        try:
            tool = self._running_tool()
            with self._arguments([path]) as (arguments, _unlinkable):
                if not arguments:
                    return None
                params = [b"-b", *(b"-" + tag.encode() for tag in PREVIEW_TAGS), next(iter(arguments)).encode("utf-8")]
                stdout, _stderr = self._execute(tool, params)
        except (_CallFailed, ExiftoolError):
            return None
        return _largest_jpeg(stdout)

    def close(self) -> None:
        tool, self._tool = self._tool, None
        if tool is not None and _alive(tool):
            with contextlib.suppress(Exception):
                tool.terminate(timeout=5)
        _reap(tool)
        if self._link_dir is not None:
            shutil.rmtree(self._link_dir, ignore_errors=True)
            self._link_dir = None

    # --- calls ---

    def _extract_chunk(self, chunk: list[bytes]) -> dict[bytes, list[Facet] | str]:
        try:
            return self._call(chunk)
        except _CallFailed as failure:
            if len(chunk) == 1:
                return {chunk[0]: failure.reason}
        # One file hung or crashed exiftool: alone, it takes only its own facets down with it.
        results: dict[bytes, list[Facet] | str] = {}
        for path in chunk:
            try:
                results.update(self._call([path]))
            except _CallFailed as failure:
                results[path] = failure.reason
        return results

    def _call(self, paths: list[bytes]) -> dict[bytes, list[Facet] | str]:
        tool = self._running_tool()
        with self._arguments(paths) as (arguments, unlinkable):
            if not arguments:
                return dict(unlinkable)
            stdout, stderr = self._execute(tool, [arg.encode("utf-8") for arg in arguments])
            return {**unlinkable, **_parse_output(stdout, stderr, arguments)}

    def _execute(self, tool: exiftool.ExifTool, params: list[bytes]) -> tuple[bytes, bytes]:
        call = _GuardedCall(tool, params, self.timeout)
        try:
            return call.run()
        finally:
            if not call.healthy:
                self._tool = None
                _reap(tool, close_pipes=not call.stuck)

    def _running_tool(self) -> exiftool.ExifTool:
        if self._tool is not None and not _alive(self._tool):
            self._discard_tool()  # died between calls (killed, out of memory): start a fresh one
        if self._tool is None:
            self._tool = self._start_tool()
        return self._tool

    def _start_tool(self) -> exiftool.ExifTool:
        try:
            tool = exiftool.ExifTool(executable=self.exiftool_path, common_args=["-n"], encoding="utf-8")
            tool.run()
        except FileNotFoundError as error:
            raise ExiftoolError(f"exiftool not found ({self.exiftool_path}): {INSTALL_HINT}") from error
        except Exception as error:
            raise ExiftoolError(f"exiftool did not start ({one_line(error)}): {INSTALL_HINT}") from error
        return tool

    def _discard_tool(self) -> None:
        tool, self._tool = self._tool, None
        _reap(tool)

    # --- file names ---

    @contextlib.contextmanager
    def _arguments(self, paths: list[bytes]) -> Iterator[tuple[dict[str, bytes], dict[bytes, str]]]:
        """({exiftool argument: original path}, {path: reason} for names that could not be aliased).

        Names exiftool's argument stream can't carry get an ASCII symlink alias for the call's duration.
        """
        arguments: dict[str, bytes] = {}
        unlinkable: dict[bytes, str] = {}
        links: list[str] = []
        try:
            for path in paths:
                argument = _plain_argument(path)
                if argument is None:
                    try:
                        argument = self._link_to(path)
                    except OSError as error:  # e.g. an unwritable scratch_dir: this file only
                        unlinkable[path] = f"exiftool failed: cannot alias the file name ({one_line(error)})"
                        continue
                    links.append(argument)
                arguments[argument] = path
            yield arguments, unlinkable
        finally:
            for link in links:
                with contextlib.suppress(OSError):
                    os.unlink(link)

    def _link_to(self, path: bytes) -> str:
        """An ASCII-named symlink in our private folder; the photo's own folder is never written."""
        path = os.fsencode(path)
        ext = os.path.splitext(os.path.basename(path))[1]
        suffix = ext.decode("ascii") if re.fullmatch(rb"\.[A-Za-z0-9]{1,10}", ext) else ""
        link = os.path.join(self._links_folder(), f"{next(self._link_numbers)}{suffix}")
        os.symlink(os.path.abspath(path), link)
        return link

    def _links_folder(self) -> str:
        if self._link_dir is None:
            if self._scratch_root is not None:
                ensure_private_dir(self._scratch_root)
            # A folder of our own inside scratch_dir, so two extractors never share link names.
            root = str(self._scratch_root) if self._scratch_root is not None else None
            self._link_dir = tempfile.mkdtemp(prefix="searchfs-exiftool-", dir=root)
        return self._link_dir


def _plain_argument(path: bytes) -> str | None:
    """The path as exiftool's argument stream can carry it (one UTF-8 line, absolute), or None."""
    try:
        text = os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text.startswith("/") or any(ch < " " or ch == "\x7f" for ch in text):
        return None  # a newline would split the argument; a relative path could read as an option
    return text


def _parse_output(stdout: bytes, stderr: bytes, arguments: dict[str, bytes]) -> dict[bytes, list[Facet] | str]:
    try:
        objects = json.loads(stdout.decode("utf-8", "replace")) if stdout.strip() else []
    except ValueError as error:
        raise _CallFailed("exiftool failed: its output was not JSON") from error
    if not isinstance(objects, list):
        raise _CallFailed("exiftool failed: its output was not a JSON list")
    results: dict[bytes, list[Facet] | str] = {}
    for item in objects:
        if isinstance(item, dict) and item.get("SourceFile") in arguments:
            results[arguments[item["SourceFile"]]] = normalize(item)
    errors = stderr.decode("utf-8", "replace").splitlines()
    for argument, path in arguments.items():
        if path not in results:
            results[path] = _error_for(argument, errors)
    return results


PREVIEW_TAGS = ("JpgFromRaw", "PreviewImage", "OtherImage", "ThumbnailImage")


def _largest_jpeg(stdout: bytes) -> bytes | None:
    """From `exiftool -j -b -<tags>` output (binary values come as "base64:..."), the largest JPEG."""
    try:
        objects = json.loads(stdout.decode("utf-8", "replace")) if stdout.strip() else []
    except ValueError:
        return None
    best: bytes | None = None
    for item in objects if isinstance(objects, list) else []:
        for tag in PREVIEW_TAGS:
            value = item.get(tag) if isinstance(item, dict) else None
            if not (isinstance(value, str) and value.startswith("base64:")):
                continue
            try:
                data = base64.b64decode(value[len("base64:") :], validate=True)
            except ValueError:
                continue
            if data.startswith(b"\xff\xd8") and (best is None or len(data) > len(best)):
                best = data
    return best


def _error_for(argument: str, stderr_lines: list[str]) -> str:
    """exiftool's own words for a file it skipped: "Error: File not found - /x/y.jpg"."""
    for line in stderr_lines:
        if line.startswith("Error: ") and line.endswith(f" - {argument}"):
            return f"exiftool failed: {line[len('Error: ') : -len(argument) - 3]}"
    return "exiftool failed: no metadata returned"


class _GuardedCall:
    """One pyexiftool call with a deadline, run in a worker thread so that the caller never hangs.

    pyexiftool has no per-call timeout, and its read loop neither times out nor stops at end of file
    (it spins on empty reads), so killing exiftool alone would not free the thread that waits on it.
    When the call runs past its deadline, or exiftool dies mid-call, exiftool is killed and its pipe
    descriptors are replaced, atomically with dup2, by a descriptor of a directory: select() reports
    that readable and read() fails with EISDIR, which ends pyexiftool's loop. Should the loop still be
    blocked (a child of exiftool holding the pipe open), the worker is abandoned; its descriptors are
    then left open on purpose, so that it can never read from a pipe of a later exiftool.
    """

    POLL_SECONDS = 0.05
    GRACE_SECONDS = 2.0

    def __init__(self, tool: exiftool.ExifTool, params: list[bytes], timeout: float) -> None:
        self.healthy = False  # exiftool can take the next call
        self.stuck = False  # the worker was abandoned in pyexiftool's read loop
        self._tool, self._params, self._timeout = tool, params, timeout
        self._process: subprocess.Popen = tool._process  # pyexiftool has no public process handle
        self._outcome: dict[str, Any] = {}

    def run(self) -> tuple[bytes, bytes]:
        worker = threading.Thread(target=self._work, name="exiftool-call", daemon=True)
        worker.start()
        try:
            reason = self._wait(worker)
        except BaseException:  # Ctrl-C while waiting: stop exiftool so that the worker ends too
            self._stop(worker)
            raise
        if reason:
            self._stop(worker)
            raise _CallFailed(reason)
        if "error" in self._outcome:
            raise _CallFailed(f"exiftool failed: {one_line(self._outcome['error'])}") from self._outcome["error"]
        self.healthy = True
        return self._outcome["stdout"], self._tool.last_stderr or b""

    def _work(self) -> None:
        try:
            self._outcome["stdout"] = self._tool.execute(b"-j", *self._params, raw_bytes=True)
        except BaseException as error:  # noqa: BLE001 - reported by run(), in the caller's thread
            self._outcome["error"] = error

    def _wait(self, worker: threading.Thread) -> str | None:
        """None when the call ended by itself, else why it had to be stopped."""
        deadline = time.monotonic() + self._timeout
        while True:
            worker.join(self.POLL_SECONDS)
            if not worker.is_alive():
                return None
            status = self._process.poll()
            if status is not None:
                how = f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
                return f"exiftool failed: it {how}"
            if time.monotonic() >= deadline:
                return f"exiftool timed out after {self._timeout:g}s"

    def _stop(self, worker: threading.Thread) -> None:
        self._kill_and_unblock()
        worker.join(self.GRACE_SECONDS)
        self.stuck = worker.is_alive()

    def _kill_and_unblock(self) -> None:
        with contextlib.suppress(OSError):
            self._process.kill()
        blocker = os.open("/", os.O_RDONLY)
        try:
            for stream in (self._process.stdout, self._process.stderr):
                if stream is not None:
                    os.dup2(blocker, stream.fileno())
        finally:
            os.close(blocker)


def _alive(tool: exiftool.ExifTool) -> bool:
    process = tool._process
    return process is not None and process.poll() is None


def _reap(tool: exiftool.ExifTool | None, close_pipes: bool = True) -> None:
    """Kill a discarded exiftool, close its pipes, and let pyexiftool notice it is gone."""
    process = tool._process if tool is not None else None
    if tool is None or process is None:
        return
    with contextlib.suppress(OSError):
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr) if close_pipes else (process.stdin,):
        with contextlib.suppress(OSError, AttributeError):
            stream.close()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pyexiftool warns "process ... died" while resetting its state
        tool.running  # noqa: B018 - the property resets pyexiftool's state, so its __del__ stays quiet


def exiftool_version(exiftool_path: str = "exiftool") -> str | None:
    """exiftool's version ("12.57"), or None when it is missing or does not run (for `searchfs doctor`)."""
    try:
        done = subprocess.run([exiftool_path, "-ver"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    version = done.stdout.strip()
    return version if done.returncode == 0 and version else None
