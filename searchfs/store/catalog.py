"""The catalog: one SQLite file per library, the durable truth.

Connection discipline (datasette style): one writer connection, used under a lock by whichever thread
writes (the indexer's thread); every other thread reads through its own read-only connection. WAL mode
means readers never wait for the writer. Between processes, the library's writer lock (library.py) keeps
a second indexer out, and SQLite's busy timeout covers short overlaps.

The `generation` counter in `meta` goes up in every write that can change a search result; caches above
(the mount's folder listings, the derived vector file) are keyed by it.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from pathlib import Path

import numpy as np

from ..config import ensure_private_dir
from ..errors import DiskFull, NotFound, SearchfsError, disk_full_message, is_disk_full
from ..records import Facet, FileStat, Root

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
_CHUNK = 500  # ids per IN (...) clause, well under SQLite's variable limit


class CatalogError(SearchfsError):
    """The catalog file is unusable (corrupt, newer schema)."""


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"file:{path}?mode=ro" if readonly else f"file:{path}?mode=rwc"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _create_private_file(path: Path) -> None:
    """Create the file 0600 before SQLite does, so it never exists with looser permissions."""
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
    os.close(fd)


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


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Catalog:
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
        self._migrate()

    # -- connections -------------------------------------------------------------------------------

    def _writer_conn(self) -> sqlite3.Connection:
        if self._writer is None:
            conn = _connect(self.path, readonly=False)
            try:
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
            f"catalog {self.path} is not a usable SQLite file ({exc}); `searchfs doctor --repair` rebuilds it "
            "from what is still readable"
        )

    def _tighten_modes(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            side = Path(str(self.path) + suffix)
            if side.exists() and side.stat().st_mode & 0o077:
                os.chmod(side, 0o600)

    @contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, ROLLBACK on error) on the writer connection."""
        with self._write_lock:
            conn = self._writer_conn()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except (sqlite3.Error, OSError) as exc:
                if is_disk_full(exc):  # rolled back: the catalog is as it was before this transaction
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

    def close(self) -> None:
        with self._readers_lock:
            for conn, _ in self._readers.values():
                conn.close()
            self._readers.clear()
        with self._write_lock:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    # -- schema ------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._write_lock:
            conn = self._writer_conn()
            try:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
            except sqlite3.DatabaseError as exc:
                raise self._unusable(exc) from exc
            if version > SCHEMA_VERSION:
                raise CatalogError(
                    f"catalog {self.path} has schema {version}, newer than this searchfs ({SCHEMA_VERSION}): "
                    "upgrade searchfs"
                )
            if version < SCHEMA_VERSION:
                script = resources.files("searchfs.store").joinpath("schema.sql").read_text(encoding="utf-8")
                conn.executescript("BEGIN IMMEDIATE;" + script + f"PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '0')")
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('scan_token', '0')")
                conn.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('vectors_generation', '0')")
            quick = "; ".join(" ".join(r[0].split()) for r in conn.execute("PRAGMA quick_check(3)"))
            if quick != "ok":
                raise CatalogError(
                    f"catalog {self.path} is damaged ({quick}); `searchfs doctor --repair` rebuilds it from what "
                    "is still readable and keeps every intact embedding"
                )

    # -- generation --------------------------------------------------------------------------------

    def generation(self) -> int:
        row = self.read().execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def vectors_generation(self) -> int:
        """Goes up when the set of searchable vectors may have changed (new embeddings, files gone, a root
        offline); renames leave it alone, so they never cost a vector rebuild."""
        row = self.read().execute("SELECT value FROM meta WHERE key = 'vectors_generation'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def bump(conn: sqlite3.Connection, vectors: bool = False) -> None:
        keys = ("generation", "vectors_generation") if vectors else ("generation",)
        conn.execute(
            f"UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key IN ({','.join('?' * len(keys))})", keys
        )
        conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('changed_at', ?)", (repr(time.time()),))

    @staticmethod
    def next_scan_token(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'scan_token'")
        return int(conn.execute("SELECT value FROM meta WHERE key = 'scan_token'").fetchone()[0])

    # -- roots -------------------------------------------------------------------------------------

    def roots(self) -> list[Root]:
        rows = self.read().execute("SELECT id, path, name, online, last_scan_at FROM roots ORDER BY name")
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
        with self.write() as conn:
            conn.execute("INSERT INTO roots(path, name) VALUES (?, ?)", (path, name))
            self.bump(conn)
        return self.root(name)

    def remove_root(self, name: str) -> None:
        root = self.root(name)
        with self.write() as conn:
            self._orphan_contents(conn, "SELECT content_id FROM files WHERE root_id = ?", (root.id,))
            conn.execute("DELETE FROM files WHERE root_id = ?", (root.id,))
            conn.execute("DELETE FROM roots WHERE id = ?", (root.id,))
            self.bump(conn, vectors=True)

    def set_online(self, root_id: int, online: bool) -> bool:
        """Mark a root online or offline; True when that changed anything."""
        with self.write() as conn:
            changed = conn.execute(
                "UPDATE roots SET online = ? WHERE id = ? AND online != ?", (int(online), root_id, int(online))
            ).rowcount
            if changed:
                self.bump(conn, vectors=True)
        return bool(changed)

    # -- files -------------------------------------------------------------------------------------

    def files_in_dir(self, root_id: int, folder: bytes) -> dict[bytes, tuple]:
        """relpath -> (file id, size, mtime_ns, inode, content id) for the files recorded in one folder."""
        rows = self.read().execute(
            "SELECT relpath, id, size, mtime_ns, inode, content_id FROM files WHERE root_id = ? AND dir = ?",
            (root_id, folder),
        )
        return {bytes(r[0]): tuple(r[1:]) for r in rows}

    def file_row(self, root_id: int, relpath: bytes) -> tuple | None:
        """(file id, size, mtime_ns, inode, content id) or None."""
        return (
            self.read()
            .execute(
                "SELECT id, size, mtime_ns, inode, content_id FROM files WHERE root_id = ? AND relpath = ?",
                (root_id, relpath),
            )
            .fetchone()
        )

    def content_by_inode(self, root_id: int, stat: FileStat) -> int | None:
        """The content of a file recorded with the same inode, size and mtime: a move seen by a rescan.
        It spares reading the file again to hash it."""
        row = (
            self.read()
            .execute(
                "SELECT content_id FROM files WHERE root_id = ? AND inode = ? AND size = ? AND mtime_ns = ? "
                "AND content_id IS NOT NULL AND inode != 0 LIMIT 1",
                (root_id, stat.inode, stat.size, stat.mtime_ns),
            )
            .fetchone()
        )
        return row[0] if row else None

    @staticmethod
    def mark_seen(conn: sqlite3.Connection, file_ids: Sequence[int], token: int) -> None:
        for chunk in _chunks(list(file_ids)):
            conn.execute(f"UPDATE files SET seen = ? WHERE id IN ({','.join('?' * len(chunk))})", (token, *chunk))

    @staticmethod
    def upsert_file(
        conn: sqlite3.Connection,
        root_id: int,
        relpath: bytes,
        size: int,
        mtime_ns: int,
        inode: int,
        content_id: int | None,
        error: str | None,
        token: int,
    ) -> bool:
        """Record a file as seen by scan `token`. True when this changes which content the path holds
        (a new file, or new bytes): the set of searchable vectors may have changed."""
        folder = os.path.dirname(relpath)
        old = conn.execute(
            "SELECT content_id FROM files WHERE root_id = ? AND relpath = ?", (root_id, relpath)
        ).fetchone()
        conn.execute(
            """INSERT INTO files(root_id, relpath, dir, size, mtime_ns, inode, content_id, error, seen)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(root_id, relpath) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                 inode = excluded.inode, content_id = excluded.content_id, error = excluded.error,
                 seen = excluded.seen""",
            (root_id, relpath, folder, size, mtime_ns, inode, content_id, error, token),
        )
        if content_id is not None:
            conn.execute(
                "UPDATE contents SET orphaned_at = NULL WHERE id = ? AND orphaned_at IS NOT NULL", (content_id,)
            )
        if old and old[0] is not None and old[0] != content_id:
            Catalog._orphan_contents(conn, "SELECT ?", (old[0],))
        return old is None or old[0] != content_id

    def sweep(self, conn: sqlite3.Connection, root_id: int, token: int, prefix: bytes | None = None) -> int:
        """Delete the files of a root (or of one folder of it) that the scan with `token` did not see."""
        where, params = "root_id = ? AND seen != ?", [root_id, token]
        if prefix:
            where += " AND (relpath = ? OR substr(relpath, 1, ?) = ?)"
            params += [prefix, len(prefix) + 1, prefix + b"/"]
        self._orphan_contents(conn, f"SELECT content_id FROM files WHERE {where}", params)
        removed = conn.execute(f"DELETE FROM files WHERE {where}", params).rowcount
        return removed

    def delete_paths(self, conn: sqlite3.Connection, root_id: int, relpath: bytes) -> int:
        """Delete a file, or a folder's files, from the catalog (a delete event). Returns files removed."""
        where = "root_id = ? AND (relpath = ? OR substr(relpath, 1, ?) = ?)"
        params = (root_id, relpath, len(relpath) + 1, relpath + b"/")
        self._orphan_contents(conn, f"SELECT content_id FROM files WHERE {where}", params)
        return conn.execute(f"DELETE FROM files WHERE {where}", params).rowcount

    def move_paths(self, conn: sqlite3.Connection, root_id: int, src: bytes, dest: bytes) -> int:
        """Rename a file or a folder's files in place: content, metadata and embeddings stay attached."""
        conn.execute(
            "DELETE FROM files WHERE root_id = ? AND (relpath = ? OR substr(relpath, 1, ?) = ?)",
            (root_id, dest, len(dest) + 1, dest + b"/"),
        )
        rows = conn.execute(
            "SELECT id, relpath FROM files WHERE root_id = ? AND (relpath = ? OR substr(relpath, 1, ?) = ?)",
            (root_id, src, len(src) + 1, src + b"/"),
        ).fetchall()
        for file_id, relpath in rows:
            new = dest + bytes(relpath)[len(src) :]
            conn.execute("UPDATE files SET relpath = ?, dir = ? WHERE id = ?", (new, os.path.dirname(new), file_id))
        return len(rows)

    @staticmethod
    def _orphan_contents(conn: sqlite3.Connection, select_ids: str, params: Iterable) -> None:
        """Stamp contents whose last file is going away. Called before the files are deleted or relinked;
        a content is orphaned when it has no file outside the set about to go."""
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS going(id INTEGER PRIMARY KEY)")
        conn.execute("DELETE FROM going")
        conn.execute(f"INSERT OR IGNORE INTO going(id) {select_ids}", tuple(params))
        conn.execute("UPDATE contents SET orphaned_at = ? WHERE id IN (SELECT id FROM going)", (time.time(),))

    @staticmethod
    def clear_orphan_marks(conn: sqlite3.Connection) -> None:
        """Contents still referenced by some file are not orphans (the stamp above is pessimistic)."""
        conn.execute(
            "UPDATE contents SET orphaned_at = NULL WHERE orphaned_at IS NOT NULL "
            "AND EXISTS (SELECT 1 FROM files f WHERE f.content_id = contents.id)"
        )

    def collect_orphans(self, older_than: float) -> int:
        """Forget contents (metadata, embeddings) that no file has used for `older_than` seconds."""
        with self.write() as conn:
            self.clear_orphan_marks(conn)
            cutoff = time.time() - older_than
            return conn.execute(
                "DELETE FROM contents WHERE orphaned_at IS NOT NULL AND orphaned_at <= ? "
                "AND NOT EXISTS (SELECT 1 FROM files f WHERE f.content_id = contents.id)",
                (cutoff,),
            ).rowcount

    # -- contents ----------------------------------------------------------------------------------

    @staticmethod
    def content_for_hash(conn: sqlite3.Connection, digest: str, size: int) -> int:
        row = conn.execute("SELECT id FROM contents WHERE hash = ?", (digest,)).fetchone()
        if row:
            return row[0]
        return conn.execute("INSERT INTO contents(hash, size) VALUES (?, ?)", (digest, size)).lastrowid

    def contents_needing_meta(self, limit: int) -> list[tuple[int, bytes]]:
        """(content id, one absolute path of it on an online root) for contents without metadata yet."""
        return self._content_paths("c.meta_state = 'pending'", (), limit)

    def contents_needing_embedding(self, model: str, limit: int) -> list[tuple[int, bytes]]:
        return self._content_paths(
            "c.error IS NULL AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model = ? AND e.content_id = c.id)",
            (model,),
            limit,
        )

    def count_needing(self, model: str | None) -> int:
        """How many contents wait for metadata (model None) or for an embedding by `model`."""
        if model is None:
            where, params = "c.meta_state = 'pending'", ()
        else:
            where = (
                "c.error IS NULL AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.model = ? AND e.content_id = c.id)"
            )
            params = (model,)
        return (
            self.read()
            .execute(
                f"""SELECT count(*) FROM contents c WHERE {where} AND EXISTS (SELECT 1 FROM files f JOIN roots r
                ON r.id = f.root_id WHERE f.content_id = c.id AND r.online = 1 AND f.error IS NULL)""",
                params,
            )
            .fetchone()[0]
        )

    def _content_paths(self, where: str, params: tuple, limit: int) -> list[tuple[int, bytes]]:
        rows = (
            self.read()
            .execute(
                f"""SELECT c.id, r.path, f.relpath FROM contents c
                JOIN files f ON f.id = (SELECT f2.id FROM files f2 JOIN roots r2 ON r2.id = f2.root_id
                                         WHERE f2.content_id = c.id AND r2.online = 1 AND f2.error IS NULL LIMIT 1)
                JOIN roots r ON r.id = f.root_id
                WHERE {where} ORDER BY c.id LIMIT ?""",
                (*params, limit),
            )
            .fetchall()
        )
        return [(r[0], os.path.join(bytes(r[1]), bytes(r[2]))) for r in rows]

    @staticmethod
    def store_facets(conn: sqlite3.Connection, content_id: int, facets: Sequence[Facet]) -> None:
        conn.execute("DELETE FROM facets WHERE content_id = ?", (content_id,))
        conn.executemany(
            "INSERT INTO facets(content_id, key, text, fold, num) VALUES (?, ?, ?, ?, ?)",
            [(content_id, f.key, f.text, f.text.casefold(), f.num) for f in facets],
        )
        conn.execute("UPDATE contents SET meta_state = 'done', meta_error = NULL WHERE id = ?", (content_id,))

    @staticmethod
    def store_meta_error(conn: sqlite3.Connection, content_id: int, reason: str) -> None:
        conn.execute("UPDATE contents SET meta_state = 'failed', meta_error = ? WHERE id = ?", (reason, content_id))

    @staticmethod
    def store_embedding(conn: sqlite3.Connection, model: str, content_id: int, vector: np.ndarray) -> None:
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        conn.execute(
            "INSERT OR REPLACE INTO embeddings(model, content_id, vector) VALUES (?, ?, ?)", (model, content_id, blob)
        )
        conn.execute("UPDATE contents SET error = NULL WHERE id = ?", (content_id,))

    @staticmethod
    def quarantine(conn: sqlite3.Connection, content_id: int, reason: str) -> int:
        """Quarantine a content with its reason; returns how many files hold it."""
        conn.execute("UPDATE contents SET error = ? WHERE id = ?", (reason, content_id))
        return conn.execute("SELECT count(*) FROM files WHERE content_id = ?", (content_id,)).fetchone()[0]

    def retry_quarantined(self) -> int:
        with self.write() as conn:
            count = conn.execute("UPDATE contents SET error = NULL WHERE error IS NOT NULL").rowcount
            count += conn.execute("UPDATE files SET size = -1 WHERE error IS NOT NULL").rowcount
            self.bump(conn, vectors=True)
        return count

    # -- vectors -----------------------------------------------------------------------------------

    def live_vectors(self, model: str, dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(content ids, vectors) of every embedded content that some file on an online root uses."""
        rows = self.read().execute(
            """SELECT e.content_id, e.vector FROM embeddings e
               WHERE e.model = ? AND EXISTS (SELECT 1 FROM files f JOIN roots r ON r.id = f.root_id
                                             WHERE f.content_id = e.content_id AND r.online = 1)
               ORDER BY e.content_id""",
            (model,),
        )
        ids, blobs = [], []
        for content_id, blob in rows:
            ids.append(content_id)
            blobs.append(blob)
        vectors = (
            np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
            if ids
            else np.zeros((0, dim), np.float32)
        )
        return np.asarray(ids, dtype=np.int64), vectors

    def live_ids(self, model: str) -> np.ndarray:
        rows = self.read().execute(
            """SELECT e.content_id FROM embeddings e WHERE e.model = ? AND EXISTS (SELECT 1 FROM files f
               JOIN roots r ON r.id = f.root_id WHERE f.content_id = e.content_id AND r.online = 1)
               ORDER BY e.content_id""",
            (model,),
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def vectors_for(self, model: str, ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        found_ids, blobs = [], []
        for chunk in _chunks([int(i) for i in ids]):
            rows = self.read().execute(
                "SELECT content_id, vector FROM embeddings WHERE model = ?"
                f" AND content_id IN ({','.join('?' * len(chunk))})",
                (model, *chunk),
            )
            for content_id, blob in rows:
                found_ids.append(content_id)
                blobs.append(np.frombuffer(blob, dtype=np.float32))
        vectors = np.vstack(blobs) if blobs else np.zeros((0, 0), np.float32)
        return np.asarray(found_ids, dtype=np.int64), vectors

    def live_count(self, model: str) -> int:
        return (
            self.read()
            .execute(
                """SELECT count(*) FROM embeddings e WHERE e.model = ? AND EXISTS (SELECT 1 FROM files f
               JOIN roots r ON r.id = f.root_id WHERE f.content_id = e.content_id AND r.online = 1)""",
                (model,),
            )
            .fetchone()[0]
        )

    def vector_of(self, model: str, content_id: int) -> np.ndarray | None:
        row = (
            self.read()
            .execute("SELECT vector FROM embeddings WHERE model = ? AND content_id = ?", (model, content_id))
            .fetchone()
        )
        return np.frombuffer(row[0], dtype=np.float32).copy() if row else None

    def embedding_dim(self, model: str) -> int | None:
        row = self.read().execute("SELECT length(vector) FROM embeddings WHERE model = ? LIMIT 1", (model,)).fetchone()
        return row[0] // 4 if row else None

    # -- the mount's folders -----------------------------------------------------------------------

    @contextmanager
    def reader(self) -> Iterator[sqlite3.Connection]:
        """A private read-only connection for one long read (a streamed listing), closed afterwards."""
        self._writer_conn()  # WAL mode and the -shm file exist before a read-only open
        conn = _connect(self.path, readonly=True)
        try:
            yield conn
        finally:
            conn.close()

    def changed_at(self) -> float:
        """When the generation last went up (wall time): the mount's folder mtimes, stable across mounts.
        A catalog not changed since this was recorded answers its file's mtime."""
        row = self.read().execute("SELECT value FROM meta WHERE key = 'changed_at'").fetchone()
        return float(row[0]) if row else self.path.stat().st_mtime

    def count_by_date(self, where: str, params: Sequence, width: int) -> list[tuple[str | None, int]]:
        """Files matching `where` (a condition on contents `c`, from search/filters.py) per date period:
        (the first `width` characters of their YYYY-MM-DD date, count), in date order, undated (None) last.
        A file counts where the engine's metadata search sorts it: under its content's earliest date."""
        rows = self.read().execute(
            f"""SELECT period, count(*) FROM (
                  SELECT substr(min(d.text), 1, ?) AS period FROM files f
                  JOIN roots r ON r.id = f.root_id JOIN contents c ON c.id = f.content_id
                  LEFT JOIN facets d ON d.content_id = c.id AND d.key = 'date'
                  WHERE r.online = 1 AND f.error IS NULL AND c.error IS NULL AND {where}
                  GROUP BY f.id)
                GROUP BY period ORDER BY period IS NULL, period""",
            (int(width), *params),
        )
        return [(period, count) for period, count in rows]

    def embedding_progress(self, model: str) -> tuple[int, int]:
        """(searchable, waiting) files on online roots: with a vector by `model`, and still without one
        (neither the file nor its content quarantined)."""
        row = (
            self.read()
            .execute(
                """SELECT count(e.content_id),
                          sum(CASE WHEN e.content_id IS NULL AND c.error IS NULL AND f.error IS NULL THEN 1 ELSE 0 END)
                   FROM files f JOIN roots r ON r.id = f.root_id AND r.online = 1
                   LEFT JOIN contents c ON c.id = f.content_id
                   LEFT JOIN embeddings e ON e.content_id = f.content_id AND e.model = ?""",
                (model,),
            )
            .fetchone()
        )
        return int(row[0] or 0), int(row[1] or 0)
