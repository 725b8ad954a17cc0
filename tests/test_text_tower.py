"""The numpy text tower and its tokenizer against open_clip's own, and the cold query path without torch."""

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
from hypothesis import given
from hypothesis import settings as examples
from hypothesis import strategies as st

from searchfs.ingest import bpe, text_tower
from searchfs.ingest.embed import Embedder, embed_query_text, model_id
from searchfs.ingest.torch_describe import describe_text_tower

REPO = Path(__file__).parent.parent

TEXTS = [
    "red flower",
    "A Dog on the BEACH",
    "  spaces\tand\nnewlines  ",
    "AC/DC poster, 1979!",
    "straße café 東京 2019 — naïve résumé",
    "emoji 🐶🌸 and symbols @#$%^&*()",
    "it's they're we've I'm you'll he'd",
    "&amp;lt;html&amp;gt; entities &quot;quoted&quot;",
    "mojibake: cafÃ©",
    "<start_of_text> literal special <end_of_text>",
    "",
    "word " * 100,  # cut at the context length, end token kept
    "1234567890 3.14159",
]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


# ---------------------------------------------------------------------------------------------- tokenizer


def test_tokenizer_matches_open_clip():
    import open_clip

    ours = bpe.tokenizer(77)
    theirs = open_clip.get_tokenizer("ViT-B-32")
    assert bpe.vocab_path() == open_clip.tokenizer.default_bpe()
    for text in TEXTS:
        assert ours.encode(text) == open_clip_ids(theirs, text), text


ASCII_WITHOUT_AMPERSAND = st.text(st.sampled_from([chr(c) for c in range(0x20, 0x7F) if chr(c) != "&"]))


@examples(max_examples=300, deadline=None)
@given(ASCII_WITHOUT_AMPERSAND)
def test_ftfy_leaves_printable_ascii_without_ampersands_as_is(text):
    """What bpe.clean relies on to skip importing ftfy, checked against ftfy itself."""
    import ftfy

    assert bpe._ftfy_leaves_as_is(text)
    assert ftfy.fix_text(text) == text


def test_texts_ftfy_may_change_still_go_through_it():
    for text in ("caf\u00e9", "cafÃ©", "&amp;lt;", "tab\there", "line\r\nbreak", "\x1b[31mred", "ﬁne"):
        assert not bpe._ftfy_leaves_as_is(text), text


@examples(max_examples=150, deadline=None)
@given(st.one_of(ASCII_WITHOUT_AMPERSAND, st.text(max_size=40)))
def test_tokenizer_matches_open_clip_on_any_text(text):
    import open_clip

    theirs = open_clip.get_tokenizer("ViT-B-32")
    assert bpe.tokenizer(77).encode(text) == open_clip_ids(theirs, text)


def open_clip_ids(tokenizer, text: str) -> list[int]:
    """open_clip's ids up to its last end token (the padding after it is 0s, and 0 is also the id of "!")."""
    ids = [int(t) for t in tokenizer([text])[0]]
    return ids[: len(ids) - ids[::-1].index(bpe.tokenizer(77).eot)]


def test_tokenizer_needs_no_torch():
    code = (
        "import sys; from searchfs.ingest import bpe; t = bpe.tokenizer(77);"
        "print(t.encode('red flower')); print(sorted(m for m in ('torch', 'open_clip') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    ids, imported = out.stdout.splitlines()
    assert json.loads(ids)[0] == 49406 and json.loads(ids)[-1] == 49407 and imported == "[]"


# ---------------------------------------------------------------------------------------------- contract


def export_and_open(model, folder: Path, name: str) -> text_tower.NumpyTextTower:
    import open_clip

    described = describe_text_tower(model, open_clip.get_tokenizer(name))
    assert described is not None
    config, arrays, _ = described
    text_tower.write(folder, f"{name}/test", config, arrays)
    tower = text_tower.NumpyTextTower.open(folder, f"{name}/test")
    assert tower is not None
    return tower


def torch_texts(model, name: str, texts: list[str]) -> np.ndarray:
    import open_clip
    import torch

    with torch.inference_mode():
        return model.encode_text(open_clip.get_tokenizer(name)(texts)).numpy()


@pytest.mark.parametrize("quick_gelu", [False, True], ids=["gelu", "quick_gelu"])
def test_real_architecture_random_weights(tmp_path, quick_gelu):
    """ViT-B-32's text tower as open_clip builds it (random weights: the arithmetic does not care)."""
    import open_clip
    import torch

    torch.manual_seed(1)
    model = open_clip.create_model("ViT-B-32", force_quick_gelu=quick_gelu).eval()
    tower = export_and_open(model, tmp_path / "tower", "ViT-B-32")
    assert tower.config.activation == ("quick_gelu" if quick_gelu else "gelu") and tower.dim == 512
    cosine = cosine_rows(tower.encode_texts(TEXTS), torch_texts(model, "ViT-B-32", TEXTS))
    assert cosine.min() >= 0.9999, cosine


def test_tiny_checkpoint_through_the_embedder(settings):
    """The export the runtime writes on load answers texts like torch does, and the embedder uses it."""
    embedder = Embedder(settings)
    embedder.load()
    assert embedder.runtime.exported
    expected = embedder.runtime.encode_texts(TEXTS)
    tower = embedder._text_tower()
    assert isinstance(tower, text_tower.NumpyTextTower)
    assert cosine_rows(tower.encode_texts(TEXTS), expected).min() >= 0.9999
    calls = embedder.model_calls
    got = embedder.embed_text(TEXTS)
    assert embedder.model_calls == calls + 1
    assert cosine_rows(got, expected).min() >= 0.9999
    embedder.close()


def test_export_files_are_private_and_stamped(settings):
    embedder = Embedder(settings)
    embedder.load()
    folder = text_tower.folder_for(settings, model_id(settings))
    assert folder.parent == settings.home / "models"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    for name in (text_tower.WEIGHTS, text_tower.STAMP):
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600
    assert json.loads((folder / text_tower.STAMP).read_text())["model_id"] == model_id(settings)
    embedder.close()


def test_stale_or_damaged_export_is_not_used(settings):
    embedder = Embedder(settings)
    embedder.load()
    embedder.close()
    folder = text_tower.folder_for(settings, model_id(settings))
    assert text_tower.NumpyTextTower.open(folder, model_id(settings)) is not None
    assert text_tower.NumpyTextTower.open(folder, "searchfs-tiny/file:0000") is None  # another model id
    with open(folder / text_tower.WEIGHTS, "r+b") as handle:  # cut short, as by a full disk
        handle.truncate(1000)
    assert text_tower.NumpyTextTower.open(folder, model_id(settings)) is None
    fresh = Embedder(settings)
    vector = fresh.embed_text(["a cat"])  # torch answers, and exports again
    assert fresh.loaded and text_tower.NumpyTextTower.open(folder, model_id(settings)) is not None
    np.testing.assert_allclose(np.linalg.norm(vector), 1, atol=1e-5)
    fresh.close()


def test_unsupported_text_tower_is_not_exported(home, tiny_model, tmp_path):
    """An architecture outside the plain CLIP shape (here: LayerScale in the text blocks) keeps torch."""
    import open_clip
    import torch
    from models import tiny_variant

    from searchfs.config import load_settings

    name, config = tiny_variant(tmp_path, "searchfs-tiny-ls", text_cfg={"ls_init_value": 0.5})
    torch.manual_seed(0)
    open_clip.add_model_config(str(config))
    checkpoint = tmp_path / "ls.pt"
    torch.save(open_clip.create_model(name).state_dict(), checkpoint)
    settings = load_settings(model_name=name, model_config_file=str(config), model_pretrained=str(checkpoint))
    embedder = Embedder(settings)
    vectors = embedder.embed_text(["a cat", "a dog"])
    assert embedder.loaded and not embedder.runtime.exported
    assert not (text_tower.folder_for(settings, model_id(settings)) / text_tower.STAMP).exists()
    assert vectors.shape == (2, 32)
    embedder.close()


def test_random_weights_are_never_exported(settings):
    assert not text_tower.exportable("ViT-B-32/random")
    assert text_tower.exportable(model_id(settings))


# ---------------------------------------------------------------------------------------------- cold query


def test_cold_query_text_needs_no_torch(settings):
    """After a load exported the tower, a fresh process embeds a new text without importing torch."""
    embedder = Embedder(settings)
    expected = embedder.runtime.encode_texts(["a brand new query"])[0]
    embedder.close()
    settings.library_dir.mkdir(parents=True)
    code = (
        "import sys, json; from searchfs.config import load_settings; "
        "from searchfs.ingest.embed import embed_query_text; "
        f"v = embed_query_text(load_settings(**{json.dumps(tiny_kwargs(settings))}), 'a brand new query'); "
        "print(json.dumps([float(x) for x in v])); print('torch' in sys.modules, 'open_clip' in sys.modules)"
    )
    env = dict(os.environ, SEARCHFS_HOME=str(settings.home))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr
    vector, imported = out.stdout.splitlines()
    assert imported == "False False"
    assert float(np.dot(json.loads(vector), expected)) >= 0.9999
    # ... and the text is now in the library's cache: no model at all the next time
    cached = Embedder(settings, settings.library_dir / "textcache.sqlite")
    np.testing.assert_allclose(cached.embed_text(["a brand new query"])[0], json.loads(vector), atol=1e-6)
    assert cached.model_calls == 0


def test_embed_query_text_without_export_uses_torch(settings):
    vector = embed_query_text(settings, "no export yet")  # nothing loaded before: torch loads and exports
    assert vector.shape == (32,) and abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    assert text_tower.is_current(text_tower.folder_for(settings, model_id(settings)), model_id(settings))


def tiny_kwargs(settings) -> dict:
    return {
        "model_name": settings.model_name,
        "model_pretrained": settings.model_pretrained,
        "model_config_file": settings.model_config_file,
    }


# ---------------------------------------------------------------------------------------------- threads


def test_a_new_text_never_waits_behind_an_image_batch(settings):
    """The numpy tower runs outside the lock an image forward pass holds: a query text asked while a
    daemon indexes is answered at once, not after the batch."""
    embedder = Embedder(settings)
    embedder.load()
    answers: list[np.ndarray] = []
    with embedder._model_lock:  # an image batch in progress
        asker = threading.Thread(target=lambda: answers.append(embedder.embed_text(["asked mid-batch"])))
        asker.start()
        asker.join(30)
        assert answers, "the new text waited for the image batch"
    assert answers[0].shape == (1, embedder.dim)
    np.testing.assert_allclose(answers[0], embedder.runtime.encode_texts(["asked mid-batch"]), atol=1e-4)
    embedder.close()


def test_texts_encoded_at_once_leave_the_blas_limit_as_they_found_it(settings):
    """Each encode limits BLAS to one thread and restores the limit it found: eight threads at once must
    not leave a limit of 1 behind for the process (its vector search would run on one core)."""
    from threadpoolctl import threadpool_info

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"]

    embedder = Embedder(settings)
    embedder.load()
    tower = embedder._text_tower()
    assert tower is not None
    before, failures = blas_threads(), []

    def encode(i: int) -> None:
        try:
            for j in range(10):
                tower.encode_texts([f"text {i} {j} " * 8])
        except Exception as exc:
            failures.append(exc)

    threads = [threading.Thread(target=encode, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures and blas_threads() == before
    embedder.close()
