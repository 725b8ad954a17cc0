"""Random-weights checkpoints of real architectures for the benchmarks (speed does not depend on weight
values, and no hub is reachable here). Made once with open_clip's random init and saved as a torch file,
so benchmarks load them the way a user's weights load: `[model] pretrained = /path/to/file`."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

CACHE = Path(os.environ.get("SEARCHFS_BENCH_CACHE", Path(tempfile.gettempdir()) / "searchfs-bench-weights"))


def random_checkpoint(name: str, seed: int = 0) -> Path:
    """The path of `name`'s random-weights checkpoint, created on first use (0600, in CACHE)."""
    path = CACHE / f"{name}-random-{seed}.pt"
    if not path.is_file():
        import open_clip
        import torch

        CACHE.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(seed)
        model = open_clip.create_model(name)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(model.state_dict(), tmp)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    return path
