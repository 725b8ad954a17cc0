"""A tiny CLIP (open_clip config + checkpoint with random weights) for the demo when no weights can be
downloaded. It goes through the same loading path as a user's own checkpoint file.

    python3 examples/demo_model.py .demo/model
"""

import json
import sys
from pathlib import Path

import open_clip
import torch

CONFIG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "searchfs-demo-tiny.json"
    config.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(str(config))
    torch.manual_seed(0)
    torch.save(open_clip.create_model("searchfs-demo-tiny").state_dict(), folder / "searchfs-demo-tiny.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
