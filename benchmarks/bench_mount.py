"""Benchmark: `ls` of a query folder through a real searchfs mount vs the same search called directly.

    python benchmarks/bench_mount.py [--sizes 10000,100000] [--repeats 7] [--dim 512] [--limit 50]

Prints one JSON object; no timed asserts. For each library size a child process builds a synthetic
backend (random unit vectors, numpy exact cosine search, a fixed stand-in for the text encoder whose
cost is reported on its own), times `backend.search` directly, then mounts it. The parent times:

  ls_new_ms      listing a query folder never listed before (lookup + opendir + readdir: one search)
  ls_repeat_ms   listing it again (cached by query and generation)
  ls_l_new_ms    `ls -l`-like: listing + lstat of every entry, new folder
  overhead_ms    ls_new_ms - direct_search_ms (the mount's own cost; target <= 80)
Medians over --repeats distinct queries. Targets: overhead <= 80 ms, repeat <= 5 ms.

`SyntheticBackend` is the stand-in; to measure the real Library, build it in `serve()` instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


class SyntheticBackend:
    """The Backend protocol over N random vectors; search = embed + one matrix-vector product + top-k."""

    def __init__(self, n: int, dim: int = 512, limit: int = 50, seed: int = 0):
        import numpy as np

        from searchfs.config import Settings

        self.np = np
        self.settings = Settings(home=Path(tempfile.gettempdir()) / "searchfs-bench", search_limit=limit)
        rng = np.random.default_rng(seed)
        vectors = rng.standard_normal((n, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        self.vectors = vectors
        self.dim = dim
        self.paths = [b"/photos/%04d/IMG_%07d.jpg" % (i // 1000, i) for i in range(n)]
        self.embed_seconds: list[float] = []

    def embed(self, text: str):
        """Stand-in for the CLIP text encoder: a fixed function of the text (a seeded random vector)."""
        np = self.np
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        vec = np.random.default_rng(seed).standard_normal(self.dim, dtype=np.float32)
        return vec / np.linalg.norm(vec)

    def generation(self) -> int:
        return 1

    def root_names(self):
        return ["photos"]

    def root_path(self, name):
        return b"/photos"

    def list_tree(self, root, relpath):
        return []

    def is_photo(self, root, relpath):
        return False

    def search(self, query):
        from searchfs.records import Hit

        np = self.np
        t0 = time.perf_counter()
        vec = self.embed(query.text or "")
        self.embed_seconds.append(time.perf_counter() - t0)
        scores = self.vectors @ vec
        k = min(query.limit or self.settings.search_limit, len(scores))
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.argsort(-scores[top])]
        return [
            Hit(rank=r, score=float(scores[i]), root="photos", relpath=self.paths[i][len(b"/photos/"):],
                abspath=self.paths[i], file_id=int(i), content_id=int(i))
            for r, i in enumerate(top, start=1)
        ]

    def facet_values(self, key):
        return []

    def saved_queries(self):
        return []

    def save_query(self, text):
        pass

    def forget_query(self, text):
        pass


def _median_ms(values) -> float:
    return round(statistics.median(values) * 1000, 3)


def serve(n: int, dim: int, limit: int, repeats: int, mountpoint: str, report: str, log_file: str) -> None:
    """Child: build the backend, time direct searches, write them to `report`, then mount (foreground)."""
    from searchfs.fs.mount import mount
    from searchfs.search.query import Query

    t0 = time.perf_counter()
    backend = SyntheticBackend(n, dim, limit)
    build = time.perf_counter() - t0
    backend.search(Query(text="warm up", limit=limit))
    backend.embed_seconds.clear()
    direct = []
    for i in range(repeats):
        t = time.perf_counter()
        backend.search(Query(text=f"direct query {i}", limit=limit))
        direct.append(time.perf_counter() - t)
    Path(report).write_text(json.dumps({
        "build_s": round(build, 2),
        "direct_search_ms": _median_ms(direct),
        "embed_ms": _median_ms(backend.embed_seconds),
    }))
    mount(lambda: backend, mountpoint, log_file=log_file)


def bench_size(n: int, args) -> dict:
    from searchfs.fs import mount as M

    with tempfile.TemporaryDirectory(prefix="searchfs-bench-") as tmp:
        mnt, report, log = Path(tmp) / "mnt", Path(tmp) / "direct.json", Path(tmp) / "mount.log"
        mnt.mkdir()
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, __file__, "serve", str(n), str(args.dim), str(args.limit), str(args.repeats),
               str(mnt), str(report), str(log)]
        pid = M.spawn(cmd, mnt, log_file=log, ready_timeout=300, env=env)
        try:
            direct = json.loads(report.read_text())
            os.listdir(mnt / "query")  # warm the dentries above the query folders
            new, repeat, new_l, ls_cmd = [], [], [], []
            for i in range(args.repeats):
                folder = mnt / "query" / f"mount query {i}"
                t = time.perf_counter()
                names = os.listdir(folder)
                new.append(time.perf_counter() - t)
                assert len(names) == min(args.limit, n) + 2, len(names)
                t = time.perf_counter()
                os.listdir(folder)
                repeat.append(time.perf_counter() - t)
                folder_l = mnt / "query" / f"mount query long {i}"
                t = time.perf_counter()
                for name in os.listdir(folder_l):
                    os.lstat(folder_l / name)
                new_l.append(time.perf_counter() - t)
                t = time.perf_counter()
                subprocess.run(["ls", str(folder)], check=True, capture_output=True, timeout=60)
                ls_cmd.append(time.perf_counter() - t)
            result = {
                "photos": n,
                **direct,
                "ls_new_ms": _median_ms(new),
                "ls_repeat_ms": _median_ms(repeat),
                "ls_l_new_ms": _median_ms(new_l),
                "ls_command_repeat_ms": _median_ms(ls_cmd),
            }
            result["overhead_ms"] = round(result["ls_new_ms"] - result["direct_search_ms"], 3)
            result["meets_targets"] = result["overhead_ms"] <= 80 and result["ls_repeat_ms"] <= 5
            return result
        finally:
            try:
                M.unmount(mnt, lazy=True)
            except Exception:  # noqa: BLE001
                pass
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        n, dim, limit, repeats = (int(x) for x in sys.argv[2:6])
        serve(n, dim, limit, repeats, *sys.argv[6:9])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--limit", type=int, default=50)
    args = parser.parse_args()
    results = [bench_size(int(s), args) for s in args.sizes.split(",")]
    print(json.dumps({"benchmark": "bench_mount", "dim": args.dim, "limit": args.limit,
                      "repeats": args.repeats, "results": results}, indent=2))


if __name__ == "__main__":
    main()
