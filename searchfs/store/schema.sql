-- searchfs catalog, schema version 1. The durable truth: every other file searchfs keeps is derived from it.
-- Paths are BLOBs (os.fsencode) so that names which are not UTF-8 round-trip.

CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS roots (
    id           INTEGER PRIMARY KEY,
    path         BLOB NOT NULL UNIQUE,           -- absolute
    name         TEXT NOT NULL UNIQUE,           -- its folder under similar/
    online       INTEGER NOT NULL DEFAULT 1,     -- 0: folder missing (unmounted NAS); files are kept
    last_scan_at REAL
);

-- One row per distinct file content (BLAKE2b of the bytes). Metadata, embeddings and decode errors belong
-- to the content, so a renamed, moved or copied file reuses them.
CREATE TABLE IF NOT EXISTS contents (
    id          INTEGER PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    size        INTEGER NOT NULL,
    meta_state  TEXT NOT NULL DEFAULT 'pending', -- pending | done | failed
    meta_error  TEXT,
    error       TEXT,                            -- why it cannot be embedded (quarantine reason), or NULL
    orphaned_at REAL                             -- set when its last file went away; swept later
);

CREATE TABLE IF NOT EXISTS files (
    id         INTEGER PRIMARY KEY,
    root_id    INTEGER NOT NULL REFERENCES roots(id) ON DELETE CASCADE,
    relpath    BLOB NOT NULL,
    dir        BLOB NOT NULL,                    -- parent folder of relpath ('' at the root), for tree listings
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    inode      INTEGER NOT NULL DEFAULT 0,
    content_id INTEGER REFERENCES contents(id),  -- NULL until hashed
    error      TEXT,                             -- why it could not be read (permission, vanished)
    seen       INTEGER NOT NULL DEFAULT 0,       -- scan mark, for mark-and-sweep
    UNIQUE (root_id, relpath)
);
CREATE INDEX IF NOT EXISTS files_content ON files(content_id);
CREATE INDEX IF NOT EXISTS files_dir ON files(root_id, dir);
CREATE INDEX IF NOT EXISTS files_inode ON files(root_id, inode);

CREATE TABLE IF NOT EXISTS facets (
    content_id INTEGER NOT NULL REFERENCES contents(id) ON DELETE CASCADE,
    key        TEXT NOT NULL,
    text       TEXT NOT NULL,                    -- display form
    fold       TEXT NOT NULL,                    -- casefolded text, for case-insensitive matching
    num        REAL                              -- numbers; NULL for text and dates
);
CREATE INDEX IF NOT EXISTS facets_content ON facets(content_id);
CREATE INDEX IF NOT EXISTS facets_key_fold ON facets(key, fold);
CREATE INDEX IF NOT EXISTS facets_key_num ON facets(key, num);
CREATE INDEX IF NOT EXISTS facets_key_text ON facets(key, text);

CREATE TABLE IF NOT EXISTS embeddings (
    model      TEXT NOT NULL,
    content_id INTEGER NOT NULL REFERENCES contents(id) ON DELETE CASCADE,
    vector     BLOB NOT NULL,                    -- float32, L2-normalized
    PRIMARY KEY (model, content_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS saved_queries (
    text       TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);
