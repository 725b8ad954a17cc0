"""The model runtime: mapped loading, device and precision choice, the precision self-check."""

from __future__ import annotations

import os

import numpy as np
import pytest
from photos import make_photo

from searchfs.errors import ModelUnavailable
from searchfs.ingest import runtime, selfcheck, torch_load
from searchfs.ingest.embed import Embedder


def vectors(embedder: Embedder, paths) -> np.ndarray:
    results = embedder.embed_images([os.fsencode(p) for p in paths])
    assert all(r.ok for r in results)
    return np.stack([r.vector for r in results])


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    return [make_photo(folder / f"p{i}.jpg", seed=i) for i in range(6)]


# ---------------------------------------------------------------------------------------------- loading


def test_mapped_load_gives_what_open_clip_gives(tiny_model, photos):
    """Meta-device build + mmap + assign=True: the same model as open_clip's own loading path."""
    import open_clip
    import torch

    reference = open_clip.create_model(tiny_model["model_name"], pretrained=tiny_model["model_pretrained"]).eval()
    model, mapped = torch_load.build(tiny_model["model_name"], tiny_model["model_pretrained"], {})
    assert mapped is not None  # the mapped route was taken, not the plain one
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    expected, got = reference.state_dict(), model.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
    torch.testing.assert_close(model.attn_mask, reference.attn_mask)
    tokens = open_clip.get_tokenizer("ViT-B-32")(["a cat"])[:, :16]
    with torch.inference_mode():
        torch.testing.assert_close(model.encode_text(tokens), reference.encode_text(tokens))


def test_fp16_checkpoint_runs_in_fp32(tiny_model, tmp_path):
    import torch

    state = torch.load(tiny_model["model_pretrained"], weights_only=True)
    half = tmp_path / "half.pt"
    torch.save({k: v.half() for k, v in state.items()}, half)
    model, _ = torch_load.build(tiny_model["model_name"], str(half), {})
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def test_released_pages_read_back_from_the_file(tiny_model):
    """Giving back a mapped tensor's pages loses nothing: reading it again reads the file."""
    import torch

    model, mapped = torch_load.build(tiny_model["model_name"], tiny_model["model_pretrained"], {})
    weight = model.token_embedding.weight  # 49408 x 32 floats: many whole pages
    before = weight.sum().item(), weight[123].clone()
    assert mapped.release([weight]) > 0
    assert weight.sum().item() == before[0]
    torch.testing.assert_close(weight[123], before[1], rtol=0, atol=0)
    assert mapped.release([torch.ones(100000)]) == 0  # not the file's memory: never touched


def test_shape_mismatch_says_which_setting(tiny_model, tmp_path):
    import open_clip
    from models import tiny_variant

    name, config = tiny_variant(tmp_path, "searchfs-tiny-deep", text_cfg={"layers": 2})
    open_clip.add_model_config(str(config))
    with pytest.raises(ModelUnavailable, match=r"does not fit model searchfs-tiny-deep"):
        torch_load.build(name, tiny_model["model_pretrained"], {})


# ---------------------------------------------------------------------------------------------- device, precision


def test_device_choice_follows_what_torch_sees(monkeypatch):
    """Only the choice is faked here (no GPU on this machine); everything after it is the CPU's code path."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == "cuda" and runtime.resolve_device("cpu") == "cpu"
    assert runtime.choose_precision("auto", "cuda") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert runtime.resolve_device("auto") == "mps" and runtime.choose_precision("auto", "mps") == "fp16"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert runtime.resolve_device("auto") == "cpu"
    with pytest.raises(ModelUnavailable, match="torch sees no cuda device"):
        runtime.resolve_device("cuda")


def test_precision_and_batch_choice():
    assert runtime.choose_precision("auto", "cpu") == ("bf16" if runtime.cpu_has_bf16() else "fp32")
    assert runtime.choose_precision("fp32", "cuda") == "fp32"
    assert runtime.choose_precision("bf16", "cpu") == "bf16"
    assert runtime.choose_batch_size(7, "cpu") == 7
    assert runtime.choose_batch_size(0, "cpu") == 16 and runtime.choose_batch_size(0, "mps") == 64


def test_precision_setting_is_checked(home):
    from searchfs.config import load_settings
    from searchfs.errors import ConfigError

    assert load_settings().model_precision == "auto"
    assert load_settings(model_precision="fp32").model_precision == "fp32"
    with pytest.raises(ConfigError, match="model.precision must be auto, fp32, bf16 or fp16"):
        load_settings(model_precision="int8")


# ---------------------------------------------------------------------------------------------- self-check


def test_probe_set_is_fixed_and_varied():
    first, again = selfcheck.probe_pictures(64), selfcheck.probe_pictures(64)
    assert len(first) == selfcheck.PROBES
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(first, again))
    means = {tuple(np.asarray(p).mean(axis=(0, 1)).round()) for p in first}
    assert len(means) == selfcheck.PROBES


def test_compare_catches_drift_and_reordering():
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(selfcheck.PROBES, 16)).astype(np.float32)
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    assert selfcheck.compare(reference, reference).ok
    noisy = reference + rng.normal(scale=0.3, size=reference.shape).astype(np.float32)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    verdict = selfcheck.compare(reference, noisy)
    assert not verdict.ok and verdict.min_cosine < selfcheck.MIN_COSINE
    swapped = reference.copy()  # agree everywhere but one probe, moved into query 0's neighbourhood
    scores = reference @ reference[0]
    outsider = int(np.argsort(scores)[0])
    swapped[outsider] = reference[0]
    assert selfcheck.compare(reference, swapped).same_top < selfcheck.QUERIES
    assert not selfcheck.compare(reference, np.full_like(reference, np.nan)).ok


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_passes_its_self_check(settings, photos, precision):
    fp32 = Embedder(settings.replace(model_precision="fp32"))
    low = Embedder(settings.replace(model_precision=precision))
    assert low.precision == precision  # what the setting asks, until loaded
    expected, got = vectors(fp32, photos), vectors(low, photos)
    assert fp32.precision == "fp32" and fp32.runtime.verdict is None
    assert low.precision == precision and low.runtime.verdict.ok
    assert np.min(np.sum(expected * got, axis=1)) >= 0.99
    assert {p.dtype for p in low.runtime.model.visual.parameters()} == {runtime.torch_dtype(precision)}
    # the text tower stays fp32 whatever the image tower runs in (open_clip's route; the second load
    # builds the image tower alone, vit_tower.py, and torch answers texts from a full model in fp32)
    assert low.runtime.encode_texts(["a dog"]).dtype == np.float32
    assert {p.dtype for p in low.runtime._text_model.transformer.parameters()} == {runtime.torch_dtype("fp32")}
    for embedder in (fp32, low):
        embedder.close()


def test_failed_self_check_falls_back_to_fp32(settings, tiny_model, tmp_path, photos):
    """Weights too large for fp16 (inf after the cast): the check fails, and the fp32 weights return from
    the file, giving exactly the fp32 vectors."""
    import torch

    state = torch.load(tiny_model["model_pretrained"], weights_only=True)
    state["visual.proj"] = state["visual.proj"] * 1e6  # fp16 overflows above 65504
    big = tmp_path / "big.pt"
    torch.save(state, big)
    fp32 = Embedder(settings.replace(model_pretrained=str(big), model_precision="fp32"))
    fallback = Embedder(settings.replace(model_pretrained=str(big), model_precision="fp16"))
    got = vectors(fallback, photos)
    assert fallback.precision == "fp32" and not fallback.runtime.verdict.ok
    np.testing.assert_allclose(got, vectors(fp32, photos), rtol=0, atol=1e-6)
    for embedder in (fp32, fallback):
        embedder.close()


def test_reference_is_stored_once_per_model(settings):
    embedder = Embedder(settings.replace(model_precision="bf16"))
    embedder.load()
    folder = embedder.runtime.models_dir
    reference = selfcheck.load_reference(folder, embedder.model_id, embedder.input_size)
    assert reference is not None and reference.shape == (selfcheck.PROBES, 32)
    assert selfcheck.load_reference(folder, "other/model", embedder.input_size) is None
    embedder.close()


def test_background_load_then_use(settings, photos):
    embedder = Embedder(settings)
    embedder.start_loading()
    embedder.start_loading()  # once is enough; a second call does nothing
    assert vectors(embedder, photos[:2]).shape == (2, 32)
    assert embedder.loaded
    embedder.close()


def test_background_load_failure_is_reported_in_the_foreground(settings, tmp_path):
    embedder = Embedder(settings.replace(model_pretrained=str(tmp_path / "gone.pt")))
    embedder.start_loading()
    embedder._loader.join(60)
    with pytest.raises(ModelUnavailable, match="gone.pt"):
        embedder.load()


def test_input_size_hint_matches_the_model(settings, tiny_model):
    from searchfs.config import Settings
    from searchfs.ingest.weights import input_size_hint

    embedder = Embedder(settings)
    assert input_size_hint(settings) == embedder.input_size == 32
    embedder.close()
    for name, size in (("ViT-B-32", 224), ("MobileCLIP2-S0", 256), ("ViT-L-14-336", 336)):
        assert input_size_hint(Settings(home=settings.home, model_name=name)) == size
    assert input_size_hint(Settings(home=settings.home, model_name="hf-hub:org/repo")) is None


def test_pictures_decoded_before_the_load_give_the_same_vectors(settings, photos):
    """Decoding that starts while the model loads must not change a single number."""
    from searchfs.ingest.embed import _Decoded

    Embedder(settings).load()  # the first load ever (open_clip's route, the exports): both below load alike
    early = Embedder(settings)
    decoded = [early._decode(os.fsencode(p), 32) for p in photos]  # the model is not loaded yet
    assert all(isinstance(d, _Decoded) for d in decoded) and not early.loaded
    runtime = early.runtime
    got = early._encode_images(runtime, [d.prepare(runtime) for d in decoded])
    np.testing.assert_array_equal(got, vectors(Embedder(settings), photos))
    early.close()
    racing = Embedder(settings)  # start_loading and embed_images at once, as an index does
    racing.start_loading()
    np.testing.assert_array_equal(vectors(racing, photos), got)
    racing.close()
