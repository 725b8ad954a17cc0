"""Benchmark: the vector index rebuilt from the catalog, and saved, in bounded memory (the speed-and-scale
issue: "the daemon's RSS at 1M photos <= 3 GB ... with no transient doubling on add or save").

    python benchmarks/bench_rebuild.py                  # the cached 1,000,000-photo library of bench_scale
    python benchmarks/bench_rebuild.py --photos 100000  # (built first when the cache has none)
    python benchmarks/bench_rebuild.py --compare-ram    # also the old in-RAM build, in the same run

A copy of the library's catalog (bench_scale's cache is not touched), in a fresh process per way of
building, each measuring its own peak RSS (VmHWM, reset between phases through /proc/self/clear_refs):

  disk   store/vector_build.py, what searchfs does: the catalog's vectors streamed to a scratch file,
         lists trained on a sample of its map, the rows written again in list order, then mapped
  ram    (--compare-ram) the build before it: every vector read from the catalog at once, added to the
         index's tail, sorted by list in RAM

and, for each, the save that writes the built index to its folder. The bound is the table itself
(count x dim x 4 bytes): a build that holds the table twice over (a "transient doubling") peaks above
2 x table; the target is below 1 x table beyond the process's baseline. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

MB = 1_000_000


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / MB
    return 0.0


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux 4.0+)


def child(catalog_path: str, model: str, way: str, scratch: str) -> dict:
    """One build and its save, in this (fresh) process."""
    from searchfs.store.catalog import Catalog
    from searchfs.store.vector_build import build_index
    from searchfs.store.vectors import DEFAULT_EXACT_BELOW, VectorIndex

    catalog = Catalog(Path(catalog_path))
    dim = catalog.embedding_dim(model)
    assert dim, f"no vectors of {model} in {catalog_path}"
    reset_peak()
    base = peak_rss_mb()
    started = time.perf_counter()
    if way == "disk":
        with catalog.live_vectors(model, dim) as (count, chunks):
            index = build_index(count, chunks, dim, model, DEFAULT_EXACT_BELOW, Path(scratch) / "build")
    else:  # the way before vector_build.py
        with catalog.live_vectors(model, dim) as (count, chunks):
            parts = list(chunks)
        import numpy as np

        ids = np.concatenate([p[0] for p in parts])
        vectors = np.frombuffer(b"".join(p[1].tobytes() for p in parts), np.float32).reshape(len(ids), dim)
        del parts
        index = VectorIndex.build(ids, vectors, model, exact_below=DEFAULT_EXACT_BELOW)
        del ids, vectors
    build_s = time.perf_counter() - started
    build_peak = peak_rss_mb() - base
    reset_peak()
    started = time.perf_counter()
    written = index.save(Path(scratch) / "vectors", generation=1)
    save_s = time.perf_counter() - started
    return {
        "vectors": len(index),
        "table_mb": round(len(index) * dim * 4 / MB),
        "baseline_mb": round(base),
        "build_s": round(build_s, 1),
        "build_peak_above_baseline_mb": round(build_peak),
        "save_s": round(save_s, 1),
        "save_peak_above_baseline_mb": round(peak_rss_mb() - base),
        "written_mb": round(written["written_bytes"] / MB),
        "kind": index.stats["kind"],
    }


def find_library(cache: Path, photos: int) -> Path:
    built = sorted(cache.glob(f"{photos}-*/recipe.json"), key=lambda p: p.stat().st_mtime)
    if built:
        return built[-1].parent
    from _scale_library import ensure

    return ensure(cache, photos).folder


def run(args) -> dict:
    library = find_library(args.cache, args.photos)
    catalogs = list((library / "home" / "libraries").glob("*/catalog.sqlite"))
    if not catalogs:
        raise SystemExit(f"no catalog in {library}")
    with tempfile.TemporaryDirectory(prefix="bench-rebuild-", dir=args.scratch) as tmp:
        catalog = Path(tmp) / "catalog.sqlite"
        print(f"copying {catalogs[0]} ...", file=sys.stderr, flush=True)
        shutil.copy2(catalogs[0], catalog)
        model = model_of(catalog)
        out: dict = {"benchmark": "bench_rebuild", "library": str(library), "model": model, "ways": {}}
        for way in ["disk"] + (["ram"] if args.compare_ram else []):
            print(f"building ({way}) ...", file=sys.stderr, flush=True)
            scratch = Path(tmp) / way
            scratch.mkdir()
            code = f"import json, sys; sys.path.insert(0, {str(HERE)!r}); import bench_rebuild as b; " \
                f"print(json.dumps(b.child({str(catalog)!r}, {model!r}, {way!r}, {str(scratch)!r})))"  # fmt: skip
            done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(f"{way} build failed: {done.stderr[-1500:]}")
            out["ways"][way] = json.loads(done.stdout.splitlines()[-1])
            shutil.rmtree(scratch, ignore_errors=True)
    disk = out["ways"]["disk"]
    out["targets"] = {
        key: {"value": disk[key], "bound": disk["table_mb"], "ok": disk[key] < disk["table_mb"]}
        for key in ("build_peak_above_baseline_mb", "save_peak_above_baseline_mb")
    }
    out["all_ok"] = all(t["ok"] for t in out["targets"].values())
    return out


def model_of(catalog: Path) -> str:
    import sqlite3

    with sqlite3.connect(f"file:{catalog}?mode=ro", uri=True) as conn:
        row = conn.execute(
            "SELECT m.name FROM models m JOIN embeddings e ON e.model_id = m.id GROUP BY m.id ORDER BY count(*) DESC"
        ).fetchone()
    return row[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--photos", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "searchfs-bench")
    parser.add_argument("--scratch", type=Path, default=None, help="where the catalog copy goes (needs ~3x its size)")
    parser.add_argument("--compare-ram", action="store_true", help="also the old in-RAM build")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
