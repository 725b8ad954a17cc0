"""Paths as searchfs compares them: one rule for "at or below", used by the scan, the watcher, the daemon,
the mount checks and the view. Works on bytes or str, absolute or relative ('' is the top of everything);
trailing slashes do not matter. Nothing here touches the file system (resolve links first if needed)."""

from __future__ import annotations

from typing import AnyStr


def _top(top: AnyStr) -> AnyStr:
    slash = b"/" if isinstance(top, bytes) else "/"
    return top.rstrip(slash) or top[:0]


def is_under(path: AnyStr, top: AnyStr) -> bool:
    """`path` is `top` or below it."""
    return path == top or is_below(path, top) or _top(path) == _top(top)


def is_below(path: AnyStr, top: AnyStr) -> bool:
    """`path` is strictly below `top`."""
    slash = b"/" if isinstance(top, bytes) else "/"
    base = _top(top)
    if not base:  # '' or '/': everything (absolute under '/', relative under '')
        return _top(path) != base and (path.startswith(slash) or not top.startswith(slash))
    return path.startswith(base + slash) and len(_top(path)) > len(base)


def relative(path: AnyStr, top: AnyStr) -> AnyStr | None:
    """`path` relative to `top` (empty for `top` itself), or None when it lies outside."""
    base = _top(top)
    if _top(path) == base:
        return path[:0]
    slash = b"/" if isinstance(top, bytes) else "/"
    prefix = base + slash
    return path[len(prefix) :] if path.startswith(prefix) else None
