"""The catalog: one SQLite file per library, the durable truth. Every SQL statement of searchfs lives in
store/ (this module for reads, writes.py for writes, facets.py for metadata, migrations.py for schemas).

Connection discipline (datasette style): one writer connection, used under a lock by whichever thread
writes (the daemon's writer thread, or `searchfs index`); every other thread reads through its own
read-only connection. WAL mode means readers never wait for the writer. Between processes, the library's
writer lock (library.py) keeps a second writer out, and SQLite's busy timeout covers short overlaps.

Two counters let caches above stay in step: the *generation* goes up in every transaction that changes
anything (the mount's folder listings are keyed by it), and the *vectors generation* is the high-water
mark of the vector change feed (schema.sql's vector_log), which the vector index catches up from.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .. import content_hash
from ..config import ensure_private_dir
from ..errors import DiskFull, NotFound, SearchfsError, disk_full_message, is_disk_full
from ..records import FileStat, Filter, Root
from . import facets as F
from .migrations import LATEST, SchemaError, migrate
from .rows import FileHit, FileRow, FileState, KnownContent
from .vector_reads import VectorReads
from .work import _ABSPATH, _FILES, _RELPATH, _USABLE, WorkQueries
from .writes import Transaction, _chunks, under_sql

SCHEMA_VERSION = LATEST
BUSY_TIMEOUT_MS = 30_000
# A new catalog's page size: a 2 KiB vector row (512 float32) fits in a 16 KiB b-tree page seven times,
# where each one would take a 4 KiB overflow page of its own with SQLite's default (measured: 2.3 KB
# against 4.7 KB a vector). An existing catalog keeps its page size (changing it takes a VACUUM).
PAGE_SIZE = 16384

# A file that can show in results: readable, its content not quarantined, its root online.
_HIT = f"f.id, f.content_id, r.name, r.path, {_RELPATH}"


_CHANGED_AT = "INSERT OR REPLACE INTO meta(key, value) VALUES ('changed_at', CAST(strftime('%s', 'now') AS TEXT))"


class CatalogError(SearchfsError):
    """The catalog file is unusable (damaged, newer schema)."""


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}?mode=rwc"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _create_private_file(path: Path) -> None:
    """Create the file 0600 before SQLite does, so it never exists with looser permissions."""
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _no_space_left(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def _live_thread_ids() -> set[int]:
    """OS ids of this process's live threads: /proc on Linux, else the threads Python knows of."""
    try:
        return {int(name) for name in os.listdir("/proc/self/task")}
    except OSError:
        return {t.native_id for t in threading.enumerate() if t.native_id is not None}


def _hit(row: tuple) -> FileHit:
    return FileHit(row[0], row[1], row[2], bytes(row[3]), bytes(row[4]))


class Catalog(WorkQueries, VectorReads):
    def __init__(self, path: Path):
        self.path = Path(path)
        ensure_private_dir(self.path.parent)
        if not self.path.exists():
            _create_private_file(self.path)
        self._write_lock = threading.RLock()
        self._writer: sqlite3.Connection | None = None
        # OS thread id -> (its read-only connection, its Thread when Python started it)
        self._readers: dict[int, tuple[sqlite3.Connection, threading.Thread | None]] = {}
        self._readers_lock = threading.Lock()
        self._model_ids: dict[str, int] = {}
        with self._write_lock:
            try:
                migrate(self._writer_conn(), str(self.path))
                self._content_hash = self._read_content_hash()
            except sqlite3.DatabaseError as exc:
                raise self._unusable(exc) from exc

    def _read_content_hash(self) -> str:
        row = self._writer_conn().execute("SELECT value FROM meta WHERE key = 'content_hash'").fetchone()
        name = str(row[0]) if row else content_hash.LEGACY
        if not content_hash.known(name):
            raise SchemaError(f"catalog {self.path} hashes photos with {name}, unknown to this searchfs: upgrade it")
        return name

    def content_hash(self) -> str:
        """The hash this catalog's contents carry (content_hash.py): files are hashed with it."""
        return self._content_hash

    # -- connections -------------------------------------------------------------------------------

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            conn = _connect(self.path, readonly=False)
            try:
                conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # takes effect on an empty file only
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.DatabaseError as exc:
                conn.close()
                raise self._unusable(exc) from exc
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
            self._writer = conn
            self._tighten_modes()
        return self._writer

    def _unusable(self, exc: sqlite3.DatabaseError) -> SearchfsError:
        """Why the catalog cannot be opened. SQLite reports a full disk at open as a plain I/O error (it
        cannot grow the -shm file), so an I/O error with no free block left is a full disk, not damage."""
        if is_disk_full(exc) or (isinstance(exc, sqlite3.OperationalError) and _no_space_left(self.path.parent)):
            return DiskFull(disk_full_message(self.path.parent))
        return CatalogError(
            f"catalog {self.path} is not usable ({' '.join(str(exc).split())}); `searchfs doctor --repair` "
            "rebuilds it from what is still readable"
        )

    def _tighten_modes(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists() and side.stat().st_mode & 0o077:
                os.chmod(side, 0o600)

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error) on the writer connection.
        One that changed anything moves the generation on as it commits."""
        with self._write_lock:
            conn = self._writer_conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    tx = Transaction(conn, self._model_ids)
                    yield tx
                    if tx.dirty:
                        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                        conn.execute(_CHANGED_AT)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    self._model_ids.clear()  # ids made in the rolled-back transaction are gone
                    raise
            except sqlite3.DatabaseError as exc:
                if is_disk_full(exc):  # rolled back: the catalog is as it was before this transaction
                    raise DiskFull(disk_full_message(self.path.parent)) from exc
                if isinstance(exc, sqlite3.OperationalError):
                    raise
                raise self._unusable(exc) from exc
            except OSError as exc:
                if is_disk_full(exc):
                    raise DiskFull(disk_full_message(self.path.parent)) from exc
                raise

    def read(self) -> sqlite3.Connection:
        """This thread's read-only connection.

        Connections are keyed by the OS thread id, not kept in a `threading.local`: libfuse calls back on
        its own C threads, and for those Python makes up a new thread object, with an empty
        `threading.local`, on every call. A new thread first takes the connection of a thread that has
        ended, so the count stays bounded by the threads alive."""
        tid = threading.get_native_id()
        with self._readers_lock:
            entry = self._readers.get(tid)
            if entry is not None:
                return entry[0]
            conn = self._take_dead_reader()
        if conn is None:
            self._writer_conn()  # make sure WAL mode and the -shm file exist before a read-only open
            conn = _connect(self.path, readonly=True)
        current = threading.current_thread()
        owner = None if isinstance(current, threading._DummyThread) else current
        with self._readers_lock:
            self._readers[tid] = (conn, owner)
        return conn

    def _take_dead_reader(self) -> sqlite3.Connection | None:
        """A connection whose thread has ended (a dead thread cannot be using it), or None. A thread Python
        started is asked directly (its id can linger in /proc for a moment after join); a foreign (C)
        thread is dead when its id has left /proc/self/task."""
        alive = None
        for tid, (conn, owner) in list(self._readers.items()):
            if owner is not None:
                dead = not owner.is_alive()
            else:
                alive = _live_thread_ids() if alive is None else alive
                dead = tid not in alive
            if dead:
                del self._readers[tid]
                return conn
        return None

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A private read-only connection for one long read (a streamed listing), closed afterwards."""
        self._writer_conn()
        conn = _connect(self.path, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def _one(self, sql: str, params: Sequence = ()) -> tuple | None:
        try:
            return self.read().execute(sql, tuple(params)).fetchone()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

    def _all(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self.read().execute(sql, tuple(params)).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._damaged(exc) from exc

    def _damaged(self, exc: sqlite3.DatabaseError) -> Exception:
        """The catalog is not checked at open (a million photos would take a minute), so damage is met on a
        read: it becomes the one-line error that says how to repair it. Other errors pass unchanged."""
        if isinstance(exc, sqlite3.OperationalError) and "malformed" not in str(exc):
            return exc
        return CatalogError(
            f"catalog {self.path} is damaged ({' '.join(str(exc).split())}); `searchfs doctor --repair` rebuilds it "
            "from what is still readable and keeps every intact embedding"
        )

    def close(self) -> None:
        with self._readers_lock:
            for conn, _ in self._readers.values():
                conn.close()
            self._readers.clear()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- counters ------------------------------------------------------------------------------------

    def generation(self) -> int:
        row = self._one("SELECT value FROM meta WHERE key = 'generation'")
        return int(row[0]) if row else 0

    def vectors_generation(self) -> int:
        """The vector change feed's high-water mark: moves when the set of searchable vectors may have
        changed (embeddings, files linked or gone, a root offline); renames leave it alone."""
        row = self._one("SELECT seq FROM sqlite_sequence WHERE name = 'vector_log'")
        return int(row[0]) if row else 0

    def changed_at(self) -> float:
        """When the generation last moved (wall time): the mount's folder mtimes, stable across mounts."""
        row = self._one("SELECT value FROM meta WHERE key = 'changed_at'")
        return float(row[0]) if row else self.path.stat().st_mtime

    # -- roots ---------------------------------------------------------------------------------------

    def roots(self) -> list[Root]:
        rows = self._all("SELECT id, path, name, online, last_scan_at FROM roots ORDER BY name")
        return [Root(r[0], bytes(r[1]), r[2], bool(r[3]), r[4]) for r in rows]

    def root(self, name: str) -> Root:
        for root in self.roots():
            if root.name == name:
                return root
        raise NotFound(f"no root named {name!r}")

    def add_root(self, path: bytes) -> Root:
        """Register a root (idempotent); its name is the folder's basename, made unique."""
        for root in self.roots():
            if root.path == path:
                return root
        taken = {root.name for root in self.roots()}
        base = os.fsdecode(os.path.basename(path.rstrip(b"/")) or b"root")
        name, n = base, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        with self.transaction() as tx:
            tx.conn.execute("INSERT INTO roots(path, name) VALUES (?, ?)", (path, name))
            tx.dirty = True
        return self.root(name)

    def remove_root(self, name: str) -> None:
        root = self.root(name)
        with self.transaction() as tx:
            tx.conn.execute("DELETE FROM files WHERE dir_id IN (SELECT id FROM dirs WHERE root_id = ?)", (root.id,))
            tx.conn.execute("DELETE FROM dirs WHERE root_id = ?", (root.id,))
            tx.conn.execute("DELETE FROM roots WHERE id = ?", (root.id,))
            tx.dirty = True

    def set_online(self, root_id: int, online: bool) -> bool:
        with self.transaction() as tx:
            return tx.set_online(root_id, online)

    # -- what the scan compares with -------------------------------------------------------------------

    def folder_files(self, root_id: int, folder: bytes) -> dict[bytes, FileRow]:
        """name -> row, for the files recorded in one folder of a root."""
        rows = self._all(
            """SELECT f.name, f.id, f.size, f.mtime_ns, f.inode, f.content_id
               FROM files f JOIN dirs d ON d.id = f.dir_id WHERE d.root_id = ? AND d.path = ?""",
            (root_id, folder),
        )
        return {bytes(r[0]): FileRow(*r[1:]) for r in rows}

    def folders(self, root_id: int, under: bytes = b"") -> list[bytes]:
        """The folders of a root (or below `under`) the catalog holds files for."""
        if not under:
            rows = self._all("SELECT path FROM dirs WHERE root_id = ?", (root_id,))
        else:
            rows = self._all(
                f"SELECT path FROM dirs WHERE root_id = ? AND {under_sql('path')}", (root_id, under, under, under)
            )
        return [bytes(r[0]) for r in rows]

    def file_at(self, root_id: int, relpath: bytes) -> FileRow | None:
        folder, name = os.path.split(relpath)
        row = self._one(
            """SELECT f.id, f.size, f.mtime_ns, f.inode, f.content_id FROM files f JOIN dirs d ON d.id = f.dir_id
               WHERE d.root_id = ? AND d.path = ? AND f.name = ?""",
            (root_id, folder, name),
        )
        return FileRow(*row) if row else None

    def content_by_inode(self, root_id: int, stat: FileStat) -> KnownContent | None:
        """The content of a file recorded with the same inode, size and mtime: a move seen by a rescan.
        It spares reading the file again to hash it."""
        row = self._one(
            """SELECT c.id, c.hash, c.size, c.error FROM files f JOIN dirs d ON d.id = f.dir_id
               JOIN contents c ON c.id = f.content_id
               WHERE f.inode = ? AND d.root_id = ? AND f.size = ? AND f.mtime_ns = ? AND f.inode != 0 LIMIT 1""",
            (stat.inode, root_id, stat.size, stat.mtime_ns),
        )
        return KnownContent(row[0], bytes(row[1]).hex(), row[2], row[3]) if row else None

    def content_by_hash(self, digest: str) -> int | None:
        row = self._one("SELECT id FROM contents WHERE hash = ?", (bytes.fromhex(digest),))
        return row[0] if row else None

    def orientation(self, content_id: int) -> int | None:
        row = self._one("SELECT orientation FROM contents WHERE id = ?", (content_id,))
        return int(row[0]) if row and row[0] else None

    # -- models ------------------------------------------------------------------------------------

    def _model(self, model: str) -> int | None:
        if model not in self._model_ids:
            row = self._one("SELECT id FROM models WHERE name = ?", (model,))
            if row is None:
                return None
            self._model_ids[model] = row[0]
        return self._model_ids[model]

    # -- searching ---------------------------------------------------------------------------------

    def _where(self, filters: Sequence[Filter]) -> F.Condition:
        return F.Condition.all_of([F.condition(flt) for flt in filters])

    def matching_files(self, filters: Sequence[Filter], limit: int | None = None, offset: int = 0) -> list[FileHit]:
        """Usable files whose content matches every filter: oldest photo first, undated last, then root
        and path."""
        sql, params = self._matching_sql(filters, limit, offset)
        return [_hit(row) for row in self._all(sql, params)]

    def iter_matching_files(self, filters: Sequence[Filter], offset: int = 0) -> Iterator[FileHit]:
        """As matching_files, one by one from a private connection: a million matches never sit in memory."""
        sql, params = self._matching_sql(filters, None, offset)
        with self.reader() as conn:
            try:
                for row in conn.execute(sql, params):
                    yield _hit(row)
            except sqlite3.DatabaseError as exc:
                raise self._damaged(exc) from exc

    def _matching_sql(self, filters: Sequence[Filter], limit: int | None, offset: int) -> tuple[str, tuple]:
        where = self._where(filters)
        sql = (
            f"SELECT {_HIT} FROM {_FILES} JOIN contents c ON c.id = f.content_id WHERE {_USABLE} AND {where.sql}"
            f" ORDER BY c.date IS NULL, c.date, r.name, {_RELPATH}"
        )
        if limit or offset:
            sql += f" LIMIT {int(limit or -1)} OFFSET {int(offset)}"
        return sql, where.params

    def matching_contents(self, filters: Sequence[Filter]) -> np.ndarray:
        """Content ids matching every filter that some usable file holds (the `allowed` set of a ranked
        search with filters)."""
        where = self._where(filters)
        rows = self._all(
            f"SELECT c.id FROM contents c WHERE {where.sql} AND c.error IS NULL AND EXISTS"
            f" (SELECT 1 FROM {_FILES} WHERE f.content_id = c.id AND f.error IS NULL AND r.online = 1)",
            where.params,
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def count_by_date(self, filters: Sequence[Filter], width: int) -> list[tuple[str | None, int]]:
        """Usable files matching the filters per date period: (first `width` characters of YYYY-MM-DD,
        count), in date order, undated (None) last."""
        where = self._where(filters)
        rows = self._all(
            f"""SELECT substr(c.date, 1, ?) AS period, count(*) FROM {_FILES} JOIN contents c ON c.id = f.content_id
                WHERE {_USABLE} AND {where.sql} GROUP BY period ORDER BY period IS NULL, period""",
            (int(width), *where.params),
        )
        return [(period, count) for period, count in rows]

    def files_of_contents(self, content_ids: Sequence[int]) -> list[FileHit]:
        """The usable files holding these contents, by root and path."""
        hits: list[FileHit] = []
        for chunk in _chunks([int(i) for i in content_ids]):
            marks = ",".join("?" * len(chunk))
            rows = self._all(
                f"""SELECT {_HIT} FROM {_FILES} JOIN contents c ON c.id = f.content_id
                    WHERE f.content_id IN ({marks}) AND {_USABLE}""",
                chunk,
            )
            hits += [_hit(row) for row in rows]
        return sorted(hits, key=lambda h: (h.root_name, h.relpath))

    def file_by_path(self, root_name: str, relpath: bytes) -> tuple[int, int | None] | None:
        """(file id, content id) of a file of a root, by its path inside it."""
        folder, name = os.path.split(relpath)
        row = self._one(
            f"SELECT f.id, f.content_id FROM {_FILES} WHERE r.name = ? AND d.path = ? AND f.name = ?",
            (root_name, folder, name),
        )
        return (row[0], row[1]) if row else None

    # -- what people browse ------------------------------------------------------------------------

    def facet_values(self, key: str) -> list[tuple[str, int]]:
        """The values of a metadata key present on usable files, with how many files have each: numbers
        and dates in their order, texts alphabetically."""
        keys = ("keyword", "title", "description") if key == "text" else (key,)
        found: dict[str, int] = {}
        order: dict[str, tuple] = {}
        for one_key in keys:
            joins, value = F.values_sql(one_key)
            rows = self._all(
                f"""SELECT {value}, count(DISTINCT f.id) FROM {_FILES} JOIN contents c ON c.id = f.content_id {joins}
                    WHERE {_USABLE} AND {value} IS NOT NULL GROUP BY 1""",
            )
            for raw, count in rows:
                text = F.shown(one_key, raw)
                found[text] = found.get(text, 0) + count
                number = isinstance(raw, (int, float))
                order[text] = (0, float(raw), "", "") if number else (1, 0.0, text.casefold(), text)
        return sorted(found.items(), key=lambda item: order[item[0]])

    def tree_children(self, root_id: int, relpath: bytes) -> list[tuple[bytes, bool]] | None:
        """Children of a folder of a root that hold usable files (directly or below): (name, is_folder);
        None when the folder holds none."""
        names = [
            bytes(r[0])
            for r in self._all(
                f"SELECT f.name FROM {_FILES} JOIN contents c ON c.id = f.content_id WHERE d.root_id = ? AND d.path = ?"
                f" AND {_USABLE}",
                (root_id, relpath),
            )
        ]
        prefix = relpath + b"/" if relpath else b""
        below = self._all(
            f"""SELECT DISTINCT d.path FROM {_FILES} JOIN contents c ON c.id = f.content_id
                WHERE d.root_id = ? AND {_USABLE} AND length(d.path) > ? AND substr(d.path, 1, ?) = ?""",
            (root_id, len(prefix), len(prefix), prefix),
        )
        folders = {bytes(r[0])[len(prefix) :].split(b"/", 1)[0] for r in below}
        if not names and not folders:
            return None
        return sorted([(name, False) for name in names] + [(name, True) for name in folders if name not in names])

    def saved_queries(self) -> list[str]:
        return [r[0] for r in self._all("SELECT text FROM saved_queries ORDER BY text")]

    # -- status --------------------------------------------------------------------------------------

    def file_states(self, model: str) -> list[FileState]:
        """Every file with its content hash, quarantine reason and whether `model` has embedded it."""
        rows = self._all(
            f"""SELECT {_ABSPATH}, c.hash, coalesce(f.error, c.error),
                       EXISTS (SELECT 1 FROM embeddings e WHERE e.content_id = f.content_id AND e.model_id = ?)
                FROM {_FILES} LEFT JOIN contents c ON c.id = f.content_id ORDER BY r.name, {_RELPATH}""",
            (self._model(model),),
        )
        return [
            FileState(os.path.normpath(bytes(p)), bytes(h).hex() if h is not None else None, why, bool(e))
            for p, h, why, e in rows
        ]
