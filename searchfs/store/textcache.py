"""Query texts already embedded: an in-memory LRU in front of a persistent SQLite cache, per model id.

A repeated query, from the CLI, the mount or the API, never runs (or loads) a model. The SQLite file is
shared by every process of a library; any trouble with it turns the cache off rather than failing a search.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..config import ensure_private_dir
from ..lru import LRU

log = logging.getLogger(__name__)

LRU_SIZE = 2048


class TextVectors:
    """(model id, text) -> normalized vector: the LRU first, then the SQLite cache. Thread-safe."""

    def __init__(self, path: Path | None, size: int = LRU_SIZE):
        self.store = TextCache(path)
        self._lru: LRU[tuple[str, str], np.ndarray] = LRU(size)
        self._lock = threading.Lock()

    def get(self, model: str, text: str, dim: int | None = None) -> np.ndarray | None:
        """The cached vector, or None; `dim`, when known, rejects a stored vector of another length."""
        key = (model, text)
        with self._lock:
            found = self._lru.get(key)
        if found is not None:
            return found
        vector = self.store.get(model, text)
        if vector is None or (dim is not None and vector.shape[0] != dim):
            return None
        self._remember(key, vector)
        return vector

    def put(self, model: str, text: str, vector: np.ndarray) -> None:
        self._remember((model, text), vector)
        self.store.put(model, text, vector)

    def _remember(self, key: tuple[str, str], vector: np.ndarray) -> None:
        with self._lock:
            self._lru.put(key, vector)

    def close(self) -> None:
        self.store.close()


class TextCache:
    """Persistent (model id, text) -> vector cache shared by processes; any SQLite trouble disables it.

    A search must never fail because of a cache, so every error is logged once and the cache turns off.
    """

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS text_embedding ("
        " model_id TEXT NOT NULL, text TEXT NOT NULL, vector BLOB NOT NULL, created REAL NOT NULL,"
        " PRIMARY KEY (model_id, text)) WITHOUT ROWID"
    )

    def __init__(self, path: Path | None):
        self.path = Path(path) if path else None
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._broken = self.path is None

    def get(self, model: str, text: str) -> np.ndarray | None:
        row = self._run("SELECT vector FROM text_embedding WHERE model_id = ? AND text = ?", (model, text))
        if not row or len(row[0]) % 4 or not row[0]:
            return None
        return np.frombuffer(row[0], dtype=np.float32).copy()

    def put(self, model: str, text: str, vector: np.ndarray) -> None:
        self._run(
            "INSERT OR REPLACE INTO text_embedding VALUES (?, ?, ?, ?)",
            (model, text, np.asarray(vector, np.float32).tobytes(), time.time()),
            commit=True,
        )

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    self._conn.close()
                self._conn = None

    def _run(self, sql: str, args: tuple, commit: bool = False) -> Any:
        with self._lock:
            if self._broken:
                return None
            try:
                conn = self._conn or self._connect()
                row = conn.execute(sql, args).fetchone()
                if commit:
                    conn.commit()
                return row
            except sqlite3.OperationalError as exc:
                if "locked" in str(exc) or "busy" in str(exc):  # another process is writing: skip just this
                    log.debug("text cache %s busy: %s", self.path, exc)
                    if self._conn is not None:
                        with contextlib.suppress(sqlite3.Error):
                            self._conn.rollback()
                    return None
                return self._give_up(exc)
            except (sqlite3.Error, OSError) as exc:
                return self._give_up(exc)

    def _give_up(self, exc: Exception) -> None:
        log.warning("text cache %s unusable, continuing without it: %s", self.path, exc)
        self._broken = True
        return None

    def _connect(self) -> sqlite3.Connection:
        assert self.path is not None  # a cache without a path is broken from the start, never connected
        ensure_private_dir(self.path.parent)
        # Create the file 0600 ourselves: sqlite3 would create it with the umask.
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        # A short busy timeout: a locked cache costs one model call, a long wait costs the user.
        conn = sqlite3.connect(self.path, timeout=0.25, check_same_thread=False, isolation_level="DEFERRED")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute(self.SCHEMA)
        conn.commit()
        self._conn = conn
        return conn
