-- searchfs catalog, schema version 3: what a fresh catalog is made of. Older catalogs get here through
-- the steps in migrations.py. The durable truth: every other file searchfs keeps is derived from it.
-- Paths are BLOBs (os.fsencode) so that names which are not UTF-8 round-trip.
-- Sized for a million photos: about 300 bytes a photo besides its vector (repeated texts are stored once
-- in `names`, folders once in `dirs`, metadata as columns of the content, not as rows per value). A new
-- catalog has 16 KiB pages (catalog.py): a 2 KiB vector row then fits in its b-tree page, where 4 KiB
-- pages push each one to an overflow page of its own (4.7 KB a vector instead of 2.3 KB).
--
-- Objects marked "(v3)" came with schema 3; migrations.py adds them to older catalogs.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE roots (
    id           INTEGER PRIMARY KEY,
    path         BLOB NOT NULL UNIQUE,           -- absolute, symlinks resolved
    name         TEXT NOT NULL UNIQUE,           -- its folder under similar/
    online       INTEGER NOT NULL DEFAULT 1,     -- 0: folder missing or not answering; its files are kept
    last_scan_at REAL,
    files        INTEGER NOT NULL DEFAULT 0      -- (v3) its rows in `files`, kept by the triggers below
);

-- Every folder of a root that holds (or held) photos. A folder renamed is one row updated (plus its
-- subfolders), whatever the number of photos in it.
CREATE TABLE dirs (
    id      INTEGER PRIMARY KEY,
    root_id INTEGER NOT NULL REFERENCES roots(id) ON DELETE CASCADE,
    path    BLOB NOT NULL,                       -- relative to the root, '' for the root itself
    UNIQUE (root_id, path)
);

-- Texts that repeat across photos (camera, lens, format, keywords, titles): stored once.
CREATE TABLE names (
    id   INTEGER PRIMARY KEY,
    text TEXT NOT NULL UNIQUE,                   -- as shown
    fold TEXT NOT NULL                           -- casefolded, for case-insensitive matching
);

-- One row per distinct file content (a 160-bit hash of its bytes; meta 'content_hash' says which hash,
-- content_hash.py). Metadata, embeddings and decode errors belong to the content, so a renamed, moved or
-- copied file reuses them.
CREATE TABLE contents (
    id           INTEGER PRIMARY KEY,
    hash         BLOB NOT NULL UNIQUE,           -- 20 bytes
    size         INTEGER NOT NULL,
    meta_version INTEGER NOT NULL DEFAULT 0,     -- extractor version of the metadata below; 0: not read yet
    meta_error   TEXT,                           -- why exiftool gave no metadata
    error        TEXT,                           -- why it cannot be embedded (quarantine reason), or NULL
    orphaned_at  REAL,                           -- set when its last file went away; swept later
    -- metadata (records.FACETS; NULL: unknown). year, month, timeofday, has_gps are derived.
    camera       INTEGER REFERENCES names(id),
    make         INTEGER REFERENCES names(id),
    model        INTEGER REFERENCES names(id),
    lens         INTEGER REFERENCES names(id),
    format       INTEGER REFERENCES names(id),
    date         TEXT,                           -- 'YYYY-MM-DD'
    hour         INTEGER,
    iso          REAL,
    fnumber      REAL,
    exposure     REAL,
    focal        REAL,
    width        INTEGER,
    height       INTEGER,
    orientation  INTEGER,
    lat          REAL,
    lon          REAL
);
CREATE INDEX contents_date ON contents(date);
CREATE INDEX contents_camera ON contents(camera);
-- (v3) What the indexer's work queries and the status counts look for: few rows, found without reading
-- every content (the metadata still to read; quarantined contents).
CREATE INDEX contents_meta ON contents(meta_version);
CREATE INDEX contents_errors ON contents(id) WHERE error IS NOT NULL;

-- Metadata with several values per photo: keywords, titles, descriptions (kind: 1, 2, 3).
CREATE TABLE content_texts (
    content_id INTEGER NOT NULL REFERENCES contents(id) ON DELETE CASCADE,
    kind       INTEGER NOT NULL,
    name_id    INTEGER NOT NULL REFERENCES names(id),
    PRIMARY KEY (content_id, kind, name_id)
) WITHOUT ROWID;
CREATE INDEX content_texts_name ON content_texts(name_id);

CREATE TABLE files (
    id         INTEGER PRIMARY KEY,
    dir_id     INTEGER NOT NULL REFERENCES dirs(id) ON DELETE CASCADE,
    name       BLOB NOT NULL,                    -- the file's name in its folder
    size       INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    inode      INTEGER NOT NULL DEFAULT 0,
    content_id INTEGER REFERENCES contents(id),  -- NULL until hashed
    error      TEXT,                             -- why it could not be read (permission, vanished)
    UNIQUE (dir_id, name)
);
CREATE INDEX files_content ON files(content_id);
CREATE INDEX files_inode ON files(inode);
CREATE INDEX files_unreadable ON files(content_id) WHERE error IS NOT NULL;  -- (v3)

CREATE TABLE models (
    id   INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE                    -- model id: architecture + weights
);

CREATE TABLE embeddings (
    model_id   INTEGER NOT NULL REFERENCES models(id),
    content_id INTEGER NOT NULL REFERENCES contents(id) ON DELETE CASCADE,
    vector     BLOB NOT NULL,                    -- float32, L2-normalized
    PRIMARY KEY (model_id, content_id)
) WITHOUT ROWID;

CREATE TABLE saved_queries (
    text       TEXT PRIMARY KEY,
    created_at REAL NOT NULL
);

-- The vector change feed: a content whose searchability may have changed (an embedding stored or
-- dropped, a file linked or unlinked, its root gone offline or back). The vector index catches up by
-- reading the rows after the sequence number it was saved at, so catching up costs what changed, and
-- the vectors generation is this table's high-water mark. Written by the triggers below, so no code
-- path can forget it; rows the saved vector index no longer needs are pruned.
CREATE TABLE vector_log (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    content_id INTEGER NOT NULL
);

-- The same triggers keep `orphaned_at`: set when a content's last file goes, cleared when one comes back.
CREATE TRIGGER files_linked AFTER INSERT ON files WHEN NEW.content_id IS NOT NULL
BEGIN
    INSERT INTO vector_log(content_id) VALUES (NEW.content_id);
    UPDATE contents SET orphaned_at = NULL WHERE id = NEW.content_id AND orphaned_at IS NOT NULL;
END;

CREATE TRIGGER files_unlinked AFTER DELETE ON files WHEN OLD.content_id IS NOT NULL
BEGIN
    INSERT INTO vector_log(content_id) VALUES (OLD.content_id);
    UPDATE contents SET orphaned_at = CAST(strftime('%s', 'now') AS REAL)
        WHERE id = OLD.content_id AND NOT EXISTS (SELECT 1 FROM files WHERE content_id = OLD.content_id);
END;

CREATE TRIGGER files_relinked AFTER UPDATE OF content_id, error ON files
BEGIN
    INSERT INTO vector_log(content_id) SELECT OLD.content_id WHERE OLD.content_id IS NOT NULL;
    INSERT INTO vector_log(content_id) SELECT NEW.content_id
        WHERE NEW.content_id IS NOT NULL AND NEW.content_id IS NOT OLD.content_id;
    UPDATE contents SET orphaned_at = NULL WHERE id = NEW.content_id AND orphaned_at IS NOT NULL;
    UPDATE contents SET orphaned_at = CAST(strftime('%s', 'now') AS REAL)
        WHERE id = OLD.content_id AND NEW.content_id IS NOT OLD.content_id
          AND NOT EXISTS (SELECT 1 FROM files WHERE content_id = OLD.content_id);
END;

CREATE TRIGGER embeddings_stored AFTER INSERT ON embeddings
BEGIN INSERT INTO vector_log(content_id) VALUES (NEW.content_id); END;

CREATE TRIGGER embeddings_dropped AFTER DELETE ON embeddings
BEGIN INSERT INTO vector_log(content_id) VALUES (OLD.content_id); END;

CREATE TRIGGER contents_quarantined AFTER UPDATE OF error ON contents WHEN NEW.error IS NOT OLD.error
BEGIN INSERT INTO vector_log(content_id) VALUES (NEW.id); END;

CREATE TRIGGER roots_online AFTER UPDATE OF online ON roots WHEN NEW.online != OLD.online
BEGIN
    INSERT INTO vector_log(content_id)
        SELECT DISTINCT f.content_id FROM files f JOIN dirs d ON d.id = f.dir_id
        WHERE d.root_id = NEW.id AND f.content_id IS NOT NULL;
END;

-- (v3) Contents that may still need a vector of the model named by meta 'todo_model' (a models id): every
-- content without its vector and not quarantined is here, so the indexer's "what is left to embed" and the
-- mount's progress line cost what is left, not a read of every content. Catalog.track_model fills it
-- anew for another model (a model switch re-embeds everything anyway). Kept by the triggers below.
CREATE TABLE embed_todo (
    content_id INTEGER PRIMARY KEY
);

CREATE TRIGGER contents_todo AFTER INSERT ON contents
BEGIN INSERT OR IGNORE INTO embed_todo(content_id) VALUES (NEW.id); END;

CREATE TRIGGER contents_todo_gone AFTER DELETE ON contents
BEGIN DELETE FROM embed_todo WHERE content_id = OLD.id; END;

CREATE TRIGGER contents_todo_error AFTER UPDATE OF error ON contents WHEN NEW.error IS NOT OLD.error
BEGIN
    DELETE FROM embed_todo WHERE content_id = NEW.id AND NEW.error IS NOT NULL;
    INSERT OR IGNORE INTO embed_todo(content_id) SELECT NEW.id WHERE NEW.error IS NULL AND NOT EXISTS
        (SELECT 1 FROM embeddings WHERE content_id = NEW.id
         AND model_id = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'todo_model'));
END;

CREATE TRIGGER embeddings_todo_done AFTER INSERT ON embeddings
    WHEN NEW.model_id = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'todo_model')
BEGIN DELETE FROM embed_todo WHERE content_id = NEW.content_id; END;

CREATE TRIGGER embeddings_todo_again AFTER DELETE ON embeddings
    WHEN OLD.model_id = (SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'todo_model')
BEGIN
    INSERT OR IGNORE INTO embed_todo(content_id)
        SELECT OLD.content_id WHERE EXISTS (SELECT 1 FROM contents WHERE id = OLD.content_id AND error IS NULL);
END;

-- (v3) roots.files. A folder deleted with its files still in it (a cascade) takes its count with it
-- first: by the time a cascaded file's trigger runs, its folder row is gone.
CREATE TRIGGER files_counted AFTER INSERT ON files
BEGIN UPDATE roots SET files = files + 1 WHERE id = (SELECT root_id FROM dirs WHERE id = NEW.dir_id); END;

CREATE TRIGGER files_uncounted AFTER DELETE ON files
BEGIN UPDATE roots SET files = files - 1 WHERE id = (SELECT root_id FROM dirs WHERE id = OLD.dir_id); END;

CREATE TRIGGER files_recounted AFTER UPDATE OF dir_id ON files WHEN NEW.dir_id != OLD.dir_id
BEGIN
    UPDATE roots SET files = files - 1 WHERE id = (SELECT root_id FROM dirs WHERE id = OLD.dir_id);
    UPDATE roots SET files = files + 1 WHERE id = (SELECT root_id FROM dirs WHERE id = NEW.dir_id);
END;

CREATE TRIGGER dirs_uncounted BEFORE DELETE ON dirs
BEGIN
    UPDATE roots SET files = files - (SELECT count(*) FROM files WHERE dir_id = OLD.id) WHERE id = OLD.root_id;
END;
