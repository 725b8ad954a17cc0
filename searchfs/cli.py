"""The `searchfs` command. Thin click commands over the Library; every help text carries an example.

This module holds the command group, the commands that index, search and report, and `main`; the mount,
umount and watch commands are cli_mount.py's, and what every command shares (the context, the error
handling) is cli_common.py's.

Exit codes: 0 ok; non-zero with one line on stderr otherwise (see errors.py for which code means what).
"""

from __future__ import annotations

import json
import logging
import os
import sys

import click

from .cli_common import Context, PipeClosed, fail, handle_errors, pass_context
from .cli_mount import mount, umount, watch
from .cli_quick import print_hits, quiet_stdout
from .errors import NotFound

log = logging.getLogger("searchfs")

# Set by a command once everything it wrote is committed and closed: main() then ends the process at once.
# Interpreter shutdown after an index run costs about a second (tearing down torch, freeing the model)
# and does nothing a closed library needs; a background model load still running is simply dropped.
_exit_when_done = False


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(dir_okay=False),
    help="TOML settings file (default: $SEARCHFS_CONFIG, else ~/.config/searchfs/config.toml).",
)
@click.option(
    "--library", "-L", help="Named library with its own catalog (default: $SEARCHFS_LIBRARY, else 'default')."
)
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
@click.version_option(package_name="searchfs")
@click.pass_context
def cli(ctx, config, library, verbose):
    """Search a photo library from any file manager, shell or script.

    \b
    Example:
        searchfs index ~/Pictures
        searchfs search "red flower" -n 20
        searchfs mount ~/Pictures ~/search && ls ~/search/query/red\\ flower/
    """
    # The level sits on the stderr handler, not on the loggers: the mount daemon adds its own file handler
    # at INFO, and those records must not reach stderr (which is that same log file for a background mount).
    handler = logging.StreamHandler()
    handler.setLevel(max(logging.WARNING - 10 * verbose, logging.DEBUG))
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)
    logging.getLogger().setLevel(logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING)
    ctx.obj = Context(config, library, verbose)


# -- index -------------------------------------------------------------------------------------------


@cli.command()
@click.argument("folders", nargs=-1, type=click.Path(file_okay=False))
@click.option("--retry-quarantined", is_flag=True, help="Try quarantined files again.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar (the default when stderr is not a terminal).")
@pass_context
@handle_errors
def index(ctx, folders, retry_quarantined, as_json, no_progress):
    """Index photo folders: scan, read EXIF, embed with CLIP. Without FOLDERS, re-index every root.

    Folders are only read, never written. Unchanged files cost a stat; renamed, moved or copied files
    keep their embedding; files that cannot be read as images are quarantined with the reason.

    \b
    Example:
        searchfs index ~/Pictures /mnt/nas/photos
        searchfs index --json            # again, all roots; prints what changed
    """
    from .ingest.noise import stderr_to_log
    from .progress import IndexProgress

    # Decoders' C-level stderr (libtiff) goes to the log while this runs; our own output still shows.
    quiet, library = stderr_to_log(), ctx.library(create=True)
    with quiet, library as lib, IndexProgress(enabled=not no_progress and not as_json) as progress:
        report = lib.index(folders, progress=progress.update, retry_quarantined=retry_quarantined)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
        _done_and_closed()
        return
    click.echo(
        f"{report.scanned} photos scanned in {report.seconds:.1f}s: {report.new} new, {report.changed} changed, "
        f"{report.removed} removed, {report.unchanged} unchanged; {report.embedded} embedded, "
        f"{report.reused} reused known content, {report.quarantined} quarantined, "
        f"{report.pending} waiting for the model"
    )
    for line in report.errors[:20]:
        click.echo(f"  ! {line}", err=True)
    if len(report.errors) > 20:
        click.echo(f"  ! ... {len(report.errors) - 20} more (see `searchfs status`)", err=True)
    _done_and_closed()


def _done_and_closed() -> None:
    global _exit_when_done
    _exit_when_done = True


@cli.command()
@click.argument("root")
@pass_context
@handle_errors
def forget(ctx, root):
    """Stop indexing a folder: its photos leave the library (the folder itself is not touched).

    ROOT is a root's name (as under similar/ and in `searchfs status`) or its path. Use it for a share
    that is gone for good; a root that is merely offline keeps its photos on its own.

    \b
    Example:
        searchfs forget /mnt/old-nas/photos
        searchfs forget photos-2
    """
    with ctx.library() as lib:
        gone = lib.forget_root(root)
    click.echo(f"forgot {gone.name} ({gone.display})")


# -- search ------------------------------------------------------------------------------------------


@cli.command()
@click.argument("query", required=False)
@click.option("-n", "--limit", type=int, help="At most this many results (default: search.limit, 50).")
@click.option(
    "--min",
    "min_score",
    type=float,
    help="Only results with at least this similarity (-1..1; CLIP matches are often 0.2-0.35).",
)
@click.option(
    "-w",
    "--where",
    multiple=True,
    metavar="KEY=VALUE",
    help="Metadata filter, repeatable (AND): camera=Canon, year=2019..2021, lens=f/2.8, has_gps=yes.",
)
@click.option(
    "--image", "force_image", is_flag=True, help="QUERY is an image file (the default when it names an existing file)."
)
@click.option("--text", "force_text", is_flag=True, help="QUERY is text even if a file of that name exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {rank, score, path, root}.")
@click.option("-0", "--null", "null", is_flag=True, help="Print paths only, separated by NUL (for xargs -0).")
@pass_context
@handle_errors
def search(ctx, query, limit, min_score, where, force_image, force_text, as_json, null):
    """Search by text, by an image file, or by metadata alone.

    \b
    Example:
        searchfs search "red flower" -n 20 --min 0.2
        searchfs search ~/Downloads/query.jpg
        searchfs search "dog" --where camera=Canon --where year=2019..2021
        searchfs search --where has_gps=yes --json
    """
    if query is None and not where:
        raise click.UsageError("give a QUERY (text or image file) or at least one --where filter")
    is_image = query is not None and not force_text and (force_image or os.path.isfile(query))
    if query is not None and not force_text and not is_image and _looks_like_path(query):
        raise NotFound(f"no such image file: {query} (to search for these words, add --text)")
    from . import client

    text, image = (None, os.path.abspath(query)) if is_image else (query, None)
    hits = client.search(ctx.settings(), text=text, image=image, where=where, limit=limit, min_score=min_score)
    if hits is None:  # no daemon of this library answered: the same search here
        from .search.query import Query

        wanted = Query.build(where, text=text, image=image and os.fsencode(image), limit=limit, min_score=min_score)
        with ctx.library() as lib:  # after the query parsed: a bad filter is exit 2 whatever the library
            hits = lib.search(query=wanted)
    _print_hits(hits, as_json, null)


def _looks_like_path(query: str) -> bool:
    """A query with a slash or an image extension is meant as a file; a typo in it must not become text."""
    from .ingest.scan import is_photo_name

    return "/" in query or is_photo_name(os.fsencode(query))


def _print_hits(hits, as_json: bool, null: bool) -> None:
    print_hits(((hit.rank, hit.score, hit.path, hit.root) for hit in hits), as_json, null)


@cli.command()
@click.argument("image_a")
@click.argument("image_b")
@click.option("--json", "as_json", is_flag=True, help="Print {a, b, score} as JSON.")
@pass_context
@handle_errors
def compare(ctx, image_a, image_b, as_json):
    """Print the CLIP similarity (cosine, -1..1) of two image files.

    \b
    Example:
        searchfs compare a.jpg b.jpg
        searchfs compare a.jpg b.jpg --json
    """
    from .library import compare_images

    for path in (image_a, image_b):
        if not os.path.isfile(path):
            raise NotFound(f"no such image file: {path}")
    score = compare_images(ctx.settings(), image_a, image_b)
    if as_json:
        click.echo(json.dumps({"a": os.path.abspath(image_a), "b": os.path.abspath(image_b), "score": score}))
    else:
        click.echo(f"{score:.4f}")


# -- status and doctor ---------------------------------------------------------------------------------


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--quarantine", "show_all", is_flag=True, help="List every quarantined file with its reason.")
@pass_context
@handle_errors
def status(ctx, as_json, show_all):
    """Show the library: roots, counts (indexed, pending, quarantined), model, index health.

    \b
    Example:
        searchfs status
        searchfs --library work status --json
    """
    from .library import library_names
    from .status_text import indexing_state, status_lines, watcher_state

    with ctx.library() as lib:
        report = lib.status(quarantine_limit=1 << 30 if show_all else 10)
        libraries = library_names(lib.settings)
        watcher = watcher_state(lib.settings)
    report.watcher = watcher
    if as_json:
        data = report.to_json()
        data["libraries"] = libraries
        data["indexing"] = indexing_state(report, watcher)
        click.echo(json.dumps(data, indent=2, default=str))
        return
    for line in status_lines(report, libraries, watcher):
        click.echo(line)


@cli.command()
@click.option("--fetch", is_flag=True, help="Download the configured model weights now (needs network).")
@click.option("--repair", is_flag=True, help="Rebuild a damaged catalog from what is still readable, then rescan.")
@pass_context
@handle_errors
def doctor(ctx, fetch, repair):
    """Check what searchfs needs (exiftool, libfuse, model weights) and say how to fix what is missing.

    Exits 0 when everything is in place, 1 otherwise. Without weights searchfs still indexes and
    serves metadata (exif/); text and image search wait for the model. A root you can write to is a
    warning (writes through result links reach the originals), not a failure.

    \b
    Example:
        searchfs doctor
        searchfs doctor --fetch
        searchfs doctor --repair         # after "catalog ... is damaged"
    """
    from .doctor import run_checks

    settings = ctx.settings()
    if repair:
        from .library import repair_library

        click.echo(repair_library(settings))
        return
    checks = run_checks(settings, fetch=fetch)
    for check in checks:
        mark = "MISSING" if not check.ok else "warn" if check.warning else "ok  "
        click.echo(f"{mark:8s}{check.name}: {check.detail}")
    if any(not c.ok and c.name.startswith("model") for c in checks):
        click.echo(
            "meanwhile searchfs still indexes files and their metadata and serves exif/; "
            "text, image and similar search wait for the model"
        )
    sys.exit(0 if all(c.ok for c in checks) else 1)


# -- mount, umount, watch: cli_mount.py's ------------------------------------------------------------------

for _command in (mount, umount, watch):
    cli.add_command(_command)


def main() -> None:
    """The console entry point: every failure ends as one line `searchfs: <reason>` and an exit code."""
    try:
        code = cli.main(prog_name="searchfs", standalone_mode=False)
    except click.ClickException as exc:  # usage errors: bad option, missing argument, bad value
        ctx = getattr(exc, "ctx", None)  # usage errors carry the command they were raised in
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        fail(exc.format_message() + hint, exc.exit_code)
    except click.exceptions.Abort:
        fail("interrupted", 130)
    except (PipeClosed, BrokenPipeError):
        quiet_stdout()
        code = 0
    if _exit_when_done:
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code or 0)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
