"""The `searchfs` console entry point, and its fast path: a text or metadata search a daemon answers.

A running daemon answers a search in milliseconds, yet the full CLI spends 0.1-0.2 s before it asks
(click, every command's module, the records). When argv is a search spelled the way this module reads
exactly as click would (`[-L NAME | --library NAME | --config FILE] search [QUERY] [-n N] [--min S]
[-w K=V]... [--text] [--json] [-0]`, each value as `-n 5`, `--limit 5` or `--limit=5`), it loads the
settings, asks the daemon with the standard library and prints the answer as cli.py prints any hits.
An error the daemon answers (a bad filter, say) is printed as cli.py prints one: `searchfs: <line>` on
stderr and its exit code. Everything else goes to cli.main() untouched, which parses argv itself: help,
`-v`, an image or a query that may name a file, an option or value this does not read, no daemon.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable

# option -> the name it sets; the global ones come before the command
GLOBAL_VALUES = {"-L": "library", "--library": "library", "--config": "config"}
SEARCH_VALUES = {"-n": "limit", "--limit": "limit", "--min": "min_score", "-w": "where", "--where": "where"}
SEARCH_FLAGS = {"--text": "force_text", "--json": "as_json", "-0": "null", "--null": "null"}

# (rank, score, path, root): what the CLI prints of a hit, whoever found it
Printed = tuple[int, "float | None", str, str]


def main() -> None:
    try:
        search = parse(sys.argv[1:])
        answered = search is not None and answer(search)
    except KeyboardInterrupt:  # as cli.py ends on Ctrl-C
        sys.stderr.write("searchfs: interrupted\n")
        sys.exit(130)
    if answered:
        sys.exit(0)
    # the full CLI parses argv itself, as if nothing had been tried
    from .cli import main as full_main

    full_main()


def parse(argv: list[str]) -> dict | None:
    """The search argv asks for, as keyword arguments, or None where cli.py must read argv itself."""
    found: dict = {"library": None, "config": None, "limit": None, "min_score": None, "where": []}
    found.update(dict.fromkeys(SEARCH_FLAGS.values(), False), query=None)
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        taken = _option(argv, i, GLOBAL_VALUES)
        if taken is None:
            return None
        name, found[name], i = taken
    if argv[i : i + 1] != ["search"]:
        return None
    i += 1
    while i < len(argv):
        token = argv[i]
        if token in SEARCH_FLAGS:
            found[SEARCH_FLAGS[token]], i = True, i + 1
        elif token.startswith("-"):
            taken = _option(argv, i, SEARCH_VALUES)
            if taken is None:
                return None
            name, value, i = taken
            if name == "where":
                found["where"].append(value)
            else:
                found[name] = value
        elif found["query"] is None:
            found["query"], i = token, i + 1
        else:
            return None  # a second QUERY: click's usage error
    return _checked(found)


def _option(argv: list[str], i: int, table: dict[str, str]) -> tuple[str, str, int] | None:
    """(name, value, next index) of the option at argv[i], as click reads `-n 5`, `--limit 5`, `--limit=5`."""
    token = argv[i]
    if token in table:
        return (table[token], argv[i + 1], i + 2) if i + 1 < len(argv) else None
    option, equals, value = token.partition("=")
    if equals and option.startswith("--") and option in table:
        return table[option], value, i + 1
    return None


def _checked(found: dict) -> dict | None:
    """The values as click's types make them; None where cli.py decides (or reports) instead."""
    query = found["query"]
    if query is None and not found["where"]:
        return None  # a usage error
    # Without --text, a query that names a file, or may mean one (a slash, an extension), is cli.py's.
    if query is not None and not found["force_text"] and ("/" in query or "." in query or os.path.isfile(query)):
        return None
    try:
        found["limit"] = None if found["limit"] is None else int(found["limit"])
        found["min_score"] = None if found["min_score"] is None else float(found["min_score"])
    except ValueError:
        return None
    return found


def answer(search: dict) -> bool:
    """Ask the daemon and print its answer: its hits, or its error as cli.py prints one (`searchfs: <line>`
    on stderr, then its exit code). False, with nothing printed, when no daemon answered."""
    from pathlib import Path

    from . import client
    from .config import load_settings

    try:
        config = search["config"]
        settings = load_settings(Path(config) if config else None, library=search["library"])
        rows = client.search_rows(
            settings,
            text=search["query"],
            where=search["where"],
            limit=search["limit"],
            min_score=search["min_score"],
        )
    except client.DaemonError as exc:
        sys.stderr.write(f"searchfs: {exc}\n")
        sys.exit(exc.exit_code)
    except Exception:  # noqa: BLE001 - a bad setting, say: cli.py meets it again and says it in its words
        return False
    if rows is None:
        return False
    printed = [(rank, score, abspath, root) for rank, score, root, _relpath, abspath, _file, _content in rows]
    try:
        print_hits(printed, search["as_json"], search["null"])
    except BrokenPipeError:  # `searchfs search x | head -1`: a normal end
        quiet_stdout()
    return True


def print_hits(hits: Iterable[Printed], as_json: bool, null: bool) -> None:
    """The hits on stdout: a JSON list, NUL-separated paths, or one `rank  score  path` line each (both
    paths print through here, so the fast path's output is the CLI's byte for byte)."""
    if as_json:
        listed = [{"rank": rank, "score": score, "path": path, "root": root} for rank, score, path, root in hits]
        sys.stdout.write(json.dumps(listed, indent=2) + "\n")
    elif null:
        sys.stdout.flush()
        sys.stdout.buffer.write(b"".join(os.fsencode(path) + b"\0" for _rank, _score, path, _root in hits))
    else:
        for rank, score, path, _root in hits:
            shown = f"{score:.4f}" if score is not None else "     -"
            sys.stdout.write(f"{rank:4d}  {shown}  {path}\n")
    sys.stdout.flush()  # here, so that a closed pipe is met by the caller's handler, not at exit


def quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot complain about the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
