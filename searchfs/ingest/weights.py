"""Which weights a model setting names, and where they are: no torch, no network unless allowed.

`model_id` names architecture + weights (embeddings in the catalog are stored under it); `weights_status`
says whether they can load without network (`searchfs doctor`); `resolve_weights` finds the checkpoint
file to load. None of these import torch; the ones that ask open_clip about tags import open_clip.

Network policy (why it looks like this): open_clip resolves a pretrained tag with `hf_hub_download`,
which retries for ~25 s per candidate file when the hub is unreachable, and for minutes when the network
silently drops packets. So we never hand a tag to open_clip. We look the weights up in the huggingface
cache ourselves and pass open_clip the cached *file* (plus the tag's preprocessing settings), which needs
no network at all. Only when the weights are not cached do we download them, and only after a 3-second
TCP probe of the hub says it is reachable (skipped when a proxy is configured, which the probe cannot
judge; `HF_HUB_OFFLINE=1` forbids the download outright).
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelUnavailable, one_line

MIB = 1 << 20
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
FIX_WEIGHTS = "run once with network: searchfs doctor --fetch, or set [model] pretrained = /path/to/checkpoint"
HF_HUB = "hf-hub:"


def is_checkpoint_path(pretrained: str) -> bool:
    """open_clip tags are plain words; anything with a slash, ~ or a weights suffix is a file."""
    text = pretrained.strip()
    return "/" in text or os.sep in text or text.startswith(("~", ".")) or text.lower().endswith(CHECKPOINT_SUFFIXES)


_FINGERPRINTS: dict[tuple, str] = {}


def checkpoint_fingerprint(path: Path) -> str:
    """Size + hash of the first and last MiB: cheap on multi-GB files and unchanged when the file moves."""
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _FINGERPRINTS:
        digest = hashlib.sha256(str(st.st_size).encode())
        with open(path, "rb") as handle:
            digest.update(handle.read(MIB))
            if st.st_size > MIB:
                handle.seek(max(MIB, st.st_size - MIB))
                digest.update(handle.read(MIB))
        _FINGERPRINTS[key] = digest.hexdigest()[:16]
    return _FINGERPRINTS[key]


def _checkpoint_file(settings) -> Path:
    path = Path(settings.model_pretrained).expanduser()
    if not path.is_file():
        raise ModelUnavailable(
            f"checkpoint file for model {settings.model_name} not found: {path}; "
            "set [model] pretrained = /path/to/checkpoint or an open_clip tag"
        )
    return path


def model_id(settings) -> str:
    """Stable id of architecture + weights; embeddings in the catalog are stored under it."""
    name, pretrained = settings.model_name, settings.model_pretrained.strip()
    if not pretrained:
        return f"{name}/random"
    if is_checkpoint_path(pretrained):
        try:
            return f"{name}/file:{checkpoint_fingerprint(_checkpoint_file(settings))}"
        except (OSError, ModelUnavailable):
            # No weights to fingerprint: an id that matches no stored embedding, so everything waits as
            # pending, and metadata keeps being served. Loading the model says what is wrong.
            return f"{name}/file:unavailable"
    return f"{name}/{pretrained}"


def weights_status(settings) -> tuple[bool, str]:
    """Can the configured weights be loaded without network? (ok, one-line message) for `searchfs doctor`."""
    name, pretrained = settings.model_name, settings.model_pretrained.strip()
    if name.startswith(HF_HUB):
        folder = _cached_hub_model(name[len(HF_HUB) :])
        if folder:
            return True, f"model {name} is cached at {folder}"
        return False, f"model {name} is not in the local huggingface cache; {FIX_WEIGHTS}"
    if not pretrained:
        return False, f"model {name} has no weights configured (random init); {FIX_WEIGHTS}"
    if is_checkpoint_path(pretrained):
        return _file_status(settings)
    try:
        _register_config(settings)
        _check_model_name(name, settings.model_config_file)
        cfg = _tag_config(name, pretrained)
    except ModelUnavailable as exc:
        return False, str(exc)
    path = cached_weights(cfg)
    if path:
        return True, f"weights for {name}/{pretrained} are cached at {path}"
    return False, f"weights for {name}/{pretrained} are not in the local cache ({_hub_source(cfg)}); {FIX_WEIGHTS}"


def _file_status(settings) -> tuple[bool, str]:
    try:
        path = _checkpoint_file(settings)
        with open(path, "rb") as handle:
            handle.read(1)
    except ModelUnavailable as exc:
        return False, str(exc)
    except OSError as exc:
        return False, f"cannot read checkpoint {settings.model_pretrained}: {exc.strerror or exc}"
    return True, f"checkpoint {path} ({path.stat().st_size / MIB:.0f} MiB)"


def _register_config(settings) -> None:
    """Register a user's architecture JSON (open_clip names it after the file's stem)."""
    if not settings.model_config_file:
        return
    import open_clip

    path = Path(settings.model_config_file).expanduser()
    if not path.is_file():
        raise ModelUnavailable(f"model config file not found: {path}; fix [model] config_file")
    try:
        open_clip.add_model_config(str(path))
    except Exception as exc:  # open_clip raises bare JSON/KeyError on a malformed file
        raise ModelUnavailable(f"cannot use model config {path}: {one_line(exc)}; fix [model] config_file") from exc


def _check_model_name(name: str, config_file: str = "") -> None:
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")) or name in open_clip.list_models():
        return
    if config_file:  # open_clip names a registered config after its file, whatever the JSON says
        hint = f"[model] config_file registers {Path(config_file).stem!r}: rename the file or set [model] name to that"
    else:
        hint = (
            "set [model] name to one of open_clip.list_models() (e.g. ViT-B-32), "
            "or [model] config_file = /path/to/<name>.json"
        )
    raise ModelUnavailable(f"unknown model {name!r}: not an open_clip architecture; {hint}")


def _tag_config(name: str, tag: str) -> dict:
    from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model

    _check_model_name(name)
    cfg = get_pretrained_cfg(name, tag)
    if not cfg:
        tags = ", ".join(list_pretrained_tags_by_model(name)) or "none"
        raise ModelUnavailable(
            f"{tag!r} is not a pretrained tag of {name} (known: {tags}) nor a file; "
            "set [model] pretrained = <tag> or /path/to/checkpoint"
        )
    return cfg


def _hub_files(cfg: dict) -> tuple[str, list[str]]:
    """The HF repo and the file names open_clip would try, in its order (safetensors first)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    hub = cfg.get("hf_hub", "")
    if hub.endswith("/"):  # open_clip's convention: a bare repo means its default weights file
        repo, filename = hub.rstrip("/"), HF_WEIGHTS_NAME
    else:
        repo, filename = os.path.split(hub)
    names = [filename]
    if filename == HF_WEIGHTS_NAME:
        names.insert(0, HF_SAFE_WEIGHTS_NAME)
    elif filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def _hub_source(cfg: dict) -> str:
    return f"huggingface {cfg['hf_hub'].rstrip('/')}" if cfg.get("hf_hub") else cfg.get("url", "?")


def cached_weights(cfg: dict) -> str | None:
    """Path of the tag's weights in the huggingface (or legacy ~/.cache/clip) cache, else None."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    if cfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache

        repo, names = _hub_files(cfg)
        for filename in names:
            found = try_to_load_from_cache(repo, filename)
            if isinstance(found, str) and os.path.isfile(found):
                return found
    if cfg.get("url"):
        legacy = Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(cfg["url"]).path)
        if legacy.is_file():
            return str(legacy)
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a direct probe says nothing about a proxied route; rely on the hub client's timeouts
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _fetch_weights(name: str, tag: str, cfg: dict) -> str:
    if not _hub_reachable():
        raise ModelUnavailable(
            f"weights for {name}/{tag} are not cached and {_hub_source(cfg)} is unreachable (offline?); {FIX_WEIGHTS}"
        )
    from open_clip.pretrained import download_pretrained

    try:
        path = download_pretrained(cfg)
    except Exception as exc:
        raise ModelUnavailable(f"cannot download weights for {name}/{tag}: {one_line(exc)}; {FIX_WEIGHTS}") from exc
    if not path:
        raise ModelUnavailable(f"open_clip has no download source for {name}/{tag}; {FIX_WEIGHTS}")
    return path


def model_source(settings) -> str:
    """The architecture name to hand open_clip. An `hf-hub:org/repo` model whose config and weights are in
    the huggingface cache loads from that folder (`local-dir:`), which needs no network at all; one that is
    not cached is fetched only when the hub answers within 3 s, the rule tag weights follow (open_clip
    alone retries for ~30 s and prints a dozen warnings when offline)."""
    name = settings.model_name
    if not name.startswith(HF_HUB):
        return name
    repo = name[len(HF_HUB) :]
    folder = _cached_hub_model(repo)
    if folder is not None:
        return f"local-dir:{folder}"
    if not _hub_reachable():
        raise ModelUnavailable(
            f"model {name} is not in the local huggingface cache and the hub is unreachable (offline?); {FIX_WEIGHTS}"
        )
    return name


def _cached_hub_model(repo: str) -> str | None:
    """The cache folder holding both the repo's open_clip_config.json and its weights, else None."""
    from huggingface_hub import try_to_load_from_cache
    from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME

    config = try_to_load_from_cache(repo, HF_CONFIG_NAME)
    if not isinstance(config, str):
        return None
    for weights in (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME):
        found = try_to_load_from_cache(repo, weights)
        if isinstance(found, str) and os.path.dirname(found) == os.path.dirname(config):
            return os.path.dirname(config)
    return None


def resolve_weights(settings) -> tuple[str | None, dict]:
    """(checkpoint file or None for random init, create_model_and_transforms overrides from the tag)."""
    name, pretrained = settings.model_name, settings.model_pretrained.strip()
    _register_config(settings)
    _check_model_name(name, settings.model_config_file)
    if not pretrained or name.startswith(("hf-hub:", "local-dir:")):
        return None, {}
    if is_checkpoint_path(pretrained):
        return str(_checkpoint_file(settings)), {}
    cfg = _tag_config(name, pretrained)
    path = cached_weights(cfg) or _fetch_weights(name, pretrained, cfg)
    keys = {
        "mean": "image_mean",
        "std": "image_std",
        "interpolation": "image_interpolation",
        "resize_mode": "image_resize_mode",
        "quick_gelu": "force_quick_gelu",
    }
    # What open_clip would take from the tag had we passed it the tag; quick_gelu it only warns about,
    # though weights trained with QuickGELU (OpenAI's) are measurably worse without it.
    return path, {arg: cfg[key] for key, arg in keys.items() if cfg.get(key)}


def input_size_hint(settings) -> int | None:
    """The model's input side from its open_clip config, read as JSON (no torch, no open_clip import):
    lets decoding start while the model loads. None when only loading the model can tell."""
    import importlib.util
    import json

    path = Path(settings.model_config_file).expanduser() if settings.model_config_file else None
    if path is None or path.stem != settings.model_name:
        spec = importlib.util.find_spec("open_clip")
        folders = (spec.submodule_search_locations or []) if spec else []
        path = next((Path(f) / "model_configs" / f"{settings.model_name}.json" for f in folders), None)
    try:
        size = json.loads(path.read_text())["vision_cfg"].get("image_size", 224) if path else None
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if isinstance(size, list) and size and all(isinstance(v, int) for v in size):
        size = max(size)
    return size if isinstance(size, int) and size > 0 else None
