"""Benchmark: indexing speed of the real pipeline (`Library.index`) against the bare model, in one run.

    python benchmarks/bench_index.py                 # 200 generated 1600x1200 JPEGs with EXIF, ViT-B-32
    python benchmarks/bench_index.py --quick         # 48 photos
    python benchmarks/bench_index.py --corpus        # the photos in ../shared/corpus (if present) instead
    python benchmarks/bench_index.py --photos 500 --size 4000x3000 --model ViT-B-32 --batch 16

What it measures (ViT-B-32 with RANDOM weights, `model_pretrained=""`, on CPU: speed does not depend on
weight values), all in the same process and run, so the noise of a shared machine hits both sides:

  index_files_per_s        photos / wall time of the first `Library.index` (model already loaded)
  bare_model_images_per_s  `Embedder.embed_pil` on images already at the model's input size, same batch
                           size: the model alone (3 rounds before AND 3 after the index; the median)
  ratio                    index_files_per_s / bare_model_images_per_s. TARGET: close to 1 (>= 0.9), i.e.
                           decode, hashing, exiftool and SQLite hidden behind the model.
  cpu_ratio                bare model CPU ms per image / index CPU ms per file (this process's threads;
                           exiftool, a separate process, is not counted). Less sensitive to other jobs on
                           the machine than wall time: with torch on every core, extra CPU is extra time.
  bare_decode_ms_per_file  `load_image` (JPEG draft decode + EXIF orientation + RGB) + the model's
                           transform, one thread, per file; and the hash and exiftool costs alone
  phases_s                 time breakdown of the index from its progress callback (first to last call of
                           each phase: scan/read = walk + hash, metadata = exiftool, embed = decode + model)
  reindex                  `Library.index` again on the unchanged tree: files/s, must embed 0
  rename                   every file renamed (os.rename), then `Library.index`: must embed 0
  peak_rss_mib             peak resident memory of the process (ru_maxrss)

Prints one JSON object on stdout (progress on stderr); no timing asserts. Temp folders are removed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CORPUS = REPO.parent / "shared" / "corpus"
PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".heic", ".heif", ".webp", ".tif", ".tiff", ".gif", ".bmp", ".avif"}


def say(*parts) -> None:
    print(*parts, file=sys.stderr, flush=True)


def peak_rss_mib() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


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


class PhaseClock:
    """The index's progress callback: first and last call of each phase, cheap enough to leave on."""

    def __init__(self):
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}

    def __call__(self, phase: str, done: int, total) -> None:
        now = time.perf_counter()
        self.first.setdefault(phase, now)
        self.last[phase] = now

    def spans(self, start: float) -> dict:
        """Seconds per phase. A phase's span runs from the end of the previous phase (its first progress
        call comes after its first batch, so the batch itself would otherwise be missed)."""
        order = sorted(self.last, key=lambda p: self.last[p])
        out, previous = {}, start
        for phase in order:
            out[phase] = round(self.last[phase] - previous, 3)
            previous = self.last[phase]
        return out


def bare_model(embedder, count: int, rounds: int = 3) -> dict:
    """Images/s of `embed_pil` on images already at the input size (the transform is then ~free): wall
    and process CPU time per round. Several rounds, because the cores are shared with other jobs."""
    import numpy as np
    from PIL import Image

    side = embedder.input_size
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(count)]
    embedder.embed_pil(images[: 2 * embedder.settings.model_batch_size])  # warm-up
    rates, cpu = [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        embedder.embed_pil(images)
        rates.append(count / (time.perf_counter() - t))
        cpu.append((time.process_time() - c) / count)
    return {
        "images": count,
        "images_per_s": [round(r, 2) for r in rates],
        "cpu_ms_per_image": [round(1000 * c, 1) for c in cpu],
    }


def bare_decode(embedder, paths: list[Path], sample: int) -> dict:
    """Per-file cost, one thread: load_image (draft decode) + the model's transform; hash; exiftool."""
    from searchfs.ingest.decode import load_image
    from searchfs.ingest.extract import ExifExtractor
    from searchfs.ingest.scan import hash_file

    chosen = paths[:sample]
    t = time.perf_counter()
    for path in chosen:
        embedder._transform(load_image(path, 0, embedder.input_size))
    decode = (time.perf_counter() - t) / len(chosen)
    t = time.perf_counter()
    for path in chosen:
        hash_file(os.fsencode(path))
    hashing = (time.perf_counter() - t) / len(chosen)
    with tempfile.TemporaryDirectory(prefix="searchfs-bench-exif-") as scratch:
        with ExifExtractor("exiftool", scratch_dir=Path(scratch)) as extractor:
            extractor.extract([os.fsencode(chosen[0])])  # start exiftool outside the timing
            t = time.perf_counter()
            extractor.extract([os.fsencode(p) for p in chosen])
            exif = (time.perf_counter() - t) / len(chosen)
    return {
        "files": len(chosen),
        "decode_transform_ms_per_file": round(1000 * decode, 2),
        "hash_ms_per_file": round(1000 * hashing, 2),
        "exiftool_ms_per_file": round(1000 * exif, 2),
    }


def run(args) -> dict:
    from searchfs.config import Settings
    from searchfs.library import Library

    tmp = Path(tempfile.mkdtemp(prefix="searchfs-bench-index-"))
    try:
        photos = tmp / "photos"
        photos.mkdir()
        t = time.perf_counter()
        if args.corpus:
            if not CORPUS.is_dir():
                raise SystemExit(f"--corpus: {CORPUS} is not there")
            paths = copy_corpus(photos, args.photos)
        else:
            width, height = (int(v) for v in args.size.lower().split("x"))
            paths = make_photos(photos, args.photos, (width, height))
        total_bytes = sum(p.stat().st_size for p in paths)
        say(f"{len(paths)} photos ({total_bytes / len(paths) / 1024:.0f} KiB each) in {time.perf_counter() - t:.1f}s")

        settings = Settings(
            home=tmp / "home",
            model_name=args.model,
            model_pretrained="",
            model_device="cpu",
            model_batch_size=args.batch,
            model_threads=args.threads,
        )
        lib = Library(settings, create=True)
        try:
            t = time.perf_counter()
            lib.embedder.load()
            load_s = time.perf_counter() - t
            say(f"model {lib.model_id} loaded in {load_s:.1f}s; bare model ...")
            bare_before = bare_model(lib.embedder, args.bare_images)
            say(f"bare model {bare_before['images_per_s']} images/s; indexing ...")
            cpu0 = time.process_time()

            clock = PhaseClock()
            calls_before = lib.embedder.model_calls
            t0 = time.perf_counter()
            report = lib.index([photos], progress=clock)
            index_s = time.perf_counter() - t0
            index_calls = lib.embedder.model_calls - calls_before
            index_cpu = time.process_time() - cpu0
            phases = clock.spans(t0)
            phases["after_last_progress"] = round(index_s - sum(phases.values()), 3)
            say(f"index: {len(paths)} files in {index_s:.1f}s ({report.embedded} embedded)")

            bare_after = bare_model(lib.embedder, args.bare_images)
            say(f"bare model again {bare_after['images_per_s']} images/s; decode ...")
            decode = bare_decode(lib.embedder, paths, min(len(paths), args.decode_sample))

            t = time.perf_counter()
            again = lib.index()
            reindex_s = time.perf_counter() - t
            say(f"re-index: {reindex_s:.2f}s, embedded {again.embedded}")

            for path in paths:
                os.rename(path, path.with_name("renamed_" + path.name))
            calls = lib.embedder.model_calls
            t = time.perf_counter()
            moved = lib.index()
            rename_s = time.perf_counter() - t
            say(f"rename: {rename_s:.2f}s, embedded {moved.embedded}")

            all_rates = bare_before["images_per_s"] + bare_after["images_per_s"]
            bare_rate = statistics.median(all_rates)
            bare_cpu = statistics.median(bare_before["cpu_ms_per_image"] + bare_after["cpu_ms_per_image"]) / 1000
            index_rate = len(paths) / index_s
            model_only_s = len(paths) / bare_rate
            return {
                "benchmark": "bench_index",
                "model": lib.model_id,
                "device": lib.embedder.device,
                "batch_size": args.batch,
                "torch_threads": _torch_threads(),
                "decode_workers": lib.embedder.decode_workers,
                "cpu_count": os.cpu_count(),
                "photos": len(paths),
                "source": str(CORPUS) if args.corpus else f"generated {args.size} JPEG with EXIF",
                "mean_file_kib": round(total_bytes / len(paths) / 1024, 1),
                "model_load_s": round(load_s, 2),
                "index_s": round(index_s, 2),
                "index_files_per_s": round(index_rate, 2),
                "index_report": {k: report.to_json().get(k) for k in ("new", "embedded", "quarantined", "pending")},
                "index_model_calls": index_calls,
                "bare_model_images_per_s": round(bare_rate, 2),
                "bare_model_before": bare_before,
                "bare_model_after": bare_after,
                "bare_model_images_per_s_best": max(all_rates),
                "ratio": round(index_rate / bare_rate, 3),
                "ratio_vs_best_bare": round(index_rate / max(all_rates), 3),
                "index_cpu_ms_per_file": round(1000 * index_cpu / len(paths), 1),
                "bare_model_cpu_ms_per_image": round(1000 * bare_cpu, 1),
                "cpu_ratio": round(bare_cpu / (index_cpu / len(paths)), 3),
                "target_ratio": "close to 1 (>= 0.9)",
                "meets_target": index_rate / bare_rate >= 0.9,
                "non_model_s": round(index_s - model_only_s, 2),
                "phases_s": phases,
                "bare_per_file": decode,
                "serial_estimate_s": round(
                    len(paths)
                    * (
                        decode["decode_transform_ms_per_file"]
                        + decode["hash_ms_per_file"]
                        + decode["exiftool_ms_per_file"]
                    )
                    / 1000
                    + model_only_s,
                    2,
                ),
                "reindex": {
                    "seconds": round(reindex_s, 3),
                    "files_per_s": round(len(paths) / reindex_s, 1),
                    "embedded": again.embedded,
                    "ok": again.embedded == 0,
                },
                "rename": {
                    "seconds": round(rename_s, 3),
                    "files_per_s": round(len(paths) / rename_s, 1),
                    "embedded": moved.embedded,
                    "model_calls": lib.embedder.model_calls - calls,
                    "new": moved.new,
                    "removed": moved.removed,
                    "reused": moved.reused,
                    "ok": moved.embedded == 0 and lib.embedder.model_calls == calls,
                },
                "peak_rss_mib": peak_rss_mib(),
            }
        finally:
            lib.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=200, help="photos to generate (or take from --corpus)")
    parser.add_argument("--size", default="1600x1200", help="generated photo size, WxH")
    parser.add_argument("--corpus", action="store_true", help=f"use the image files of {CORPUS} instead")
    parser.add_argument("--model", default="ViT-B-32", help="open_clip architecture (random weights)")
    parser.add_argument("--batch", type=int, default=16, help="model batch size (the default setting)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--bare-images", type=int, default=64, help="images per bare-model measurement")
    parser.add_argument("--decode-sample", type=int, default=64, help="files for the per-file decode costs")
    parser.add_argument("--quick", action="store_true", help="48 photos, smaller bare measurements")
    args = parser.parse_args()
    if args.quick:
        args.photos, args.bare_images, args.decode_sample = min(args.photos, 48), 32, 16
    print(json.dumps(run(args), indent=2))


if __name__ == "__main__":
    main()
