"""The mfusepy adapter against a fake view: errno mapping, EROFS on writes, nothing ever raised
except FuseOSError, unexpected errors logged."""

from __future__ import annotations

import errno
import logging
import os

import pytest

mfusepy = pytest.importorskip("mfusepy", reason="mfusepy (and libfuse) are needed for the adapter")

from searchfs import errors as E  # noqa: E402
from searchfs.fs import view as V  # noqa: E402
from searchfs.fs.fuse_ops import SearchfsOperations, errno_for  # noqa: E402


class FakeView:
    uid, gid = 1234, 5678

    def __init__(self):
        self.raise_next: BaseException | None = None
        self.calls: list[tuple] = []

    def _maybe_raise(self):
        if self.raise_next is not None:
            exc, self.raise_next = self.raise_next, None
            raise exc

    def getattr(self, path: bytes) -> V.Attr:
        self.calls.append(("getattr", path))
        self._maybe_raise()
        if path.endswith(b".lnk"):
            return V.Attr(V.LINK, 7, 12, 10**9)
        if path.endswith(b".txt"):
            return V.Attr(V.FILE, 8, 5, 10**9)
        return V.Attr(V.DIR, 9, 0, 10**9)

    def readdir(self, path: bytes):
        self.calls.append(("readdir", path))
        self._maybe_raise()
        return [V.Entry(b"caf\xe9.lnk", V.LINK, 11), V.Entry(b"sub", V.DIR, 12)]

    def readlink(self, path: bytes) -> bytes:
        self.calls.append(("readlink", path))
        self._maybe_raise()
        return b"/photos/caf\xe9.jpg"

    def open(self, path, flags):
        self.calls.append(("open", path, flags))
        self._maybe_raise()
        return V.Opened(fh=7, direct_io=path.endswith(b".tsv"))

    def read(self, path, size, offset, fh=0):
        self.calls.append(("read", path, fh))
        self._maybe_raise()
        return b"hello"[offset : offset + size]

    def release(self, fh):
        self.calls.append(("release", fh))

    def mkdir(self, path):
        self.calls.append(("mkdir", path))
        self._maybe_raise()

    def rmdir(self, path):
        self.calls.append(("rmdir", path))
        self._maybe_raise()

    def statfs(self):
        return {"f_bsize": 4096}


@pytest.fixture
def ops():
    return SearchfsOperations(FakeView(), throttle_seconds=0)


def code_of(fn, *args):
    with pytest.raises(mfusepy.FuseOSError) as info:
        fn(*args)
    return info.value.errno


def test_getattr_stat_dict(ops):
    st = ops.getattr("/a.lnk")
    assert st["st_mode"] == 0o120777 and st["st_size"] == 12 and st["st_ino"] == 7
    assert st["st_uid"] == 1234 and st["st_gid"] == 5678
    st = ops.getattr("/dir")
    assert st["st_mode"] == 0o40555 and st["st_nlink"] == 1
    assert ops.getattr("/f.txt")["st_mode"] == 0o100444
    assert ops.getattr("/f.txt")["st_mtime"] == 10**9  # ns (use_ns)


def test_paths_and_names_round_trip_as_bytes(ops):
    path = b"/q/caf\xe9".decode("utf-8", "surrogateescape")  # how mfusepy hands non-UTF-8 paths over
    ops.getattr(path)
    assert ops.view.calls[-1] == ("getattr", b"/q/caf\xe9")
    listing = ops.readdir("/q", 0)
    names = [item[0].encode("utf-8", "surrogateescape") for item in listing]
    assert names == [b".", b"..", b"caf\xe9.lnk", b"sub"]
    assert listing[2][1]["st_mode"] == 0o120777 and listing[2][1]["st_ino"] == 11
    assert ops.readlink("/x.lnk").encode("utf-8", "surrogateescape") == b"/photos/caf\xe9.jpg"


@pytest.mark.parametrize(
    "exc, code",
    [
        (V.NoEntry("x"), errno.ENOENT),
        (V.NotADir("x"), errno.ENOTDIR),
        (V.IsADir("x"), errno.EISDIR),
        (V.Exists("x"), errno.EEXIST),
        (V.ViewError("x"), errno.EINVAL),
        (E.NotFound("x"), errno.ENOENT),
        (E.QueryError("year=abc is not a number"), errno.ENOENT),
        (E.ReadOnly("x"), errno.EROFS),
        (E.LibraryBusy("x"), errno.EAGAIN),
        (E.ModelUnavailable("no weights"), errno.EIO),
        (E.ExiftoolError("x"), errno.EIO),
        (OSError(errno.EACCES, "denied"), errno.EACCES),
        (RuntimeError("boom"), errno.EIO),
        (KeyError("k"), errno.EIO),
    ],
)
def test_errno_mapping(ops, exc, code):
    assert errno_for(exc)[0] == code
    for call, args in (
        (ops.getattr, ("/p",)),
        (ops.readdir, ("/p", 0)),
        (ops.readlink, ("/p",)),
        (ops.read, ("/p", 10, 0, 0)),
        (ops.open, ("/p", os.O_RDONLY)),
        (ops.rmdir, ("/p",)),
        (ops.mkdir, ("/p", 0o755)),
    ):
        ops.view.raise_next = exc
        assert code_of(call, *args) == code


WRITES = [
    ("create", ("/f", 0o644)),
    ("mknod", ("/f", 0o644, 0)),
    ("write", ("/f", b"x", 0, 0)),
    ("truncate", ("/f", 0)),
    ("unlink", ("/f",)),
    ("rename", ("/a", "/b")),
    ("link", ("/a", "/b")),
    ("symlink", ("/a", "/b")),
    ("chmod", ("/f", 0o777)),
    ("chown", ("/f", 0, 0)),
    ("utimens", ("/f", None)),
    ("setxattr", ("/f", "user.x", b"1", 0)),
    ("removexattr", ("/f", "user.x")),
    ("fallocate", ("/f", 0, 0, 10, 0)),
]


@pytest.mark.parametrize("name, args", WRITES)
def test_every_write_is_erofs(ops, name, args, caplog):
    with caplog.at_level(logging.DEBUG):
        assert code_of(getattr(ops, name), *args) == errno.EROFS
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_access_write_refused(ops):
    assert ops.access("/x", os.R_OK | os.X_OK) == 0
    assert code_of(ops.access, "/x", os.W_OK) == errno.EROFS


def test_unexpected_errors_logged_with_traceback(ops, caplog):
    ops.view.raise_next = ZeroDivisionError("bad")
    with caplog.at_level(logging.DEBUG, logger="searchfs"):
        assert code_of(ops.readdir, "/q/dog", 0) == errno.EIO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and errors[0].exc_info and "readdir" in errors[0].getMessage()


def test_model_unavailable_one_clear_line_throttled(caplog):
    ops = SearchfsOperations(FakeView(), throttle_seconds=60)
    with caplog.at_level(logging.DEBUG, logger="searchfs"):
        for _ in range(5):
            ops.view.raise_next = E.ModelUnavailable("cannot load ViT-B-32: no weights")
            assert code_of(ops.readdir, "/query/dog", 0) == errno.EIO
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1
    assert "cannot load ViT-B-32" in errors[0].getMessage() and not errors[0].exc_info


def test_expected_errors_stay_quiet(ops, caplog):
    with caplog.at_level(logging.DEBUG, logger="searchfs"):
        for exc in (V.NoEntry("x"), E.QueryError("bad"), E.NotFound("x"), E.ReadOnly("ro")):
            ops.view.raise_next = exc
            code_of(ops.getattr, "/x")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_base_exceptions_do_not_escape(ops):
    ops.view.raise_next = KeyboardInterrupt()
    assert code_of(ops.getattr, "/x") == errno.EINTR


def test_mkdir_rmdir_pass_bytes(ops):
    ops.mkdir("/query/+caf\udce9", 0o755)
    ops.rmdir("/query/dog")
    assert ops.view.calls[-2:] == [("mkdir", b"/query/+caf\xe9"), ("rmdir", b"/query/dog")]


def test_adapter_over_real_view():
    from test_fs_view import FakeBackend, populate

    view = V.View(populate(FakeBackend({"Photos": b"/photos", "Other": b"/other"})))
    ops = SearchfsOperations(view)
    listing = [n for n, _, _ in ops.readdir("/query/dog", 0)]
    assert ".results.tsv" in listing
    link = next(n for n in listing if n.startswith("01_"))
    assert ops.readlink("/query/dog/" + link).startswith("/")
    assert code_of(ops.getattr, "/query/dog/.hidden") == errno.ENOENT
    assert code_of(ops.getattr, "/exif/year=abc") == errno.ENOENT
    data = ops.read("/README.txt", 100000, 0, 0)
    assert ops.getattr("/README.txt")["st_size"] == len(data)
