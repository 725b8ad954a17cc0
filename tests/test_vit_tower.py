"""The plain-torch image tower (ingest/vit_tower.py): verified against open_clip at the first load, then
loaded without open_clip or torchvision, giving the same vectors. Real open_clip, the tiny checkpoint."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from photos import make_photo
from PIL import Image

from searchfs.ingest import selfcheck, vit_tower
from searchfs.ingest.embed import Embedder
from searchfs.ingest.torch_runtime import TorchRuntime

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def photos(tmp_path):
    return [make_photo(tmp_path / "photos" / f"p{i}.jpg", seed=i) for i in range(4)]


def vectors(embedder: Embedder, paths) -> np.ndarray:
    results = embedder.embed_images([os.fsencode(p) for p in paths])
    assert all(r.ok for r in results), [r.error for r in results]
    return np.stack([r.vector for r in results])


def fresh_process_vectors(settings, photos) -> dict:
    """Embed `photos` in a new interpreter with these settings; what it imported, and the vectors."""
    env = dict(os.environ, SEARCHFS_HOME=str(settings.home), PYTHONPATH=str(REPO))
    env.update(
        SEARCHFS_MODEL_NAME=settings.model_name,
        SEARCHFS_MODEL_PRETRAINED=settings.model_pretrained,
        SEARCHFS_MODEL_CONFIG_FILE=settings.model_config_file,
        SEARCHFS_MODEL_PRECISION="fp32",
    )
    code = """
import json, os, sys
from searchfs.config import load_settings
from searchfs.ingest.embed import Embedder
embedder = Embedder(load_settings())
results = embedder.embed_images([os.fsencode(p) for p in sys.argv[1:]])
print(json.dumps({"vectors": [r.vector.tolist() for r in results],
                  "imported": sorted(m for m in ("open_clip", "torchvision", "torch") if m in sys.modules)}))
"""
    done = subprocess.run([sys.executable, "-c", code, *map(str, photos)], env=env, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    return json.loads(done.stdout)


def test_after_the_first_load_images_embed_without_open_clip_and_alike(settings, photos):
    first = Embedder(settings.replace(model_precision="fp32"))
    expected = vectors(first, photos)
    folder = first.runtime.models_dir
    first.close()
    stamp = folder / vit_tower.STAMP
    assert stamp.is_file() and stat.S_IMODE(stamp.stat().st_mode) == 0o600
    info = json.loads(stamp.read_text())
    assert info["model_id"] == first.model_id and info["config"]["layers"] == 1

    later = fresh_process_vectors(settings, photos)
    assert later["imported"] == ["torch"]  # neither open_clip nor torchvision
    np.testing.assert_allclose(np.array(later["vectors"]), expected, rtol=0, atol=2e-5)


def test_a_stamp_of_other_weights_is_not_used(settings, photos, tmp_path):
    first = Embedder(settings.replace(model_precision="fp32"))
    expected = vectors(first, photos)
    folder = first.runtime.models_dir
    first.close()
    info = json.loads((folder / vit_tower.STAMP).read_text())
    info["model_id"] = "searchfs-tiny/file:other"
    (folder / vit_tower.STAMP).write_text(json.dumps(info))
    assert vit_tower.read(folder, first.model_id) is None
    later = fresh_process_vectors(settings, photos)
    assert "open_clip" in later["imported"]  # open_clip's route, and the stamp written anew for this id
    np.testing.assert_allclose(np.array(later["vectors"]), expected, rtol=0, atol=2e-5)
    assert vit_tower.read(folder, first.model_id) is not None


def test_the_preprocessing_is_open_clips_on_odd_sizes(settings):
    """prepare() against open_clip's own transform, both orientations, sizes that round either way."""
    from open_clip.transform import PreprocessCfg, image_transform_v2

    embedder = Embedder(settings.replace(model_precision="fp32"))
    embedder.load()
    model = embedder.runtime.model
    theirs = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    found = vit_tower.read(embedder.runtime.models_dir, embedder.model_id)
    assert found is not None
    config = found[0]
    rng = np.random.default_rng(0)
    for size in [(33, 47), (47, 33), (101, 64), (64, 64), (31, 90), (1000, 750)]:
        picture = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
        np.testing.assert_allclose(vit_tower.prepare(config, picture).numpy(), theirs(picture).numpy(), atol=1e-5)
        fitted = vit_tower.fit(config, picture)  # what decoding does while torch loads: prepare() then keeps it
        assert fitted.size == (config.image_size,) * 2
        assert np.array_equal(vit_tower.prepare(config, fitted).numpy(), vit_tower.prepare(config, picture).numpy())
    embedder.close()


def test_pictures_decoded_while_the_model_loads_are_fitted_and_embed_alike(settings, photos, monkeypatch):
    """Once the tower is stamped, a new embedder knows its input before torch loads: what it decodes
    meanwhile is fitted to it (a twentieth of a drafted 12 MP photo), and embeds exactly as after the load."""
    Embedder(settings.replace(model_precision="fp32")).embed_images([])  # the first load writes the stamp
    loaded = Embedder(settings.replace(model_precision="fp32"))
    loaded.load()  # the plain-torch tower, loaded before anything is decoded
    expected = vectors(loaded, photos)
    loaded.close()
    early: list[bool] = []
    fitted_one = threading.Event()
    fit, load = vit_tower.fit, TorchRuntime.load

    def spying_fit(config, picture):
        early.append(not later.loaded)
        fitted_one.set()
        return fit(config, picture)

    def slow_load(self, images=True):  # a load as slow as a fresh process's: after the first fitted picture
        fitted_one.wait(30)
        load(self, images)

    monkeypatch.setattr(vit_tower, "fit", spying_fit)
    monkeypatch.setattr(TorchRuntime, "load", slow_load)
    later = Embedder(settings.replace(model_precision="fp32"))
    assert later._fit_ahead() is not None and not later.loaded
    assert np.array_equal(vectors(later, photos), expected)
    assert early.count(True) >= 1  # fitted before the load ended
    later.close()


@pytest.mark.parametrize(
    "vision_cfg", [{"attentional_pool": True}, {"ls_init_value": 0.5}, {"pool_type": "avg"}], ids=str
)
def test_towers_outside_the_plain_vit_keep_open_clips_route(home, tmp_path, photos, vision_cfg):
    import open_clip
    import torch
    from models import tiny_variant

    from searchfs.config import load_settings
    from searchfs.ingest import text_tower
    from searchfs.ingest.weights import model_id

    name, config = tiny_variant(tmp_path, "searchfs-tiny-" + "-".join(vision_cfg), vision_cfg=vision_cfg)
    torch.manual_seed(0)
    open_clip.add_model_config(str(config))
    checkpoint = tmp_path / "variant.pt"
    torch.save(open_clip.create_model(name).state_dict(), checkpoint)
    settings = load_settings(model_name=name, model_config_file=str(config), model_pretrained=str(checkpoint))
    for _ in range(2):  # a second load too: no stamp was written, open_clip's tower again
        embedder = Embedder(settings.replace(model_precision="fp32"))
        assert vectors(embedder, photos).shape == (4, 32)
        assert not isinstance(embedder.runtime.model, vit_tower.ImageModel)
        embedder.close()
    assert not (text_tower.folder_for(settings, model_id(settings)) / vit_tower.STAMP).exists()


@pytest.mark.parametrize(
    "name, plain", [("ViT-B-32", True), ("ViT-L-14-336", True), ("MobileCLIP2-S0", False), ("ViT-B-16-SigLIP", False)]
)
def test_which_real_architectures_are_plain_vits(name, plain):
    """The default model and its big siblings take the plain-torch route; FastViT and SigLIP towers do not.
    Built on the meta device: no weights, no memory."""
    import open_clip
    import torch

    from searchfs.ingest.torch_describe import describe_image_tower

    with torch.device("meta"):
        model = open_clip.create_model(name, pretrained=None, device="meta")
    config = describe_image_tower(model)
    assert (config is not None) == plain
    if config is not None:
        assert config.keys()[0] == "visual.conv1.weight" and len(config.keys()) == 8 + 12 * config.layers
        assert config.image_size == (336 if name.endswith("336") else 224) and config.bicubic


def test_the_checked_bf16_tower_is_stored_and_later_loads_map_it(settings, photos):
    bf16 = settings.replace(model_precision="bf16")
    first = Embedder(bf16)  # open_clip's route: stamps the plain tower, then stores its checked bf16 tensors
    vectors(first, photos)
    folder, model = first.runtime.models_dir, first.model_id
    first.close()
    stored = vit_tower.low_path(folder, "bf16")
    assert stored.is_file() and stat.S_IMODE(stored.stat().st_mode) == 0o600

    mapped = Embedder(bf16)
    got = vectors(mapped, photos)
    assert mapped.runtime._low_stored and mapped.runtime.verdict.ok and mapped.precision == "bf16"
    mapped.close()
    stored.unlink()  # without it, the fp32 weights are converted again (and stored again)
    converted = Embedder(bf16)
    np.testing.assert_array_equal(vectors(converted, photos), got)  # the same bf16 tensors, the same vectors
    assert not converted.runtime._low_stored and stored.is_file()
    converted.close()
    assert vit_tower.load_low(folder, "other/model", vit_tower.read(folder, model)[0], "bf16") is None


def test_a_stored_bf16_tower_that_fails_the_self_check_gives_way_to_the_fp32_weights(settings, photos):
    """A stored copy is derived: damaged values fail the check, and the checkpoint's fp32 weights answer.
    Without the self-check's fp32 reference, the stored copy is not used: the reference needs fp32 weights."""
    fp32 = Embedder(settings.replace(model_precision="fp32"))
    expected = vectors(fp32, photos)  # the first load: stamps the tower
    folder, model = fp32.runtime.models_dir, fp32.model_id
    fp32.close()
    bf16 = settings.replace(model_precision="bf16")
    making = Embedder(bf16)
    making.load()  # the fp32 reference, and a good stored copy, which is damaged now:
    making.close()
    config = vit_tower.read(folder, model)[0]
    weights = vit_tower.load_weights(config, settings.model_pretrained)
    vit_tower.save_low(folder, model, "bf16", {name: (t * 0).bfloat16() for name, t in weights.items()})

    low = Embedder(bf16)
    got = vectors(low, photos)
    assert low.runtime._low_stored and not low.runtime.verdict.ok and low.precision == "fp32"
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-5)
    low.close()

    for name in (selfcheck.REFERENCE, selfcheck.REFERENCE_STAMP):
        (folder / name).unlink()
    again = Embedder(bf16)
    again.load()
    assert not again.runtime._low_stored and again.runtime.verdict.ok and again.precision == "bf16"
    again.close()
    stored = vit_tower.load_low(folder, model, config, "bf16")  # stored anew from the checked conversion
    assert stored is not None and all(bool(t.any()) for name, t in stored.items() if "bias" not in name)


def test_an_unreadable_stored_tower_is_not_used(settings, tmp_path):
    embedder = Embedder(settings.replace(model_precision="fp32"))
    embedder.load()
    folder, model = embedder.runtime.models_dir, embedder.model_id
    embedder.close()
    config = vit_tower.read(folder, model)[0]
    vit_tower.low_path(folder, "bf16").write_bytes(b"PK\x03\x04 torn")
    assert vit_tower.load_low(folder, model, config, "bf16") is None
    assert vit_tower.load_low(None, model, config, "bf16") is None
