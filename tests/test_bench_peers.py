"""The pure parts of benchmarks/bench_peers.py and its _peer_setup.py: summaries, failure reasons, the
commands it runs, the environment it runs them in, the counts it reads.
No venv is made and nothing is installed here."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import _peer_setup  # noqa: E402
import bench_peers  # noqa: E402


def test_summary_is_the_median_of_the_runs_that_were_measured():
    assert bench_peers.summarize([3.0, 1.0, None, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "n": 3}
    assert bench_peers.summarize([4.0, 1.0])["median"] == 2.5  # even count: the mean of the middle two
    assert bench_peers.summarize([None, None]) == {"median": None, "min": None, "max": None, "n": 0}


def test_the_reason_of_a_failure_is_the_line_that_names_the_error():
    pip_log = "Collecting rclip==3.3.0\n  Downloading x.whl\nERROR: No matching distribution found for rclip==3.3.0\n\n"
    assert _peer_setup.one_line(pip_log) == "ERROR: No matching distribution found for rclip==3.3.0"
    traceback = "Traceback (most recent call last):\n  File x\nModuleNotFoundError: No module named 'Pyro5'\n"
    assert _peer_setup.one_line(traceback) == "ModuleNotFoundError: No module named 'Pyro5'"
    assert _peer_setup.one_line("just stopped\nat the end\n") == "at the end"
    assert _peer_setup.one_line("") == "no output"
    long = _peer_setup.one_line("error " + "x" * 500, limit=50)
    assert len(long) == 50 and long.endswith("...")


def test_a_peer_venv_is_a_plain_venv_and_pip_s_resolution_of_the_pinned_release(tmp_path):
    rclip, imgsearch = _peer_setup.PEERS["rclip"], _peer_setup.PEERS["imgsearch"]
    assert rclip.requirement == "rclip==3.3.0"
    assert imgsearch.requirement == "imgsearch[all]==0.3.3"  # torch and the model code are in the extra
    venv = imgsearch.venv(tmp_path)
    assert venv == tmp_path / "imgsearch-0.3.3"
    make, install = _peer_setup.venv_commands(imgsearch, venv, "/usr/bin/python3")
    assert make == ["/usr/bin/python3", "-m", "venv", str(venv)]
    assert install[:3] == [str(venv / "bin" / "python"), "-m", "pip"] and install[-1] == "imgsearch[all]==0.3.3"
    assert not any(a.startswith(("--index-url", "--extra-index-url", "--pre")) for a in install)


def test_the_peers_commands_are_their_ordinary_cli(tmp_path):
    index, query = bench_peers.rclip_commands(tmp_path, "cat", "dog")
    assert index == [str(tmp_path / "bin" / "rclip"), "-t", "5", "cat"]  # first search of a folder indexes it
    assert query == [str(tmp_path / "bin" / "rclip"), "-n", "-t", "5", "dog"]  # -n: no indexing
    commands = bench_peers.imgsearch_commands(tmp_path, Path("/photos"), "a red car")
    isearch = str(tmp_path / "bin" / "isearch")
    assert commands["server"] == [isearch, "service", "-m", "ViT-40L", "-L", "debug", "start"]
    assert commands["add"] == [isearch, "add", "/photos"]
    assert commands["query"] == [isearch, "search", "-n", "5", "a red car"]


def test_every_query_of_a_run_is_a_new_text():
    texts = {bench_peers.query_text(tool, r) for tool in ("rclip", "rclip-index", "imgsearch") for r in range(12)}
    assert len(texts) == 36


def test_embedded_count_is_read_from_the_server_s_debug_log():
    log = (
        "[2026-12-01 20:00:00] INFO: [AddImages] 100 images received for db: default\n"
        '[2026-12-01 20:00:09] DEBUG: Added 100 images for db "default" (db.count=100)\n'
        '[2026-12-01 20:00:12] DEBUG: Added 64 images for db "default" (db.count=164)\n'
    )
    assert bench_peers.logged_count(log) == 164
    assert bench_peers.logged_count(log.splitlines()[0]) == 0  # received is not embedded
    assert bench_peers.logged_count("") == 0


def test_a_tool_runs_offline_in_its_own_venv_and_nothing_of_ours(tmp_path):
    base = {"PATH": "/usr/bin", "PYTHONPATH": "/work/main", "VIRTUAL_ENV": "/work/main/.venv", "LANG": "C"}
    env = _peer_setup.peer_env(base, tmp_path / "venv", tmp_path / "home")
    assert env["HF_HUB_OFFLINE"] == "1"
    assert env["PATH"].split(os.pathsep) == [str(tmp_path / "venv" / "bin"), "/usr/bin"]
    assert env["VIRTUAL_ENV"] == str(tmp_path / "venv") and "PYTHONPATH" not in env
    assert env["HOME"] == str(tmp_path / "home") and env["LANG"] == "C"
    assert base["PYTHONPATH"] == "/work/main"  # the caller's mapping is left as it was


def test_rss_is_reported_in_mb_from_kib():
    assert bench_peers.rss_mb(976_563) == 1000  # ru_maxrss is KiB: 976563 KiB = 1.000 GB
    assert bench_peers.rss_mb(0) == 0


def test_the_table_has_each_tool_s_medians_or_its_reason():
    tools = {
        "rclip": {
            "median": {k: {"median": v} for k, v in (("photos_per_s", 2.5), ("query_s", 0.9), ("peak_rss_mb", 900))}
        },
        "imgsearch": {"error": "isearch exit 1: ModuleNotFoundError: No module named 'torch'"},
    }
    assert bench_peers.table(tools) == {
        "rclip": {"photos_per_s": 2.5, "query_s": 0.9, "peak_rss_mb": 900},
        "imgsearch": {"error": "isearch exit 1: ModuleNotFoundError: No module named 'torch'"},
    }


def test_a_child_s_exit_is_seen_without_reaping_it():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while not bench_peers.exited(child.pid):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    pid, _, usage = os.wait4(child.pid, 0)  # still there to be reaped, with its rusage
    assert pid == child.pid and usage.ru_maxrss > 0
    child.returncode = 0


def test_a_launched_failure_raises_with_its_reason(tmp_path):
    with pytest.raises(_peer_setup.Unavailable, match="exit 3: RuntimeError: no model"):
        bench_peers.launch(
            [sys.executable, "-c", "import sys; print('RuntimeError: no model', file=sys.stderr); sys.exit(3)"],
            dict(os.environ),
            tmp_path,
            60,
        )
    done = bench_peers.launch([sys.executable, "-c", "print('hi')"], dict(os.environ), tmp_path, 60)
    assert done["stdout"].strip() == "hi" and done["wall_s"] > 0 and done["maxrss_kib"] > 0


def test_what_isearch_said_is_read_through_its_colours():
    stderr = (
        "\x1b[0;34mSearching a red car...\x1b[K\n"
        "Found 5 similar images (similarity \u2265 0%):\x1b[K\n"
        " 1. /p/a.jpg\t3.1%\x1b[K\n"
    )
    assert bench_peers.plain("\x1b[1;34mbold\x1b[0m\x1b[K") == "bold"
    assert bench_peers.isearch_answer(stderr) == "Found 5 similar images (similarity \u2265 0%):"
    assert bench_peers.isearch_answer("\x1b[0;31mService not running\x1b[K\n") == "Service not running"
