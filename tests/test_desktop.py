"""Real file managers on a real mount of the real library, under Xvfb.

Each file manager (pcmanfm, Thunar, Nautilus) runs in its own D-Bus session with fresh HOME and caches
(tests/desktop.py), opens a query folder, an exif folder and a `similar/` photo folder of a library
indexed with the tiny model and mounted by `searchfs mount --debug` (a real daemon), and we wait until
its listing and thumbnails are done: the thumbnail files it saves for every entry (Thunar, Nautilus), or
its reads of every original (pcmanfm's libfm 1.3.2 never saves thumbnails), then the daemon log going
quiet. Then: a screenshot into $SEARCHFS_ARTIFACTS (default test-artifacts/), and the assertions.

pcmanfm and Thunar run by default. Nautilus (the most common) is opt-in:
SEARCHFS_DESKTOP_MANAGERS=pcmanfm,thunar,nautilus. Nautilus 43 under Xvfb here stays on "Loading..." in
about one window in ten, in any folder, /tmp included: its "mount" job (GIO's find_enclosing_mount, which
it needs before it lists anything) never calls back, with no FUSE request pending and no thread blocked
in the kernel. With a dozen windows per run that would fail most runs for a reason outside searchfs;
when it happens, the failure says so (stuck_job).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from desktop import (
    MANAGERS,
    Calls,
    DaemonLog,
    Display,
    Manager,
    Reads,
    missing_tools,
    unresponsive_fuse_mounts,
    usage,
)
from photos import make_photo
from waiting import poll

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("SEARCHFS_ARTIFACTS") or REPO / "test-artifacts")

pytestmark = [pytest.mark.desktop, pytest.mark.mount, pytest.mark.slow]
_missing = missing_tools()
if not (os.path.exists("/dev/fuse") and (shutil.which("fusermount") or shutil.which("fusermount3"))):
    pytestmark.append(pytest.mark.skip(reason="needs /dev/fuse and fusermount"))
elif _missing:
    pytestmark.append(
        pytest.mark.skip(reason="the desktop tier needs " + ", ".join(_missing) + " (see .ci/run for the packages)")
    )

_WANTED = [m for m in os.environ.get("SEARCHFS_DESKTOP_MANAGERS", "pcmanfm,thunar").split(",") if m]


def _manager_params():
    out = []
    for name in MANAGERS:
        manager = MANAGERS[name]
        marks = []
        if not manager.available():
            marks.append(pytest.mark.skip(reason=f"{manager.argv[0]} is not installed"))
        elif name not in _WANTED:
            marks.append(pytest.mark.skip(reason=f"{name} is opt-in: SEARCHFS_DESKTOP_MANAGERS=pcmanfm,thunar,{name}"))
        out.append(pytest.param(name, marks=marks, id=name))
    return out


PHOTOS = 20
ALBUM = "album"
CAMERAS = [("Canon", "Canon EOS 40D"), ("NIKON CORPORATION", "NIKON D70"), ("Apple", "iPhone 12")]
TEXT = "red flower"
QUERY_FOLDER = f"query/{TEXT}"
EXIF_FOLDER = "exif/camera=Canon"
SIMILAR_PHOTO = "IMG_0000.jpg"
SIMILAR_FOLDER = f"similar/photos/{ALBUM}/{SIMILAR_PHOTO}"
BROWSED = {"query": QUERY_FOLDER, "exif": EXIF_FOLDER, "similar": SIMILAR_FOLDER}
SAVED = ["dog", "sunset beach", "snow"]
T = 60  # seconds: the deadline of every wait


# ------------------------------------------------------------------------------------------ library


@dataclass
class Library:
    photos: Path
    home: Path  # an indexed SEARCHFS_HOME, copied for every mount
    env: dict


@pytest.fixture(scope="module")
def library(tiny_model, tmp_path_factory) -> Library:
    base = tmp_path_factory.mktemp("desktop-library")
    photos = base / "photos"
    colors = [(220, 20, 20), (20, 200, 20), (20, 20, 220), (230, 230, 30), (30, 220, 220), (200, 30, 200)]
    for i in range(PHOTOS):
        make, model = CAMERAS[i % len(CAMERAS)]
        # 320x240: bigger than the 128 px thumbnails and the 256 px large ones, so they are saved
        make_photo(
            photos / ALBUM / f"IMG_{i:04d}.jpg",
            colors[i % len(colors)],
            size=(320, 240),
            seed=i,
            make=make,
            model=model,
            taken=f"{2018 + i % 4}:0{1 + i % 9}:1{i % 10} 1{i % 10}:00:00",
        )
    env = dict(os.environ)
    env.update({"SEARCHFS_" + k.upper(): v for k, v in tiny_model.items()})
    env.update(
        {
            "SEARCHFS_HOME": str(base / "home"),
            "XDG_CONFIG_HOME": str(base / "xdg-config"),
            "SEARCHFS_WATCH_SETTLE_SECONDS": "0.3",
            "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]),
        }
    )
    env.pop("SEARCHFS_CONFIG", None)
    env.pop("SEARCHFS_LIBRARY", None)
    searchfs("index", str(photos), "--no-progress", env=env)
    return Library(photos, base / "home", env)


def searchfs(*args, env, check=True) -> subprocess.CompletedProcess:
    # cwd=REPO: `python -m searchfs` puts the working folder first on sys.path, daemon included
    done = subprocess.run(
        [sys.executable, "-m", "searchfs", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=120
    )
    if check:
        assert done.returncode == 0, done.stderr
    return done


@dataclass
class Mount:
    mnt: Path
    env: dict
    log: DaemonLog
    pid: int
    photos: Path

    def umount(self) -> None:
        searchfs("umount", str(self.mnt), env=self.env, check=False)
        if os.path.ismount(self.mnt):
            subprocess.run(["fusermount", "-uz", str(self.mnt)], capture_output=True)
        # `searchfs umount` returns before the daemon has exited, and it still writes its home on the
        # way out (the vector stamp): wait, so the folder can be removed
        poll(lambda: _exited(self.pid), T)


def _exited(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has exited
    except FileNotFoundError:
        return True


def mount(library: Library, base: Path, mountpoint: Path | None = None) -> Mount:
    """A fresh daemon (`searchfs mount --debug`: every FUSE call in the log) on a copy of the library."""
    home = base / "home"
    shutil.copytree(library.home, home, ignore=shutil.ignore_patterns("logs", "daemon.json"))
    env = dict(library.env, SEARCHFS_HOME=str(home))
    mnt = mountpoint or base / "mnt"
    mnt.mkdir(parents=True, exist_ok=True)
    searchfs("mount", "--debug", str(library.photos), str(mnt), env=env)
    pid = int(json.loads((home / "libraries" / "default" / "daemon.json").read_text())["pid"])
    return Mount(mnt, env, DaemonLog(home / "logs" / "mount.log"), pid, library.photos)


@pytest.fixture(scope="module")
def display(tmp_path_factory):
    stuck = unresponsive_fuse_mounts()
    if stuck:
        pytest.fail(f"FUSE mounts that do not answer statfs hang GIO's volume monitors, so any file manager: {stuck}")
    screen = Display(tmp_path_factory.mktemp("xvfb"))
    yield screen
    screen.close()


@pytest.fixture(scope="module")
def expected(library) -> dict[str, list[str]]:
    """What each browsed folder must hold, from the CLI, once for every file manager."""
    return {kind: expected_targets(library.env, folder, library.photos) for kind, folder in BROWSED.items()}


def expected_targets(env, folder: str, photos: Path) -> list[str]:
    """What the folder must hold, from the CLI (`searchfs search`), as original paths."""
    if folder.startswith("query/"):
        hits = json.loads(searchfs("search", "--text", folder.split("/", 1)[1], "--json", env=env).stdout)
    elif folder.startswith("exif/"):
        hits = json.loads(searchfs("search", "--where", folder.split("/", 1)[1], "--json", env=env).stdout)
    else:
        photo = photos / folder.split("/", 2)[2]
        hits = json.loads(searchfs("search", "--image", str(photo), "--json", env=env).stdout)
        hits = [h for h in hits if h["path"] != str(photo)]  # a similar/ folder leaves the photo out
    return [h["path"] for h in hits]


# ------------------------------------------------------------------------------------------ browsing


@dataclass
class Browse:
    """One file manager window on one folder, once its listing and thumbnails are done."""

    folder: str
    entries: list[str]  # what the mount lists (dot-files left out)
    targets: dict[str, str]  # entry -> symlink target
    gio: list[str]  # `gio list` in the file manager's session
    missing: list[str]  # entries without a thumbnail (or an unread original) at the deadline
    seconds: float
    calls: Calls
    screenshot: Path


def browse(display: Display, manager: Manager, mounted: Mount, folder: str, label: str) -> Browse:
    path = mounted.mnt / folder
    mounted.log.mark()
    reads = Reads([mounted.photos / ALBUM]) if manager.thumbnails == "reads" else None
    started = time.monotonic()
    session = display.session(manager, path, f"{manager.name}-{label}").start()
    try:
        window = session.window(T)
        assert window, f"{manager.name} showed no window; its log: {session.log}"
        session.fill_screen(window)
        # the file manager lists the folder first (its search runs for it, not for us)
        if not poll(lambda: mounted.log.since_mark().count("OPENDIR", "/" + folder) > 0, T):
            display.screenshot(ARTIFACTS / f"{manager.name}-{label}-never-opened.png")
            raise AssertionError(f"{manager.name} never opened {folder}: " + stuck_job(session))
        entries = sorted(n for n in os.listdir(path) if not n.startswith("."))
        targets = {n: os.readlink(path / n) for n in entries if os.path.islink(path / n)}

        def missing() -> list[str]:
            if reads is not None:
                seen = reads.poll()
                return [n for n in entries if Path(targets.get(n, path / n)) not in seen]
            have = session.thumbnails()
            return [n for n in entries if str(path / n) not in have]

        poll(lambda: not missing() or not session.alive(), T)
        left = missing()
        mounted.log.quiet(1.0, T)
        seconds = time.monotonic() - started
        shot = ARTIFACTS / f"{manager.name}-{label}.png"
        display.screenshot(shot)
        listed = session.run("gio", "list", str(path))
        assert listed.returncode == 0, listed.stderr
    finally:
        session.close()
        if reads is not None:
            reads.close()
    gio = sorted(line for line in listed.stdout.split("\n") if line)
    return Browse(folder, entries, targets, gio, left, seconds, mounted.log.since_mark(), shot)


def stuck_job(session) -> str:
    """Why a window never listed its folder, from Nautilus's job log (NAUTILUS_DEBUG=AsyncJobs)."""
    text = session.log.read_text(errors="replace")
    balance: Counter[str] = Counter()
    for verb, job in re.findall(r"(starting|stopping) (.+?) in 0x", text):
        balance[job] += 1 if verb == "starting" else -1
    open_jobs = sorted(job for job, n in balance.items() if n > 0)
    if open_jobs:
        return (
            f"Nautilus's {', '.join(open_jobs)} job(s) never called back (a GIO async call: query_info, "
            "find_enclosing_mount), though the daemon had answered every FUSE request; the same happens "
            f"in a plain /tmp folder. Log: {session.log}"
        )
    return f"see {session.log}"


@dataclass
class Session:
    """What one file manager did to one mount: three rounds over the three folder kinds."""

    manager: Manager
    mounted: Mount
    rounds: list[dict[str, Browse]] = field(default_factory=list)
    usage: list[dict[str, int]] = field(default_factory=list)  # desktop.usage() after each round
    expected: dict[str, list[str]] = field(default_factory=dict)
    recent: list[str] = field(default_factory=list)  # `ls <mnt>/query/` at the end
    calls: Calls | None = None  # the whole log


@pytest.fixture(scope="module", params=_manager_params())
def browsed(request, library, display, expected, tmp_path_factory) -> Session:
    manager = MANAGERS[request.param]
    base = tmp_path_factory.mktemp(f"browse-{manager.name}")
    mounted = mount(library, base)
    start = mounted.log.size()
    try:
        session = Session(manager, mounted)
        session.expected = expected
        for round_ in (1, 2, 3):
            one = {kind: browse(display, manager, mounted, f, f"{kind}-{round_}") for kind, f in BROWSED.items()}
            session.rounds.append(one)
            mounted.log.quiet(1.0, T)
            session.usage.append(usage(mounted.pid))
        session.recent = sorted(n for n in os.listdir(mounted.mnt / "query") if not n.startswith("."))  # as ls shows
        mounted.log.start = start
        session.calls = mounted.log.since_mark()
        _report(f"browse-{manager.name}", session)
        yield session
    finally:
        mounted.umount()


def _report(name: str, session: Session) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    out = {
        "manager": session.manager.name,
        "usage_after_each_round": session.usage,
        "recent": session.recent,
        "rounds": [
            {
                kind: {
                    "folder": b.folder,
                    "entries": len(b.entries),
                    "missing_thumbnails": b.missing,
                    "seconds": round(b.seconds, 2),
                    "ops": dict(b.calls.ops),
                    "searches": len(b.calls.searches),
                }
                for kind, b in round_.items()
            }
            for round_ in session.rounds
        ],
    }
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(out, indent=1))


# --------------------------------------------------------------------------------- the reliability points


def test_the_window_lists_every_result(browsed):
    """`gio list` in the file manager's session, the mount's own listing and the CLI agree, and the
    window has every entry: a thumbnail for each (or, for pcmanfm, a read of each original)."""
    for round_ in browsed.rounds:
        for kind, b in round_.items():
            expected = browsed.expected[kind]
            assert sorted(b.targets.values()) == sorted(expected), f"{b.folder}: the mount lists other photos"
            assert len(b.entries) == len(expected) > 0
            assert b.gio == b.entries, f"{b.folder}: gio list differs from the mount's listing"
            assert not b.missing, f"{b.folder}: no thumbnail after {T} s for {b.missing} (see {b.screenshot})"


def test_no_eio_and_nothing_wrong_in_the_daemon_log(browsed):
    calls = browsed.calls
    assert calls.errnos.get(5, 0) == 0, "the daemon answered EIO"
    assert not calls.problems, "\n".join(calls.problems)


def test_descriptors_and_memory_stay_flat(browsed):
    """Three rounds over the same three folders (fresh file manager sessions each time): the daemon's
    descriptors other than its reader connections and its RSS stay where round 2 left them, and it holds
    at most one catalog connection per thread. (libfuse starts a worker thread whenever all are busy and
    each worker opens its own reader connection, catalog.sqlite and its -wal, so the total follows the
    peak concurrency until it levels off; the leak this guards against, a connection per call, adds
    hundreds per round.)"""
    first, second, third = browsed.usage
    assert third["other_fds"] <= second["other_fds"] + 2, f"descriptors grew: {second} -> {third}"
    for round_ in browsed.usage:
        assert round_["catalog_fds"] <= round_["threads"] + 2, f"more catalog connections than threads: {round_}"
    assert third["threads"] <= 64, third
    assert third["rss_kb"] <= second["rss_kb"] + 20_000, f"RSS grew from {second['rss_kb']} to {third['rss_kb']} kB"


def test_no_query_text_the_user_did_not_type(browsed):
    """Only the opened text shows in query/ (recent queries), and the daemon searched nothing but the
    three folders opened: no probe name, thumbnail folder or look-ahead turned into a search."""
    from searchfs.search.filters import parse_filter
    from searchfs.search.query import Query

    assert browsed.recent == [TEXT]
    allowed = {
        repr(Query(text=TEXT, limit=50)),
        repr(Query(filters=(parse_filter(EXIF_FOLDER.split("/", 1)[1]),))),
        # the same folder read as the view reads it: at most [mount] max_entries rows
        repr(Query(filters=(parse_filter(EXIF_FOLDER.split("/", 1)[1]),), limit=1000)),
        repr(Query(similar_to=("photos", f"{ALBUM}/{SIMILAR_PHOTO}".encode()), limit=50)),
    }
    unasked = sorted(set(browsed.calls.searches) - allowed)
    assert not unasked, f"searches nobody asked for: {unasked}"
    # and each one ran once: the second round, the thumbnailers and every lookup reuse the answer
    assert sorted(browsed.calls.searches) == sorted(allowed)


# ---------------------------------------------------------------------------------------- search storms

# Folders whose entries are folders that search when listed: the cameras, a folder of 20 photos (each a
# similar/ folder), and query/ with saved queries.
STORMS = {"camera": "exif/camera", "album": f"similar/photos/{ALBUM}", "saved": "query"}


@dataclass
class Storm:
    folder: str
    children: list[str]
    calls: Calls
    screenshot: Path


def open_folder(display: Display, manager: Manager, mounted: Mount, folder: str, label: str) -> Storm:
    """Open a folder of folders and wait until the file manager has listed it and the daemon is quiet."""
    path = mounted.mnt / folder
    mounted.log.mark()
    session = display.session(manager, path, f"{manager.name}-{label}").start()
    try:
        window = session.window(T)
        assert window, f"{manager.name} showed no window; its log: {session.log}"
        session.fill_screen(window)
        if not poll(lambda: mounted.log.since_mark().count("OPENDIR", "/" + folder) > 0, T):
            raise AssertionError(f"{manager.name} never opened {folder}: " + stuck_job(session))
        mounted.log.quiet(1.5, T)
        shot = ARTIFACTS / f"{manager.name}-{label}.png"
        display.screenshot(shot)
    finally:
        session.close()
    calls = mounted.log.since_mark()
    return Storm(folder, sorted(os.listdir(path)), calls, shot)  # listing folders of folders costs no search


@pytest.fixture(scope="module", params=_manager_params())
def stormed(request, library, display, tmp_path_factory) -> dict[str, Storm]:
    manager = MANAGERS[request.param]
    mounted = mount(library, tmp_path_factory.mktemp(f"storm-{manager.name}"))
    try:
        for text in SAVED:
            os.mkdir(mounted.mnt / "query" / f"+{text}")  # saves it
        storms = {kind: open_folder(display, manager, mounted, folder, kind) for kind, folder in STORMS.items()}
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        report = {
            kind: {
                "folder": st.folder,
                "children": len(st.children),
                "searches": len(st.calls.searches),
                "ops": dict(st.calls.ops),
                "readlinks_in_children": st.calls.count("READLINK", "/" + st.folder + "/"),
                "opendirs_of_children": st.calls.count("OPENDIR", "/" + st.folder + "/"),
            }
            for kind, st in storms.items()
        }
        (ARTIFACTS / f"storms-{manager.name}.json").write_text(json.dumps(report, indent=1))
        yield storms
    finally:
        mounted.umount()


def _child_query(kind: str, child: str) -> str:
    from searchfs.search.filters import parse_filter
    from searchfs.search.query import Query

    if kind == "camera":
        return repr(Query(filters=(parse_filter(child),)))
    if kind == "album":
        return repr(Query(similar_to=("photos", f"{ALBUM}/{child}".encode()), limit=50))
    return repr(Query(text=child, limit=50))


@pytest.mark.parametrize("kind", list(STORMS))
def test_a_folder_of_folders_costs_at_most_one_search_per_child(stormed, kind, request):
    """Opening exif/camera/, a similar/ folder of 20 photos or query/ runs no search at all in pcmanfm
    and Thunar; Nautilus lists every child folder to show its item count, which may cost one search per
    child (each answered once, from then on from the cache) and never anything else."""
    storm = stormed[kind]
    manager = MANAGERS[request.node.callspec.params["stormed"]]
    assert storm.children, f"{storm.folder} lists nothing"
    children = {_child_query(kind, child) for child in storm.children}
    others = [q for q in storm.calls.searches if q not in children]
    assert not others, f"opening {storm.folder} searched for what is not one of its folders: {others}"
    repeated = sorted({q for q in storm.calls.searches if storm.calls.searches.count(q) > 1})
    assert not repeated, f"searched more than once: {repeated}"
    allowed = len(storm.children) if manager.counts_children else 0
    assert len(storm.calls.searches) <= allowed, (
        f"{manager.name} opening {storm.folder} ran {len(storm.calls.searches)} searches"
    )
    assert storm.calls.errnos.get(5, 0) == 0 and not storm.calls.problems


# ------------------------------------------------------------------------- Nautilus: paths typed in ctrl+L


@pytest.fixture
def nautilus():
    manager = MANAGERS["nautilus"]
    if not manager.available():
        pytest.skip("nautilus is not installed")
    if "nautilus" not in _WANTED:
        pytest.skip("nautilus is opt-in: SEARCHFS_DESKTOP_MANAGERS=pcmanfm,thunar,nautilus")
    return manager


def test_nautilus_opens_similar_folders_typed_in_the_location_bar(nautilus, library, display, tmp_path):
    """Six similar/<photo>/ paths typed with ctrl+L (with and without the trailing slash), each listed in
    full: the daemon sees the opendir and the window makes a thumbnail of every result."""
    mounted = mount(library, tmp_path)
    start = mounted.mnt / "similar" / "photos" / ALBUM
    session = display.session(nautilus, start, "nautilus-ctrl-l").start()
    try:
        window = session.window(T)
        assert window
        session.fill_screen(window)
        assert poll(lambda: mounted.log.since_mark().count("OPENDIR", f"/similar/photos/{ALBUM}") > 0, T)
        mounted.log.quiet(1.5, T)
        for i in range(1, 7):
            folder = f"similar/photos/{ALBUM}/IMG_{i:04d}.jpg"
            mounted.log.mark()
            session.run("xdotool", "windowfocus", "--sync", window)
            session.run("xdotool", "key", "--clearmodifiers", "ctrl+l")
            time.sleep(0.5)  # the location entry takes the keyboard (not a success criterion)
            typed = str(mounted.mnt / folder) + ("/" if i % 2 else "")
            session.run("xdotool", "type", "--delay", "10", typed, timeout=60)
            session.run("xdotool", "key", "Return")
            opened = poll(lambda f=folder: mounted.log.since_mark().count("OPENDIR", "/" + f) > 0, T)
            display.screenshot(ARTIFACTS / f"nautilus-ctrl-l-{i}.png")
            assert opened, f"{typed}: " + stuck_job(session)
            path = mounted.mnt / folder
            entries = [path / n for n in sorted(os.listdir(path)) if not n.startswith(".")]
            want = {str(e) for e in entries}
            assert poll(lambda w=want: w <= session.thumbnails(), T), f"{typed}: listing incomplete"
            mounted.log.quiet(1.0, T)
    finally:
        session.close()
        mounted.umount()
    calls = mounted.log
    calls.start = 0
    whole = calls.since_mark()
    assert whole.errnos.get(5, 0) == 0 and not whole.problems


# ------------------------------------------------------------------------------------- GNOME Tracker

TRACKER = Path("/usr/libexec/tracker-miner-fs-3")


def _tracker_crawl(library, display, base: Path, where: str, settings: dict[str, str]) -> Calls:
    """Run tracker-miner-fs-3 to completion (-n) in a session whose HOME holds the mount at `where`."""
    if not TRACKER.exists():
        pytest.skip("tracker-miner-fs-3 is not installed")
    home = base / "user"
    mounted = mount(library, base, home / where)
    try:
        (home / "Pictures").mkdir(exist_ok=True)
        tracker = Manager("tracker", (str(TRACKER),), "", "")
        session = display.session(tracker, mounted.mnt, "tracker", home=home)
        (Path(session.env["XDG_CONFIG_HOME"]) / "user-dirs.dirs").write_text('XDG_PICTURES_DIR="$HOME/Pictures"\n')
        sets = "".join(f"gsettings set org.freedesktop.Tracker3.Miner.Files {k} {v!r}; " for k, v in settings.items())
        mounted.log.mark()
        session.proc = subprocess.Popen(
            ["dbus-run-session", "--", "sh", "-c", sets + f"exec {TRACKER} --no-daemon --initial-sleep=0"],
            env=session.env,
            stdout=open(session.log, "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert poll(lambda: session.proc.poll() is not None, T, 0.5), "tracker-miner-fs-3 did not finish"
        mounted.log.quiet(1.0, T)
        session.close()
        return mounted.log.since_mark()
    finally:
        mounted.umount()


@pytest.fixture
def outside_tmp():
    """Tracker never indexes anything under /tmp, so its HOME must live elsewhere."""
    base = Path(tempfile.mkdtemp(prefix="searchfs-desktop-", dir="/var/tmp"))
    yield base
    for point in sorted(base.rglob("*"), reverse=True):
        if os.path.ismount(point):
            subprocess.run(["fusermount", "-uz", str(point)], capture_output=True)
    shutil.rmtree(base, ignore_errors=True)


def test_tracker_does_not_enter_a_mount_inside_an_indexed_folder(library, display, outside_tmp):
    """The default config indexes ~/Pictures recursively; a mount at ~/Pictures/search is a mount point,
    which Tracker 3's crawler does not descend into (unix::is-mountpoint)."""
    calls = _tracker_crawl(library, display, outside_tmp, "Pictures/search", {})
    assert not calls.searches and not calls.ops.get("OPENDIR"), dict(calls.ops)


def test_tracker_told_to_index_the_mount_stays_out_of_the_result_folders(library, display, outside_tmp):
    mnt = outside_tmp / "user" / "search"
    calls = _tracker_crawl(library, display, outside_tmp, "search", {"index-recursive-directories": f"['{mnt}']"})
    assert not calls.searches, f"Tracker's crawl ran {len(calls.searches)} searches ({dict(calls.ops)})"
