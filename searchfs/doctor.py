"""`searchfs doctor`: what searchfs needs, whether it is here, and how to get what is missing."""

from __future__ import annotations

import ctypes.util
import os
import shutil
import time
from dataclasses import dataclass

from .config import Settings
from .errors import SearchfsError


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    warning: bool = False  # ok, but worth knowing: printed as "warn", does not fail the exit code


def run_checks(settings: Settings, fetch: bool = False) -> list[Check]:
    return [
        _exiftool(settings),
        _libfuse(),
        _heif(),
        _weights(settings, fetch),
        _home(settings),
        _catalog(settings),
        *_writable_roots(settings),
    ]


def _catalog(settings: Settings) -> Check:
    from .store.recover import integrity_problem

    path = settings.catalog_path
    if not path.exists():
        return Check("catalog", True, f"library {settings.library!r} not created yet (searchfs index FOLDER)")
    problem = integrity_problem(path)
    if problem is None:
        return Check("catalog", True, f"{path} passes its integrity check")
    return Check("catalog", False, f"{path} is damaged ({problem}): run searchfs doctor --repair")


def _writable_roots(settings: Settings) -> list[Check]:
    """Result entries are symlinks: a write through one (`>>`, `: >`) reaches the original photo. A root the
    user can write to is worth a warning, unless the mount serves read-only files (entries = "files")."""
    if settings.mount_entries == "files" or not settings.catalog_path.exists():
        return []
    from .store.catalog import Catalog

    try:
        catalog = Catalog(settings.catalog_path)
        try:
            roots = [root for root in catalog.roots() if root.online]
        finally:
            catalog.close()
    except SearchfsError:
        return []  # a damaged catalog: the catalog check says so
    return [
        Check(
            f"root {root.name}",
            True,
            f"{root.display} is writable by you: a write through a result link changes the original "
            '(mount the folder read-only, or set [mount] entries = "files")',
            warning=True,
        )
        for root in roots
        if os.access(root.path, os.W_OK)
    ]


def _exiftool(settings: Settings) -> Check:
    from .ingest.extract import exiftool_version

    version = exiftool_version(settings.exiftool_path)
    if version:
        return Check("exiftool", True, f"{settings.exiftool_path} {version}")
    return Check(
        "exiftool",
        False,
        f"{settings.exiftool_path!r} not found: install it (Debian/Ubuntu: apt install libimage-exiftool-perl; "
        "macOS: brew install exiftool) or set [exiftool] path",
    )


def _libfuse() -> Check:
    library = ctypes.util.find_library("fuse") or ctypes.util.find_library("fuse3")
    helper = shutil.which("fusermount") or shutil.which("fusermount3")
    missing = [
        what
        for what, ok in (("libfuse", library), ("fusermount", helper), ("/dev/fuse", os.path.exists("/dev/fuse")))
        if not ok
    ]
    if not missing:
        return Check("fuse", True, f"{library}, {helper}")
    return Check(
        "fuse",
        False,
        f"{', '.join(missing)} missing: install fuse3 and libfuse2 (apt install fuse3 libfuse2); "
        "without them `searchfs mount` cannot work, search and index still do",
    )


def _heif() -> Check:
    try:
        import pillow_heif  # noqa: F401
    except ImportError:
        return Check("heic/avif", False, "pillow-heif is not installed: pip install pillow-heif")
    return Check("heic/avif", True, f"pillow-heif {pillow_heif.__version__}")


def _weights(settings: Settings, fetch: bool) -> Check:
    from .ingest.embed import Embedder, weights_status

    name = f"model {settings.model_name} ({settings.model_pretrained})"
    if not fetch:
        ok, message = weights_status(settings)
        if not ok:
            return Check(name, False, message)
    # Weights on disk are not enough (an unknown architecture, a config file naming another model, a
    # checkpoint of another shape): load the model exactly as a search will.
    started = time.monotonic()
    embedder = Embedder(settings)
    try:
        embedder.load()
        loaded = f"loads on {embedder.device} in {time.monotonic() - started:.1f} s, {embedder.dim}-d embeddings"
    except SearchfsError as exc:
        return Check(name, False, str(exc))
    finally:
        embedder.close()
    return Check(name, True, loaded)


def _home(settings: Settings) -> Check:
    home = settings.home
    if not home.exists():
        return Check("home", True, f"{home} (created on first use, mode 0700)")
    mode = home.stat().st_mode & 0o777
    if mode & 0o077:
        return Check("home", False, f"{home} is mode {mode:o}: run chmod 700 {home}")
    return Check("home", True, f"{home} (mode {mode:o})")
