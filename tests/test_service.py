"""The search service for real: a real SyncDaemon (in this process, or `searchfs watch` in its own) on a
real library with the tiny model, its real Unix socket, and `python -m searchfs search` in subprocesses.

Who answered is read from the CLI's own INFO line (`-v`: "search answered by the searchfs daemon (pid N)")
and from the daemon's counts; what the CLI imported from `python -X importtime`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from photos import make_library, make_photo

from searchfs import client, service
from searchfs.daemon import SyncDaemon
from searchfs.library import Library

T = 30.0
ANSWERED = re.compile(r"search answered by the searchfs daemon \(pid (\d+)\)")
STATUS = {"v": 1, "op": "status"}


def cli(*args, env, trace: bool = False) -> subprocess.CompletedProcess:
    """`python -m searchfs ARGS` as a user runs it; `trace` adds -X importtime and -v (who answered)."""
    command = [sys.executable, *(["-X", "importtime"] if trace else []), "-m", "searchfs"]
    command += (["-v"] if trace else []) + list(args)
    return subprocess.run(command, env=env, capture_output=True, timeout=120)


def answered_by(done: subprocess.CompletedProcess) -> int | None:
    found = ANSWERED.search(done.stderr.decode(errors="replace"))
    return int(found.group(1)) if found else None


def imported(done: subprocess.CompletedProcess) -> set[str]:
    """Top-level packages the process imported (from -X importtime's lines on stderr)."""
    lines = done.stderr.decode(errors="replace").splitlines()
    return {line.rsplit("|", 1)[-1].strip().split(".")[0] for line in lines if line.startswith("import time:")}


def wait_for(check, what: str, timeout: float = T):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


def raw(path: Path, payload: bytes) -> dict | None:
    """Send `payload` as it is, close our side, and return the one JSON line answered (None: closed unanswered)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(T)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:  # it closed with our request still unread (too long): the answer came first
            pass
    assert data.count(b"\n") <= 1
    return json.loads(data) if data else None


@pytest.fixture
def runtime(monkeypatch):
    """A private XDG_RUNTIME_DIR of our own (short: a socket's path has at most 103 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="sfs-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def env(home, tiny_model, runtime):
    environment = dict(os.environ)
    environment.update({"SEARCHFS_" + k.upper(): v for k, v in tiny_model.items()})
    return environment


@pytest.fixture
def photos(tmp_path, env) -> Path:
    """Six photos and a copy under a name that is not UTF-8, indexed by `searchfs index` (which also
    exports the numpy text tower, as any first index does)."""
    root = Path(os.path.realpath(tmp_path)) / "photos"
    make_library(root, 6)
    shutil.copy(root / "album0" / "IMG_0000.jpg", os.fsencode(root / "album1") + b"/caf\xe9.jpg")
    done = cli("index", str(root), "--no-progress", env=env)
    assert done.returncode == 0, done.stderr
    return root


@pytest.fixture
def start_daemon(settings, request, runtime):
    """start_daemon(**settings) -> a started SyncDaemon (no watcher: it reconciles once) on the library."""

    def start(**overrides) -> SyncDaemon:
        lib = Library(settings.replace(**overrides))
        request.addfinalizer(lib.close)
        daemon = SyncDaemon(lib, watch=False)
        request.addfinalizer(daemon.stop)  # runs before lib.close
        daemon.start()
        assert daemon.wait_idle(T), "the start-up reconcile did not finish"
        return daemon

    return start


def served(daemon: SyncDaemon) -> dict:
    return daemon.status()["service"]


def test_the_daemon_answers_the_cli_as_the_cli_would_itself_without_importing_a_model(
    photos, env, start_daemon, settings, tmp_path
):
    outside = make_photo(tmp_path / "query.jpg", (30, 200, 40), seed=99)  # not indexed: the daemon embeds it
    queries = [
        ["search", "red flower", "--json"],
        ["search", "a dog on a beach", "-n", "3"],
        ["search", "sunset", "-0"],
        ["search", "dog", "--where", "year=2018..2030", "--min", "-1", "--json"],
        ["search", "--where", "camera=Canon", "--json"],
        ["search", str(photos / "album0" / "IMG_0002.jpg"), "--json"],
        ["search", str(outside), "--json"],
    ]
    local = [cli(*args, env=env, trace=True) for args in queries]
    assert all(done.returncode == 0 and answered_by(done) is None for done in local)
    for cache in (Path(settings.library_dir)).glob("textcache.sqlite*"):
        cache.unlink()  # the daemon must embed the texts itself, not read what the local runs cached

    daemon = start_daemon()
    embedder = daemon.library.embedder  # the service opened its text tower ahead of any search, without torch
    wait_for(lambda: embedder.model_calls == 1, "the text tower to be prepared")
    assert not embedder.loaded
    for args, before in zip(queries, local):
        done = cli(*args, env=env, trace=True)
        assert done.returncode == 0, done.stderr
        assert answered_by(done) == os.getpid(), (args, done.stderr[-2000:])
        assert not {"torch", "open_clip", "numpy", "PIL"} & imported(done), args
        if args[1] == str(outside):  # embedded by two torch processes: the same photos, scores to 1e-5
            ours, theirs = json.loads(done.stdout), json.loads(before.stdout)
            assert [h["path"] for h in ours] == [h["path"] for h in theirs]
            assert all(abs(a["score"] - b["score"]) < 1e-5 for a, b in zip(ours, theirs))
        else:
            assert done.stdout == before.stdout, args  # byte for byte, the name that is not UTF-8 included
    assert b"caf\xe9.jpg\0" in local[2].stdout
    assert served(daemon)["served"] == len(queries)


def test_the_fast_path_prints_what_the_full_cli_prints_without_importing_click(photos, env, start_daemon):
    """`searchfs search TEXT` as cli_quick.py answers it: the same bytes on stdout, the same error line and
    exit code as the full CLI asking the same daemon (`-v` makes the full CLI answer), and no click."""
    daemon = start_daemon()
    queries = [
        ["search", "red flower", "--json"],
        ["search", "a dog on a beach", "-n", "3"],
        ["search", "sunset", "-0"],  # the name that is not UTF-8 among the paths
        ["--library", "default", "search", "dog", "--where=year=2018..2030", "--min", "-1"],
        ["search", "--where", "camera=Canon", "--json"],
        ["search", "x", "--where", "colour=red"],  # the daemon's error answer
    ]
    for args in queries:
        full = cli("-v", *args, env=env)
        fast = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "searchfs", *args], env=env, capture_output=True, timeout=120
        )
        assert answered_by(full) == os.getpid() or full.returncode == 2, full.stderr
        said = [line for line in fast.stderr.splitlines() if not line.startswith(b"import time:")]
        assert (fast.returncode, fast.stdout) == (full.returncode, full.stdout), args
        assert said == [line for line in full.stderr.splitlines() if line.startswith(b"searchfs: ")], args
        assert "click" not in imported(fast), args
    assert served(daemon)["served"] == 2 * (len(queries) - 1) and served(daemon)["errors"] == 2
    assert b"caf\xe9.jpg\0" in fast_stdout(env, queries[2])

    before = served(daemon)["served"]
    read, write = os.pipe()  # a reader that is gone before anything is written: `searchfs search x | true`
    os.close(read)
    closed = subprocess.run(
        [sys.executable, "-m", "searchfs", "search", "sunset"], env=env, stdout=write, stderr=subprocess.PIPE
    )
    os.close(write)
    assert (closed.returncode, closed.stderr) == (0, b"")
    assert served(daemon)["served"] == before + 1  # answered, then met the closed pipe quietly


def fast_stdout(env: dict, args: list[str]) -> bytes:
    return subprocess.run([sys.executable, "-m", "searchfs", *args], env=env, capture_output=True, timeout=120).stdout


@pytest.mark.parametrize(
    "args, words",
    [
        (["search", "x", "--where", "colour=red"], "unknown metadata key"),
        (["search", "x", "--where", "year=soon"], "not a number"),
        (["search", "x", "--where", "iso=5..1"], ""),
        (["search", "x", "-n", "0"], "limit must be at least 1"),
        (["search", "x", "--min", "3"], "min score"),
    ],
)
def test_errors_cross_the_socket_as_one_line_and_the_same_exit_code(photos, env, start_daemon, args, words):
    before = cli(*args, env=env)
    assert before.returncode == 2 and words.encode() in before.stderr
    daemon = start_daemon()
    done = cli(*args, env=env)
    assert (done.returncode, done.stdout, done.stderr) == (2, b"", before.stderr)
    assert done.stderr.startswith(b"searchfs: ") and done.stderr.count(b"\n") == 1
    assert served(daemon)["errors"] == 1 and served(daemon)["served"] == 0  # it was the daemon's answer


def test_garbage_and_oversized_requests_get_an_error_and_the_daemon_keeps_serving(
    photos, env, start_daemon, settings, monkeypatch
):
    monkeypatch.setattr(service, "READ_TIMEOUT", 600.0)  # silent clients below stay until we close them
    daemon = start_daemon()
    path = service.socket_path(settings)
    same = json.dumps(service.fingerprint(settings))
    bad = [
        b"x" * (service.MAX_REQUEST + 10),  # no newline, over the limit
        b'{"v": 1, "op": "status", "pad": "' + b"y" * service.MAX_REQUEST + b'"}\n',  # a line, over the limit
        b"not json\n",
        b"\xff\xfe\xfd\n",
        b"[1, 2, 3]\n",
        b'{"v": 99, "op": "status"}\n',
        b'{"v": 1, "op": "explode"}\n',
        b'{"v": 1, "op": "search", "settings": ' + same.encode() + b', "where": "camera=Canon"}\n',
        b'{"v": 1, "op": "search", "settings": ' + same.encode() + b', "text": "x", "limit": "3"}\n',
        b'{"v": 1, "op": "search", "settings": ' + same.encode() + b', "similar_to": ["photos"]}\n',
        b'{"v": 1, "op": "search", "settings": ' + same.encode() + b', "text": "x", "limit": true}\n',
    ]
    for payload in bad:
        answer = raw(path, payload)
        assert answer is not None and answer["exit_code"] == 2, payload[:80]
        assert answer["error"].startswith("bad request to the search service: "), answer
    assert raw(path, b"") is None  # connected and left: nothing to answer, nothing broken
    assert served(daemon)["bad_requests"] == len(bad)

    # Clients that connect and never send hold no worker: more of them than there are workers, and
    # the CLI is still answered while every one of them is connected.
    silent = []
    for _ in range(2 * service.WORKERS + 1):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(str(path))
        silent.append(sock)
    try:
        done = cli("search", "red flower", "--json", env=env, trace=True)
        assert done.returncode == 0 and answered_by(done) == os.getpid()
        assert len(json.loads(done.stdout)) == 7
        for sock in silent:  # still connected: not dropped to make room
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
    finally:
        for sock in silent:
            sock.close()
    assert client.ask(settings, STATUS)["pid"] == os.getpid()
    assert served(daemon)["served"] == 1


def test_a_daemon_with_other_settings_declines_and_the_cli_searches_itself(photos, env, start_daemon):
    daemon = start_daemon()
    done = cli("search", "red flower", "--json", env=dict(env, SEARCHFS_SEARCH_LIMIT="2"), trace=True)
    assert done.returncode == 0 and answered_by(done) is None
    assert len(json.loads(done.stdout)) == 2
    assert served(daemon)["declined"] == 1 and served(daemon)["served"] == 0


def test_socket_and_folder_are_private_and_go_with_the_daemon(photos, start_daemon, settings, runtime):
    old = os.umask(0)  # the modes must not depend on the umask
    try:
        daemon = start_daemon()
    finally:
        os.umask(old)
    path = service.socket_path(settings)
    assert path.parent == runtime / "searchfs" and re.fullmatch(r"search-[0-9a-f]{16}\.sock", path.name)
    folder, info = os.stat(path.parent), os.lstat(path)
    assert stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == os.getuid()
    assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    assert sorted(os.listdir(path.parent)) == [path.name]  # no temporary name left behind
    assert served(daemon)["socket"] == str(path)
    other = service.socket_path(settings.replace(library="work"))
    assert other.parent == path.parent and other != path  # one socket per library
    daemon.stop()
    assert not path.exists() and client.ask(settings, STATUS) is None


def test_a_killed_daemon_leaves_a_socket_the_cli_passes_over_quietly(photos, env, settings):
    local = cli("search", "red flower", "--json", env=env)
    path = service.socket_path(settings)

    def watch() -> subprocess.Popen:
        daemon = subprocess.Popen(
            [sys.executable, "-m", "searchfs", "watch"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for(lambda: (client.ask(settings, STATUS) or {}).get("pid") == daemon.pid, "the watch daemon to answer")
        return daemon

    first = watch()
    try:
        done = cli("search", "red flower", "--json", env=env, trace=True)
        assert answered_by(done) == first.pid and done.stdout == local.stdout
    finally:
        first.kill()
        first.wait(T)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left behind by kill -9

    done = cli("search", "red flower", "--json", env=env)
    assert (done.returncode, done.stdout, done.stderr) == (0, local.stdout, b"")
    done = cli("-vv", "search", "red flower", "--json", env=env)
    assert answered_by(done) is None and b"Connection refused" in done.stderr

    second = watch()  # the next daemon replaces the stale socket
    try:
        done = cli("search", "red flower", "--json", env=env, trace=True)
        assert answered_by(done) == second.pid and done.stdout == local.stdout
    finally:
        second.send_signal(signal.SIGTERM)
        assert second.wait(T) == 0
    assert not path.exists()  # a clean stop takes its socket away


needs_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root, to act as another user")


@needs_root
def test_a_socket_of_another_user_is_never_used(photos, env, settings):
    local = cli("search", "red flower", "--json", env=env)
    path = service.socket_path(settings, create=True)
    rogue = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    rogue.bind(str(path))
    rogue.listen(4)
    fake = {"hits": [[1, 0.99, "photos", "fake.jpg", "/fake.jpg", 1, 1]], "pid": 1}
    try:
        # Owned by us, it is used (what the CLI would print is the rogue's answer) ...
        answering = threading.Thread(target=_answer_once, args=(rogue, fake))
        answering.start()
        done = cli("search", "red flower", "--json", env=env)
        answering.join(T)
        assert [h["path"] for h in json.loads(done.stdout)] == ["/fake.jpg"]
        # ... owned by another user, it is not even connected to.
        os.chown(path, 65534, 65534)
        done = cli("search", "red flower", "--json", env=env)
        assert (done.returncode, done.stdout, done.stderr) == (0, local.stdout, b"")
        rogue.setblocking(False)
        with pytest.raises(BlockingIOError):
            rogue.accept()
    finally:
        rogue.close()
        path.unlink()


def _answer_once(listener: socket.socket, response: dict) -> None:
    listener.settimeout(T)
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(T)
        data = b""
        while not data.endswith(b"\n"):
            data += conn.recv(65536)
        conn.sendall(json.dumps(response).encode() + b"\n")


@needs_root
def test_the_daemon_answers_only_its_own_user_even_with_loosened_modes(photos, start_daemon, settings, runtime):
    daemon = start_daemon()
    path = service.socket_path(settings)
    for folder in (runtime, path.parent):
        os.chmod(folder, 0o711)  # as if someone had loosened them: the uid check still holds
    os.chmod(path, 0o666)
    # A forked child as uid 65534 (it cannot exec this interpreter: its folder is root's); only socket calls.
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child process
        try:
            os.setgid(65534)
            os.setuid(65534)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(T)
            sock.connect(str(path))
            try:
                sock.sendall(b'{"v": 1, "op": "status"}\n')
                answer = b"answer:" + sock.recv(65536)
            except (BrokenPipeError, ConnectionResetError):  # closed before we were done sending or reading
                answer = b"answer:"
            os.write(writer, answer)
        except BaseException as exc:
            os.write(writer, repr(exc).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        said = pipe.read()
    os.waitpid(child, 0)
    assert said == b"answer:", said  # connected, and closed without a word
    assert served(daemon)["refused"] == 1
    assert client.ask(settings, STATUS) is None  # nor does our own client trust a folder others may enter
    for folder in (runtime, path.parent):
        os.chmod(folder, 0o700)
    assert client.ask(settings, STATUS)["pid"] == os.getpid()  # and it still serves its own user
