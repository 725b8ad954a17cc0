import hashlib
import os
import subprocess

from photos import make_photo

from searchfs import content_hash
from searchfs.content_hash import hash_file
from searchfs.ingest.scan import ScanRules, is_candidate, root_state, stat_photo, walk


def _all_files(root, rules=None, start=b""):
    rules = rules or ScanRules()
    problems = []
    files = [st.relpath for folder in walk(os.fsencode(root), rules, problems, start) for st in folder.files]
    return sorted(files), problems


def test_walk_finds_photos_and_skips_hidden_excluded_and_non_images(tmp_path):
    make_photo(tmp_path / "a.jpg")
    make_photo(tmp_path / "sub" / "b.png")
    make_photo(tmp_path / ".hidden" / "c.jpg")
    make_photo(tmp_path / ".d.jpg")
    make_photo(tmp_path / "@eaDir" / "thumb.jpg")
    (tmp_path / "notes.txt").write_text("hello")
    files, problems = _all_files(tmp_path, ScanRules(exclude=("@eaDir",)))
    assert files == [b"a.jpg", b"sub/b.png"] and problems == []
    files, _ = _all_files(tmp_path, ScanRules(exclude=("@eaDir",), hidden=True))
    assert files == [b".d.jpg", b".hidden/c.jpg", b"a.jpg", b"sub/b.png"]


def test_extensionless_images_are_sniffed(tmp_path):
    make_photo(tmp_path / "photo_without_extension", fmt="JPEG")
    (tmp_path / "README").write_text("not an image")
    assert _all_files(tmp_path)[0] == [b"photo_without_extension"]
    assert is_candidate(os.fsencode(tmp_path / "photo_without_extension"), b"photo_without_extension")


def test_symlinks_never_leave_the_root_nor_loop(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    make_photo(root / "a.jpg")
    make_photo(outside / "x.jpg")
    os.symlink(outside, root / "escape")  # a folder outside: not followed
    os.symlink(outside / "x.jpg", root / "x.jpg")  # a file outside: not indexed
    os.symlink(root, root / "loop")  # back to the root: walked once only
    os.symlink(root / "a.jpg", root / "alias.jpg")  # a file inside: fine
    files, problems = _all_files(root)
    assert files == [b"a.jpg", b"alias.jpg"] and problems == []


def test_unreadable_folder_is_reported_not_fatal(tmp_path):
    make_photo(tmp_path / "ok" / "a.jpg")
    locked = tmp_path / "locked"
    make_photo(locked / "b.jpg")
    os.chmod(locked, 0)
    try:
        files, problems = _all_files(tmp_path)
    finally:
        os.chmod(locked, 0o755)
    if os.geteuid() == 0:  # root reads everything; the walk must still work
        assert b"ok/a.jpg" in files
    else:
        assert files == [b"ok/a.jpg"] and problems[0].relpath == b"locked"


def test_non_utf8_names_stay_bytes(tmp_path):
    name = b"caf\xe9.jpg"
    make_photo(os.path.join(os.fsencode(tmp_path), name))
    assert _all_files(tmp_path)[0] == [name]


def test_walk_from_a_subfolder(tmp_path):
    make_photo(tmp_path / "a" / "1.jpg")
    make_photo(tmp_path / "b" / "2.jpg")
    assert _all_files(tmp_path, start=b"b")[0] == [b"b/2.jpg"]


def test_stat_photo_and_root_state(tmp_path):
    make_photo(tmp_path / "a.jpg")
    assert stat_photo(os.fsencode(tmp_path), b"a.jpg", ScanRules()).size > 0
    assert stat_photo(os.fsencode(tmp_path), b"gone.jpg", ScanRules()) is None
    assert stat_photo(os.fsencode(tmp_path), b".x/a.jpg", ScanRules()) is None
    assert root_state(os.fsencode(tmp_path)) is None
    assert root_state(os.fsencode(tmp_path / "missing")) == "folder is missing"
    assert root_state(os.fsencode(tmp_path / "a.jpg")) == "not a folder"


def test_hash_is_of_content(tmp_path):
    a = make_photo(tmp_path / "a.jpg", seed=1)
    b = tmp_path / "b.jpg"
    b.write_bytes(a.read_bytes())
    assert hash_file(os.fsencode(a)) == hash_file(os.fsencode(b))
    assert hash_file(os.fsencode(a))[1] == a.stat().st_size
    assert hash_file(os.fsencode(a), content_hash.LEGACY) != hash_file(os.fsencode(a))


def test_new_hash_is_sha256sum_cut_to_160_bits(tmp_path):
    a = make_photo(tmp_path / "a.jpg", seed=2)
    shown = subprocess.run(["sha256sum", str(a)], capture_output=True, text=True, check=True).stdout.split()[0]
    assert hash_file(os.fsencode(a)) == (shown[:40], a.stat().st_size)
    legacy = hashlib.blake2b(a.read_bytes(), digest_size=20).hexdigest()
    assert hash_file(os.fsencode(a), content_hash.LEGACY)[0] == legacy
