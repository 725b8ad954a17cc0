"""Benchmark: `searchfs index` of 12 MP photos, whole runs in fresh processes, against bounds measured in the
same run. Prints one JSON object (progress on stderr); no timing asserts.

    python benchmarks/bench_index.py                 # 200 generated 4000x3000 JPEGs with EXIF, ViT-B-32
    python benchmarks/bench_index.py --quick         # 64 photos
    python benchmarks/bench_index.py --corpus        # the photos in ../shared/corpus (if present) instead
    python benchmarks/bench_index.py --photos 500 --size 1600x1200

ViT-B-32 with RANDOM weights (a checkpoint file made once by benchmarks/_weights.py; speed does not depend
on weight values), on the CPU. What it measures, all in one run so the noise of a shared machine hits
every side alike:

  bare            the model alone (`embed_pil` on pictures already at the input size), fp32 and the
                  auto precision (bf16 where the CPU has it), and the decoder alone (`load_image` + the
                  model's transform, one thread), in images/s
  fp32_bound      the fastest an fp32 pipeline could index on this machine: the model at its bare rate
                  plus the decoding it cannot avoid, spread over the cores:
                  1 / (1 / bare_fp32 + 1 / (cores x decode_per_thread))
  runs            `python -m searchfs index DIR --json` in a fresh process, a fresh library each time:
                  auto (the model's derived files already made, as after the first index ever), fp32
                  (`[model] precision = "fp32"`, what a CPU without bf16 runs), and first_ever (a fresh
                  SEARCHFS_HOME: the text tower export and the self-check's fp32 reference included).
                  Each: wall time from spawn to exit, photos/s, peak RSS of the process (wait4)
  warm            the same index in a fresh process whose model is loaded before the timing starts: the
                  per-photo work alone (interleaved with the auto runs)
  fixed_s         median of (auto run wall - warm index wall): what a fresh process adds (start, imports,
                  the part of the model load the scan does not hide, exit)
  reindex/rename  `Library.index` again unchanged (files/s, must embed 0) and after renaming every file

TARGETS (see `targets` in the output): auto rate >= 1.4 x fp32_bound on a CPU with bf16 (>= 0.9 x
without); fp32 rate >= 0.9 x fp32_bound; fixed_s <= 1.5; peak RSS of the auto run <= 1.2 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _bytecode import ensure_bytecode  # noqa: E402
from _weights import CACHE, random_checkpoint  # noqa: E402

CORPUS = REPO.parent / "shared" / "corpus"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".avif"}
MB = 1_000_000
TARGETS = {"auto_bf16": 1.4, "auto_no_bf16": 0.9, "fp32": 0.9, "fixed_s": 1.5, "peak_rss_mb": 1200}


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def make_photos(folder: Path, count: int, size: tuple[int, int]) -> list[Path]:
    """Photo-like JPEGs (gradients + noise, so they have camera-like file sizes) with EXIF, in 4 folders."""
    import numpy as np
    from PIL import Image

    sys.path.insert(0, str(REPO / "tests"))
    from photos import DATETIME_ORIGINAL, EXIF_IFD, FNUMBER, ISO, MAKE, MODEL

    width, height = size
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack([x / width, y / height, (x + y) / (width + height)], axis=-1) * 255
    noise = rng.normal(0, 10, (height, width, 3)).astype(np.float32)
    paths = []
    for i in range(count):
        tint = np.array([(i * 37) % 256, (i * 91) % 256, (i * 53) % 256], np.float32)
        shift = (i * 7919) % (height * width)
        pixels = np.clip(0.6 * base + 0.4 * tint + np.roll(noise, shift), 0, 255).astype(np.uint8)
        exif = Image.Exif()
        exif[MAKE], exif[MODEL] = ("Canon", "Canon EOS 40D") if i % 2 else ("NIKON CORPORATION", "NIKON D70")
        sub = exif.get_ifd(EXIF_IFD)
        sub[DATETIME_ORIGINAL] = f"{2015 + i % 8}:{1 + i % 12:02d}:{1 + i % 28:02d} 12:00:00"
        sub[ISO], sub[FNUMBER] = 100 * (1 + i % 8), 2.8
        path = folder / f"album{i % 4}" / f"IMG_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90, exif=exif.tobytes())
        paths.append(path)
    return paths


def cached_photos(count: int, size: tuple[int, int]) -> Path:
    """Generated photos are kept in the benchmark cache: making 200 12 MP JPEGs takes a while."""
    folder = CACHE / f"photos-{size[0]}x{size[1]}-{count}"
    if not (folder / ".complete").exists():
        shutil.rmtree(folder, ignore_errors=True)
        make_photos(folder, count, size)
        (folder / ".complete").touch()
    return folder


def copy_corpus(folder: Path, limit: int) -> list[Path]:
    """Hard-link (or copy) up to `limit` image files of the shared corpus into `folder`."""
    paths = []
    for source in sorted(CORPUS.rglob("*")):
        if len(paths) >= limit:
            break
        if source.is_file() and source.suffix.lower() in PHOTO_SUFFIXES:
            target = folder / source.relative_to(CORPUS)
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source, target)
            except OSError:
                shutil.copy2(source, target)
            paths.append(target)
    return paths


def photo_paths(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in PHOTO_SUFFIXES)


class PhaseClock:
    """The index's progress callback: the last call of each phase (scan/read = walk + hash, metadata =
    exiftool, embed = decode + model)."""

    def __init__(self):
        self.last: dict[str, float] = {}

    def __call__(self, phase: str, done: int, total) -> None:
        self.last[phase] = time.perf_counter()

    def spans(self, start: float) -> dict:
        out, previous = {}, start
        for phase in sorted(self.last, key=self.last.get):
            out[phase] = round(self.last[phase] - previous, 3)
            previous = self.last[phase]
        return out


# ---------------------------------------------------------------------------------------------- bare parts


def bare_model(embedder, count: int, rounds: int) -> list[float]:
    """Images/s of `embed_pil` on pictures already at the input size (the transform is then ~free)."""
    import numpy as np
    from PIL import Image

    side = embedder.input_size
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]
    embedder.embed_pil(images[: embedder.batch_size])  # warm-up: first call allocates and picks kernels
    rates = []
    for _ in range(rounds):
        started = time.perf_counter()
        embedder.embed_pil(images)
        rates.append(count / (time.perf_counter() - started))
    return rates


def bare_decode(embedder, paths: list[Path]) -> float:
    """Files/s of `load_image` (draft decode, orientation, RGB) + the model's transform, one thread."""
    from searchfs.ingest.decode import load_image

    runtime = embedder.runtime
    started = time.perf_counter()
    for path in paths:
        runtime.prepare(load_image(path, 0, runtime.input_size))
    return len(paths) / (time.perf_counter() - started)


def bare_costs(settings, paths: list[Path], args) -> dict:
    """The model alone in fp32 and in the auto precision, and the decoder alone, interleaved."""
    from searchfs.ingest.embed import Embedder

    fp32, auto = Embedder(settings.replace(model_precision="fp32")), Embedder(settings)
    try:
        fp32.load()
        auto.load()
        rates: dict[str, list[float]] = {"fp32": [], "auto": [], "decode": []}
        sample = paths[: args.decode_sample]
        for _ in range(args.rounds):
            rates["fp32"] += bare_model(fp32, args.bare_images, 1)
            rates["auto"] += bare_model(auto, args.bare_images, 1)
            rates["decode"].append(bare_decode(auto, sample))
        best = {k: max(v) for k, v in rates.items()}  # best: the least disturbed by other jobs
        cores = len(os.sched_getaffinity(0))
        return {
            "auto_precision": auto.precision,
            "self_check": str(auto.runtime.verdict) if auto.runtime.verdict else None,
            "batch_size": auto.batch_size,
            "images_per_s": {k: [round(r, 2) for r in v] for k, v in rates.items()},
            "best": {k: round(v, 2) for k, v in best.items()},
            "cores": cores,
            "fp32_bound": round(1 / (1 / best["fp32"] + 1 / (cores * best["decode"])), 2),
        }
    finally:
        fp32.close()
        auto.close()


# ---------------------------------------------------------------------------------------------- whole runs


# Spawned from this process, a child's peak RSS would start at this process's own (Linux carries the high-water
# mark across fork and exec, and this process holds two models): a small launcher spawns the index instead,
# and reports the peak of its only child.
LAUNCHER = """
import json, os, resource, subprocess, sys, time
started = time.perf_counter()
done = subprocess.run(sys.argv[1:], capture_output=True)
wall = time.perf_counter() - started
usage = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"rc": done.returncode, "wall_s": wall, "maxrss_kib": usage.ru_maxrss,
                  "cpu_s": usage.ru_utime + usage.ru_stime, "stdout": done.stdout.decode(),
                  "stderr": done.stderr.decode()[-800:]}))
"""


def cli_index(photos: Path, env: dict, library: str, count: int) -> dict:
    """One `searchfs index` in a fresh process: wall from spawn to exit, its peak RSS, its report."""
    command = [sys.executable, "-m", "searchfs", "--library", library, "index", str(photos), "--json"]
    launched = subprocess.run([sys.executable, "-c", LAUNCHER, *command], env=env, cwd=REPO, capture_output=True)
    result = json.loads(launched.stdout)
    if result["rc"]:
        raise SystemExit(f"index failed ({result['rc']}): {result['stderr']}")
    return {
        "wall_s": round(result["wall_s"], 2),
        "photos_per_s": round(count / result["wall_s"], 2),
        "peak_rss_mb": round(result["maxrss_kib"] * 1024 / MB),  # ru_maxrss is in KiB on Linux
        "cpu_s": round(result["cpu_s"], 2),  # the index process (exiftool is not waited for: not counted)
        "embedded": json.loads(result["stdout"]).get("embedded"),
    }


def warm_child(photos: Path, env: dict, library: str) -> dict:
    """warm_index in a fresh process (like the CLI's), so that only the model's loading differs."""
    command = [sys.executable, __file__, "--warm-child", str(photos), library]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"warm index failed: {done.stderr[-800:]}")
    return json.loads(done.stdout.splitlines()[-1])


def warm_index(photos: Path, library: str) -> dict:
    """The same index in a process whose model is loaded already: the per-photo work alone. Then an
    unchanged re-index and a rename of every file, which must embed nothing."""
    from searchfs.config import load_settings
    from searchfs.library import Library

    count = len(photo_paths(photos))
    lib = Library(load_settings(library=library), create=True)
    try:
        lib.embedder.load()
        clock = PhaseClock()
        started = time.perf_counter()
        report = lib.index([photos], progress=clock)
        warm_s = time.perf_counter() - started
        phases = clock.spans(started)
        started = time.perf_counter()
        again = lib.index()
        reindex_s = time.perf_counter() - started
        renamed = [(p, p.with_name("renamed_" + p.name)) for p in photo_paths(photos)]
        for old, new in renamed:
            os.rename(old, new)
        try:
            calls, started = lib.embedder.model_calls, time.perf_counter()
            moved = lib.index()
            rename_s = time.perf_counter() - started
        finally:
            for old, new in renamed:
                os.rename(new, old)
        return {
            "wall_s": round(warm_s, 2),
            "photos_per_s": round(count / warm_s, 2),
            "embedded": report.embedded,
            "phases_s": phases,
            "reindex": {
                "files_per_s": round(count / reindex_s, 1),
                "embedded": again.embedded,
                "ok": not again.embedded,
            },
            "rename": {
                "files_per_s": round(count / rename_s, 1),
                "embedded": moved.embedded,
                "ok": moved.embedded == 0 and lib.embedder.model_calls == calls,
            },
        }
    finally:
        lib.close()


def run(args) -> dict:
    from searchfs.config import Settings

    checkpoint = random_checkpoint(args.model)
    tmp = Path(tempfile.mkdtemp(prefix="searchfs-bench-index-"))
    try:
        if args.corpus:
            if not CORPUS.is_dir():
                raise SystemExit(f"--corpus: {CORPUS} is not there")
            photos = tmp / "photos"
            copy_corpus(photos, args.photos)
        else:
            photos = cached_photos(args.photos, tuple(int(v) for v in args.size.lower().split("x")))
        paths = photo_paths(photos)
        mean_kib = sum(p.stat().st_size for p in paths) / len(paths) / 1024
        say(f"{len(paths)} photos ({mean_kib:.0f} KiB each)")
        home = tmp / "home"
        env = dict(os.environ, SEARCHFS_HOME=str(home), XDG_CONFIG_HOME=str(tmp / "config"), PYTHONPATH=str(REPO))
        env.update(
            SEARCHFS_MODEL_NAME=args.model, SEARCHFS_MODEL_PRETRAINED=str(checkpoint), SEARCHFS_MODEL_DEVICE="cpu"
        )
        env.pop("SEARCHFS_CONFIG", None)
        settings = Settings(home=home, model_name=args.model, model_pretrained=str(checkpoint), model_device="cpu")
        os.environ.update(env)  # this process's own Library and Embedder read the same settings

        first = cli_index(photos, dict(env, SEARCHFS_HOME=str(tmp / "first-home")), "first", len(paths))
        say(f"first index ever: {first}")
        bare = bare_costs(settings, paths, args)  # also makes home's derived model files (first load)
        say(f"bare: {bare['best']} images/s; fp32 bound {bare['fp32_bound']} photos/s")
        runs: dict[str, list[dict]] = {"auto": [], "fp32": [], "warm": []}
        for r in range(args.runs):  # interleaved: every kind of run shares the machine's noise
            runs["auto"].append(cli_index(photos, env, f"auto{r}", len(paths)))
            runs["warm"].append(warm_child(photos, env, f"warm{r}"))
            fp32_env = dict(env, SEARCHFS_MODEL_PRECISION="fp32")
            runs["fp32"].append(cli_index(photos, fp32_env, f"fp32{r}", len(paths)))
            say(f"run {r}: " + "; ".join(f"{kind} {runs[kind][-1]}" for kind in runs))
        return report(args, paths, mean_kib, bare, runs, first)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def report(args, paths, mean_kib, bare, runs, first) -> dict:
    best_auto = max(runs["auto"], key=lambda r: r["photos_per_s"])
    best_fp32 = max(runs["fp32"], key=lambda r: r["photos_per_s"])
    bound = bare["fp32_bound"]
    bf16 = bare["auto_precision"] == "bf16"
    wanted = TARGETS["auto_bf16"] if bf16 else TARGETS["auto_no_bf16"]
    warm = runs.pop("warm")
    fixed = round(statistics.median(a["wall_s"] - w["wall_s"] for a, w in zip(runs["auto"], warm)), 2)
    peak = max(r["peak_rss_mb"] for r in runs["auto"])
    targets = {
        "auto_rate": {"value": best_auto["photos_per_s"], "bound": round(wanted * bound, 2), "x_fp32_bound": wanted},
        "fp32_rate": {"value": best_fp32["photos_per_s"], "bound": round(TARGETS["fp32"] * bound, 2)},
        "fixed_s": {"value": fixed, "bound": TARGETS["fixed_s"]},
        "peak_rss_mb": {"value": peak, "bound": TARGETS["peak_rss_mb"]},
    }
    for name, target in targets.items():
        lower_is_better = name in ("fixed_s", "peak_rss_mb")
        target["ok"] = target["value"] <= target["bound"] if lower_is_better else target["value"] >= target["bound"]
    return {
        "benchmark": "bench_index",
        "model": f"{args.model} (random weights)",
        "photos": len(paths),
        "source": str(CORPUS) if args.corpus else f"generated {args.size} JPEG with EXIF",
        "mean_file_kib": round(mean_kib, 1),
        "bare": bare,
        "runs": runs,
        "first_ever": first,
        "warm": warm,
        "auto_x_fp32_bound": round(best_auto["photos_per_s"] / bound, 3),
        "fp32_x_fp32_bound": round(best_fp32["photos_per_s"] / bound, 3),
        "targets": targets,
        "all_ok": all(t["ok"] for t in targets.values())
        and all(w["reindex"]["ok"] and w["rename"]["ok"] for w in warm),
        "bench_process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB),
    }


def moves_ok(warm: dict) -> bool:
    return warm["reindex"]["ok"] and warm["rename"]["ok"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="photos to generate (or take from --corpus)")
    parser.add_argument("--size", default="4000x3000", help="generated photo size, WxH")
    parser.add_argument("--corpus", action="store_true", help=f"use the image files of {CORPUS} instead")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--runs", type=int, default=2, help="CLI runs per precision")
    parser.add_argument("--rounds", type=int, default=3, help="bare measurements per part")
    parser.add_argument("--bare-images", type=int, default=64, help="images per bare-model measurement")
    parser.add_argument("--decode-sample", type=int, default=24, help="files per bare-decode measurement")
    parser.add_argument("--quick", action="store_true", help="64 photos, one run per precision")
    parser.add_argument("--warm-child", nargs=2, help=argparse.SUPPRESS)  # PHOTOS LIBRARY: one warm index
    args = parser.parse_args()
    if args.warm_child:
        print(json.dumps(warm_index(Path(args.warm_child[0]), args.warm_child[1])))
        return
    ensure_bytecode()  # fresh processes read it, as an installed package does (the parent's work, once)
    if args.quick:
        args.photos, args.runs, args.rounds, args.bare_images = min(args.photos, 64), 1, 2, 32
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
