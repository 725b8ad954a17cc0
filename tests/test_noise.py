"""Decoders' complaints reach the file's record and the log, never the terminal: warnings, Pillow's
logging and libtiff's C-level stderr, from files built here that make each library complain."""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from photos import make_photo
from test_decode import halves
from test_reasons import tiff

from searchfs.errors import ImageError
from searchfs.ingest.decode import load_image
from searchfs.ingest.noise import stderr_to_log

NOISE = ("Corrupt EXIF", "malformed MPO", "Invalid APNG", "OJPEG", "Missing JPEG tables", "More samples", "Warning")


def write_noisy(folder: Path) -> dict[str, str | None]:
    """Files each of which makes a decoder complain; the complaint, or the reason for those that fail."""
    folder.mkdir(parents=True, exist_ok=True)
    halves().save(folder / "bad_exif.jpg", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff garbage")
    buffer = io.BytesIO()
    halves().save(buffer, "JPEG")
    data, mpf = buffer.getvalue(), b"MPF\x00" + b"garbage!" * 4  # an MP index Pillow cannot read
    (folder / "malformed.mpo").write_bytes(data[:2] + b"\xff\xe2" + struct.pack(">H", len(mpf) + 2) + mpf + data[2:])
    buffer = io.BytesIO()
    halves().save(buffer, "PNG")
    png, actl = buffer.getvalue(), b"acTL" + struct.pack(">II", 0, 0)  # an animation of 0 frames
    chunk = struct.pack(">I", 8) + actl + struct.pack(">I", zlib.crc32(actl))
    (folder / "invalid_apng.png").write_bytes(png[:33] + chunk + png[33:])
    # Old-style JPEG compression without its JPEG tables: libtiff complains on stderr, from C.
    (folder / "old_jpeg.tif").write_bytes(tiff({258: 8, 259: 6, 262: 6, 277: 3}, bytes(64)))
    (folder / "many_samples.tif").write_bytes(tiff({258: 8, 259: 1, 262: 1, 277: 60000}))
    return {
        "bad_exif.jpg": "UserWarning: Corrupt EXIF data",
        "malformed.mpo": "UserWarning: Image appears to be a malformed MPO file",
        "invalid_apng.png": "UserWarning: Invalid APNG",
        "old_jpeg.tif": "OJPEGReadHeaderInfoSecTablesQTable: Missing JPEG tables",
        "many_samples.tif": "PIL.TiffImagePlugin: More samples per pixel than can be decoded: 60000",
    }


FAILING = {
    "old_jpeg.tif": "corrupt TIFF data: ",
    "many_samples.tif": "damaged TIFF: Invalid value for samples per pixel",
}


def test_complaints_go_to_the_log_with_the_path(tmp_path, caplog):
    said = write_noisy(tmp_path)
    caplog.set_level(logging.INFO, logger="searchfs.decode")
    at_root = []  # what a root handler (the CLI's stderr one, a library user's) receives
    catcher = logging.Handler(logging.DEBUG)
    catcher.emit = at_root.append
    logging.getLogger().addHandler(catcher)
    try:
        for name in said:
            if name in FAILING:
                with pytest.raises(ImageError, match="^" + FAILING[name]):
                    load_image(tmp_path / name)
            else:
                assert load_image(tmp_path / name).size == (96, 64)
    finally:
        logging.getLogger().removeHandler(catcher)
    logged = [r.getMessage() for r in caplog.records if r.name == "searchfs.decode" and r.levelno == logging.INFO]
    for name, text in said.items():
        if name != "old_jpeg.tif":  # without stderr_to_log, libtiff's C output goes where fd 2 goes
            assert any(m.startswith(f"{tmp_path / name}: {text}") for m in logged), (name, logged)
    assert not [r for r in at_root if r.name.startswith("PIL")]  # never Pillow's raw records
    assert any(r.name == "searchfs.decode" for r in at_root)


def test_threaded_decodes_keep_each_complaint_with_its_file(tmp_path, caplog, capfd):
    said = write_noisy(tmp_path)
    names = sorted(said) * 4
    caplog.set_level(logging.INFO, logger="searchfs.decode")

    def decode(name):
        try:
            load_image(tmp_path / name)
            return None
        except ImageError as exc:
            return str(exc)

    with stderr_to_log():
        with ThreadPoolExecutor(4) as pool:
            reasons = dict(zip(names, pool.map(decode, names)))
        print("ours, to the terminal", file=sys.stderr)
        os.write(2, b"some C library talking\n")
    assert "Missing JPEG tables" in reasons["old_jpeg.tif"]  # libtiff's words, caught from fd 2, in the reason
    assert reasons["old_jpeg.tif"].startswith(FAILING["old_jpeg.tif"])
    for record in caplog.records:
        if record.name == "searchfs.decode" and str(tmp_path) in record.getMessage():
            path, _, text = record.getMessage().partition(": ")
            assert text.startswith(said[Path(path).name]), record.getMessage()  # never another file's words
    assert any("decoder output on stderr: some C library talking" in r.getMessage() for r in caplog.records)
    err = capfd.readouterr().err
    assert "ours, to the terminal" in err
    assert not any(word in err for word in NOISE + ("C library",)), err


def test_index_prints_no_decoder_noise(home, tiny_model, tmp_path, monkeypatch):
    for key, value in tiny_model.items():
        monkeypatch.setenv("SEARCHFS_" + key.upper(), value)
    photos = tmp_path / "photos"
    said = write_noisy(photos)
    make_photo(photos / "fine.jpg", seed=1)
    done = subprocess.run(
        [sys.executable, "-m", "searchfs", "index", str(photos), "--json"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert not any(word in done.stderr for word in NOISE), done.stderr
    report = json.loads(done.stdout)
    assert report["new"] == len(said) + 1 and report["quarantined"] == len(FAILING)
    status = subprocess.run(
        [sys.executable, "-m", "searchfs", "status", "--quarantine"], capture_output=True, text=True, check=True
    )
    for name, reason in FAILING.items():
        line = next(line for line in status.stdout.splitlines() if name in line)
        assert f"{name}: {reason}" in line
    assert "Missing JPEG tables" in status.stdout  # libtiff's stderr, now in the file's reason

    verbose = subprocess.run(
        [sys.executable, "-m", "searchfs", "-v", "index", str(photos), "--retry-quarantined"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=240,
    )
    assert f"searchfs.decode: {photos / 'old_jpeg.tif'}: OJPEGReadHeaderInfoSecTablesQTable" in verbose.stderr
