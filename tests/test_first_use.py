"""What a new user trips over: one test per point found trying searchfs end to end as a new user would.

Each test names its point; each failed before its fix. The CLI is run as the user runs it (a subprocess of
`python -m searchfs`), because exit codes and what reaches stderr are the point.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from photos import make_library, make_photo

from searchfs.errors import NotFound, QueryError
from searchfs.library import Library, open_library
from searchfs.search.filters import parse_filter


def searchfs(*args, env, stdin=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "searchfs", *args], env=env, capture_output=True, text=True, timeout=120, stdin=stdin
    )


def ok(*args, env) -> str:
    done = searchfs(*args, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def one_line_error(done: subprocess.CompletedProcess, code: int, words: str) -> str:
    assert done.returncode == code, (done.returncode, done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("searchfs: "), done.stderr
    assert words in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def env(home, tiny_model):
    environment = dict(os.environ)
    environment.update({"SEARCHFS_" + k.upper(): v for k, v in tiny_model.items()})
    return environment


@pytest.fixture
def indexed(env, tmp_path):
    photos = tmp_path / "photos"
    make_library(photos, 4)
    ok("index", str(photos), "--no-progress", env=env)
    return photos


# -- 1. forget -----------------------------------------------------------------------------------------


def test_1_forget_by_path_forgets_that_root_and_an_unknown_one_is_exit_3(env, tmp_path):
    first, second = tmp_path / "photos2", tmp_path / "photos" / "moved"
    make_library(first, 1)
    make_library(second, 1)
    ok("index", str(first), str(second), "--no-progress", env=env)
    assert ok("forget", str(first), env=env).strip() == f"forgot photos2 ({first})"
    roots = [r["name"] for r in json.loads(ok("status", "--json", env=env))["roots"]]
    assert roots == ["moved"]
    line = one_line_error(searchfs("forget", "/never/added", env=env), 3, "no root")
    assert "moved" in line  # the roots there are
    assert [r["name"] for r in json.loads(ok("status", "--json", env=env))["roots"]] == ["moved"]


# -- 2. a photo that leaves a root and comes back --------------------------------------------------------


def test_2_a_photo_moved_out_and_back_is_ranked_again_by_the_same_library(settings, tmp_path):
    """The mount keeps one Library (and its vector index) for hours: reusing known content must move the
    vectors generation, or ranked folders never see the photo again."""
    photos, outside = tmp_path / "photos", tmp_path / "outside"
    make_library(photos, 3)
    outside.mkdir()
    with Library(settings, create=True) as lib:
        lib.index([photos])
        first = sorted(photos.rglob("*.jpg"))[0]
        assert str(first) in [h.path for h in lib.search("anything")]
        shutil.move(first, outside / first.name)
        lib.index()
        assert str(first) not in [h.path for h in lib.search("anything")]
        shutil.move(outside / first.name, first)
        report = lib.index()
        assert report.embedded == 0 and report.reused == 1
        assert str(first) in [h.path for h in lib.search("anything")]


# -- 4. SEARCHFS_LIBRARY ----------------------------------------------------------------------------------


def test_4_searchfs_library_is_honoured_by_the_cli_and_open_library(env, indexed, monkeypatch):
    work = dict(env, SEARCHFS_LIBRARY="work")
    ok("index", str(indexed), "--no-progress", env=work)
    assert json.loads(ok("status", "--json", env=work))["library"] == "work"
    assert json.loads(ok("--library", "default", "status", "--json", env=work))["library"] == "default"
    monkeypatch.setenv("SEARCHFS_LIBRARY", "work")
    with open_library() as lib:
        assert lib.settings.library == "work"


# -- 5. a mistyped image path ---------------------------------------------------------------------------------


def test_5_a_missing_image_path_is_not_found_and_text_can_be_forced(env, indexed):
    one_line_error(searchfs("search", "/tmp/nope.jpg", env=env), 3, "no such image file")
    one_line_error(searchfs("search", "holiday.jpg", env=env), 3, "--text")
    hits = json.loads(ok("search", "/tmp/nope.jpg", "--text", "--json", env=env))
    assert len(hits) == 4  # the words were searched
    assert len(json.loads(ok("search", "red flower", "--json", env=env))) == 4


# -- 6. silent empty answers -----------------------------------------------------------------------------------


def test_6_an_inverted_range_is_an_error(env, indexed):
    for word in ("iso=5..1", "date=2020..2019-05", "fnumber=2.8..1.4"):
        with pytest.raises(QueryError, match="empty"):
            parse_filter(word)
    one_line_error(searchfs("search", "--where", "iso=5..1", env=env), 2, "empty")
    assert parse_filter("iso=1..5").lo == 1.0


def test_6_a_mistyped_library_is_not_created(env, indexed, settings):
    libraries = settings.home / "libraries"
    before = sorted(p.name for p in libraries.iterdir())
    for command in (["status"], ["search", "dog"], ["forget", "x"], ["watch"]):
        line = one_line_error(searchfs("--library", "typo", *command, env=env), 3, "no library 'typo'")
        assert "default" in line  # says which libraries exist
    with pytest.raises(NotFound, match="default"):
        open_library("typo")
    assert sorted(p.name for p in libraries.iterdir()) == before
    assert open_library("typo", create=True).settings.catalog_path.exists()


def test_6_a_refused_mount_creates_no_library(env, tmp_path, settings):
    photos = tmp_path / "photos"
    make_library(photos, 1)
    inside = photos / "mnt"
    inside.mkdir()
    one_line_error(searchfs("--library", "fresh", "mount", str(photos), str(inside), env=env), 7, "inside")
    one_line_error(searchfs("--library", "fresh", "mount", str(tmp_path / "nope"), str(tmp_path), env=env), 3, "")
    assert not (settings.home / "libraries" / "fresh").exists()


# -- 12. messages --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["index", __file__], 2, "is a file"),
        (["search", "dog", "--min", "abc"], 2, "--min"),
        (["search", "dog", "-n"], 2, "-n"),
        (["compare", "/tmp/nope.jpg", "x.jpg"], 3, "no such image file"),
        (["frobnicate"], 2, "No such command"),
    ],
)
def test_12_usage_errors_are_one_line(env, indexed, args, code, words):
    one_line_error(searchfs(*args, env=env), code, words)


def test_12_a_closed_pipe_is_a_normal_end(env, indexed):
    """`searchfs status | head -1`: the reader is gone before searchfs writes (here: before it starts)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    done = subprocess.run(
        [sys.executable, "-m", "searchfs", "status"],
        env=env,
        stdout=write_end,
        capture_output=False,
        stderr=subprocess.PIPE,
        timeout=60,
    )
    os.close(write_end)
    assert done.returncode == 0 and done.stderr == b"", done.stderr


def test_12_help_and_version_still_exit_0(env):
    assert "Example:" in ok("--help", env=env)
    assert ok("--version", env=env).strip()


# -- 13. JSON for scripts ----------------------------------------------------------------------------------------


def test_13_compare_json(env, tmp_path, indexed):
    a = make_photo(tmp_path / "a.jpg", seed=1)
    data = json.loads(ok("compare", str(a), str(a), "--json", env=env))
    assert data["a"] == str(a) and data["score"] == pytest.approx(1.0, abs=1e-3)


def test_7_first_use_paths_are_documented_in_the_readme():
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert "open_library(create=True)" in readme and "--text" in readme


def test_compare_needs_no_library(env, tmp_path):
    a, b = make_photo(tmp_path / "a.jpg", seed=1), make_photo(tmp_path / "b.jpg", (0, 0, 250), seed=2)
    assert -1.0 <= float(ok("compare", str(a), str(b), env=env)) <= 1.0
    assert not (Path(env["SEARCHFS_HOME"]) / "libraries").exists()


# -- 3. results grow while indexing runs -------------------------------------------------------------------


def test_3_results_grow_while_a_round_embeds(settings, tmp_path):
    """A reader (the mount, another process) sees photos become searchable batch by batch, not only when a
    round of hundreds of photos ends."""
    photos = tmp_path / "photos"
    make_library(photos, 6)
    seen: list[tuple[int, int]] = []
    small_batches = settings.replace(model_batch_size=2)
    with Library(small_batches, create=True) as writer, Library(small_batches) as reader:

        def progress(phase, done, total):
            if phase == "embed":
                seen.append((done, len(reader.search("anything", limit=50))))

        writer.index([photos], progress=progress)
    assert seen == [(2, 2), (4, 4), (6, 6)]


# -- 7. doctor tries what search will do -------------------------------------------------------------------


def _doctor_model_line(env) -> tuple[int, str]:
    done = searchfs("doctor", env=env)
    lines = [line for line in done.stdout.splitlines() if " model " in f" {line}" and ":" in line]
    assert lines, done.stdout
    return done.returncode, lines[0]


def test_7_doctor_fails_for_a_model_that_cannot_load(env, tiny_model):
    code, line = _doctor_model_line(env)
    assert code in (0, 1) and line.startswith("ok") and "32-d" in line  # the tiny model really loads
    unknown = dict(env, SEARCHFS_MODEL_NAME="NoSuchNet")
    code, line = _doctor_model_line(unknown)
    assert code == 1 and line.startswith("MISSING") and "unknown model 'NoSuchNet'" in line
    other = dict(env, SEARCHFS_MODEL_NAME="ViT-B-32")  # the config file registers searchfs-tiny, not this
    code, line = _doctor_model_line(other)
    assert code == 1 and line.startswith("MISSING") and "does not fit model ViT-B-32" in line


# -- 8. hf-hub: models never hang --------------------------------------------------------------------------


def _hub_cache(tmp_path, tiny_model) -> Path:
    """A huggingface cache holding `searchfs/tiny` the way hf_hub_download leaves a repo."""
    import torch
    from conftest import TINY_MODEL

    repo = tmp_path / "hf" / "hub" / "models--searchfs--tiny"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    config = {"model_cfg": TINY_MODEL, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (snapshot / "open_clip_config.json").write_text(json.dumps(config))
    state = torch.load(tiny_model["model_pretrained"], weights_only=True)
    torch.save(state, snapshot / "open_clip_pytorch_model.bin")
    return tmp_path / "hf"


def test_8_an_uncached_hf_hub_model_offline_is_one_clear_line(env, tmp_path):
    hub = dict(env, SEARCHFS_MODEL_NAME="hf-hub:nobody/nothing", HF_HOME=str(tmp_path / "empty-hf"))
    hub.pop("SEARCHFS_MODEL_CONFIG_FILE")
    hub["HTTPS_PROXY"] = hub["https_proxy"] = ""  # the probe, not a proxy, decides
    code, line = _doctor_model_line(hub)
    assert code == 1 and "not in the local huggingface cache" in line
    photos = tmp_path / "photos"
    make_library(photos, 1)
    done = searchfs("index", str(photos), "--no-progress", "--json", env=hub)
    assert done.returncode == 0, done.stderr  # files and metadata are indexed without the model
    assert json.loads(done.stdout)["pending"] == 1
    problem = one_line_error(searchfs("search", "dog", env=hub), 4, "hf-hub:nobody/nothing")
    assert "unreachable" in problem


def test_8_a_cached_hf_hub_model_loads_without_the_network(env, tmp_path, tiny_model):
    hub = dict(env, SEARCHFS_MODEL_NAME="hf-hub:searchfs/tiny", HF_HOME=str(_hub_cache(tmp_path, tiny_model)))
    hub.pop("SEARCHFS_MODEL_CONFIG_FILE")
    hub["HF_HUB_OFFLINE"] = "0"
    code, line = _doctor_model_line(hub)
    assert line.startswith("ok") and "32-d" in line, line
    photos = tmp_path / "photos"
    make_library(photos, 2)
    report = json.loads(ok("index", str(photos), "--no-progress", "--json", env=hub))
    assert report["embedded"] == 2
    assert len(json.loads(ok("search", "dog", "--json", env=hub))) == 2


# -- 14. values and counts as a person reads them ------------------------------------------------------------


def test_14_exposure_reads_1_60_and_both_spellings_filter(settings, tmp_path):
    photos = tmp_path / "photos"
    make_photo(photos / "a.jpg", seed=1, exposure=1 / 60, make="Canon")
    make_photo(photos / "b.jpg", seed=2, exposure=1 / 250, make="Canon")
    with Library(settings, create=True) as lib:
        lib.index([photos])
        assert [value for value, _ in lib.facet_values("exposure")] == ["1/250", "1/60"]  # numeric order
        for word in ("exposure=1/60", "exposure=0.0166666667", "exposure=0.016667"):
            assert [os.path.basename(h.path) for h in lib.search(where=[word])] == ["a.jpg"], word
        assert len(lib.search(where=["exposure=1/100..1/50"])) == 1


def test_14_the_index_summary_counts_quarantine_as_status_does(env, tmp_path):
    photos = tmp_path / "photos"
    make_library(photos, 2)
    broken = b"\xff\xd8\xff\xe0 not really a jpeg"
    for name in ("broken.jpg", "copy of broken.jpg", "sub/broken again.jpg"):
        (photos / name).parent.mkdir(exist_ok=True)
        (photos / name).write_bytes(broken)
    report = json.loads(ok("index", str(photos), "--no-progress", "--json", env=env))
    status = json.loads(ok("status", "--json", env=env))
    assert report["quarantined"] == status["quarantined"] == 3
    copy = photos / "one more.jpg"
    copy.write_bytes(broken)
    again = json.loads(ok("index", "--no-progress", "--json", env=env))
    assert again["quarantined"] == 1 and json.loads(ok("status", "--json", env=env))["quarantined"] == 4


def test_13_status_json_says_when_indexing_is_finished(env, indexed):
    data = json.loads(ok("status", "--json", env=env))
    assert data["indexing"]["idle"] is True and data["indexing"]["photos_pending"] == 0
    assert data["indexing"]["daemon_pid"] is None
