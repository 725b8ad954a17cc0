"""Shared fixtures: a tiny open_clip model with random weights saved as a checkpoint, private homes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tests/photos.py

TINY_MODEL = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> dict:
    """Settings for a tiny CLIP: an open_clip config file and a checkpoint file with random weights.

    It is loaded the way a user's own weights are: `model.config_file` registers the architecture,
    `model.pretrained` names the checkpoint file.
    """
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("model")
    config = folder / "searchfs-tiny.json"
    config.write_text(json.dumps(TINY_MODEL))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    model = open_clip.create_model("searchfs-tiny")
    checkpoint = folder / "searchfs-tiny.pt"
    torch.save(model.state_dict(), checkpoint)
    return {"model_name": "searchfs-tiny", "model_pretrained": str(checkpoint), "model_config_file": str(config)}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """An empty SEARCHFS_HOME, and no user config leaking in."""
    path = tmp_path / "home"
    monkeypatch.setenv("SEARCHFS_HOME", str(path))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
    monkeypatch.delenv("SEARCHFS_CONFIG", raising=False)
    monkeypatch.delenv("SEARCHFS_LIBRARY", raising=False)
    return path


@pytest.fixture
def settings(home, tiny_model):
    from searchfs.config import load_settings

    return load_settings(**tiny_model)


@pytest.fixture
def inotify_queue(request):
    """Change fs.inotify.max_queued_events for a test (the kernel reads it once, at inotify_init), and put
    it back afterwards, whatever happens in the test: it is a system-wide setting. Skips where it cannot be
    written. `.set(n)` changes it; `.restore()` puts the old value back early (idempotent)."""
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    try:
        old = knob.read_text()
        knob.write_text(old)
    except OSError as exc:
        pytest.skip(f"cannot change {knob}: {exc}")
    request.addfinalizer(lambda: knob.write_text(old))

    class Knob:
        def set(self, value: int) -> None:
            knob.write_text(str(value))

        def restore(self) -> None:
            knob.write_text(old)

    return Knob()
