"""What the operating system says about mounts: read once here for the watcher (which file system a root
is on, whether it was unmounted) and for the mount lifecycle (is a mount point live or stale)."""

from __future__ import annotations

import re

from .paths import is_under

_OCTAL = re.compile(rb"\\([0-7]{3})")


def mount_table() -> dict[bytes, str]:
    """Mount point -> file system type, from /proc/self/mountinfo (which, unlike st_dev, sees bind mounts).
    Mount points are bytes with the kernel's octal escapes (\\040 for a space) undone. Empty without /proc."""
    try:
        with open("/proc/self/mountinfo", "rb") as handle:
            data = handle.read()
    except OSError:
        return {}
    table: dict[bytes, str] = {}
    for line in data.splitlines():
        left, _, right = line.partition(b" - ")
        fields = left.split(b" ")
        if len(fields) > 4 and right:
            point = _OCTAL.sub(lambda m: bytes([int(m.group(1), 8)]), fields[4])
            table[point] = right.split(b" ")[0].decode("ascii", "replace")
    return table


def fs_type(path: bytes, table: dict[bytes, str]) -> str:
    """Type of the file system `path` is on: that of the longest mount point above it."""
    best = b""
    for point in table:
        if is_under(path, point) and len(point) > len(best):
            best = point
    return table.get(best, "")
