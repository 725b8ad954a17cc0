"""The `searchfs` commands that keep the index in step with the folders: `mount` (a FUSE mount served by a
daemon, in the background or with --foreground), `umount`, and `watch` (the same daemon without a mount),
with the checks a mount makes before it changes the library. cli.py adds them to its command group.
"""

from __future__ import annotations

import os
import sys

import click

from .cli_common import handle_errors, pass_context
from .errors import NotFound


def _split_roots_and_mountpoint(paths):
    if not paths:
        raise click.UsageError("name a MOUNTPOINT (and the photo folders before it)")
    return list(paths[:-1]), paths[-1]


@click.command()
@click.argument("paths", nargs=-1, required=True)
@click.option("-f", "--foreground", is_flag=True, help="Stay in the foreground (for systemd and debugging).")
@click.option(
    "--allow-other",
    is_flag=True,
    help="Let other users see the mount (off by default; needs user_allow_other in /etc/fuse.conf).",
)
@click.option("--no-watch", is_flag=True, help="Do not watch the folders for changes (reconcile once at start).")
@click.option("--debug", is_flag=True, help="Log every FUSE call.")
@pass_context
@handle_errors
def mount(ctx, paths, foreground, allow_other, no_watch, debug):
    """Mount the search tree: [ROOT...] MOUNTPOINT. Serves every root of the library.

    ROOTs named here are added to the library first; the mount then serves all of the library's roots
    (named before or now; `searchfs status` lists them, `searchfs forget` drops one, and `--library` keeps
    separate sets apart). A daemon keeps the index in step with the folders and serves query/, exif/ and
    similar/ at MOUNTPOINT. Logs go to $SEARCHFS_HOME/logs/mount.log.

    \b
    Example:
        searchfs mount ~/Pictures /mnt/nas/photos ~/search
        ls ~/search/query/red\\ flower/
        searchfs umount ~/search
    """
    from .fs import mount as mounting

    roots, mountpoint = _split_roots_and_mountpoint(paths)
    target = os.path.abspath(mountpoint)
    mounting.clear_stale(target)  # left by a killed daemon; before any check that would stat it
    settings = ctx.settings(mount_allow_other=True if allow_other else None)
    served = _roots_to_serve(ctx, roots, target)
    if not foreground:
        command = [sys.executable, "-m", "searchfs"] + _global_args(ctx) + ["mount", "--foreground"]
        command += (["--allow-other"] if settings.mount_allow_other else []) + (["--no-watch"] if no_watch else [])
        command += ["--debug"] if debug else []
        pid = mounting.mount(
            None, target, foreground=False, command=command + [target], log_file=mounting.default_log_file(settings)
        )
        click.echo(f"searchfs mounted at {target} (daemon pid {pid}), serving {served}")
        click.echo(f"stop it with: searchfs umount {mountpoint}")
        return
    click.echo(f"searchfs mounting at {target}, serving {served}", err=True)
    mounting.mount(
        lambda: _daemon_backend(ctx, not no_watch),
        mountpoint,
        foreground=True,
        allow_other=settings.mount_allow_other,
        debug=debug,
        log_file=mounting.default_log_file(settings),
    )


def _roots_to_serve(ctx, roots, target: str) -> str:
    """Check everything before the library changes (a refused mount leaves no new library and no new
    roots), then add `roots`. Returns what the mount will serve, for the user to read."""
    from .fs import mount as mounting
    from .library import Library, root_path

    settings = ctx.settings()
    known = []
    if settings.catalog_path.exists():
        with Library(settings) as lib:
            lib.check_not_busy()
            known = [r.path for r in lib.roots()]
    for path in roots:
        if not os.path.isdir(path):
            raise NotFound(f"not a folder: {path}")
    sources = list(dict.fromkeys([root_path(path) for path in roots] + known))
    if not sources:
        raise click.UsageError("no photo folders: searchfs mount ~/Pictures ~/search")
    mounting.check_mountpoint(target, sources)
    with ctx.library(create=True) as lib:
        lib.add_roots(roots)
        return _describe_roots(lib)


def _describe_roots(lib) -> str:
    listed = ", ".join(f"{r.name} ({r.display})" for r in lib.roots())
    return f"every root of library {lib.settings.library!r}: {listed}"


def _global_args(ctx) -> list[str]:
    args = ["--config", os.path.abspath(ctx.config)] if ctx.config else []
    return args + (["--library", ctx.library_name] if ctx.library_name else [])


def _daemon_backend(ctx, watch: bool):
    from .daemon import DaemonBackend, SyncDaemon

    lib = ctx.library()
    daemon = SyncDaemon(lib, watch=watch)
    try:
        daemon.start()
    except BaseException:
        lib.close()
        raise
    return DaemonBackend(lib, daemon)


@click.command()
@click.argument("mountpoint", type=click.Path())
@click.option(
    "-l",
    "--lazy",
    is_flag=True,
    help="Detach now even if a shell or program is inside; the daemon exits when it leaves.",
)
@handle_errors
def umount(mountpoint, lazy):
    """Unmount a searchfs mount and stop its daemon.

    \b
    Example:
        searchfs umount ~/search
        searchfs umount --lazy ~/search     # while a shell still sits inside
    """
    from .fs.mount import unmount, wait_for_daemon

    unmount(mountpoint, lazy=lazy)
    # Return once the daemon has finished, so that `searchfs index` right after does not find it busy.
    busy = None if lazy else wait_for_daemon(mountpoint)
    if busy:
        click.echo(f"unmounted; its daemon (pid {busy}) is still finishing and exits on its own", err=True)


@click.command()
@click.argument("folders", nargs=-1, type=click.Path(file_okay=False))
@pass_context
@handle_errors
def watch(ctx, folders):
    """Keep the index in step with every root of the library, without mounting.

    FOLDERS named here are added to the library first; the watcher then follows all of its roots until
    Ctrl-C or SIGTERM.

    \b
    Example:
        searchfs watch ~/Pictures /mnt/nas/photos
        searchfs status                     # shows what the watcher is doing
    """
    import signal
    import threading

    from .daemon import SyncDaemon

    with ctx.library(create=bool(folders)) as lib:
        if folders:
            lib.add_roots(folders)
        if not lib.roots():
            raise click.UsageError("no photo folders: searchfs watch ~/Pictures")
        daemon = SyncDaemon(lib)
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        daemon.start()
        click.echo(f"watching {_describe_roots(lib)}; Ctrl-C to stop", err=True)
        try:
            while not stop.wait(1.0):
                pass
        finally:
            daemon.stop()
