"""Benchmark: read throughput of files mode (`[mount] entries = "files"`) against `cat` of the originals.

    python benchmarks/bench_files.py                 # 100 photos of 4 MB
    python benchmarks/bench_files.py --quick         # 20 photos of 2 MB
    python benchmarks/bench_files.py --photos 200 --mb 8 --repeats 5

It builds a real library whose catalog holds --photos files of --mb MB each (random bytes named .jpg,
with catalog rows written directly, metadata done and a random vector each, so the mount's start-up
reconcile finds nothing to do), then `searchfs mount --no-watch` with SEARCHFS_MOUNT_ENTRIES=files and
`[mount] max_entries` above --photos, exactly as a user starts it. The originals are read once first,
so both sides read from the page cache. Medians over --repeats runs:

  cat_originals_mb_s   `cat ROOT/*/*.jpg > /dev/null`
  cat_mount_mb_s       `cat MNT/exif/camera=BenchCam/*.jpg > /dev/null`: every read is a FUSE request
                       answered by the daemon with a pread on the original (the kernel drops its cache of
                       an entry at every open, as for every searchfs file)
  ratio                cat_mount / cat_originals
  TARGET               cat_mount_mb_s >= 100 (a 5 MB photo opens in under 50 ms; thumbnailers and copies
                       are bound by the disk, not by this)

Prints one JSON object; progress on stderr; no timing asserts; the mount is unmounted and temp folders
removed in `finally` blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _mounting import say, start_mount, stop_mount, wait_reconciled  # noqa: E402

TARGET_MB_S = 100


def build(settings, photos: Path, count: int, mb: float) -> None:
    import numpy as np

    from searchfs.ingest.tags import EXTRACTOR_VERSION
    from searchfs.library import Library
    from searchfs.records import Facet
    from searchfs.store.rows import NewPhoto

    rng = np.random.default_rng(0)
    rows = []
    for i in range(count):
        path = photos / f"d{i // 100:02d}" / f"IMG_{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.bytes(int(mb * 1e6)))
        st = path.stat()
        rows.append((os.fsencode(path.relative_to(photos)), st))
    with Library(settings, create=True) as lib:
        root = lib.catalog.add_root(os.fsencode(os.path.realpath(photos)))
        model = lib.model_id
        photos_rows = []
        for i, (rel, st) in enumerate(rows, start=1):
            vector = rng.standard_normal(512).astype(np.float32)
            facets = (Facet("camera", "BenchCam"),)
            photos_rows.append(
                NewPhoto(
                    rel, st.st_size, st.st_mtime_ns, st.st_ino, f"{i:040x}", facets, vector / np.linalg.norm(vector)
                )
            )
        with lib.catalog.transaction() as tx:
            tx.add_photos(root.id, photos_rows, model, EXTRACTOR_VERSION)


def cat_seconds(files: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(["cat", *files], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=100)
    parser.add_argument("--mb", type=float, default=4.0, help="size of each photo in MB")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="20 photos of 2 MB, 3 repeats")
    args = parser.parse_args()
    if args.quick:
        args.photos, args.mb, args.repeats = 20, 2.0, 3

    from searchfs.config import load_settings

    tmp = Path(tempfile.mkdtemp(prefix="searchfs-bench-files-"))
    mnt, pid = tmp / "mnt", None
    try:
        home, photos, config = tmp / "home", tmp / "photos", tmp / "config.toml"
        mnt.mkdir()
        photos.mkdir()
        config.write_text('[model]\nname = "ViT-B-32"\npretrained = ""\ndevice = "cpu"\n')
        env = dict(
            os.environ,
            SEARCHFS_HOME=str(home),
            SEARCHFS_CONFIG=str(config),
            SEARCHFS_MOUNT_ENTRIES="files",
            SEARCHFS_MOUNT_MAX_ENTRIES=str(args.photos + 10),
            XDG_CONFIG_HOME=str(tmp / "xdg"),
            PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        env.pop("SEARCHFS_LIBRARY", None)
        settings = load_settings(config, env=env)
        say(f"writing {args.photos} files of {args.mb} MB ...")
        build(settings, photos, args.photos, args.mb)
        pid = start_mount(["--no-watch", str(mnt)], env)
        wait_reconciled(settings.library_dir)
        folder = mnt / "exif" / "camera=BenchCam"
        entries = sorted(str(folder / n) for n in os.listdir(folder) if not n.startswith("."))
        originals = sorted(str(p) for p in photos.rglob("*.jpg"))
        assert len(entries) == len(originals) == args.photos, (len(entries), len(originals))
        cat_seconds(originals)  # into the page cache
        total_mb = args.photos * args.mb
        plain, mounted = [], []
        for i in range(args.repeats):
            plain.append(cat_seconds(originals))
            mounted.append(cat_seconds(entries))
            say(f"trial {i}: originals {total_mb / plain[-1]:.0f} MB/s, files mode {total_mb / mounted[-1]:.0f} MB/s")
        originals_mb_s = total_mb / statistics.median(plain)
        mount_mb_s = total_mb / statistics.median(mounted)
        print(
            json.dumps(
                {
                    "benchmark": "bench_files",
                    "photos": args.photos,
                    "mb_each": args.mb,
                    "repeats": args.repeats,
                    "cpu_count": os.cpu_count(),
                    "cat_originals_mb_s": round(originals_mb_s, 1),
                    "cat_mount_mb_s": round(mount_mb_s, 1),
                    "ratio": round(mount_mb_s / originals_mb_s, 3),
                    "all_s": {"originals": [round(x, 4) for x in plain], "mount": [round(x, 4) for x in mounted]},
                    "target": {"cat_mount_mb_s": f">= {TARGET_MB_S}"},
                    "meets_target": mount_mb_s >= TARGET_MB_S,
                },
                indent=2,
            )
        )
    finally:
        if pid is not None:
            stop_mount(mnt, pid)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
