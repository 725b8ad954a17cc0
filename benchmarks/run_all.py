"""Run every benchmark, one after another, and write what they measured to a results folder.

    python benchmarks/run_all.py                  # every benchmark, full size (about an hour on 2 cores,
                                                  # more with bench_scale's first 1M-photo build)
    python benchmarks/run_all.py --quick          # short runs (about 15 minutes)
    python benchmarks/run_all.py --only index,query   # the others' last results are kept in the table

Each benchmark runs in its own process (never two at once: they measure against bounds taken in the same
run, and a second benchmark beside one would be noise in both). Its JSON goes to
`<out>/<name>.json`, its progress lines to `<out>/<name>.log`; then `<out>/RESULTS.md` gets one table
of every target each benchmark checks (its value, its bound where it gives one, met or not), read from
the JSON: keys `targets` ({name: {value, bound, ok}}), `meets_*` and `within_*`. Exit status 1 when a
benchmark failed to run (a missed target is a result, not a failure).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# name -> (full arguments, quick arguments); in the order they run (the cheap, quiet ones first). The
# script is bench_<name up to its first "_">.py: index_1mp is bench_index.py on 1 MP photos.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "model": ([], ["--models", "ViT-B-32", "--batches", "3", "--queries", "10"]),
    "index": ([], ["--quick"]),
    "index_1mp": (["--size", "1155x866"], ["--quick", "--size", "1155x866"]),
    "query": ([], ["--quick"]),
    "memory": ([], ["--quick"]),
    "mount": ([], ["--quick"]),
    "files": ([], ["--quick"]),
    "live": ([], ["--quick"]),
    "scale": ([], ["--quick"]),
    "rebuild": ([], ["--photos", "100000"]),  # bench_scale's cached library (built first if absent)
    # rclip and imgsearch beside searchfs; the first run makes their venvs (pip, a few GB): about 30 min each
    "peers": ([], ["--quick"]),
    "peers_1mp": (["--size", "1155x866"], ["--quick", "--size", "1155x866"]),
}


def checks(result: object, prefix: str = "") -> list[tuple[str, object, object, bool]]:
    """(check, value, bound, ok) for every target a benchmark's JSON reports, wherever it is nested."""
    found: list[tuple[str, object, object, bool]] = []
    if not isinstance(result, dict):
        return found
    for key, value in result.items():
        name = f"{prefix}{key}"
        if key == "targets" and isinstance(value, dict):
            for target, entry in value.items():
                if isinstance(entry, dict) and "ok" in entry:
                    found.append((f"{prefix}{target}", entry.get("value"), entry.get("bound"), bool(entry["ok"])))
                elif isinstance(entry, bool):
                    found.append((f"{prefix}{target}", entry, None, entry))
        elif key.startswith(("meets", "within")) and isinstance(value, bool):
            found.append((name, value, None, value))
        elif key.startswith(("meets", "within")) and isinstance(value, dict):
            found += [(f"{name}.{k}", v, None, bool(v)) for k, v in value.items() if isinstance(v, bool)]
        elif isinstance(value, dict):
            found += checks(value, f"{name}.")
    return found


def script(name: str) -> Path:
    """The file a benchmark's name runs: bench_<name up to its first "_">.py."""
    return HERE / f"bench_{name.split('_')[0]}.py"


def run(name: str, arguments: list[str], out: Path, timeout: float) -> tuple[dict | None, float, str]:
    script_path = script(name)
    started = time.monotonic()
    with open(out / f"{name}.log", "wb") as log:
        try:
            done = subprocess.run(
                [sys.executable, str(script_path), *arguments], stdout=subprocess.PIPE, stderr=log, timeout=timeout
            )
        except subprocess.TimeoutExpired:
            return None, time.monotonic() - started, f"ran past {timeout:.0f} s"
    seconds = time.monotonic() - started
    if done.returncode != 0:
        return None, seconds, f"exit {done.returncode} (see {name}.log)"
    try:
        result = json.loads(done.stdout)
    except ValueError:
        return None, seconds, "did not print one JSON object"
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result, seconds, ""


def markdown(rows: list[tuple[str, float, str, list]], quick: bool, collected: bool = False) -> str:
    how = "the results kept, collected" if collected else f"{'quick' if quick else 'full'} runs"
    lines = [
        "# Benchmark results",
        "",
        f"{time.strftime('%Y-%m-%d %H:%M')}, {how}, `python benchmarks/run_all.py` (each JSON beside this file).",
        "",
        "| benchmark | target | value | bound | met |",
        "|---|---|---|---|---|",
    ]
    for name, seconds, failure, found in rows:
        if failure:
            lines.append(f"| {name} | (did not run: {failure}) | | | no |")
            continue
        if not found:
            lines.append(f"| {name} | (no targets; figures in {name.split()[0]}.json, {seconds:.0f} s) | | | |")
        for check, value, bound, ok in found:
            shown = "" if isinstance(value, bool) else value
            lines.append(f"| {name} | {check} | {shown} | {'' if bound is None else bound} | {'yes' if ok else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="the short run of each benchmark")
    parser.add_argument("--only", help="comma-separated names, e.g. index,query (default: all)")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per benchmark")
    parser.add_argument("--collect", action="store_true", help="run nothing: RESULTS.md from the JSON kept")
    args = parser.parse_args()
    if args.collect:
        kept = [(f"{n} (kept)", 0.0, "", checks(json.loads((args.out / f"{n}.json").read_text()))) for n in BENCHMARKS
                if (args.out / f"{n}.json").exists()]  # fmt: skip
        (args.out / "RESULTS.md").write_text(markdown(kept, args.quick, collected=True))
        return 0
    names = [n for n in (args.only.split(",") if args.only else BENCHMARKS) if n]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in BENCHMARKS:
        kept = args.out / f"{name}.json"
        if name not in names and kept.exists():  # the last full result of a benchmark not run now
            rows.append((f"{name} (kept)", 0.0, "", checks(json.loads(kept.read_text()))))
    for name in names:
        if not script(name).exists():
            continue
        full, quick = BENCHMARKS[name]
        print(f"running {script(name).name} {name} ...", file=sys.stderr, flush=True)
        result, seconds, failure = run(name, quick if args.quick else full, args.out, args.timeout)
        rows.append((name, seconds, failure, checks(result) if result else []))
        print(f"  {failure or 'done'} in {seconds:.0f} s", file=sys.stderr, flush=True)
    (args.out / "RESULTS.md").write_text(markdown(rows, args.quick))
    print(f"wrote {args.out / 'RESULTS.md'}", file=sys.stderr)
    return 1 if any(failure for _, _, failure, _ in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
