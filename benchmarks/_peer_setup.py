"""bench_peers.py's set-up of the peers: each in its own venv (plain PyPI resolution of TOOL==VERSION), and
the random weights of its real architecture, made offline and put where the tool loads them from. See
bench_peers.py's docstring for what each peer gets and why. A step that fails raises Unavailable with a
one-line reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

PEERS_CACHE = Path(os.environ.get("SEARCHFS_BENCH_PEERS", Path.home() / ".cache" / "searchfs-bench" / "peers"))
RCLIP_MODEL_SUBDIR = "ViT-B-32-256-datacomp_s34b_b86k"  # rclip/model_download.py MODEL_SUBDIR
RCLIP_VOCAB = "tokenizer/bpe_simple_vocab_16e6.txt.gz"  # rclip/model_download.py TOKENIZER_VOCAB
TINYCLIP_KEY = "ViT-40L"  # imgsearch/config.py MODELS key
TINYCLIP_MODEL = "TinyCLIP-ViT-40M-32-Text-19M"
TINYCLIP_FILE = "TinyCLIP-ViT-40M-32-Text-19M-LAION400M.pt"  # basename of its URL in tinyclip/pretrained.py


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class Peer:
    name: str
    version: str
    extra: str = ""

    @property
    def requirement(self) -> str:
        return f"{self.name}[{self.extra}]=={self.version}" if self.extra else f"{self.name}=={self.version}"

    def venv(self, root: Path) -> Path:
        return root / f"{self.name}-{self.version}"


PEERS = {"rclip": Peer("rclip", "3.3.0"), "imgsearch": Peer("imgsearch", "0.3.3", "all")}


class Unavailable(Exception):
    """A tool that could not be installed, prepared or run: its message is the one-line reason."""


def one_line(text: str, limit: int = 300) -> str:
    """The line of a failure's output that says why: the last that names an error, else the last one."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        return "no output"
    wanted = [line for line in lines if re.search(r"error|exception|not found|no such|denied|failed", line, re.I)]
    line = (wanted or lines)[-1]
    return line if len(line) <= limit else line[: limit - 3] + "..."


def venv_commands(peer: Peer, venv: Path, python: str) -> list[list[str]]:
    """How a peer's venv is made: a plain venv, then pip's ordinary resolution of TOOL==VERSION."""
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--no-input"]
    return [[python, "-m", "venv", str(venv)], [*pip, peer.requirement]]


def peer_env(base: dict[str, str], venv: Path | None, home: Path | None = None) -> dict[str, str]:
    """The environment a tool runs in: offline, the venv's bin first, nothing of this project's venv."""
    env = {k: v for k, v in base.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    if venv is not None:
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}{base.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(venv)
    if home is not None:
        env["HOME"] = str(home)
    return env


def run_logged(command: Sequence[str], log: Path, env: dict | None = None, timeout: float = 3600) -> None:
    with open(log, "ab") as out:
        out.write(f"\n$ {' '.join(command)}\n".encode())
        out.flush()
        try:
            done = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise Unavailable(f"{' '.join(command[:3])} ran past {timeout:.0f} s") from exc
    if done.returncode:
        tail = log.read_text(errors="replace")[-4000:]
        raise Unavailable(f"`{' '.join(command[-2:])}` exit {done.returncode}: {one_line(tail)} (see {log})")


def ensure_venv(peer: Peer, root: Path) -> Path:
    venv = peer.venv(root)
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    log = root / f"{venv.name}.pip.log"
    log.write_text("")
    say(f"{peer.name}: making {venv} (pip install {peer.requirement}; log {log})")
    for command in venv_commands(peer, venv, sys.executable):
        run_logged(command, log, env=peer_env(dict(os.environ), None))
    freeze = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "freeze"], capture_output=True, text=True)
    (venv / ".complete").write_text(freeze.stdout)
    return venv


def installed(venv: Path) -> dict[str, str]:
    """name -> version of what the venv holds (from the freeze kept when it was made)."""
    out = {}
    for line in (venv / ".complete").read_text().splitlines():
        if "==" in line:
            name, version = line.split("==", 1)
            out[name.lower()] = version
    return out


# ---------------------------------------------------------------------------------------------- random weights

RCLIP_EXPORT = r"""
import shutil, sys
from pathlib import Path
import open_clip, torch
out = Path(sys.argv[1])
models = out / sys.argv[2]
models.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
model = open_clip.create_model("ViT-B-32-256")  # no pretrained tag: open_clip's random init
model.eval()

class Visual(torch.nn.Module):  # as rclip's scripts/convert_model.py (v3.3.0) _VisualWrapper
    def __init__(self, visual):
        super().__init__()
        self.visual = visual
    def forward(self, inputs):
        return self.visual(inputs)

class Textual(torch.nn.Module):  # as its _TextualWrapper
    def __init__(self, clip_model):
        super().__init__()
        self.clip_model = clip_model
    def forward(self, inputs):
        return self.clip_model.encode_text(inputs)

torch.backends.mha.set_fastpath_enabled(False)
axes = {"input": {0: "batch"}, "output": {0: "batch"}}
for wrapper, dummy, name in (
    (Visual(model.visual), torch.randn(1, 3, 256, 256), "visual.onnx"),
    (Textual(model), torch.zeros(1, 77, dtype=torch.long), "textual.onnx"),
):
    wrapper.eval()
    torch.onnx.export(wrapper, (dummy,), str(models / name), input_names=["input"], output_names=["output"],
                      dynamic_axes=axes, opset_version=18, dynamo=False)
vocab = out / sys.argv[3]
vocab.parent.mkdir(parents=True, exist_ok=True)
shutil.copy2(Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz", vocab)
print("ok")
"""

TINYCLIP_SAVE = r"""
import sys
import torch
from tinyclip import create_model
torch.manual_seed(0)
model = create_model(sys.argv[1])  # no pretrained tag: random init of the architecture in its model_configs
torch.save(model.state_dict(), sys.argv[2])
print(sum(p.numel() for p in model.parameters()))
"""


def onnx_site(root: Path) -> Path:
    """The `onnx` package (torch.onnx.export needs it) in a folder of its own, for the export only."""
    site = root / "onnx-export-site"
    if not (site / ".complete").exists():
        shutil.rmtree(site, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        log = root / "onnx-export-site.pip.log"
        command = [sys.executable, "-m", "pip", "install", "--no-input", "--no-deps", "--target", str(site)]
        run_logged([*command, "onnx", "protobuf", "ml_dtypes"], log, env=peer_env(dict(os.environ), None))
        (site / ".complete").touch()
    return site


def rclip_models(root: Path, peer: Peer) -> Path:
    """A folder laid out as rclip's data dir holds its models, with random-weights ONNX files."""
    out = root / f"rclip-{peer.version}-random-models"
    if not (out / ".complete").exists():
        shutil.rmtree(out, ignore_errors=True)
        site = onnx_site(root)
        env = dict(os.environ, PYTHONPATH=str(site))
        say(f"rclip: exporting random-weights ViT-B-32-256 to ONNX in {out}")
        log = root / "rclip-export.log"
        run_logged([sys.executable, "-c", RCLIP_EXPORT, str(out), RCLIP_MODEL_SUBDIR, RCLIP_VOCAB], log, env=env)
        (out / ".complete").touch()
    return out


def rclip_datadir(folder: Path, models: Path) -> Path:
    """A fresh, empty RCLIP_DATADIR (no index) whose model files are the random ones (linked)."""
    folder.mkdir(parents=True)
    (folder / "tokenizer").mkdir()
    os.symlink(models / RCLIP_MODEL_SUBDIR, folder / RCLIP_MODEL_SUBDIR)
    os.symlink(models / RCLIP_VOCAB, folder / RCLIP_VOCAB)
    return folder


def tinyclip_weights(root: Path, peer: Peer, venv: Path) -> Path:
    path = root / f"imgsearch-{peer.version}-random-weights" / TINYCLIP_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        say(f"imgsearch: saving random-weights {TINYCLIP_MODEL} to {path}")
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        log = root / "imgsearch-weights.log"
        run_logged([str(venv / "bin" / "python"), "-c", TINYCLIP_SAVE, TINYCLIP_MODEL, str(tmp)], log)
        os.replace(tmp, path)
    return path
