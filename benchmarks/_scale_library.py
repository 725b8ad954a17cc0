"""The synthetic library bench_scale.py measures: N photos on disk and in a real catalog, built once per
recipe and kept in a cache folder (a million photos take a while), reused while the recipe matches.

On disk: folders of FOLDER_SIZE files, each a hard link to that folder's own copy of one small real JPEG
(file systems cap the links of one inode: ext4 at 65,000). In the catalog (`Transaction.add_photos`, the
real writer): a content per photo with varied metadata (cameras of very different popularity, dates
over twenty years, some undated, GPS on a third) and a CLIP-like vector (_synthetic.py), stored under
the model id of ViT-B-32 with random weights, so the mount's real text tower answers query folders and
its real image tower embeds the photos the live test copies in. The weights are a random-weights
checkpoint file made with the library (_weights.py), not `pretrained = ""`: open_clip's random init
differs in every process, so its text tower is never exported for numpy and every daemon would load
torch for its first query; a checkpoint's tower is exported once, as a user's real weights are. The
saved vector index is built by `Library.save_vectors`, as `searchfs index` leaves it.

The cache is `<cache>/<recipe key>/`; `recipe.json`, written last, marks a complete build. A build that
stopped half way is started again from nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _mounting import say  # noqa: E402
from _synthetic import World  # noqa: E402

FOLDER_SIZE = 1000
CHUNK = 50_000  # photos per catalog transaction
CAMERAS = 20  # camera c takes a share proportional to 1/(c+1): "BenchCam 0" holds ~28% of the photos
RECIPE_VERSION = 4  # bump when what is built changes (it then builds anew)
CONFIG = '[model]\nname = "ViT-B-32"\npretrained = "{checkpoint}"\ndevice = "cpu"\n'


def recipe(photos: int, seed: int) -> dict:
    from searchfs.store.catalog import PAGE_SIZE
    from searchfs.store.migrations import LATEST

    return {"photos": photos, "seed": seed, "folder_size": FOLDER_SIZE, "version": RECIPE_VERSION,
            "schema": LATEST, "page_size": PAGE_SIZE}  # fmt: skip


class ScaleLibrary:
    """Paths and environment of one built library."""

    def __init__(self, folder: Path, spec: dict):
        self.folder, self.spec = folder, spec
        self.photos, self.home, self.config = folder / "photos", folder / "home", folder / "config.toml"
        self.n = spec["photos"]

    def env(self, scratch: Path) -> dict:
        env = dict(
            os.environ,
            SEARCHFS_HOME=str(self.home),
            SEARCHFS_CONFIG=str(self.config),
            XDG_CONFIG_HOME=str(scratch / "xdg"),
            PYTHONPATH=str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", ""),
        )
        env.pop("SEARCHFS_LIBRARY", None)
        return env

    def settings(self, scratch: Path):
        from searchfs.config import load_settings

        return load_settings(self.config, env=self.env(scratch))

    @property
    def built(self) -> dict:
        return json.loads((self.folder / "recipe.json").read_text())["built"]


def ensure(cache: Path, photos: int, seed: int = 0, rebuild: bool = False) -> ScaleLibrary:
    spec = recipe(photos, seed)
    key = hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
    folder = cache / f"{photos}-{key}"
    done = folder / "recipe.json"
    if done.exists() and not rebuild:
        say(f"reusing the library in {folder}")
        return ScaleLibrary(folder, spec)
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    library = ScaleLibrary(folder, spec)
    library.config.write_text(CONFIG.format(checkpoint=_checkpoint(folder)))
    built = {"links_s": _link_photos(library)}
    built.update(_fill_catalog(library, World(seed)))
    done.write_text(json.dumps({**spec, "built": built}, indent=1))
    return library


def _checkpoint(folder: Path) -> Path:
    import _weights

    _weights.CACHE = folder  # kept with the library: the catalog's model id is this file's fingerprint
    return _weights.random_checkpoint("ViT-B-32")


def _link_photos(library: ScaleLibrary) -> float:
    from photos import make_photo

    started = time.perf_counter()
    source = make_photo(library.folder / "source.jpg", (120, 80, 40), size=(160, 120), seed=1, make="BenchMake")
    sources = library.folder / "sources"
    sources.mkdir()
    for d in range((library.n + FOLDER_SIZE - 1) // FOLDER_SIZE):
        folder = library.photos / f"{d // 100:02d}" / f"d{d:04d}"
        folder.mkdir(parents=True)
        copy = sources / f"{d:04d}.jpg"
        shutil.copyfile(source, copy)
        for i in range(d * FOLDER_SIZE, min(library.n, (d + 1) * FOLDER_SIZE)):
            os.link(copy, folder / f"IMG_{i:07d}.jpg")
        if d % 100 == 99:
            say(f"  linked {(d + 1) * FOLDER_SIZE} photos")
    return round(time.perf_counter() - started, 1)


def relpath(i: int) -> bytes:
    d = i // FOLDER_SIZE
    return f"{d // 100:02d}/d{d:04d}/IMG_{i:07d}.jpg".encode()


def facets_of(i: int, rng: np.random.Generator):
    """Photo i's metadata: a camera by popularity, a day in 2005-2024 (5% undated), GPS on a third."""
    from searchfs.records import Facet, display_number

    camera = int(min(CAMERAS - 1, rng.zipf(1.6) - 1))
    out = [Facet("make", "BenchMake"), Facet("camera", f"BenchCam {camera}"), Facet("model", f"BenchCam {camera}")]
    out.append(Facet("format", "JPEG"))
    iso = float(rng.choice([100, 200, 400, 800, 1600, 3200]))
    out.append(Facet("iso", display_number("iso", iso), iso))
    if rng.random() >= 0.05:
        day = np.datetime64("2005-01-01") + int(rng.integers(0, 20 * 365))
        out.append(Facet("date", str(day), float(str(day)[:4])))
        hour = float(rng.integers(0, 24))
        out.append(Facet("hour", display_number("hour", hour), hour))
    if rng.random() < 1 / 3:
        lat, lon = float(rng.uniform(-60, 70)), float(rng.uniform(-180, 180))
        out += [Facet("lat", display_number("lat", lat), lat), Facet("lon", display_number("lon", lon), lon)]
    return tuple(out)


def _fill_catalog(library: ScaleLibrary, world: World) -> dict:
    from searchfs.ingest.tags import EXTRACTOR_VERSION
    from searchfs.library import Library
    from searchfs.store.rows import NewPhoto

    scratch = library.folder / "scratch"
    started = time.perf_counter()
    with Library(library.settings(scratch), create=True) as lib:
        model = lib.model_id
        root = lib.catalog.add_root(os.fsencode(os.path.realpath(library.photos)))
        rng = np.random.default_rng([world.seed, 7])
        for start in range(0, library.n, CHUNK):
            count = min(CHUNK, library.n - start)
            vectors = world.photos(start, count)
            stats = [os.stat(library.photos / os.fsdecode(relpath(i))) for i in range(start, start + count)]
            rows = [
                NewPhoto(relpath(i), st.st_size, st.st_mtime_ns, st.st_ino, f"{i:040x}", facets_of(i, rng), vectors[j])
                for j, (i, st) in enumerate(zip(range(start, start + count), stats))
            ]
            with lib.catalog.transaction() as tx:
                tx.add_photos(root.id, rows, model, EXTRACTOR_VERSION)
            say(f"  catalog: {start + count} photos ({time.perf_counter() - started:.0f} s)")
        catalog_s = time.perf_counter() - started
        started = time.perf_counter()
        lib.save_vectors(force=True)  # the vector index as `searchfs index` leaves it
        vectors_s = time.perf_counter() - started
        stats = lib.vector_index().stats
    shutil.rmtree(scratch, ignore_errors=True)
    return {"catalog_s": round(catalog_s, 1), "vector_index_s": round(vectors_s, 1), "index_kind": stats["kind"]}
