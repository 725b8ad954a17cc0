"""Benchmark: searchfs beside two peer tools, rclip and imgsearch, on the same photos, in the same run. Prints
one JSON object (progress on stderr); no targets, no timing asserts.

    python benchmarks/bench_peers.py                     # 200 generated 4000x3000 JPEGs, 3 interleaved rounds
    python benchmarks/bench_peers.py --size 1155x866     # the same on 1 MP photos
    python benchmarks/bench_peers.py --quick             # 64 photos, one round
    python benchmarks/bench_peers.py --tools rclip       # one peer (searchfs always runs)

The peers, each in its own virtual environment made by this benchmark (`python -m venv` + `pip install
TOOL==VERSION`, plain PyPI resolution under this machine's pip configuration) under PEERS_CACHE
(~/.cache/searchfs-bench/peers, or $SEARCHFS_BENCH_PEERS), reused when there:

  rclip 3.3.0        ViT-B-32-256 through ONNX Runtime. Its models are made here as rclip's own
                     scripts/convert_model.py (v3.3.0) makes them (torch.onnx.export, opset 18, dynamo=False,
                     input "input", output "output", batch axis dynamic, fp32) from open_clip's
                     ViT-B-32-256 with RANDOM weights (torch.manual_seed(0), no pretrained tag), plus open_clip's
                     BPE vocabulary; placed in RCLIP_DATADIR/ViT-B-32-256-datacomp_s34b_b86k/ and
                     RCLIP_DATADIR/tokenizer/, where rclip looks before it would download them. The export needs
                     the `onnx` package, installed once with `pip install --target` beside the peers' venvs and
                     put on this project's venv's PYTHONPATH for the export only.
  imgsearch 0.3.3    `imgsearch[all]` (torch on the CPU, bf16 autocast), a Pyro5 server and a client. Model
                     `-m ViT-40L` = TinyCLIP-ViT-40M-32-Text-19M: its bundled tinyclip package builds that
                     model with random init (torch.manual_seed(0)) and the state dict is saved as
                     ~/.cache/clip/TinyCLIP-ViT-40M-32-Text-19M-LAION400M.pt, the file its loader opens before
                     it would download one (HOME is a fresh folder per run). Not its default ViT-45LY: that one
                     is an "auto weight inheritance" model whose pruned layer sizes come from the real
                     checkpoint's masks, so no random checkpoint of its real shape can be made offline.

Every tool runs with HF_HUB_OFFLINE=1 (nothing may try the network) and random weights of a real architecture:
speed does not depend on weight values. searchfs: ViT-B-32, random weights (benchmarks/_weights.py), run
exactly as bench_index.py runs it (`python -m searchfs index DIR --json`, a fresh library each run; a first
index in the same SEARCHFS_HOME before the rounds makes the model's derived files, as after a first use).

Per tool and round (rounds interleaved: rclip, imgsearch, searchfs, rclip, ...; page cache warm; a fresh
index every run), medians over the rounds:

  photos_per_s    photos / wall seconds of the index, from the spawn of a fresh process to its exit:
                  rclip: `rclip -t 5 TEXT` in the photo folder with an empty data dir (rclip has no index-only
                    command: its first search indexes the folder, then answers; the answer is in the time)
                  imgsearch: as it is meant to be used, its server up (started, model loaded, before the
                    clock starts): from the spawn of `isearch add DIR` until the server has embedded every
                    photo (its debug log's db.count; `add` itself returns once it has sent the photos).
                    Also given: cold_photos_per_s, the server's start included
                  searchfs: `python -m searchfs index DIR --json`
  query_s         a text never asked before, from the CLI in a fresh process, after that run's index:
                  `rclip -n -t 5 TEXT`; `isearch search -n 5 TEXT` with the server still up (as meant to be
                  used: the model stays loaded in the server); `python -m searchfs search TEXT -n 5`
  peak_rss_mb     the index's peak RSS in MB (1e6 bytes), children included (getrusage of the waited
                  processes): rclip and searchfs the index process (searchfs's exiftool is not waited for,
                  as in bench_index.py); imgsearch the server's peak (wait4, from its start to its stop)
                  plus the `add` client's peak: a sum of the two processes' peaks
  cpu_s           CPU seconds of the index process(es)

A tool that cannot be installed or run gets {"error": "..."} with a one-line reason; the others still run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from contextlib import closing
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _bytecode import ensure_bytecode  # noqa: E402
from _peer_setup import (  # noqa: E402
    PEERS,
    PEERS_CACHE,
    TINYCLIP_FILE,
    TINYCLIP_KEY,
    TINYCLIP_MODEL,
    Unavailable,
    ensure_venv,
    installed,
    one_line,
    peer_env,
    rclip_datadir,
    rclip_models,
    say,
    tinyclip_weights,
)
from _weights import random_checkpoint  # noqa: E402
from bench_index import LAUNCHER, cached_photos, cli_index, photo_paths  # noqa: E402

MB = 1_000_000
SEARCHFS_MODEL = "ViT-B-32"
WORDS = ["red car", "dog on a beach", "birthday cake", "snowy mountain", "city at night", "bowl of fruit"]
INDEX_TIMEOUT_S = 3600
QUERY_TIMEOUT_S = 300


# ---------------------------------------------------------------------------------------------- pure parts


def summarize(values: Iterable[float | None]) -> dict:
    """Median, min and max of the values that were measured (None: a run that failed)."""
    got = [v for v in values if v is not None]
    if not got:
        return {"median": None, "min": None, "max": None, "n": 0}
    return {"median": round(statistics.median(got), 3), "min": min(got), "max": max(got), "n": len(got)}


def rclip_commands(venv: Path, index_text: str, query_text: str) -> tuple[list[str], list[str]]:
    """rclip's index (its first search of a folder indexes it) and a search that skips indexing (-n)."""
    rclip = str(venv / "bin" / "rclip")
    return [rclip, "-t", "5", index_text], [rclip, "-n", "-t", "5", query_text]


def imgsearch_commands(venv: Path, photos: Path, query_text: str) -> dict[str, list[str]]:
    """The server (foreground, model ViT-40L, debug log: it logs db.count per embedded batch), the client's add
    and its search (the explicit form of `isearch TEXT`). The server is stopped by SIGTERM, as `service stop` does."""
    isearch = str(venv / "bin" / "isearch")
    return {
        "server": [isearch, "service", "-m", TINYCLIP_KEY, "-L", "debug", "start"],
        "add": [isearch, "add", str(photos)],
        "query": [isearch, "search", "-n", "5", query_text],
    }


def logged_count(log: str) -> int:
    """How many photos imgsearch's server has embedded so far, from its debug log
    ('Added 100 images for db "default" (db.count=100)')."""
    counts = [int(c) for c in re.findall(r"db\.count=(\d+)", log)]
    return max(counts, default=0)


def plain(text: str) -> str:
    """Terminal output without its colour and line-erase escapes (imgsearch colours what it prints)."""
    return re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", text)


def isearch_answer(stderr: str) -> str:
    """What `isearch search` said (it prints to stderr): 'Found 5 similar images ...' or why it found none."""
    lines = [line.strip() for line in plain(stderr).splitlines()]
    said = [line for line in lines if line.startswith(("Found", "No similar", "Search queue"))]
    return said[-1] if said else one_line(plain(stderr), 120)


def query_text(tool: str, round_: int) -> str:
    """A text no earlier query of this run asked (a new text: no cache answers it)."""
    return f"a photo of a {WORDS[round_ % len(WORDS)]}, {tool} round {round_}"


def table(tools: dict) -> dict:
    """The side-by-side figures: each tool's medians, or the reason it has none."""
    out = {}
    for name, entry in tools.items():
        if "error" in entry and not entry.get("median"):
            out[name] = {"error": entry["error"]}
        else:
            out[name] = {key: entry["median"][key]["median"] for key in ("photos_per_s", "query_s", "peak_rss_mb")}
    return out


# ---------------------------------------------------------------------------------------------- processes


def launch(command: Sequence[str], env: dict, cwd: Path, timeout: float) -> dict:
    """One command in a fresh process through bench_index's launcher: wall from spawn to exit, peak RSS and CPU
    of its waited processes (not this process's high-water mark)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *command],
            env=env,
            cwd=cwd,
            capture_output=True,
            timeout=timeout,
            start_new_session=True,
        )
    except subprocess.TimeoutExpired as exc:
        raise Unavailable(f"{Path(command[0]).name} ran past {timeout:.0f} s") from exc
    try:
        result = json.loads(done.stdout)
    except ValueError as exc:
        raise Unavailable(f"launcher: {one_line(done.stderr.decode(errors='replace'))}") from exc
    if result["rc"]:
        reason = one_line(result["stderr"] or result["stdout"])
        raise Unavailable(f"{Path(command[0]).name} exit {result['rc']}: {reason}")
    return result


# ---------------------------------------------------------------------------------------------- the tools


def warm_page_cache(paths: Iterable[Path]) -> None:
    for path in paths:
        with open(path, "rb") as f:
            while f.read(1 << 22):
                pass


def exited(pid: int) -> bool:
    """Whether a child has exited, without reaping it (its rusage stays for wait4)."""
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def rss_mb(kib: float) -> int:
    return round(kib * 1024 / MB)  # ru_maxrss is in KiB on Linux


class PeerRunner:
    """A peer made ready to run: its venv, then what it loads (prepare)."""

    name = ""

    def __init__(self, root: Path, photos: Path, count: int, tmp: Path):
        self.peer = PEERS[self.name]
        self.photos, self.count, self.tmp = photos, count, tmp
        self.venv = ensure_venv(self.peer, root)
        self.prepare(root)

    def prepare(self, root: Path) -> None:
        raise NotImplementedError

    def describe(self) -> dict:
        """What every peer's entry says; each adds its model and commands."""
        return {"version": self.peer.version, "venv": str(self.venv)}

    def installed(self, package: str) -> str | None:
        return installed(self.venv).get(package)


class Rclip(PeerRunner):
    name = "rclip"

    def prepare(self, root: Path) -> None:
        self.models = rclip_models(root, self.peer)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "onnxruntime": self.installed("onnxruntime"),
            "model": f"ViT-B-32-256 (open_clip, random weights) as fp32 ONNX, in {self.models}",
            "index_command": "rclip -t 5 TEXT (cwd = the photos; its first search indexes, then answers)",
            "query_command": "rclip -n -t 5 TEXT",
        }

    def run(self, round_: int) -> dict:
        datadir = rclip_datadir(self.tmp / f"rclip-data-{round_}", self.models)
        env = dict(peer_env(dict(os.environ), self.venv), RCLIP_DATADIR=str(datadir))
        index_cmd, query_cmd = rclip_commands(self.venv, query_text("rclip-index", round_), query_text("rclip", round_))
        indexed = launch(index_cmd, env, self.photos, INDEX_TIMEOUT_S)
        with closing(sqlite3.connect(datadir / "db.sqlite3")) as db:
            (embedded,) = db.execute(
                "SELECT COUNT(*) FROM images WHERE deleted IS NULL AND vector IS NOT NULL"
            ).fetchone()
        if embedded != self.count:
            raise Unavailable(f"rclip indexed {embedded} of {self.count} photos")
        query = launch(query_cmd, env, self.photos, QUERY_TIMEOUT_S)
        return {
            "wall_s": round(indexed["wall_s"], 2),
            "photos_per_s": round(self.count / indexed["wall_s"], 2),
            "peak_rss_mb": rss_mb(indexed["maxrss_kib"]),
            "cpu_s": round(indexed["cpu_s"], 2),
            "embedded": embedded,
            "query_s": round(query["wall_s"], 3),
            "query_results": max(0, len(query["stdout"].strip().splitlines()) - 1),  # less its header line
        }


class Imgsearch(PeerRunner):
    name = "imgsearch"

    def prepare(self, root: Path) -> None:
        self.weights = tinyclip_weights(root, self.peer, self.venv)

    def describe(self) -> dict:
        return {
            **super().describe(),
            "torch": self.installed("torch"),
            "model": f"{TINYCLIP_KEY} = {TINYCLIP_MODEL} (tinyclip, random weights), bf16 autocast on the CPU",
            "weights": str(self.weights),
            "index_command": "isearch add DIR with its server up; timed until the server has embedded them all",
            "query_command": "isearch search -n 5 TEXT, server up (as meant to be used)",
            "server_command": f"isearch service -m {TINYCLIP_KEY} -L debug start (foreground; a fresh HOME per run)",
            "peak_rss": "server peak (wait4) + add client peak: the sum of the two processes' peaks",
        }

    def run(self, round_: int) -> dict:
        home = self.tmp / f"isearch-home-{round_}"
        (home / ".cache" / "clip").mkdir(parents=True)
        os.symlink(self.weights, home / ".cache" / "clip" / TINYCLIP_FILE)
        env = peer_env(dict(os.environ), self.venv, home)
        commands = imgsearch_commands(self.venv, self.photos, query_text("imgsearch", round_))
        base = home / ".isearch"
        log = base / "isearch.log"
        started = time.perf_counter()
        with open(self.tmp / f"isearch-server-{round_}.out", "wb") as out:
            server = subprocess.Popen(commands["server"], env=env, cwd=home, stdout=out, stderr=subprocess.STDOUT)
        try:
            while not (base / "isearch.pid").exists():  # written once the model is loaded and the socket bound
                if exited(server.pid) or time.perf_counter() - started > 600:
                    raise Unavailable(f"isearch server did not start: {self._log_reason(log, round_)}")
                time.sleep(0.02)
            server_start_s = time.perf_counter() - started
            started = time.perf_counter()
            added = launch(commands["add"], env, home, INDEX_TIMEOUT_S)
            while (done := logged_count(log.read_text(errors="replace"))) < self.count:
                if exited(server.pid) or time.perf_counter() - started > INDEX_TIMEOUT_S:
                    raise Unavailable(f"isearch embedded {done} of {self.count}: {self._log_reason(log, round_)}")
                time.sleep(0.05)
            index_s = time.perf_counter() - started
            query = launch(commands["query"], env, home, QUERY_TIMEOUT_S)
        finally:
            stopping = time.perf_counter()
            server_usage = self._stop(server)
            stop_s = time.perf_counter() - stopping
        return {
            "wall_s": round(index_s, 2),
            "photos_per_s": round(self.count / index_s, 2),
            "add_command_s": round(added["wall_s"], 2),
            "server_start_s": round(server_start_s, 2),
            "cold_photos_per_s": round(self.count / (server_start_s + index_s), 2),
            "peak_rss_mb": rss_mb(server_usage.ru_maxrss) + rss_mb(added["maxrss_kib"]),
            "server_peak_rss_mb": rss_mb(server_usage.ru_maxrss),
            "client_peak_rss_mb": rss_mb(added["maxrss_kib"]),
            "cpu_s": round(server_usage.ru_utime + server_usage.ru_stime + added["cpu_s"], 2),
            "embedded": done,
            "query_s": round(query["wall_s"], 3),
            "query_said": isearch_answer(query["stderr"]),
            "stop_s": round(stop_s, 2),
        }

    def _log_reason(self, log: Path, round_: int) -> str:
        text = log.read_text(errors="replace") if log.exists() else ""
        text += (self.tmp / f"isearch-server-{round_}.out").read_text(errors="replace")
        return one_line(text)

    @staticmethod
    def _stop(server: subprocess.Popen):
        """SIGTERM (its handler ends the request loop), then the server's own rusage from wait4 (SIGKILL if it
        has not exited within 30 s)."""
        if not exited(server.pid):
            os.kill(server.pid, signal.SIGTERM)  # not Popen.send_signal: its poll() would reap, losing the rusage
        deadline, killed = time.monotonic() + 30, False
        while True:
            pid, status, usage = os.wait4(server.pid, os.WNOHANG)
            if pid:
                server.returncode = os.waitstatus_to_exitcode(status)  # reaped here: Popen must not wait again
                return usage
            if time.monotonic() > deadline and not killed:
                os.kill(server.pid, signal.SIGKILL)
                killed = True
            time.sleep(0.05)


class Searchfs:
    name = "searchfs"

    def __init__(self, photos: Path, count: int, tmp: Path):
        self.photos, self.count = photos, count
        checkpoint = random_checkpoint(SEARCHFS_MODEL)
        home = tmp / "searchfs-home"
        self.env = dict(os.environ, SEARCHFS_HOME=str(home), XDG_CONFIG_HOME=str(tmp / "config"), PYTHONPATH=str(REPO))
        self.env.update(
            SEARCHFS_MODEL_NAME=SEARCHFS_MODEL,
            SEARCHFS_MODEL_PRETRAINED=str(checkpoint),
            SEARCHFS_MODEL_DEVICE="cpu",
            HF_HUB_OFFLINE="1",
        )
        self.env.pop("SEARCHFS_CONFIG", None)
        say("searchfs: a first index (makes the model's derived files, not timed in the rounds)")
        self.first = cli_index(photos, self.env, "first", count)

    def describe(self) -> dict:
        return {
            "model": f"{SEARCHFS_MODEL} (random weights), auto precision",
            "index_command": "python -m searchfs --library NAME index DIR --json (a fresh library each run)",
            "query_command": "python -m searchfs --library NAME search TEXT -n 5",
            "first_index_ever": self.first,
        }

    def run(self, round_: int) -> dict:
        library = f"round{round_}"
        try:
            indexed = cli_index(self.photos, self.env, library, self.count)
        except SystemExit as exc:  # cli_index's way of saying the index failed
            raise Unavailable(one_line(str(exc))) from exc
        if indexed["embedded"] != self.count:
            raise Unavailable(f"searchfs embedded {indexed['embedded']} of {self.count} photos")
        query_cmd = [sys.executable, "-m", "searchfs", "--library", library, "search", query_text("searchfs", round_)]
        query = launch([*query_cmd, "-n", "5"], self.env, REPO, QUERY_TIMEOUT_S)
        return dict(indexed, query_s=round(query["wall_s"], 3), query_results=len(query["stdout"].splitlines()))


# ---------------------------------------------------------------------------------------------- the run

MEDIAN_KEYS = ("photos_per_s", "query_s", "peak_rss_mb", "wall_s", "cpu_s", "cold_photos_per_s", "server_start_s")


def run(args) -> dict:
    size = tuple(int(v) for v in args.size.lower().split("x"))
    photos = cached_photos(args.photos, (size[0], size[1]))
    paths = photo_paths(photos)
    mean_kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
    say(f"{len(paths)} photos ({mean_kib:.0f} KiB each) in {photos}")
    tmp = Path(tempfile.mkdtemp(prefix="searchfs-bench-peers-"))
    load_before = os.getloadavg()
    tools: dict[str, dict] = {}
    runners: list = []
    try:
        for name in args.tools:
            runner_class = {"rclip": Rclip, "imgsearch": Imgsearch}[name]
            try:
                runner = runner_class(args.peers_cache, photos, len(paths), tmp)
            except (Unavailable, OSError, subprocess.SubprocessError) as exc:
                say(f"{name}: unavailable: {exc}")
                tools[name] = {"error": str(exc) or type(exc).__name__}
                continue
            tools[name] = runner.describe()
            runners.append(runner)
        try:
            searchfs = Searchfs(photos, len(paths), tmp)
            tools["searchfs"] = searchfs.describe()
            runners.append(searchfs)
        except SystemExit as exc:
            tools["searchfs"] = {"error": one_line(str(exc))}
        for runner in runners:
            tools[runner.name]["runs"] = []
        for r in range(args.runs):  # interleaved: every tool meets the machine's noise alike
            for runner in runners:
                warm_page_cache(paths)
                try:
                    result = runner.run(r)
                except (Unavailable, OSError, subprocess.SubprocessError, sqlite3.Error) as exc:
                    result = {"error": str(exc) or type(exc).__name__}
                say(f"round {r}: {runner.name} {result}")
                tools[runner.name]["runs"].append(result)
        for runner in runners:
            entry = tools[runner.name]
            done = [result for result in entry["runs"] if "error" not in result]
            if not done:
                entry["error"] = entry["runs"][-1]["error"] if entry["runs"] else "no runs"
                continue
            entry["median"] = {k: summarize(result.get(k) for result in done) for k in MEDIAN_KEYS if k in done[0]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "benchmark": "bench_peers",
        "photos": len(paths),
        "source": f"generated {args.size} JPEG with EXIF (bench_index.py's generator)",
        "mean_file_kib": round(mean_kib, 1),
        "cores": len(os.sched_getaffinity(0)),
        "rounds": args.runs,
        "loadavg_1_5_15": {
            "before": [round(v, 2) for v in load_before],
            "after": [round(v, 2) for v in os.getloadavg()],
        },
        "order": [runner.name for runner in runners],
        "table": table(tools),
        "tools": tools,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="photos to generate")
    parser.add_argument("--size", default="4000x3000", help="generated photo size, WxH")
    parser.add_argument("--runs", type=int, default=3, help="interleaved rounds (every tool once per round)")
    parser.add_argument("--tools", default="rclip,imgsearch", help="the peers, comma-separated (searchfs always runs)")
    parser.add_argument("--peers-cache", type=Path, default=PEERS_CACHE, help="where the peers' venvs are made")
    parser.add_argument("--quick", action="store_true", help="64 photos, one round")
    args = parser.parse_args()
    ensure_bytecode()  # fresh processes read it, as an installed package does
    args.tools = [t for t in args.tools.split(",") if t]
    unknown = [t for t in args.tools if t not in PEERS]
    if unknown:
        parser.error(f"unknown tool(s): {', '.join(unknown)}; known: {', '.join(PEERS)}")
    if args.quick:
        args.photos, args.runs = min(args.photos, 64), 1
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
