"""Peak memory of decoding huge canvases, against the bound decode.py states. Prints one JSON object.

Each case runs in a fresh subprocess. Its peak is the resident high-water mark (VmHWM) reached while
the case runs, above what the process held just before (imports, and the model for the batch cases;
the peak counter is reset through /proc/self/clear_refs). The bound is decode.py's: at most
max(PIXEL_BUDGET, the largest picture's pixels) x 4 bytes of full-size pixels decode at once, plus one
strip per decoding thread; the batch cases add the model's own work on the reduced pictures (measured
here as a batch of small photos, `model_batch_mib`). `before` decodes the way searchfs did before the
reduce existed (full-size orientation copy and colour conversion), for comparison.

    python benchmarks/bench_memory.py            # one 13000x13000 PNG, a batch of four, four 8000x6000 JPEGs
    python benchmarks/bench_memory.py --quick    # 9000x9000 and 6000x4000, batches of two
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MIB = 1 << 20
SLACK_MIB = 64  # allocator and interpreter noise around a case


def high_water_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def current_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def reset_high_water() -> None:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)


def make_files(folder: Path, side: int, jpeg_size: tuple[int, int], count: int) -> dict[str, list[str]]:
    """Mostly flat canvases (a few hundred KB of PNG, like the issue's), and camera-sized JPEGs."""
    from PIL import Image, ImageDraw

    canvas = Image.new("RGB", (side, side), (240, 240, 235))
    draw = ImageDraw.Draw(canvas)
    for i in range(12):
        draw.rectangle(
            (i * side // 13, i * side // 15, i * side // 13 + side // 9, i * side // 15 + side // 11),
            fill=(20 * i, 90, 200 - 10 * i),
        )
    png = folder / "canvas.png"
    canvas.save(png, compress_level=1)
    del canvas, draw
    photo = Image.effect_noise(jpeg_size, 60).convert("RGB")
    jpeg = folder / "photo.jpg"
    photo.save(jpeg, quality=90)
    small = folder / "small.jpg"
    photo.resize((1024, 768)).save(small, quality=90)
    return {
        "png": [str(png)] * count,
        "jpeg": [str(jpeg)] * count,
        "small": [str(small)] * count,
        "png_pixels": side * side,
        "jpeg_pixels": jpeg_size[0] * jpeg_size[1],
        "png_bytes": png.stat().st_size,
    }


def child(case: str, files: dict) -> dict:
    """Run one case in this (fresh) process; return its peak above the process's state just before."""
    from searchfs.ingest.decode import load_image

    embedder = None
    if case.startswith("batch"):
        from searchfs.config import Settings
        from searchfs.ingest.embed import Embedder

        settings = Settings(
            home=Path(tempfile.mkdtemp()), model_name="ViT-B-32", model_pretrained="", model_batch_size=16
        )
        embedder = Embedder(settings)
        embedder.load()
        embedder.embed_images(files["small"][:1])  # warm-up: first call allocates the model's buffers
    before_mib = current_mib()
    reset_high_water()
    started = time.perf_counter()
    if case == "one_png":
        size = load_image(files["png"][0]).size
    elif case == "one_png_before":
        size = _decode_like_before(files["png"][0])
    elif case == "batch_png":
        size = [len(r.vector) if r.ok else 0 for r in embedder.embed_images(files["png"])]
    elif case == "batch_jpeg":
        size = [len(r.vector) if r.ok else 0 for r in embedder.embed_images(files["jpeg"])]
    elif case == "batch_small":
        size = [len(r.vector) if r.ok else 0 for r in embedder.embed_images(files["small"])]
    else:
        raise SystemExit(f"unknown case {case}")
    return {
        "case": case,
        "peak_mib": round(high_water_mib() - before_mib, 1),
        "seconds": round(time.perf_counter() - started, 2),
        "result": size,
    }


def _decode_like_before(path: str):
    """The decode path before the reduce: full-size load, orientation copy, conversion to RGB."""
    from PIL import Image, ImageOps

    with open(path, "rb") as handle:
        image = Image.open(handle)
        image.load()
        return ImageOps.exif_transpose(image).convert("RGB").size


def run_child(case: str, files: dict) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", case, "--files", json.dumps(files)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if done.returncode:
        return {"case": case, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def bound_mib(pixels: int, threads: int) -> float:
    """decode.py's bound for pictures of `pixels` each: the budget's worth of full-size decodes + strips."""
    from searchfs.ingest.decode import PIXEL_BUDGET, STRIP_PIXELS

    full = max(PIXEL_BUDGET, pixels) if pixels > PIXEL_BUDGET else min(PIXEL_BUDGET, pixels * threads)
    return (full + threads * 2 * STRIP_PIXELS) * 4 / MIB + SLACK_MIB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller canvases, batches of two")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--files", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, json.loads(args.files))))
        return
    side, jpeg_size, count = (9000, (6000, 4000), 2) if args.quick else (13000, (8000, 6000), 4)
    threads = max(2, min(4, os.cpu_count() or 2))  # Embedder.decode_workers
    with tempfile.TemporaryDirectory() as folder:
        files = make_files(Path(folder), side, jpeg_size, count)
        cases = {
            name: run_child(name, files)
            for name in ("one_png_before", "one_png", "batch_small", "batch_png", "batch_jpeg")
        }
    model_batch = cases["batch_small"].get("peak_mib", 0.0)
    bounds = {
        "one_png": bound_mib(files["png_pixels"], 1),
        "batch_png": bound_mib(files["png_pixels"], threads) + model_batch,
        "batch_jpeg": bound_mib(files["jpeg_pixels"] // 64, threads) + model_batch,  # drafted at 1/8 or less
    }
    report = {
        "png": f"{side}x{side}, {files['png_bytes'] // 1024} KB",
        "jpeg": f"{jpeg_size[0]}x{jpeg_size[1]}",
        "batch": count,
        "decode_threads": threads,
        "model_batch_mib": model_batch,
        "cases": cases,
        "bound_mib": {name: round(value, 1) for name, value in bounds.items()},
        "within_bound": {name: cases[name].get("peak_mib", float("inf")) <= bound for name, bound in bounds.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
