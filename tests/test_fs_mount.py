"""Real FUSE mounts of the view over a fake in-memory backend whose hits are real image files.

Every mount runs in a child process (started with searchfs.fs.mount.spawn, the background path the
CLI uses) so that a hung FUSE cannot hang pytest; the mountpoint is lazily unmounted and the child
killed in a finalizer even when the test fails; filesystem calls run in subprocesses with short
timeouts. A test fails when the daemon logs an unexpected warning or error (see `Mounted.check_log`).

Run alone:  python -m pytest tests/test_fs_mount.py -q  (needs /dev/fuse, fusermount and libfuse).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _fuse_missing() -> str:
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if not (shutil.which("fusermount") or shutil.which("fusermount3")):
        return "no fusermount or fusermount3"
    try:
        import searchfs.fs.fuse_ops  # noqa: F401 - imports mfusepy the way the mount does (libfuse 3 first)
    except Exception as exc:  # libfuse missing raises EnvironmentError at import
        return f"mfusepy cannot load libfuse: {exc}"
    return ""


pytestmark = [pytest.mark.mount, pytest.mark.skipif(bool(_fuse_missing()), reason=_fuse_missing() or "ok")]

T = 15  # seconds: the longest any single filesystem command may take

LONG = b"L" * 250 + b".jpg"  # 254 bytes: "NN_" + it is longer than NAME_MAX, so the link name is cut
NON_UTF8 = b"caf\xe9 \xff.jpg"
UTF8 = "été à Zürich.jpg".encode()


def _serve(spec_file: str, mountpoint: str, log_file: str) -> None:
    """Child process: mount a FakeBackend described by `spec_file` (foreground)."""
    import logging

    sys.path.insert(0, str(HERE))
    from test_fs_view import FakeBackend

    from searchfs.config import Settings
    from searchfs.fs.mount import mount

    spec = json.loads(Path(spec_file).read_text())
    if spec.get("nofile"):
        import resource

        resource.setrlimit(resource.RLIMIT_NOFILE, (spec["nofile"], spec["nofile"]))
    settings = Settings(home=Path("/nonexistent"), **spec.get("settings", {}))
    backend = FakeBackend({k: v.encode() for k, v in spec["roots"].items()}, settings, delay=spec.get("delay", 0.0))
    for root, rel_hex, facets in spec["photos"]:
        backend.add(root, bytes.fromhex(rel_hex), **facets)
    backend.progress = tuple(spec.get("progress", (0, 0)))
    search = backend.search
    counter = logging.getLogger("searchfs.test.fake")

    def counted(query):
        counter.info("FAKE SEARCH %r", query.text or query.similar_to or [str(f) for f in query.filters])
        if query.text == "explode model":
            from searchfs.errors import ModelUnavailable

            raise ModelUnavailable("cannot load the CLIP model: weights file missing (test)")
        if query.text == "explode bug":
            raise ZeroDivisionError("a bug in the backend (test)")
        return search(query)

    backend.search = counted
    control = Path(spec_file + ".generation")  # a test bumps the generation by writing this file

    def generation() -> int:
        bumped = int(control.read_text()) if control.exists() else 0
        if bumped and spec.get("roots_after"):  # the library changed: every photo moved elsewhere
            backend.roots = {k: v.encode() for k, v in spec["roots_after"].items()}
        return backend.gen + bumped

    backend.generation = generation
    mount(lambda: backend, mountpoint, log_file=log_file, debug=spec.get("debug", False))


if __name__ == "__main__" and len(sys.argv) == 5 and sys.argv[1] == "serve":
    sys.path.insert(0, str(REPO))
    _serve(*sys.argv[2:])
    sys.exit(0)


from searchfs.fs import mount as M  # noqa: E402

# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    from photos import make_photo

    root = tmp_path_factory.mktemp("photos")
    files = {
        b"2019/a.jpg": dict(color=(200, 30, 30), facets=dict(camera="Canon EOS 40D", year=2019, lens="EF 50mm f/1.8")),
        b"2019/b.jpg": dict(color=(30, 200, 30), facets=dict(camera="Nikon D90", year=2019)),
        b"2020/a.jpg": dict(color=(30, 30, 200), facets=dict(camera="Canon EOS 5D", year=2020)),
        b"2020/" + LONG: dict(color=(90, 90, 90), facets=dict(camera="Canon EOS 5D", year=2020)),
        b"2021/" + NON_UTF8: dict(color=(10, 10, 10), facets=dict(year=2021)),
        b"2021/" + UTF8: dict(color=(250, 250, 250), facets=dict(year=2021)),
    }
    for rel, info in files.items():
        target = os.path.join(os.fsencode(root), rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        make_photo(target, info["color"], seed=len(rel))
    return root


def _spec(photos: Path, delay: float = 0.0) -> dict:
    facets = {
        b"2019/a.jpg": dict(camera="Canon EOS 40D", year=2019, lens="EF 50mm f/1.8"),
        b"2019/b.jpg": dict(camera="Nikon D90", year=2019),
        b"2020/a.jpg": dict(camera="Canon EOS 5D", year=2020),
        b"2020/" + LONG: dict(camera="Canon EOS 5D", year=2020),
        b"2021/" + NON_UTF8: dict(year=2021),
        b"2021/" + UTF8: dict(year=2021),
    }
    return {
        "roots": {"Photos": str(photos)},
        "photos": [["Photos", rel.hex(), f] for rel, f in facets.items()],
        "delay": delay,
    }


class Mounted:
    def __init__(self, tmp: Path, photos: Path, delay: float = 0.0, name: str = "mnt", options: dict | None = None):
        self.mnt = tmp / name
        self.mnt.mkdir(exist_ok=True)
        self.log = tmp / f"{name}.log"
        self.spec = tmp / f"{name}.json"
        self.spec.write_text(json.dumps({**_spec(photos, delay), **(options or {})}))
        self.pid = 0
        self.expected_log: list[str] = []

    def start(self) -> Mounted:
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        command = [
            sys.executable,
            str(HERE / "test_fs_mount.py"),
            "serve",
            str(self.spec),
            str(self.mnt),
            str(self.log),
        ]
        self.pid = M.spawn(command, self.mnt, log_file=self.log, ready_timeout=30, env=env)
        return self

    def stop(self) -> None:
        if M.is_mounted(self.mnt):
            for tool in ("fusermount", "fusermount3"):
                if shutil.which(tool):
                    subprocess.run([tool, "-uz", str(self.mnt)], capture_output=True, timeout=T)
                    break
        if self.pid:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _reap(self.pid)

    def log_text(self) -> str:
        return self.log.read_text("utf-8", "replace") if self.log.exists() else ""

    check_log_ignore_tracebacks = False

    def check_log(self) -> None:
        text = self.log_text()
        if self.check_log_ignore_tracebacks:  # drop the indented traceback bodies of expected errors
            text = "\n".join(line for line in text.splitlines() if not line.startswith((" ", "ZeroDivisionError")))
        bad = [
            line
            for line in text.splitlines()
            if any(w in line for w in (" WARNING ", " ERROR ", " CRITICAL ", "Traceback"))
            and not any(e in line for e in self.expected_log)
        ]
        assert not bad, "unexpected log lines:\n" + "\n".join(bad)

    def searches(self) -> list[str]:
        return [line.split("FAKE SEARCH ", 1)[1] for line in self.log_text().splitlines() if "FAKE SEARCH " in line]

    def p(self, *parts: bytes | str) -> bytes:
        return os.path.join(os.fsencode(self.mnt), *(os.fsencode(p) for p in parts))


def _reap(pid: int) -> None:
    for _ in range(100):
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return
        if done:
            return
        time.sleep(0.05)


@pytest.fixture
def mounted(tmp_path, photos, request):
    m = Mounted(tmp_path, photos)
    request.addfinalizer(m.stop)
    m.start()
    yield m
    m.check_log()


def sh(script: str, cwd=None, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["sh", "-c", script], capture_output=True, timeout=T, cwd=cwd)
    if check:
        assert proc.returncode == 0, (script, proc.stdout, proc.stderr)
    return proc


def py(code: str, **args) -> object:
    """Run `code` in a fresh python (so a stuck syscall cannot hang pytest); it sets `result`."""
    prog = "import os, errno, json, sys\nargs = json.loads(sys.argv[1])\n" + code + "\nprint(json.dumps(result))"
    proc = subprocess.run([sys.executable, "-c", prog, json.dumps(args)], capture_output=True, timeout=T)
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


# ------------------------------------------------------------------------------------------- tests


def test_ls_stat_readlink(mounted, photos):
    out = sh(f"ls {mounted.mnt}").stdout.split()
    assert out == [b"README.txt", b"date", b"exif", b"query", b"similar"]
    listing = sh(f"ls -A '{mounted.mnt}/query/a red photo'").stdout.splitlines()
    assert b".results.tsv" in listing and len(listing) == 6 + 2
    st = os.lstat(mounted.p("query", "a red photo"))
    assert oct(st.st_mode) == "0o40555" and st.st_nlink == 1 and st.st_uid == os.getuid()
    first = sorted(n for n in os.listdir(mounted.p("query", "a red photo")) if not n.startswith(b"."))[0]
    assert first.startswith(b"01_")  # default limit 50: two digits
    target = os.readlink(mounted.p("query", "a red photo", first))
    assert target.startswith(os.fsencode(photos)) and os.path.isfile(target)
    lst = os.lstat(mounted.p("query", "a red photo", first))
    assert oct(lst.st_mode) == "0o120777" and lst.st_size == len(target)
    tsv = Path(mounted.p("query", "a red photo", ".results.tsv").decode()).read_bytes().splitlines()
    assert tsv[0] == b"rank\tscore\tpath" and len(tsv) == 7
    assert mounted.searches() == ["'a red photo'"]  # ls, stat, readlink, manifest: one search
    assert b"query/<text>/" in Path(mounted.p("README.txt").decode()).read_bytes()
    assert os.stat(mounted.p("query", "a red photo")).st_ino == os.stat(mounted.p("query", "a red photo")).st_ino


def test_find_L_and_cp(mounted, tmp_path, photos):
    folder = f"{mounted.mnt}/exif/camera=canon"
    found = sh(f"find -L '{folder}' -type f").stdout.splitlines()
    assert len(found) == 3 + 2  # photos followed through the links, plus the manifests
    dest = tmp_path / "copy"
    sh(f"cp -rL '{folder}' '{dest}'")
    copied = sorted(os.listdir(dest))
    assert len(copied) == 5 and all(not os.path.islink(dest / n) for n in copied)
    dest2 = tmp_path / "glob"
    dest2.mkdir()
    sh(f"cp '{folder}'/* '{dest2}/'")  # only the photos: nested names are not listed, manifests are dot-names
    names = sorted(os.listdir(dest2))
    # metadata folders list every match; the rank is zero-padded to the width of the match count
    assert len(names) == 3 and all(n.split("_", 1)[0].isdigit() for n in names)
    for n in names:
        assert (dest2 / n).read_bytes() == Path(os.readlink(os.path.join(folder, n))).read_bytes()
    sh(f"find '{mounted.mnt}/similar' > /dev/null")  # walks the mirror without loops or errors


def test_cd_into_query_folders(mounted):
    out = sh(f"cd '{mounted.mnt}/query/dog on a beach/year=2019' && pwd && ls | wc -l && cd ../.. && pwd").stdout
    lines = out.decode().splitlines()
    assert lines[0].endswith("year=2019") and lines[1] == "2" and lines[2].endswith("query")
    assert sh(f"cd '{mounted.mnt}/exif/lens' && ls").stdout.decode().strip() == "lens=EF 50mm f\u22151.8"
    sh(f"cd '{mounted.mnt}/exif/lens/lens=EF 50mm f%2F1.8' && ls | grep -q a.jpg")
    proc = sh(f"cd '{mounted.mnt}/exif/year=abc'", check=False)
    assert proc.returncode != 0


def test_every_write_refused(mounted):
    result = py(
        """
mnt = args["mnt"]
out = {}
names = sorted(n for n in os.listdir(os.path.join(mnt, "query/dog")) if not n.startswith("."))
link = os.path.join(mnt, "query/dog", names[0])
ops = {
    "create": lambda: open(os.path.join(mnt, "query/dog/new.txt"), "w"),
    "create_root": lambda: open(os.path.join(mnt, "x"), "w"),
    "write_readme": lambda: open(os.path.join(mnt, "README.txt"), "w"),
    "append_manifest": lambda: open(os.path.join(mnt, "query/dog/.results.tsv"), "a"),
    "unlink": lambda: os.unlink(link),
    "rename": lambda: os.rename(link, os.path.join(mnt, "query/dog/renamed.jpg")),
    "chmod": lambda: os.chmod(os.path.join(mnt, "README.txt"), 0o777),
    "chown": lambda: os.chown(os.path.join(mnt, "README.txt"), 1, 1),
    "utime": lambda: os.utime(os.path.join(mnt, "README.txt"), (1, 1)),
    "symlink": lambda: os.symlink("/etc/passwd", os.path.join(mnt, "query/dog/ln")),
    "link": lambda: os.link(os.path.join(mnt, "README.txt"), os.path.join(mnt, "query/dog/hard")),
    "truncate": lambda: os.truncate(os.path.join(mnt, "README.txt"), 0),
    "setxattr": lambda: os.setxattr(os.path.join(mnt, "README.txt"), "user.x", b"1"),
    "mkdir_exif": lambda: os.mkdir(os.path.join(mnt, "exif/new")),
    "mkdir_result": lambda: os.mkdir(os.path.join(mnt, "query/dog/new")),
    "rmdir_exif": lambda: os.rmdir(os.path.join(mnt, "exif")),
    "rmdir_tree": lambda: os.rmdir(os.path.join(mnt, "similar/Photos/2019")),
    "mknod": lambda: os.mkfifo(os.path.join(mnt, "query/dog/fifo")),
}
for name, op in ops.items():
    try:
        op()
        out[name] = "ok"
    except OSError as exc:
        out[name] = errno.errorcode.get(exc.errno, str(exc.errno))
result = out
""",
        mnt=str(mounted.mnt),
    )
    assert result == {k: "EROFS" for k in result}, result


def test_save_and_forget_queries(mounted):
    assert sh(f"ls '{mounted.mnt}/query'").stdout == b""
    # every query/<text> already exists, so the kernel answers EEXIST to a plain mkdir ...
    proc = sh(f"mkdir '{mounted.mnt}/query/cats'", check=False)
    assert proc.returncode != 0 and b"exists" in proc.stderr
    # ... and `mkdir query/+<text>` saves <text>
    sh(f"mkdir '{mounted.mnt}/query/+cats on a sofa'")
    assert sh(f"ls '{mounted.mnt}/query'").stdout.splitlines() == [b"cats on a sofa"]
    sh(f"ls '{mounted.mnt}/query/dog' > /dev/null")
    assert sh(f"ls '{mounted.mnt}/query'").stdout.splitlines() == [b"cats on a sofa", b"dog"]
    sh(f"rmdir '{mounted.mnt}/query/cats on a sofa' '{mounted.mnt}/query/dog'")
    assert sh(f"ls '{mounted.mnt}/query'").stdout == b""


def test_probes_never_search(mounted):
    probes = [
        ".hidden",
        ".Trash",
        ".Trash-0",
        "autorun.inf",
        "desktop.ini",
        ".xdg-volume-info",
        ".directory",
        "Thumbs.db",
        ".DS_Store",
        ".thumbnails",
        "folder.jpg",
        "Folder.jpg",
        ".folder.png",
        ".git",
    ]
    result = py(
        """
out = []
for parent in args["parents"]:
    for probe in args["probes"]:
        try:
            os.stat(os.path.join(parent, probe))
            out.append(parent + "/" + probe)
        except FileNotFoundError:
            pass
result = out
""",
        parents=[
            str(mounted.mnt),
            f"{mounted.mnt}/query",
            f"{mounted.mnt}/query/dog",
            f"{mounted.mnt}/exif/year=2019",
            f"{mounted.mnt}/similar/Photos/2019/a.jpg",
            f"{mounted.mnt}/query/dog/limit=3",
        ],
        probes=probes,
    )
    assert result == []
    assert mounted.searches() == []


def test_names_long_non_utf8_duplicates(mounted, photos):
    folder = mounted.p("exif", "year=2019..2021")
    names = [n for n in os.listdir(folder) if not n.startswith(b".")]
    assert len(names) == 6 and len(set(names)) == 6
    assert sum(n.endswith(b"_a.jpg") for n in names) == 2  # duplicate basenames, distinct links
    assert any(n.endswith(NON_UTF8) for n in names)
    assert any(n.endswith(UTF8) for n in names)
    long = [n for n in names if n.endswith(b".jpg") and b"\xe2\x80\xa6" in n]
    assert len(long) == 1 and len(long[0]) <= 255
    for n in names:
        target = os.readlink(os.path.join(folder, n))
        assert os.path.isfile(target) and target.startswith(os.fsencode(photos))
        assert os.path.basename(target)[:5] in n or len(os.path.basename(target)) > 250
    # the mirror tree keeps the source names, non-UTF-8 included
    assert sorted(os.listdir(mounted.p("similar", "Photos", "2021"))) == sorted([NON_UTF8, UTF8])
    inner = os.listdir(mounted.p("similar", "Photos", b"2021", NON_UTF8))
    assert len([n for n in inner if not n.startswith(b".")]) == 5


def test_concurrent_readers(tmp_path, photos, request):
    m = Mounted(tmp_path, photos, delay=0.5)
    request.addfinalizer(m.stop)
    m.start()
    folder = f"{m.mnt}/query/eight readers"
    procs = [
        subprocess.Popen(
            ["sh", "-c", f"ls -A '{folder}' && cat '{folder}/.results.tsv' | wc -l"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(8)
    ]
    outs = [p.communicate(timeout=T) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert len({o for o, _ in outs}) == 1
    assert m.searches() == ["'eight readers'"]  # single flight: 8 listings, one search
    m.check_log()


def test_kill9_then_remount_over_stale(tmp_path, photos, request):
    m = Mounted(tmp_path, photos)
    request.addfinalizer(m.stop)
    m.start()
    sh(f"ls '{m.mnt}/query/dog' > /dev/null")
    os.kill(m.pid, signal.SIGKILL)
    _reap(m.pid)
    assert (
        py(
            """
try:
    os.listdir(args["mnt"]); result = "ok"
except OSError as exc:
    result = errno.errorcode[exc.errno]
""",
            mnt=str(m.mnt),
        )
        == "ENOTCONN"
    )  # "Transport endpoint is not connected"
    assert M.is_stale(m.mnt)
    m.start()  # clears the stale mount first
    assert not M.is_stale(m.mnt)
    assert len([n for n in os.listdir(m.p("query", "dog")) if not n.startswith(b".")]) == 6
    M.unmount(m.mnt)
    assert not M.is_mounted(m.mnt)
    m.check_log()


def test_umount_busy_then_lazy(tmp_path, photos, request):
    m = Mounted(tmp_path, photos)
    request.addfinalizer(m.stop)
    m.start()
    shell = subprocess.Popen(["sleep", "30"], cwd=m.p("query", "dog"))  # a process sitting inside
    request.addfinalizer(shell.kill)
    with pytest.raises(M.MountError, match="busy"):
        M.unmount(m.mnt)
    assert M.is_mounted(m.mnt)
    M.unmount(m.mnt, lazy=True)
    assert not M.is_mounted(m.mnt)
    shell.kill()
    shell.wait(T)
    for _ in range(100):  # the daemon exits once the last user has left
        if os.waitpid(m.pid, os.WNOHANG)[0]:
            m.pid = 0
            break
        time.sleep(0.1)
    assert m.pid == 0, "daemon still running after the lazy unmount"
    m.check_log()


def test_sigterm_unmounts_cleanly(tmp_path, photos, request):
    m = Mounted(tmp_path, photos)
    request.addfinalizer(m.stop)
    m.start()
    os.kill(m.pid, signal.SIGTERM)
    _, status = os.waitpid(m.pid, 0)
    m.pid = 0
    assert os.waitstatus_to_exitcode(status) == 0
    assert not M.is_mounted(m.mnt)
    assert "unmounted" in m.log_text()
    m.check_log()


def test_spawn_reports_child_failure(tmp_path, photos):
    m = Mounted(tmp_path, photos)
    (m.mnt / "not-empty").write_text("x")
    with pytest.raises(M.MountError, match="not empty"):
        m.start()
    assert not M.is_mounted(m.mnt)


def test_refuses_mountpoint_inside_or_above_a_root(tmp_path, photos):
    inside = photos / "2019" / "mnt"
    inside.mkdir()
    with pytest.raises(M.MountError, match="inside the source root"):
        M.check_mountpoint(inside, [os.fsencode(photos)])
    with pytest.raises(M.MountError, match="contains the source root"):
        M.check_mountpoint(photos.parent, [os.fsencode(photos)])
    inside.rmdir()
    with pytest.raises(M.MountError, match="does not exist"):
        M.check_mountpoint(tmp_path / "nope", [])
    assert M.fuse_options()["fsname"] == "searchfs" and "allow_other" not in M.fuse_options()
    assert M.fuse_options(allow_other=True)["allow_other"] is True


def test_unmount_nothing_mounted(tmp_path):
    from searchfs.errors import NotFound

    with pytest.raises(NotFound):
        M.unmount(tmp_path)


def test_backend_failures_answer_eio_and_daemon_survives(mounted):
    for _ in range(3):
        proc = sh(f"ls '{mounted.mnt}/query/explode model'", check=False)
        assert proc.returncode != 0 and b"Input/output error" in proc.stderr
    proc = sh(f"ls '{mounted.mnt}/query/explode bug'", check=False)
    assert proc.returncode != 0 and b"Input/output error" in proc.stderr
    assert len(sh(f"ls '{mounted.mnt}/query/dog'").stdout.splitlines()) == 6  # still serving
    log = mounted.log_text()
    model_lines = [line for line in log.splitlines() if "cannot load the CLIP model" in line and " ERROR " in line]
    assert len(model_lines) == 1, model_lines  # one clear line, not one per call
    assert "ZeroDivisionError" in log and "Traceback" in log  # a bug: logged with its traceback
    mounted.expected_log += ["cannot load the CLIP model", "ZeroDivisionError", "Traceback", "unexpected"]
    mounted.check_log_ignore_tracebacks = True


# ---------------------------------------------------------------------- logs, names, big folders, files


def test_debug_log_is_one_line_per_expected_error(tmp_path, photos, request):
    m = Mounted(tmp_path, photos, options={"debug": True})
    request.addfinalizer(m.stop)
    m.start()
    result = py(
        """
mnt = args["mnt"]
out = []
for path, op in ((mnt + "/query/dog/.hidden", os.stat), (mnt + "/exif/nokey", os.stat),
                 (mnt + "/query/dog/new.txt", lambda p: open(p, "w")), (mnt + "/exif/x", os.mkdir),
                 (mnt + "/README.txt", lambda p: os.truncate(p, 0))):
    try:
        op(path)
    except OSError as exc:
        out.append(errno.errorcode[exc.errno])
result = out
""",
        mnt=str(m.mnt),
    )
    assert result == ["ENOENT", "ENOENT", "EROFS", "EROFS", "EROFS"]
    log = m.log_text()
    assert "Traceback" not in log and "FUSE operation" not in log  # mfusepy's traceback per errno is gone
    for path, code in (("/query/dog/.hidden", "ENOENT"), ("/exif/x", "EROFS"), ("/README.txt", "EROFS")):
        lines = [line for line in log.splitlines() if f"'{path}'" in line and code in line]
        assert 1 <= len(lines) <= 2, (path, lines)  # the kernel may ask twice (lookup, then the call)
        assert all(" DEBUG " in line for line in lines)
    assert "getattr '/': ok" in log  # --debug logs every call, one line each
    m.check_log()


def test_names_over_255_bytes_answer_enametoolong(mounted):
    long = "x" * 256
    result = py(
        """
out = []
long = args["long"]
for op, path in (("stat", "query/" + long), ("mkdir", "query/+" + long), ("stat", "exif/camera=" + long)):
    try:
        getattr(os, op)(os.path.join(args["mnt"], path))
        out.append("ok")
    except OSError as exc:
        out.append(errno.errorcode[exc.errno])
result = out
""",
        mnt=str(mounted.mnt),
        long=long,
    )
    assert result == ["ENAMETOOLONG"] * 3
    assert sh(f"ls '{mounted.mnt}/query'").stdout == b""  # nothing saved
    assert mounted.searches() == []


def _dated_photos(root: Path, count_per_year: dict[int, int], undated: int) -> list:
    from photos import make_photo

    out = []
    for year, count in count_per_year.items():
        for i in range(count):
            rel = f"{year}/p{i}.jpg".encode()
            make_photo(os.path.join(os.fsencode(root), rel), (i * 20 % 255, 40, 90), seed=i)
            out.append(["Photos", rel.hex(), {"camera": "Canon EOS 5D", "date": f"{year}-05-{1 + i:02d}"}])
    for i in range(undated):
        rel = f"misc/u{i}.png".encode()
        make_photo(os.path.join(os.fsencode(root), rel), (90, 40, i * 20 % 255), seed=100 + i)
        out.append(["Photos", rel.hex(), {"camera": "Canon EOS 5D"}])
    return out


def test_a_big_folder_splits_and_its_manifest_streams_in_full(tmp_path, request):
    root = tmp_path / "dated"
    spec = {"photos": _dated_photos(root, {2019: 3, 2020: 4}, undated=6), "settings": {"mount_max_entries": 5}}
    m = Mounted(tmp_path, root, options=spec)
    request.addfinalizer(m.stop)
    m.start()
    folder = f"{m.mnt}/exif/camera=Canon"
    listing = sh(f"ls -A '{folder}'").stdout.splitlines()
    assert listing == [b".results.json", b".results.tsv", b"2019", b"2020", b"undated"]
    long_listing = sh(f"ls -l '{folder}' '{folder}/2019' '{folder}/undated'").stdout.decode()
    assert "page=2" in long_listing and "3_p2.jpg ->" in long_listing
    assert os.stat(f"{folder}/.results.tsv").st_size == 0  # generated as it is read
    rows = sh(f"cat '{folder}/.results.tsv'").stdout.splitlines()
    assert len(rows) == 14 and rows[-1].endswith(b"misc/u5.png")
    sh(f"cp '{folder}/.results.json' '{tmp_path}/copy.json'")
    items = json.loads((tmp_path / "copy.json").read_text())
    assert [i["name"] for i in items][-2:] == ["undated/page=1/5_u4.png", "undated/page=2/6_u5.png"]
    for item in items:
        assert os.readlink(os.path.join(folder, item["name"])) == item["path"]
    m.check_log()


def test_files_mode_serves_read_only_copies_of_the_originals(tmp_path, request):
    root = tmp_path / "orig"
    spec = {"photos": _dated_photos(root, {2019: 3}, undated=2), "settings": {"mount_entries": "files"}, "nofile": 64}
    originals = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}
    m = Mounted(tmp_path, root, options=spec)
    request.addfinalizer(m.stop)
    m.start()
    folder = m.mnt / "exif" / "camera=Canon"
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    assert len(names) == 5 and all(os.path.isfile(folder / n) and not os.path.islink(folder / n) for n in names)
    for n in names:
        original = next(p for p in originals if p.name == n.split("_", 1)[1])
        assert (folder / n).read_bytes() == originals[original]
        assert os.stat(folder / n).st_mode & 0o777 == 0o444
    entry = folder / names[0]
    for script in (f"printf JUNK >> '{entry}'", f": > '{entry}'", f"truncate -s 0 '{entry}'", f"rm '{entry}'"):
        proc = sh(script, check=False)
        assert proc.returncode != 0 and b"Read-only file system" in proc.stderr, script
    assert {p: p.read_bytes() for p in originals} == originals  # nothing changed
    copy = tmp_path / "copied"
    sh(f"cp -r '{folder}' '{copy}'")  # what a file manager does: photos, not links
    assert sorted(p.name for p in copy.iterdir() if not p.name.startswith(".")) == names
    assert all(not p.is_symlink() for p in copy.iterdir())
    # 150 open files at once against a daemon limited to 64 descriptors
    held = py(
        """
import itertools
paths = [os.path.join(args["folder"], n) for n in args["names"]]
handles = [open(p, "rb") for p in itertools.islice(itertools.cycle(paths), 150)]
sizes = [len(h.read()) for h in handles]
for h in handles:
    h.close()
result = sizes
""",
        folder=str(folder),
        names=names,
    )
    assert len(held) == 150 and all(held)
    # a photo swapped for a link to an outside file after indexing is refused
    secret = tmp_path / "secret.txt"
    secret.write_text("not a photo of yours")
    swapped = next(p for p in originals if p.name == names[1].split("_", 1)[1])
    swapped.unlink()
    swapped.symlink_to(secret)
    proc = sh(f"cat '{folder / names[1]}'", check=False)
    assert proc.returncode != 0 and b"Permission denied" in proc.stderr
    m.expected_log.append("refused to serve")
    m.check_log()


def test_markers_progress_and_mtimes_that_survive_a_remount(tmp_path, photos, request):
    m = Mounted(tmp_path, photos, options={"progress": [2, 4]})
    request.addfinalizer(m.stop)
    m.start()
    top = sh(f"ls -A '{m.mnt}'").stdout.split()
    assert b".trackerignore" in top and b".nomedia" in top
    assert b".searchfs-indexing" in sh(f"ls -A '{m.mnt}/query/dog'").stdout.split()
    assert sh(f"cat '{m.mnt}/query/dog/.searchfs-indexing'").stdout.startswith(b"Still indexing: 2 of 6 photos")
    assert sh(f"head -1 '{m.mnt}/README.txt'").stdout.startswith(b"Still indexing")
    before = [os.stat(m.p(p)).st_mtime_ns for p in ("", "query", "exif/camera=Canon", "similar/Photos")]
    M.unmount(m.mnt)
    _reap(m.pid)
    m.start()
    assert [os.stat(m.p(p)).st_mtime_ns for p in ("", "query", "exif/camera=Canon", "similar/Photos")] == before
    m.check_log()


def test_the_kernel_caches_links_until_the_library_changes(tmp_path, photos, request):
    moved = tmp_path / "moved"
    m = Mounted(tmp_path, photos, options={"debug": True, "roots_after": {"Photos": str(moved)}})
    request.addfinalizer(m.stop)
    m.start()
    folder = m.p("query", "dog")
    name = sorted(n for n in os.listdir(folder) if not n.startswith(b"."))[0]
    reads = py(
        "result = [os.fsdecode(os.readlink(os.fsencode(args['link']))) for _ in range(20)]",
        link=os.fsdecode(os.path.join(folder, name)),
    )
    assert len(set(reads)) == 1 and reads[0].startswith(str(photos))
    served = [line for line in m.log_text().splitlines() if "readlink '/query/dog/" in line and ": ok" in line]
    if "the kernel caches link targets" in m.log_text():  # libfuse 3 on a kernel that can
        assert len(served) == 1, served
    else:
        assert len(served) == 20
    (Path(str(m.spec) + ".generation")).write_text("1")  # the library changes: the link must follow
    deadline = time.monotonic() + T
    target = reads[0]
    while time.monotonic() < deadline and target == reads[0]:
        target = os.fsdecode(os.readlink(os.path.join(folder, name)))
        time.sleep(0.05)
    assert target.startswith(str(moved)), target
    m.check_log()
