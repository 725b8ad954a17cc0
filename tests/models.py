"""Tiny open_clip architectures for tests: the conftest's TINY_MODEL with some settings changed."""

from __future__ import annotations

import json
from copy import deepcopy
from pathlib import Path

from conftest import TINY_MODEL


def tiny_variant(folder: Path, name: str, text_cfg: dict | None = None, vision_cfg: dict | None = None):
    """(name, config path) of a registered-to-be config file; open_clip names it after the file's stem."""
    config = deepcopy(TINY_MODEL)
    config["text_cfg"].update(text_cfg or {})
    config["vision_cfg"].update(vision_cfg or {})
    path = Path(folder) / f"{name}.json"
    path.write_text(json.dumps(config))
    return name, path
