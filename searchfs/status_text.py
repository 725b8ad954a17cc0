"""What `searchfs status` shows: the library's report and a running daemon's, as lines or as the JSON block
a script waits on. Presentation only (cli.py stays a thin layer of commands)."""

from __future__ import annotations

import json
import os
import time


def status_lines(report, libraries: list[str], watcher: dict | None) -> list[str]:
    """What `searchfs status` prints, line by line."""
    lines: list[str] = []
    lines.append(f"library {report.library} ({report.catalog})   all libraries: {', '.join(libraries)}")
    lines.append(f"model   {report.model}")
    lines.append(
        f"photos  {report.files}: {report.indexed} indexed, {report.pending} pending, {report.quarantined} quarantined"
    )
    if not report.roots:
        lines.append("root    none yet: searchfs index ~/Pictures (or searchfs mount ~/Pictures ~/search)")
    for root in report.roots:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(root.last_scan_at)) if root.last_scan_at else "never"
        state = "online" if root.online else "OFFLINE (photos kept)"
        lines.append(f"root    {root.name}: {root.path}  {root.files} photos, {state}, last scan {when}")
    vectors = report.vectors
    lines.append(
        f"vectors {vectors.get('state')}: {vectors.get('live_vectors')} searchable, {vectors.get('kind') or '-'} index"
    )
    lines += watcher_lines(watcher)
    for item in report.quarantine:
        lines.append(f"  quarantined {item['path']}: {item['reason']}")
    if report.quarantined > len(report.quarantine):
        lines.append(f"  ... {report.quarantined - len(report.quarantine)} more: searchfs status --quarantine")
    return lines


def indexing_state(report, watcher: dict | None) -> dict:
    """One place a script can wait on: `idle` is true when no daemon has anything queued or in hand;
    `photos_pending` says how many photos still wait for the model (0 once everything is searchable)."""
    return {
        "idle": watcher is None or bool(watcher.get("idle")),
        "photos_pending": report.pending,
        "daemon_pid": watcher.get("pid") if watcher else None,
        "working_on": watcher.get("working_on") if watcher else None,
        "jobs_queued": watcher.get("pending_jobs", 0) if watcher else 0,
        "events_pending": watcher.get("events_pending", 0) if watcher else 0,
        "backlog": watcher.get("backlog") if watcher else None,
        "last_reconcile": watcher.get("last_reconcile", {}) if watcher else {},
    }


def watcher_lines(watcher: dict | None) -> list[str]:
    if not watcher:
        return ["watcher none running (searchfs mount or searchfs watch keep the index in step)"]
    doing = (
        f"working on {watcher['working_on']}"
        if watcher.get("working_on")
        else "idle"
        if watcher.get("idle")
        else "busy"
    )
    lines = [f"watcher pid {watcher['pid']}: {doing}, {watcher.get('pending_jobs', 0)} jobs queued"]
    backlog = watcher.get("backlog") or {}
    if backlog.get("jobs"):
        retry = max(0, int((backlog.get("next_try_at") or time.time()) - time.time()))
        lines.append(f"        WAITING: {backlog['jobs']} jobs failed ({backlog['reason']}); next try in {retry} s")
    for name, root in (watcher.get("watch") or {}).items():
        when = "never"
        if root.get("last_reconcile"):
            when = time.strftime("%H:%M:%S", time.localtime(root["last_reconcile"]))
            when += f" ({root.get('last_reconcile_reason')})" if root.get("last_reconcile_reason") else ""
        why = f" ({root['polling_reason']})" if root.get("polling_reason") else ""
        error = f", last error: {root['last_error']}" if root.get("last_error") else ""
        lines.append(
            f"        {name}: {root['mode']}{why}, {root.get('pending', 0)} events pending, "
            f"last reconcile {when}{error}"
        )
    done = watcher.get("since_start", {})
    lines.append(
        f"        since start: {done.get('new', 0)} new, {done.get('removed', 0)} removed, "
        f"{done.get('embedded', 0)} embedded"
    )
    return lines


def watcher_state(settings) -> dict | None:
    """What a running daemon last wrote about its watcher (None when no daemon runs)."""
    path = settings.daemon_status_path
    for _ in range(5):  # the daemon rewrites it in place: a read may catch it half written
        try:
            data = json.loads(path.read_text())
            os.kill(int(data.get("pid", 0)), 0)
            return data
        except ValueError:
            time.sleep(0.02)
        except OSError:
            return None
    return None
