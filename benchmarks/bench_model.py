"""CPU cost of candidate CLIP models, to choose the default, in fp32 and in the auto precision (bf16 on a
CPU that has it, after the runtime's self-check). Prints one JSON object.

Weights are random (a checkpoint file per architecture, made once by benchmarks/_weights.py): speed does
not depend on weight values, and no hub is needed; the checkpoint loads the way a user's weights do, so
`load_s` is the real loading path (meta-device build, mapped file, precision step and self-check).
Each (model, threads, precision) runs in its own subprocess so that load time and peak RSS are its own;
`bf16_speedup` compares the two precisions of one model measured in the same run.

    python benchmarks/bench_model.py                        # the default candidates
    python benchmarks/bench_model.py --models ViT-B-32 --batches 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _weights import random_checkpoint  # noqa: E402

CANDIDATES = ["ViT-B-32", "MobileCLIP2-S0", "ViT-B-16", "MobileCLIP2-S2"]
BATCH = 16


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def bench_one(name: str, batches: int, queries: int, threads: int, precision: str) -> dict:
    """Load through the real Embedder path (reparameterization included) and time images and texts."""
    import torch

    from searchfs.config import Settings
    from searchfs.ingest.embed import Embedder

    settings = Settings(
        home=Path(tempfile.mkdtemp()),
        model_name=name,
        model_pretrained=str(random_checkpoint(name)),
        model_batch_size=BATCH,
        model_threads=threads,
        model_precision=precision,
        model_text_tower="torch",  # the torch model's own text cost (the numpy tower: bench_query.py)
    )
    embedder = Embedder(settings)
    started = time.perf_counter()
    embedder.load()
    load_s = time.perf_counter() - started
    runtime = embedder.runtime
    size = embedder.input_size
    pixels = list(torch.rand(BATCH, 3, size, size))
    runtime.encode_images(pixels)  # warm-up: first call allocates and picks kernels
    images = timings(lambda: runtime.encode_images(pixels), batches)
    embedder.embed_text(["warm up"])
    texts = iter(f"a photo of thing number {i}" for i in range(10 * queries))
    query = timings(lambda: embedder.embed_text([next(texts)]), queries)  # unique texts defeat the cache
    return {
        "model": name,
        "precision": runtime.precision,
        "self_check": str(runtime.verdict) if runtime.verdict else None,
        "input_size": size,
        "dim": embedder.dim,
        "params_m": round(sum(p.numel() for p in runtime.model.parameters()) / 1e6, 1),
        "load_s": round(load_s, 2),
        "images_per_s_batch16": round(BATCH / images["best_s"], 2),
        "images_per_s_batch16_median": round(BATCH / images["median_s"], 2),
        "cpu_ms_per_image": round(1000 * images["cpu_s"] / BATCH, 1),
        "text_queries_per_s": round(1 / query["best_s"], 1),
        "text_ms_per_query_median": round(1000 * query["median_s"], 1),
        "text_cpu_ms_per_query": round(1000 * query["cpu_s"], 1),
        "peak_rss_mib": round(peak_rss_mib()),
        "torch_threads": torch.get_num_threads(),
        **(reparam_check(name) if threads == 1 and precision == "fp32" else {}),
    }


def timings(run, repeats: int) -> dict:
    """Best and median wall time, and median CPU time, of `repeats` calls. The cores here are shared with
    other jobs, so the best wall time and the CPU time say more about the model than the mean does."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {"best_s": min(walls), "median_s": statistics.median(walls), "cpu_s": statistics.median(cpus)}


def reparam_check(name: str) -> dict:
    """Does reparameterizing change anything, and does it pay? (Only MobileOne/FastViT models have branches.)"""
    import open_clip
    import torch

    from searchfs.ingest.torch_load import reparameterize

    model = open_clip.create_model(name, pretrained=None).eval()
    if not any(hasattr(m, "reparameterize") for m in model.modules()):
        return {"reparameterized": False}
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    pixels = torch.rand(BATCH, 3, size, size)
    with torch.inference_mode():
        model.encode_image(pixels)
        before = model.encode_image(pixels)
        plain = timings(lambda: model.encode_image(pixels), 2)
        reparameterize(model)  # same model object, so the comparison is like for like
        model.encode_image(pixels)
        after = model.encode_image(pixels)
        fused = timings(lambda: model.encode_image(pixels), 2)
    return {
        "reparameterized": True,
        "reparam_max_abs_diff": float((before - after).abs().max()),
        "images_per_s_before_reparam": round(BATCH / plain["best_s"], 2),
        "images_per_s_after_reparam": round(BATCH / fused["best_s"], 2),
    }


def bench_decode(repeats: int = 5) -> dict:
    """A 4000x3000 camera-sized JPEG: full decode vs draft (DCT-scaled) decode vs the full load_image path."""
    from PIL import Image

    from searchfs.ingest.decode import load_image

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "big.jpg"
        make_big_jpeg(path)

        def full():
            with Image.open(path) as image:
                image.convert("RGB")

        def draft():
            with Image.open(path) as image:
                image.draft("RGB", (448, 448))
                image.convert("RGB")

        result = {"jpeg_bytes": path.stat().st_size}
        for label, run in [("full", full), ("draft", draft), ("load_image", lambda: load_image(path, target=224))]:
            run()
            result[f"decode_ms_{label}"] = round(1000 * timings(run, repeats)["best_s"], 1)
        result["draft_size"] = list(load_image(path, target=224).size)
        return {"decode_4000x3000_jpeg": result}


def make_big_jpeg(path: Path) -> None:
    """Photo-like content (smooth gradients plus noise) so the JPEG has a realistic size (~3-5 MB)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:3000, 0:4000].astype(np.float32)
    base = np.stack([x / 4000 * 255, y / 3000 * 255, (x + y) / 7000 * 255], axis=-1)
    noisy = base + rng.normal(0, 12, base.shape)
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(path, quality=90)


def list_tags(names: list[str]) -> dict:
    import open_clip

    available = set(open_clip.list_models())
    return {
        name: " ".join(open_clip.list_pretrained_tags_by_model(name)) if name in available else None for name in names
    }


def run_child(name: str, threads: int, precision: str, args: argparse.Namespace) -> dict:
    command = [
        sys.executable,
        __file__,
        "--one",
        name,
        "--batches",
        str(args.batches),
        "--queries",
        str(args.queries),
        "--threads",
        str(threads),
        "--precisions",
        precision,
    ]
    child = subprocess.run(command, capture_output=True, text=True)
    if child.returncode:
        return {"model": name, "threads": threads, "precision": precision, "error": child.stderr.strip()[-300:]}
    return json.loads(child.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=CANDIDATES)
    parser.add_argument("--batches", type=int, default=6, help="timed batches of 16 images per model")
    parser.add_argument("--queries", type=int, default=30, help="timed single-text queries per model")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="*",
        default=sorted({1, os.cpu_count() or 1}),
        help="torch thread counts to measure (1 thread is the least disturbed by other jobs)",
    )
    parser.add_argument("--precisions", nargs="*", default=["fp32", "auto"], help="[model] precision values")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # child mode: bench one model, print its JSON
    args = parser.parse_args()
    if args.one:
        one = bench_one(args.one, args.batches, args.queries, args.threads[0], args.precisions[0])
        print(json.dumps(one))
        return
    report: dict = {"cpu_count": os.cpu_count(), "batch": BATCH, "weights": "random (checkpoint files)", "models": []}
    for name in args.models:
        for threads in args.threads:
            runs = {precision: run_child(name, threads, precision, args) for precision in args.precisions}
            fp32, auto = runs.get("fp32", {}), runs.get("auto", {})
            if "images_per_s_batch16" in fp32 and "images_per_s_batch16" in auto:
                auto["speedup_over_fp32"] = round(auto["images_per_s_batch16"] / fp32["images_per_s_batch16"], 2)
            report["models"] += runs.values()
    report.update(bench_decode())
    report["pretrained_tags"] = list_tags(args.models + ["MobileCLIP-S1", "MobileCLIP-S2", "MobileCLIP2-B"])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
