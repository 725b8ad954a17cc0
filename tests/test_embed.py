"""searchfs.ingest.embed through the real open_clip code path, with the tiny random-weights model."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from photos import make_photo
from PIL import Image
from test_decode import halves, write_broken
from waiting import wait_for

from searchfs.errors import ImageError, ModelUnavailable
from searchfs.ingest import weights as weights_module
from searchfs.ingest.embed import Embedder, model_id, weights_status

CORPUS = Path("/work/shared/corpus")


@pytest.fixture(scope="module")
def module_settings(tiny_model, tmp_path_factory):
    from searchfs.config import Settings

    return Settings(home=tmp_path_factory.mktemp("home"), model_batch_size=4, **tiny_model)


@pytest.fixture(scope="module")
def embedder(module_settings):
    """One loaded model for the module (loading is the slow part); text tests make their own."""
    instance = Embedder(module_settings)
    instance.load()
    yield instance
    instance.close()


def one(embedder: Embedder, path) -> np.ndarray:
    result = embedder.embed_images([os.fsencode(path)])[0]
    assert result.ok and result.error is None, result.error
    return result.vector


def cosine(a, b) -> float:
    return float(np.dot(a, b))


# ---------------------------------------------------------------------------------------------- vectors


def test_vectors_normalized_and_deterministic(embedder, tmp_path):
    paths = [os.fsencode(make_photo(tmp_path / f"p{i}.jpg", seed=i)) for i in range(6)]
    first = [r.vector for r in embedder.embed_images(paths)]
    again = [r.vector for r in embedder.embed_images(list(reversed(paths)))[::-1]]
    assert embedder.dim == 32
    for a, b in zip(first, again):
        assert a.dtype == np.float32 and a.shape == (32,)
        assert abs(np.linalg.norm(a) - 1) < 1e-5
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(first[0], first[1])


def test_same_picture_under_another_name(embedder, tmp_path):
    original = make_photo(tmp_path / "IMG_0001.jpg", seed=3)
    copy = tmp_path / "other dir" / "renamed copy.JPG"
    copy.parent.mkdir()
    shutil.copyfile(original, copy)
    np.testing.assert_array_equal(one(embedder, original), one(embedder, copy))


def test_str_and_bytes_paths_and_non_utf8_names(embedder, tmp_path):
    source = make_photo(tmp_path / "a.png", seed=1)
    odd = os.fsencode(tmp_path) + b"/caf\xe9.png"  # Latin-1 name, not valid UTF-8
    shutil.copyfile(source, odd)
    np.testing.assert_array_equal(one(embedder, str(source)), one(embedder, odd))


def test_embed_pil_matches_files(embedder, tmp_path):
    path = make_photo(tmp_path / "a.png", seed=5)
    with Image.open(path) as image:
        vectors = embedder.embed_pil([image.copy(), image.convert("RGBA")])
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors[0], one(embedder, path), atol=1e-6)
    np.testing.assert_allclose(vectors[1], vectors[0], atol=1e-6)


# ---------------------------------------------------------------------------------------------- decoding


def test_embedder_sees_the_upright_picture(embedder, tmp_path):
    """Decoding itself is tested in test_decode.py; here: the model gets what load_image makes."""
    exif = Image.Exif()
    exif[0x0112] = 6
    halves().save(tmp_path / "stored.png", exif=exif.tobytes())
    halves().transpose(Image.Transpose.ROTATE_270).save(tmp_path / "rotated.png")
    halves().save(tmp_path / "plain.png")
    np.testing.assert_allclose(
        one(embedder, tmp_path / "stored.png"), one(embedder, tmp_path / "rotated.png"), atol=1e-6
    )
    assert cosine(one(embedder, tmp_path / "plain.png"), one(embedder, tmp_path / "rotated.png")) < 0.9999


# ---------------------------------------------------------------------------------------------- broken files


def test_broken_files_give_reasons_and_spare_the_batch(embedder, tmp_path):
    reasons = write_broken(tmp_path)
    names = []
    for i, bad in enumerate(reasons):  # interleave good and bad files across several batches of 4
        names += [f"good{i}.jpg", bad]
        make_photo(tmp_path / f"good{i}.jpg", seed=i)
    results = embedder.embed_images([os.fsencode(tmp_path / name) for name in names])
    assert len(results) == len(names)
    for name, result in zip(names, results):
        if name in reasons:
            assert not result.ok and isinstance(result.error, ImageError), name
            assert str(result.error).startswith(reasons[name]), (name, str(result.error))
            assert "\n" not in str(result.error)
        else:
            assert result.ok and result.error is None, (name, result.error)
            np.testing.assert_allclose(result.vector, one(embedder, tmp_path / name), atol=1e-6)


def test_the_next_calls_pictures_are_decoded_once_and_handed_over(module_settings, tmp_path, monkeypatch):
    """`then` (the indexer's next batch) is decoded while this call ends, and the next call takes those
    decodes as they are: every file is decoded once, and the vectors are those of a plain call. Decodes
    of paths the next call does not ask for are dropped."""
    paths = [os.fsencode(make_photo(tmp_path / f"p{i}.jpg", seed=i)) for i in range(10)]
    instance = Embedder(module_settings)
    try:
        expected = [r.vector for r in instance.embed_images(paths)]
        decoded: list[bytes] = []
        real = Embedder._decode

        def counting(self, path, target, fit=None):
            decoded.append(path)
            return real(self, path, target, fit)

        monkeypatch.setattr(Embedder, "_decode", counting)
        first = instance.embed_images(paths[:3], then=paths[3:7])
        wait_for(lambda: set(paths[3:7]) <= set(decoded), "the next call's decodes")  # before it is made
        second = instance.embed_images(paths[3:6], then=lambda: paths[9:])  # paths[6] was decoded for nothing
        third = instance.embed_images(paths[7:9])
        assert sorted(decoded) == sorted(paths[:7] + paths[7:9] + paths[9:])  # each once, paths[9] ahead
        got = [r.vector for r in first + second + third]
        want = expected[:6] + expected[7:9]
        assert len(got) == len(want)  # the same up to the GEMM's rounding, which varies with the batch's size
        assert all(np.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(got, want))
    finally:
        instance.close()


def test_decode_threads_yield_the_cpu_to_the_model(embedder, tmp_path):
    """The decode pool's threads run DECODE_NICENESS nicer than the process's own threads (Linux)."""
    from searchfs.ingest import embed as embed_module

    embedder.embed_images([os.fsencode(make_photo(tmp_path / "a.jpg", seed=3))])
    base = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    threads = [t for t in embedder._pool._threads if t.native_id is not None]
    assert threads and {os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threads} == {
        min(19, base + embed_module.DECODE_NICENESS)
    }


def test_no_files_written_and_no_handles_left(embedder, tmp_path):
    folder = tmp_path / "photos"
    make_photo(folder / "a.jpg", seed=1)
    write_broken(folder)
    os.chmod(folder, 0o555)  # read-only source folder, like the real ones
    try:
        before = sorted(os.listdir(folder))
        fds_before = set(os.listdir("/proc/self/fd"))
        embedder.embed_images([os.fsencode(folder / name) for name in before])
        assert sorted(os.listdir(folder)) == before
        leaked = [
            os.readlink(f"/proc/self/fd/{fd}")
            for fd in set(os.listdir("/proc/self/fd")) - fds_before
            if os.path.exists(f"/proc/self/fd/{fd}")
        ]
        assert not [target for target in leaked if str(folder) in target]
    finally:
        os.chmod(folder, 0o755)


def test_empty_batch(embedder):
    assert embedder.embed_images([]) == []
    assert embedder.embed_pil([]).shape == (0, 32)


# ---------------------------------------------------------------------------------------------- text cache


def test_text_cache_avoids_model_calls_and_loading(module_settings, tmp_path):
    cache = tmp_path / "cache" / "text.sqlite"
    first = Embedder(module_settings, cache)
    vectors = first.embed_text(["a red car", "a dog on a beach", "a red car"])
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    calls = first.model_calls
    np.testing.assert_array_equal(first.embed_text(["a dog on a beach"])[0], vectors[1])
    assert first.model_calls == calls  # in-memory hit
    first.close()
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600

    fresh = Embedder(module_settings, cache)
    np.testing.assert_array_equal(fresh.embed_text(["a red car", "a dog on a beach"]), vectors[:2])
    assert not fresh.loaded and fresh.model_calls == 0  # persistent hit: model never loaded
    fresh.embed_text(["something new"])  # first's load exported the numpy text tower: torch stays unloaded
    assert fresh.model_calls == 1 and not fresh.loaded


def test_text_cache_is_per_model(module_settings, tmp_path):
    cache = tmp_path / "text.sqlite"
    Embedder(module_settings, cache).embed_text(["a cat"])
    with sqlite3.connect(cache) as conn:
        rows = conn.execute("SELECT model_id, text, length(vector) FROM text_embedding").fetchall()
    assert rows == [(model_id(module_settings), "a cat", 32 * 4)]


def test_corrupt_cache_is_ignored(module_settings, tmp_path):
    cache = tmp_path / "text.sqlite"
    cache.write_bytes(b"this is not a database" * 100)
    vectors = Embedder(module_settings, cache).embed_text(["a cat"])
    assert vectors.shape == (1, 32)


def test_locked_cache_is_ignored_quickly(module_settings, tmp_path):
    cache = tmp_path / "text.sqlite"
    Embedder(module_settings, cache).embed_text(["warm up"])
    holder = sqlite3.connect(cache, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        vectors = Embedder(module_settings, cache).embed_text(["a cat", "warm up"])
        assert vectors.shape == (2, 32)
        assert time.monotonic() - started < 30
    finally:
        holder.rollback()
        holder.close()


def test_text_without_cache_path(module_settings):
    instance = Embedder(module_settings)
    a = instance.embed_text(["a cat"])
    np.testing.assert_array_equal(instance.embed_text(["a cat"]), a)
    assert instance.model_calls == 1


def test_text_and_image_share_a_space(embedder, tmp_path):
    scores = embedder.embed_pil([halves()]) @ embedder.embed_text(["a red and blue picture"]).T
    assert scores.shape == (1, 1) and -1.0 <= float(scores[0, 0]) <= 1.0


# ---------------------------------------------------------------------------------------------- loading


def test_load_is_lazy_idempotent_and_thread_safe(module_settings):
    instance = Embedder(module_settings)
    assert not instance.loaded and instance.model_id.startswith("searchfs-tiny/file:")
    threads = [threading.Thread(target=instance.load) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    runtime = instance.runtime
    instance.load()
    assert instance.runtime is runtime and instance.device == "cpu" and instance.dim == 32


def test_missing_checkpoint(module_settings, tmp_path):
    settings = module_settings.replace(model_pretrained=str(tmp_path / "nope.pt"))
    instance = Embedder(settings)  # cheap: nothing is checked yet
    with pytest.raises(ModelUnavailable, match=r"searchfs-tiny.*not found.*nope\.pt.*set \[model\] pretrained"):
        instance.load()
    # The id of absent weights matches no stored embedding, and asking for it never fails: metadata
    # indexing and exif/ go on while the weights are missing.
    assert model_id(settings) == "searchfs-tiny/file:unavailable"
    ok, message = weights_status(settings)
    assert not ok and "nope.pt" in message


def test_unknown_model_name(module_settings):
    settings = module_settings.replace(model_name="ViT-Q-99", model_config_file="", model_pretrained="openai")
    with pytest.raises(ModelUnavailable, match=r"unknown model 'ViT-Q-99'.*\[model\] name"):
        Embedder(settings).load()
    assert not weights_status(settings)[0]


def test_unknown_tag(module_settings):
    settings = module_settings.replace(model_name="ViT-B-32", model_config_file="", model_pretrained="nosuchtag")
    with pytest.raises(ModelUnavailable, match=r"'nosuchtag' is not a pretrained tag of ViT-B-32.*laion2b_s34b_b79k"):
        Embedder(settings).load()


def test_checkpoint_for_another_architecture(module_settings, tiny_model, tmp_path):
    import open_clip

    config = json.loads(Path(tiny_model["model_config_file"]).read_text())
    config["vision_cfg"]["width"] = 48
    other = tmp_path / "searchfs-tiny-wide.json"
    other.write_text(json.dumps(config))
    settings = module_settings.replace(model_name="searchfs-tiny-wide", model_config_file=str(other))
    with pytest.raises(ModelUnavailable, match=r"does not fit model searchfs-tiny-wide.*\[model\] name"):
        Embedder(settings).load()
    assert "searchfs-tiny-wide" in open_clip.list_models()


def test_corrupt_checkpoint(module_settings, tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint" * 1000)
    with pytest.raises(ModelUnavailable, match="searchfs-tiny"):
        Embedder(module_settings.replace(model_pretrained=str(bad))).load()


def test_uncached_tag_fails_fast_offline(module_settings, offline_hub):
    settings = module_settings.replace(
        model_name="ViT-B-32", model_config_file="", model_pretrained="laion2b_s34b_b79k"
    )
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match=r"ViT-B-32/laion2b_s34b_b79k.*searchfs doctor --fetch"):
        Embedder(settings).load()
    assert time.monotonic() - started < 10
    ok, message = weights_status(settings)
    assert not ok and "not in the local cache" in message and "searchfs doctor --fetch" in message


def test_unreachable_hub_fails_fast(module_settings, offline_hub, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://127.0.0.1")  # nothing listens on 443: refused at once
    for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    settings = module_settings.replace(model_name="ViT-B-32", model_config_file="", model_pretrained="openai")
    started = time.monotonic()
    with pytest.raises(ModelUnavailable, match=r"ViT-B-32/openai are not cached and .* is unreachable"):
        Embedder(settings).load()
    assert time.monotonic() - started < 10


def fake_hub_cache(root: Path, repo: str, filename: str) -> Path:
    """The huggingface cache layout for one file of `repo` (what hf_hub_download leaves behind)."""
    folder = root / ("models--" + repo.replace("/", "--"))
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("0" * 40)
    weights = folder / "snapshots" / ("0" * 40) / filename
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"x")
    return weights


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hf"


def test_cached_tag_is_found_without_network(module_settings, offline_hub):
    """A tag whose weights sit in the huggingface cache resolves to that file, with the tag's preprocessing."""
    weights = fake_hub_cache(offline_hub, "timm/MobileCLIP2-S0-OpenCLIP", "open_clip_model.safetensors")
    settings = module_settings.replace(model_name="MobileCLIP2-S0", model_config_file="", model_pretrained="dfndr2b")
    assert weights_status(settings) == (True, f"weights for MobileCLIP2-S0/dfndr2b are cached at {weights}")
    path, overrides = weights_module.resolve_weights(settings)
    assert path == str(weights)
    assert overrides["image_mean"] == (0.0, 0.0, 0.0) and overrides["image_std"] == (1.0, 1.0, 1.0)
    assert "force_quick_gelu" not in overrides
    assert model_id(settings) == "MobileCLIP2-S0/dfndr2b"


def test_cached_openai_tag_keeps_quick_gelu(module_settings, offline_hub):
    weights = fake_hub_cache(offline_hub, "timm/vit_base_patch32_clip_224.openai", "open_clip_pytorch_model.bin")
    settings = module_settings.replace(model_name="ViT-B-32", model_config_file="", model_pretrained="openai")
    path, overrides = weights_module.resolve_weights(settings)
    assert path == str(weights) and overrides["force_quick_gelu"] is True


def test_config_file_registers_its_stem(module_settings, tiny_model):
    settings = module_settings.replace(model_name="my-tiny")
    with pytest.raises(ModelUnavailable, match=r"config_file registers 'searchfs-tiny'"):
        Embedder(settings).load()


def test_model_id_stable_when_checkpoint_moves(module_settings, tmp_path):
    original = model_id(module_settings)
    moved = tmp_path / "elsewhere" / "renamed.pt"
    moved.parent.mkdir()
    shutil.copyfile(module_settings.model_pretrained, moved)
    assert model_id(module_settings.replace(model_pretrained=str(moved))) == original
    with open(moved, "r+b") as handle:  # different weights, different id
        handle.seek(-1, os.SEEK_END)
        last = handle.read(1)
        handle.seek(-1, os.SEEK_END)
        handle.write(bytes([last[0] ^ 0xFF]))
    assert model_id(module_settings.replace(model_pretrained=str(moved))) != original
    assert model_id(module_settings.replace(model_name="ViT-B-32", model_pretrained="openai")) == "ViT-B-32/openai"


def test_model_id_does_not_import_torch(module_settings):
    import subprocess
    import sys

    code = (
        "import sys; from searchfs.ingest.embed import Embedder, model_id; from searchfs.config import Settings;"
        "print(model_id(Settings(home='/tmp', model_name='x', "
        f"model_pretrained={module_settings.model_pretrained!r})));"
        "print('torch' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=Path(__file__).parent.parent
    ).stdout.split()
    assert out[0].startswith("x/file:") and out[1] == "False"


def test_weights_status_for_a_good_checkpoint(module_settings):
    ok, message = weights_status(module_settings)
    assert ok and module_settings.model_pretrained in message


# ---------------------------------------------------------------------------------------------- real corpus


@pytest.mark.slow
@pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(), reason="no shared corpus")
def test_shared_corpus(embedder):
    with open(CORPUS / "MANIFEST.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    paths = [os.fsencode(CORPUS / row["path"]) for row in rows]
    results = embedder.embed_images(paths)
    assert len(results) == len(rows)
    decoded_by_pillow_but_not_us = []
    for row, result in zip(rows, results):
        assert result.ok != (result.error is not None), row["path"]
        if not result.ok:
            message = str(result.error)
            assert message and "\n" not in message and len(message) < 300, row["path"]
            if row["pillow_decode"].startswith("ok"):
                decoded_by_pillow_but_not_us.append((row["path"], message))
        else:
            assert abs(np.linalg.norm(result.vector) - 1) < 1e-4
    assert not decoded_by_pillow_but_not_us
