"""Settings: defaults < TOML file < SEARCHFS_* environment < command-line flags.

A TOML key `key` in table `[section]` is the setting `section_key`, and the environment variable
`SEARCHFS_SECTION_KEY`. Three settings sit outside the tables because they say where everything else is:
`SEARCHFS_HOME` (catalog, index, logs), `SEARCHFS_CONFIG` (the TOML file) and `SEARCHFS_LIBRARY`.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")  # [model] precision; ingest/runtime.py chooses among them

DEFAULT_EXCLUDE = (
    "@eaDir",  # Synology thumbnails
    "#recycle",
    "#snapshot",
    ".@__thumb",  # QNAP thumbnails
    "$RECYCLE.BIN",
    "System Volume Information",
    "lost+found",
    "*.part",
    "*.crdownload",
    "*.tmp",
    "*~",
)


@dataclass(frozen=True)
class Settings:
    home: Path
    library: str = "default"
    config_file: Path | None = None

    # [model]
    model_name: str = "ViT-B-32"
    model_pretrained: str = "datacomp_xl_s13b_b90k"  # an open_clip tag or a path to a checkpoint file
    model_config_file: str = ""  # an open_clip model config (JSON) for architectures open_clip lacks
    model_device: str = "auto"  # auto | cpu | cuda | mps
    model_precision: str = "auto"  # auto | fp32 | bf16 | fp16: the image tower's (auto: self-checked bf16/fp16)
    model_batch_size: int = 0  # images per forward pass; 0 = chosen for the device
    model_text_tower: str = "numpy"  # numpy | torch: who answers new query texts (numpy needs no torch)
    model_threads: int = 0  # torch threads; 0 = torch's default

    # [index]
    index_exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    index_hidden: bool = False
    index_max_pixels: int = 0  # 0 = Pillow's own decompression-bomb limit

    # [exiftool]
    exiftool_path: str = "exiftool"
    exiftool_timeout: float = 30.0
    exiftool_batch: int = 64

    # [search]
    search_limit: int = 50
    search_min_score: float | None = None
    search_exact_below: int = 50_000  # exact cosine scan below this many vectors, inverted lists above

    # [mount]
    mount_allow_other: bool = False
    mount_max_entries: int = 1000  # a folder shows at most this many entries; bigger ones split by date or pages
    mount_entries: str = "links"  # links (symlinks to the originals) | files (read-only files read through)

    # [watch]
    watch_settle_seconds: float = 1.0
    watch_reconcile_minutes: float = 60.0
    watch_poll_seconds: float = 30.0
    watch_preload_model: bool = True  # load the image model once the start-up reconcile is done

    @property
    def library_dir(self) -> Path:
        return self.home / "libraries" / self.library

    @property
    def catalog_path(self) -> Path:
        return self.library_dir / "catalog.sqlite"

    @property
    def daemon_status_path(self) -> Path:
        """What a running daemon says about itself (daemon.py writes it, `searchfs status` reads it)."""
        return self.library_dir / "daemon.json"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **_coerce_all(changes))


_FIELDS = {f.name: f for f in dataclasses.fields(Settings)}
_SECTIONS = ("model", "index", "exiftool", "search", "mount", "watch")


def default_home(env: Mapping[str, str]) -> Path:
    if env.get("SEARCHFS_HOME"):
        return Path(env["SEARCHFS_HOME"]).expanduser()
    data = env.get("XDG_DATA_HOME") or os.path.join(env.get("HOME", "~"), ".local", "share")
    return Path(data).expanduser() / "searchfs"


def default_config_path(env: Mapping[str, str]) -> Path:
    if env.get("SEARCHFS_CONFIG"):
        return Path(env["SEARCHFS_CONFIG"]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or os.path.join(env.get("HOME", "~"), ".config")
    return Path(base).expanduser() / "searchfs" / "config.toml"


def load_settings(
    config: os.PathLike | None = None,
    env: Mapping[str, str] | None = None,
    **flags: Any,
) -> Settings:
    """Merge every layer. `flags` whose value is None are treated as not given."""
    env = os.environ if env is None else env
    explicit = config is not None or bool(env.get("SEARCHFS_CONFIG"))
    path = Path(config).expanduser() if config is not None else default_config_path(env)
    values: dict[str, Any] = {}
    if path.is_file():
        values.update(_from_toml(path))
        values["config_file"] = path
    elif explicit:
        raise ConfigError(f"config file not found: {path}")
    values.update(_from_env(env))
    values.update({k: v for k, v in flags.items() if v is not None})
    values.setdefault("home", default_home(env))
    if env.get("SEARCHFS_LIBRARY") and flags.get("library") is None:
        values["library"] = env["SEARCHFS_LIBRARY"]
    settings = Settings(**_coerce_all(values))
    _validate(settings)
    return settings


def _from_toml(path: Path) -> dict[str, Any]:
    # imported here: a CLI search that a daemon answers, with no config file, must not pay for a parser
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.10 only
        import tomli as tomllib  # type: ignore[import-not-found]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    values: dict[str, Any] = {}
    for section, table in data.items():
        if section not in _SECTIONS or not isinstance(table, dict):
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(_SECTIONS)})")
        for key, value in table.items():
            name = f"{section}_{key}"
            if name not in _FIELDS:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]")
            values[name] = value
    return values


def _from_env(env: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in _FIELDS:
        if name.split("_", 1)[0] in _SECTIONS:
            raw = env.get("SEARCHFS_" + name.upper())
            if raw is not None and raw != "":
                values[name] = raw
    return values


def _coerce_all(values: dict[str, Any]) -> dict[str, Any]:
    return {name: _coerce(name, value) for name, value in values.items()}


def _coerce(name: str, value: Any) -> Any:
    """Turn a TOML, env or flag value into the field's type, with a clear error when it cannot be."""
    if name not in _FIELDS:
        raise ConfigError(f"unknown setting {name!r}")
    default = _FIELDS[name].default
    try:
        if name in ("home", "config_file"):
            return None if value is None else Path(value).expanduser()
        if isinstance(default, bool):
            return parse_bool(value)
        if isinstance(default, int) and not isinstance(default, bool):
            return int(value)
        if isinstance(default, float) or name == "search_min_score":
            return None if value in (None, "") else float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            return tuple(str(v) for v in value)
        return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"setting {name}: cannot use {value!r} ({exc})") from exc


def parse_bool(value: Any) -> bool:
    """A yes/no in any of the spellings people use (settings, `has_gps=` filters); ValueError otherwise."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", "y"):
        return True
    if text in ("0", "false", "no", "off", "n"):
        return False
    raise ValueError("expected yes or no")


def _validate(settings: Settings) -> None:
    if settings.model_device not in ("auto", "cpu", "cuda", "mps"):
        raise ConfigError(f"model.device must be auto, cpu, cuda or mps, not {settings.model_device!r}")
    if not settings.library or "/" in settings.library or settings.library.startswith("."):
        raise ConfigError(f"library name must be a plain name, not {settings.library!r}")
    if settings.model_precision not in PRECISIONS:
        raise ConfigError(f"model.precision must be auto, fp32, bf16 or fp16, not {settings.model_precision!r}")
    if settings.model_text_tower not in ("numpy", "torch"):
        raise ConfigError(f"model.text_tower must be numpy or torch, not {settings.model_text_tower!r}")
    if settings.model_batch_size < 0:
        raise ConfigError("model.batch_size must be 0 (chosen for the device) or more")


def runtime_dir(env: Mapping[str, str] | None = None, create: bool = True) -> Path:
    """Where a running daemon leaves what other processes of the same user look for (its pid per mount
    point, its socket): $XDG_RUNTIME_DIR/searchfs (a per-user tmpfs), else /tmp/searchfs-<uid>. 0700.
    `create=False` (a client looking for a daemon) creates nothing; a folder that is missing is returned
    as it would be named."""
    env = os.environ if env is None else env
    base = env.get("XDG_RUNTIME_DIR")
    path = Path(base) / "searchfs" if base else Path("/tmp") / f"searchfs-{os.getuid()}"
    if not create:
        if path.exists() and path.stat().st_uid != os.getuid():
            raise ConfigError(f"{path} belongs to another user; set XDG_RUNTIME_DIR")
        return path
    ensure_private_dir(path)
    if path.stat().st_uid != os.getuid():  # /tmp is shared: never trust a folder someone else made
        raise ConfigError(f"{path} belongs to another user; set XDG_RUNTIME_DIR")
    return path


def ensure_private_dir(path: os.PathLike) -> Path:
    """Create `path` and every missing parent as 0700 (mkdir's own mode is cut by the umask, and
    `parents=True` ignores it for the parents), and tighten `path` itself if it exists. Folders that
    existed above it are left alone."""
    path = Path(path)
    missing = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        folder.mkdir(mode=0o700, exist_ok=True)
        os.chmod(folder, 0o700)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o700)
    return path


def ensure_private_file(path: os.PathLike) -> Path:
    """Create `path` as 0600 if missing (in a private folder), or tighten it: for files that other code
    (logging, open) then opens with the umask's looser default."""
    path = Path(path)
    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path
