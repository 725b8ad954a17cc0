"""What the benchmarks that mount a real library share: progress lines, waiting for the daemon's
start-up reconcile, and taking the mount down whatever happened."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def start_mount(arguments: list[str], env: dict) -> int:
    """`searchfs mount ARGUMENTS` (it returns once the mount answers); the daemon's pid, from its output."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-m", "searchfs", "mount", *arguments], env=env, capture_output=True, text=True, timeout=300
    )
    if out.returncode:
        raise RuntimeError(f"searchfs mount failed: {out.stderr.strip()}")
    return int(out.stdout.split("daemon pid ")[1].split(")")[0])


def wait_reconciled(library_dir: Path, timeout: float = 600) -> float:
    """Wait until the mount's daemon says its start-up reconcile is done; return the seconds waited."""
    status = library_dir / "daemon.json"
    started = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            data = json.loads(status.read_text())
            if data.get("last_reconcile") and data.get("pending_jobs") == 0:
                return time.perf_counter() - started
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the mount did not finish its start-up reconcile in {timeout:.0f} s")


def stop_mount(mnt, pid: int, timeout: float = 30) -> None:
    """Lazy-unmount, then wait for the daemon to exit (SIGKILL after `timeout`)."""
    from searchfs.fs import mount as M

    try:
        M.unmount(mnt, lazy=True)
    except Exception as exc:  # noqa: BLE001 - a benchmark's cleanup reports and goes on
        say(f"unmount {mnt}: {exc}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
