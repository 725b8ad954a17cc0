"""Writing the catalog: one transaction object with a named method for every change.

`Catalog.transaction()` hands one out on the writer connection (BEGIN IMMEDIATE ... COMMIT). Every method
that changes something marks the transaction dirty, and a dirty transaction moves the catalog generation
on at commit, so no write can forget to tell the caches above. Which contents are searchable (the vector
change feed) and which have lost their last file (orphans) is kept by triggers in schema.sql.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable, Sequence

import numpy as np

from ..records import Facet, FileStat
from . import facets as F
from .rows import KnownContent, NewPhoto
from .work import seed_todo

_CHUNK = 500  # ids per IN (...), well under SQLite's variable limit


def _chunks(items: Sequence, size: int = _CHUNK) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def under_sql(column: str) -> str:
    """A condition: `column` (a relative path BLOB) is the path given twice as parameters, or below it."""
    return f"({column} = ? OR substr({column}, 1, length(?) + 1) = CAST(? || x'2f' AS BLOB))"


class Transaction:
    def __init__(self, conn: sqlite3.Connection, model_ids: dict[str, int]) -> None:
        self.conn = conn
        self.dirty = False
        self._model_ids = model_ids  # the catalog's cache of model name -> id

    def _changed(self) -> None:
        self.dirty = True

    # -- roots ------------------------------------------------------------------------------------------

    def set_online(self, root_id: int, online: bool) -> bool:
        changed = self.conn.execute(
            "UPDATE roots SET online = ? WHERE id = ? AND online != ?", (int(online), root_id, int(online))
        ).rowcount
        if changed:
            self._changed()
        return bool(changed)

    def set_scanned(self, root_id: int) -> None:
        self.conn.execute("UPDATE roots SET last_scan_at = ? WHERE id = ?", (time.time(), root_id))

    # -- folders and files ------------------------------------------------------------------------------

    def dir_id(self, root_id: int, folder: bytes) -> int:
        row = self.conn.execute("SELECT id FROM dirs WHERE root_id = ? AND path = ?", (root_id, folder)).fetchone()
        if row:
            return row[0]
        cursor = self.conn.execute("INSERT INTO dirs(root_id, path) VALUES (?, ?)", (root_id, folder))
        return int(cursor.lastrowid or 0)

    def upsert_file(self, root_id: int, st: FileStat, content_id: int | None, error: str | None) -> bool:
        """Record a file as just read. True when this changes which content its path holds."""
        folder, name = os.path.split(st.relpath)
        dir_id = self.dir_id(root_id, folder)
        old = self.conn.execute("SELECT content_id FROM files WHERE dir_id = ? AND name = ?", (dir_id, name)).fetchone()
        self.conn.execute(
            """INSERT INTO files(dir_id, name, size, mtime_ns, inode, content_id, error) VALUES (?, ?, ?, ?, ?, ?, ?)
               ON CONFLICT(dir_id, name) DO UPDATE SET size = excluded.size, mtime_ns = excluded.mtime_ns,
                 inode = excluded.inode, content_id = excluded.content_id, error = excluded.error""",
            (dir_id, name, st.size, st.mtime_ns, st.inode, content_id, error),
        )
        self._changed()
        return old is None or old[0] != content_id

    def delete_files(self, root_id: int, folder: bytes, names: Iterable[bytes]) -> int:
        """Files of one folder that a listing no longer shows."""
        row = self.conn.execute("SELECT id FROM dirs WHERE root_id = ? AND path = ?", (root_id, folder)).fetchone()
        if row is None:
            return 0
        removed = 0
        for chunk in _chunks(list(names)):
            marks = ",".join("?" * len(chunk))
            removed += self.conn.execute(
                f"DELETE FROM files WHERE dir_id = ? AND name IN ({marks})", (row[0], *chunk)
            ).rowcount
        if removed:
            self._changed()
        return removed

    def delete_dirs(self, root_id: int, folders: Iterable[bytes]) -> int:
        """Whole folders gone (each with its files; subfolders are in `folders` themselves)."""
        removed = 0
        for chunk in _chunks(list(folders)):
            marks = ",".join("?" * len(chunk))
            ids = f"SELECT id FROM dirs WHERE root_id = ? AND path IN ({marks})"
            removed += self.conn.execute(f"DELETE FROM files WHERE dir_id IN ({ids})", (root_id, *chunk)).rowcount
            self.conn.execute(f"DELETE FROM dirs WHERE id IN ({ids})", (root_id, *chunk))
        self._changed()
        return removed

    def delete_paths(self, root_id: int, relpath: bytes) -> int:
        """A file, or a folder with everything below it (a delete event). Returns files removed."""
        folder, name = os.path.split(relpath)
        removed = self.conn.execute(
            "DELETE FROM files WHERE name = ? AND dir_id IN (SELECT id FROM dirs WHERE root_id = ? AND path = ?)",
            (name, root_id, folder),
        ).rowcount
        below = f"SELECT id FROM dirs WHERE root_id = ? AND {under_sql('path')}"
        params = (root_id, relpath, relpath, relpath)
        removed += self.conn.execute(f"DELETE FROM files WHERE dir_id IN ({below})", params).rowcount
        self.conn.execute(f"DELETE FROM dirs WHERE id IN ({below})", params)
        self._changed()
        return removed

    def move_paths(self, root_id: int, src: bytes, dest: bytes) -> int:
        """A rename inside one root: rows follow, content, metadata and embeddings stay attached. What was
        at `dest` is replaced (rename(2) replaces it). A folder moves as one row per subfolder."""
        self.delete_paths(root_id, dest)
        folder, name = os.path.split(src)
        row = self.conn.execute(
            "SELECT f.id FROM files f JOIN dirs d ON d.id = f.dir_id WHERE d.root_id = ? AND d.path = ? AND f.name = ?",
            (root_id, folder, name),
        ).fetchone()
        if row is not None:
            new_folder, new_name = os.path.split(dest)
            self.conn.execute(
                "UPDATE files SET dir_id = ?, name = ? WHERE id = ?",
                (self.dir_id(root_id, new_folder), new_name, row[0]),
            )
            return 1
        moved = self.conn.execute(
            f"""SELECT count(*) FROM files WHERE dir_id IN
                (SELECT id FROM dirs WHERE root_id = ? AND {under_sql("path")})""",
            (root_id, src, src, src),
        ).fetchone()[0]
        renamed = "CAST(? || substr(path, length(?) + 1) AS BLOB)"  # dest + what follows src
        self.conn.execute(
            f"UPDATE dirs SET path = {renamed} WHERE root_id = ? AND {under_sql('path')}",
            (dest, src, root_id, src, src, src),
        )
        self._changed()
        return moved

    # -- contents -----------------------------------------------------------------------------------------

    def content_for_hash(self, digest: str, size: int) -> tuple[KnownContent, bool]:
        """The content with this hash, made if new; and whether it was already known."""
        raw = bytes.fromhex(digest)
        row = self.conn.execute("SELECT id, size, error FROM contents WHERE hash = ?", (raw,)).fetchone()
        if row:
            return KnownContent(row[0], digest, row[1], row[2]), True
        cursor = self.conn.execute("INSERT INTO contents(hash, size) VALUES (?, ?)", (raw, size))
        self._changed()
        return KnownContent(int(cursor.lastrowid or 0), digest, size, None), False

    def store_facets(self, content_id: int, facets: Sequence[Facet], version: int) -> None:
        F.store(self.conn, content_id, facets, version)
        self._changed()

    def store_meta_error(self, content_id: int, reason: str, version: int) -> None:
        self.conn.execute(
            "UPDATE contents SET meta_version = ?, meta_error = ? WHERE id = ?", (version, reason, content_id)
        )
        self._changed()

    def store_embedding(self, model: str, content_id: int, vector: np.ndarray) -> None:
        blob = np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        self.conn.execute(
            "INSERT OR REPLACE INTO embeddings(model_id, content_id, vector) VALUES (?, ?, ?)",
            (self.model_id(model), content_id, blob),
        )
        self.conn.execute("UPDATE contents SET error = NULL WHERE id = ? AND error IS NOT NULL", (content_id,))
        self._changed()

    def quarantine(self, content_id: int, reason: str) -> int:
        """Quarantine a content with its reason; returns how many files hold it."""
        self.conn.execute("UPDATE contents SET error = ? WHERE id = ?", (reason, content_id))
        self._changed()
        return self.conn.execute("SELECT count(*) FROM files WHERE content_id = ?", (content_id,)).fetchone()[0]

    def retry_quarantined(self) -> int:
        count = self.conn.execute("UPDATE contents SET error = NULL WHERE error IS NOT NULL").rowcount
        count += self.conn.execute("UPDATE files SET size = -1 WHERE error IS NOT NULL").rowcount
        self._changed()
        return count

    def collect_orphans(self, older_than: float) -> int:
        """Forget contents (metadata, embeddings) that no file has used for `older_than` seconds."""
        removed = self.conn.execute(
            "DELETE FROM contents WHERE orphaned_at IS NOT NULL AND orphaned_at <= ?"
            " AND NOT EXISTS (SELECT 1 FROM files f WHERE f.content_id = contents.id)",
            (time.time() - older_than,),
        ).rowcount
        if removed:
            self.conn.execute(
                "DELETE FROM names WHERE NOT EXISTS (SELECT 1 FROM content_texts WHERE name_id = names.id)"
                " AND id NOT IN (SELECT camera FROM contents WHERE camera IS NOT NULL"
                " UNION SELECT make FROM contents WHERE make IS NOT NULL"
                " UNION SELECT model FROM contents WHERE model IS NOT NULL"
                " UNION SELECT lens FROM contents WHERE lens IS NOT NULL"
                " UNION SELECT format FROM contents WHERE format IS NOT NULL)"
            )
            self._changed()
        return removed

    def model_id(self, model: str) -> int:
        if model not in self._model_ids:
            self.conn.execute("INSERT OR IGNORE INTO models(name) VALUES (?)", (model,))
            self._model_ids[model] = self.conn.execute("SELECT id FROM models WHERE name = ?", (model,)).fetchone()[0]
        return self._model_ids[model]

    def track_model(self, model: str) -> None:
        """Let the embedding queue (`embed_todo`) follow `model`. Costs a read of every content only when it
        followed another model (or none yet: a new or migrated catalog); a no-op otherwise."""
        model_id = self.model_id(model)
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'todo_model'").fetchone()
        if row is None or int(row[0]) != model_id:
            seed_todo(self.conn, model_id)

    def add_photos(self, root_id: int, photos: Iterable[NewPhoto], model: str | None, version: int) -> int:
        """Record photos already read (hashed, their metadata extracted, maybe embedded): files, contents,
        metadata and vectors in bulk. Used to import and to build large synthetic libraries quickly."""
        if model:
            self.track_model(model)  # first: the vectors below then leave the queue as they arrive
        model_id = self.model_id(model) if model else None
        next_id = (self.conn.execute("SELECT max(id) FROM contents").fetchone()[0] or 0) + 1
        dirs: dict[bytes, int] = {}
        contents, texts, files, vectors = [], [], [], []
        for photo in photos:
            folder, name = os.path.split(photo.relpath)
            if folder not in dirs:
                dirs[folder] = self.dir_id(root_id, folder)
            columns, text_rows = F.columns_of(self.conn, photo.facets)
            contents.append((next_id, bytes.fromhex(photo.hash), photo.size, version, *columns.values()))
            texts += [(next_id, kind, name_id) for kind, name_id in text_rows]
            files.append((dirs[folder], name, photo.size, photo.mtime_ns, photo.inode, next_id))
            if photo.vector is not None and model_id is not None:
                vectors.append((model_id, next_id, np.ascontiguousarray(photo.vector, dtype=np.float32).tobytes()))
            next_id += 1
        names = ", ".join(F.FACET_COLUMNS)
        marks = ",".join("?" * (4 + len(F.FACET_COLUMNS)))
        self.conn.executemany(f"INSERT INTO contents(id, hash, size, meta_version, {names}) VALUES ({marks})", contents)
        self.conn.executemany("INSERT OR IGNORE INTO content_texts VALUES (?, ?, ?)", texts)
        self.conn.executemany(
            "INSERT INTO files(dir_id, name, size, mtime_ns, inode, content_id) VALUES (?, ?, ?, ?, ?, ?)", files
        )
        self.conn.executemany("INSERT INTO embeddings(model_id, content_id, vector) VALUES (?, ?, ?)", vectors)
        self._changed()
        return len(files)

    # -- queries people keep ------------------------------------------------------------------------------

    def save_query(self, text: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO saved_queries(text, created_at) VALUES (?, ?)", (text, time.time()))
        self._changed()

    def forget_query(self, text: str) -> bool:
        gone = bool(self.conn.execute("DELETE FROM saved_queries WHERE text = ?", (text,)).rowcount)
        self._changed()
        return gone

    # -- the vector change feed -------------------------------------------------------------------------

    def prune_vector_log(self, upto: int) -> None:
        """Rows the saved vector index no longer needs (it is caught up to `upto`)."""
        self.conn.execute("DELETE FROM vector_log WHERE seq <= ?", (upto,))
