"""The command line: every command documented with an example, JSON outputs, exit codes."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from photos import make_library, make_photo

from searchfs.cli import cli


def run(*args, ok=True):
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


@pytest.fixture
def env_model(home, tiny_model, monkeypatch):
    for key, value in tiny_model.items():
        monkeypatch.setenv("SEARCHFS_" + key.upper(), value)
    return tiny_model


def test_every_command_has_help_with_an_example():
    for name, command in cli.commands.items():
        text = run(name, "--help").output
        assert "Example:" in text and f"searchfs {name}" in text, name
        assert command.help and len(command.help.splitlines()[0]) < 100


def test_index_search_status_json(env_model, tmp_path):
    photos = tmp_path / "photos"
    make_library(photos, 4)
    report = json.loads(run("index", str(photos), "--json").output)
    assert report["embedded"] == 4 and report["new"] == 4
    hits = json.loads(run("search", "red flower", "-n", "3", "--json").output)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all({"rank", "path", "score"} <= set(h) for h in hits)
    first = sorted(photos.rglob("*.jpg"))[0]
    by_image = json.loads(run("search", str(first), "--json").output)
    assert by_image[0]["path"] == str(first)
    canon = json.loads(run("search", "--where", "camera=Canon", "--json").output)
    assert len(canon) == 2 and all(h["score"] is None for h in canon)
    status = json.loads(run("status", "--json").output)
    assert status["indexed"] == 4 and status["roots"][0]["path"] == str(photos) and status["libraries"] == ["default"]
    text = run("search", "dog", "--where", "year=2018..2030", "-n", "2").output.splitlines()
    assert len(text) == 2 and text[0].split()[0] == "1"
    nul = run("search", "dog", "-n", "2", "-0").stdout_bytes
    assert nul.count(b"\0") == 2


def test_compare(env_model, tmp_path):
    a = make_photo(tmp_path / "a.jpg", seed=1)
    b = make_photo(tmp_path / "b.jpg", (10, 10, 200), seed=2)
    assert float(run("compare", str(a), str(a)).output) == pytest.approx(1.0, abs=1e-3)
    assert -1.0 <= float(run("compare", str(a), str(b)).output) <= 1.0


def test_named_libraries_are_separate(env_model, tmp_path):
    photos = tmp_path / "p"
    make_library(photos, 2)
    run("--library", "work", "index", str(photos), "--no-progress")
    assert json.loads(run("--library", "work", "status", "--json").output)["files"] == 2
    other = CliRunner().invoke(cli, ["status", "--json"])  # the default library was never made
    assert other.exit_code == 3 and "libraries: work" in other.output


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["search", "x", "--where", "colour=red"], 2, "unknown metadata key"),
        (["search", "x", "--where", "year=soon"], 2, "not a number"),
        (["index", "/no/such/folder"], 3, "not a folder"),
        (["index"], 3, "no folders to index"),
    ],
)
def test_errors_are_one_line_with_an_exit_code(env_model, args, code, message):
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == code, result.output
    assert message in result.output and result.output.count("\n") == 1


def test_console_entry_point_and_module(home, tmp_path):
    for command in (["searchfs", "--help"], [sys.executable, "-m", "searchfs", "--help"]):
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        assert done.returncode == 0 and "query" in done.stdout.lower()
    done = subprocess.run(["searchfs", "search", "x", "--where", "nope=1"], capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith("searchfs: ") and done.stderr.count("\n") == 1


def test_doctor_reports_missing_weights_and_a_fix(home, tmp_path, monkeypatch):
    monkeypatch.setenv("SEARCHFS_MODEL_PRETRAINED", str(tmp_path / "absent.pt"))
    result = CliRunner().invoke(cli, ["doctor"])
    assert result.exit_code == 1
    assert "exiftool" in result.output and "absent.pt" in result.output
    assert "still indexes files and their metadata and serves exif/" in result.output


def test_forget_a_root(env_model, tmp_path):
    keep, gone = tmp_path / "keep", tmp_path / "gone"
    make_library(keep, 2)
    make_library(gone, 3)
    run("index", str(keep), str(gone), "--no-progress")
    assert run("forget", str(gone)).output.strip() == f"forgot gone ({gone})"
    status = json.loads(run("status", "--json").output)
    assert [r["name"] for r in status["roots"]] == ["keep"] and status["files"] == 2
    assert all(h["root"] == "keep" for h in json.loads(run("search", "x", "--json").output))
    assert sorted(p.name for p in gone.rglob("*.jpg")) == ["IMG_0000.jpg", "IMG_0001.jpg", "IMG_0002.jpg"]
    result = CliRunner().invoke(cli, ["forget", "nope"])
    assert result.exit_code == 3 and "roots: keep" in result.output
    report = json.loads(run("index", str(gone), "--json").output)  # back within the grace period
    assert report["new"] == 3 and report["embedded"] == 0


def test_doctor_warns_about_roots_the_user_can_write_to(env_model, tmp_path):
    """Writes through a result link reach the original: a writable root is a warning (exit code unchanged),
    a read-only one is not, and files mode (writes refused) needs no warning."""
    writable, readonly = tmp_path / "writable", tmp_path / "readonly"
    make_library(writable, 1)
    make_library(readonly, 1)
    run("index", str(writable), str(readonly), "--no-progress")
    readonly.chmod(0o555)
    try:
        lines = CliRunner().invoke(cli, ["doctor"]).output.splitlines()
        warned = [line for line in lines if line.startswith("warn")]
        if os.geteuid() == 0:  # root may write anywhere: both are writable to it
            assert len(warned) == 2, lines
        else:
            assert len(warned) == 1 and "root writable:" in warned[0], lines
        assert all("a write through a result link changes the original" in line for line in warned)
        files_mode = CliRunner().invoke(cli, ["doctor"], env={"SEARCHFS_MOUNT_ENTRIES": "files"}).output
        assert not [line for line in files_mode.splitlines() if line.startswith("warn")], files_mode
    finally:
        readonly.chmod(0o755)
