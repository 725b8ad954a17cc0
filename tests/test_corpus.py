"""The real-photo corpus (../shared/corpus, when present): indexing it ends with every file either
searchable or quarantined with a reason, never a crash, and agrees with what Pillow can decode.
Skipped on a fresh clone without the corpus."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import pytest

from searchfs.library import Library

CORPUS = (Path(__file__).resolve().parents[2] / "shared" / "corpus").resolve()  # roots are stored resolved
pytestmark = pytest.mark.skipif(not (CORPUS / "MANIFEST.tsv").is_file(), reason="no ../shared/corpus here")


def manifest() -> dict[str, dict]:
    with open(CORPUS / "MANIFEST.tsv", newline="", encoding="utf-8") as handle:
        return {row["path"]: row for row in csv.DictReader(handle, delimiter="\t")}


@pytest.fixture(scope="module")
def indexed(tmp_path_factory, tiny_model):
    from searchfs.config import load_settings

    home = tmp_path_factory.mktemp("corpus-home")
    settings = load_settings(env={"SEARCHFS_HOME": str(home)}, index_hidden=True, **tiny_model)
    library = Library(settings, create=True)
    report = library.index([CORPUS])
    yield library, report
    library.close()


def _states(library: Library) -> dict[str, str]:
    """relative path -> 'indexed' or the quarantine reason"""
    states = library.catalog.file_states(library.model_id)
    return {
        os.path.relpath(os.fsdecode(s.path), os.path.realpath(CORPUS)): ("indexed" if s.embedded else s.reason)
        for s in states
    }


def test_every_file_is_indexed_or_quarantined_with_a_reason(indexed):
    library, report = indexed
    states = _states(library)
    expected = manifest()
    assert set(states) == set(expected), set(states) ^ set(expected)
    assert report.pending == 0 and all(states.values())
    status = library.status()
    assert status.indexed + status.quarantined == status.files == len(expected)


def test_what_pillow_decodes_is_searchable(indexed):
    library, _ = indexed
    states = _states(library)
    for path, row in manifest().items():
        if row["pillow_decode"].startswith("ok"):
            assert states[path] == "indexed", (path, states[path], row["note"])


def test_metadata_matches_exiftool(indexed):
    library, _ = indexed
    canon = {os.path.relpath(h.path, CORPUS) for h in library.search(where=["make=canon"])}
    expected = {p for p, row in manifest().items() if "canon" in row["Make"].lower()}
    quarantined = {p for p, state in _states(library).items() if state != "indexed"}
    assert canon == expected - quarantined  # exif/ lists searchable photos only
