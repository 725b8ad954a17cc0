"""The progress display of `searchfs index`: one bar per phase, with files/s and ETA, on stderr."""

from __future__ import annotations

import threading

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

PHASES = {"scan": "scanning", "read": "reading new files", "metadata": "reading EXIF", "embed": "embedding"}


class IndexProgress:
    def __init__(self, enabled: bool = True):
        console = Console(stderr=True)
        self.enabled = enabled and console.is_terminal
        self._progress = Progress(
            TextColumn("{task.description:<18}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[rate]}"),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()  # the embedding runs on its own thread beside the scan

    def update(self, phase: str, done: int, total: int | None) -> None:
        if not self.enabled:
            return
        with self._lock:
            self._update(phase, done, total)

    def _update(self, phase: str, done: int, total: int | None) -> None:
        task = self._tasks.get(phase)
        if task is None:
            task = self._tasks[phase] = self._progress.add_task(PHASES.get(phase, phase), total=total, rate="")
        self._progress.update(task, completed=done, total=total)
        speed = self._progress.tasks[task].speed
        self._progress.update(task, rate=f"{speed:7.1f} files/s" if speed else "")

    def __enter__(self) -> IndexProgress:
        if self.enabled:
            self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._progress.stop()
