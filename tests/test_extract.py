"""searchfs.ingest.extract: the tag -> facet rules, and extraction through a real exiftool."""

from __future__ import annotations

import json
import math
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from photos import make_photo

from searchfs.errors import ExiftoolError
from searchfs.ingest.extract import ExifExtractor, exiftool_version
from searchfs.ingest.tags import normalize
from searchfs.records import FACET_BY_KEY, Facet

EXIFTOOL = shutil.which("exiftool")
needs_exiftool = pytest.mark.skipif(EXIFTOOL is None, reason="exiftool is not installed")
CORPUS = Path("/work/shared/corpus")


def one(facets: list[Facet], key: str) -> Facet | None:
    found = [f for f in facets if f.key == key]
    assert len(found) <= 1, found
    return found[0] if found else None


def text(facets: list[Facet], key: str) -> str | None:
    facet = one(facets, key)
    return facet.text if facet else None


def texts(facets: list[Facet], key: str) -> list[str]:
    return [f.text for f in facets if f.key == key]


# --------------------------------------------------------------------------------------------------
# normalize
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make, model, camera",
    [
        ("Canon", "Canon EOS 40D", "Canon EOS 40D"),
        ("NIKON CORPORATION", "NIKON D70", "NIKON D70"),
        ("Apple", "iPhone 12", "Apple iPhone 12"),
        ("EASTMAN KODAK COMPANY", "KODAK DC3400 ZOOM DIGITAL CAMERA", "KODAK DC3400 ZOOM DIGITAL CAMERA"),
        ("OLYMPUS OPTICAL CO.,LTD", "C2040Z", "OLYMPUS C2040Z"),
        ("CASIO COMPUTER CO.,LTD", "EX-Z3", "CASIO EX-Z3"),
        ("HTC", "HTC_TyTN_II", "HTC_TyTN_II"),
        ("SONY", "CYBERSHOT", "SONY CYBERSHOT"),
        ("Canon ", "  Canon EOS 5D\x00\x00", "Canon EOS 5D"),
        (None, "iPhone 12", "iPhone 12"),
        ("Canon", None, "Canon"),
        ("", "", None),
    ],
)
def test_camera_is_make_and_model_without_repetition(make, model, camera):
    facets = normalize({"Make": make, "Model": model})
    assert text(facets, "camera") == camera
    assert text(facets, "make") == (make.strip() if make and make.strip() else None)


def test_make_and_model_keep_their_spelling_and_lose_padding():
    facets = normalize({"Make": "  NIKON CORPORATION ", "Model": "NIKON D70 "})
    assert (text(facets, "make"), text(facets, "model")) == ("NIKON CORPORATION", "NIKON D70")
    assert normalize({"Model": 5000}) and text(normalize({"Model": 5000}), "model") == "5000"


@pytest.mark.parametrize(
    "tags, lens",
    [
        ({"LensModel": "EF-S18-55mm f/3.5-5.6 IS II", "Lens": "18 55", "LensID": 154}, "EF-S18-55mm f/3.5-5.6 IS II"),
        ({"LensModel": "LEICA DG SUMMILUX 25/F1.4 "}, "LEICA DG SUMMILUX 25/F1.4"),
        ({"LensModel": "", "Lens": "EF24-70mm f/2.8L USM", "LensID": 230}, "EF24-70mm f/2.8L USM"),
        ({"Lens": "18 55 3.5 5.6", "LensID": "AF-S DX 18-55mm f/3.5-5.6G"}, "AF-S DX 18-55mm f/3.5-5.6G"),
        ({"Lens": 18, "LensID": 154}, None),  # -n: focal length and a lens-table number, not names
        ({"Lens": 5.40625}, None),
        ({"LensID": "63 48 2B 44 24 24 68 02"}, None),  # raw Nikon lens-ID bytes
        ({"LensModel": "----"}, None),
        ({"Lens": "18.0-55.0 mm f/3.5-5.6"}, "18.0-55.0 mm f/3.5-5.6"),
    ],
)
def test_lens_prefers_lens_model_and_skips_numbers(tags, lens):
    assert text(normalize(tags), "lens") == lens


@pytest.mark.parametrize(
    "tags, date, hour, timeofday",
    [
        ({"DateTimeOriginal": "2014:03:05 05:28:09"}, "2014-03-05", 5, "night"),
        ({"DateTimeOriginal": "2014:03:05 06:00:00", "CreateDate": "2001:01:01 12:00:00"}, "2014-03-05", 6, "morning"),
        (
            {"DateTimeOriginal": "0000:00:00 00:00:00", "CreateDate": "2011:03:12 15:36:11.00+01:00"},
            "2011-03-12",
            15,
            "afternoon",
        ),
        (
            {"DateTimeOriginal": "    :  :     :  :  ", "DateTimeCreated": "2003:08:06 18:04:34-05:00"},
            "2003-08-06",
            18,
            "evening",
        ),
        ({"DateCreated": "1999:05:25"}, "1999-05-25", None, None),  # a day with no time: no hour
        ({"MediaCreateDate": "2020:12:03 23:59:59"}, "2020-12-03", 23, "evening"),
        ({"DateTimeOriginal": "1901:01:01 00:00:00"}, "1901-01-01", 0, "night"),
        ({"DateTimeOriginal": "2099:12:31 23:59:59+09:00"}, "2099-12-31", 23, "evening"),
        ({"DateTimeOriginal": "2013:07:05 03:18:27Z"}, "2013-07-05", 3, "night"),
        ({"DateTimeOriginal": "2021:05:16 12:27:36.107-07:00"}, "2021-05-16", 12, "afternoon"),
        ({"DateTimeOriginal": "2019:02:30 10:00:00"}, None, None, None),  # not a calendar day
        ({"DateTimeOriginal": "2019:02:03 25:00:00"}, "2019-02-03", None, None),  # day is fine, time is not
        ({"DateTimeOriginal": "yesterday"}, None, None, None),
        ({"DateTimeOriginal": 2015}, None, None, None),  # a year without a day
        ({"DateTimeOriginal": "", "DateCreated": ""}, None, None, None),
        ({"DateTimeOriginal": "2017:11:11 17:59:00", "CreateDate": "garbage"}, "2017-11-11", 17, "afternoon"),
    ],
)
def test_date_rules(tags, date, hour, timeofday):
    facets = normalize(tags)
    assert text(facets, "date") == date
    assert one(facets, "hour") == (Facet("hour", str(hour), float(hour)) if hour is not None else None)
    assert text(facets, "timeofday") == timeofday
    if date:
        assert one(facets, "date").num is None
        assert one(facets, "year").num == int(date[:4]) and one(facets, "year").text == date[:4]
        assert one(facets, "month").num == int(date[5:7]) and one(facets, "month").text == str(int(date[5:7]))
    else:
        assert one(facets, "year") is None and one(facets, "month") is None


@pytest.mark.parametrize(
    "hour, part",
    [
        (0, "night"),
        (5, "night"),
        (6, "morning"),
        (11, "morning"),
        (12, "afternoon"),
        (17, "afternoon"),
        (18, "evening"),
        (23, "evening"),
    ],
)
def test_time_of_day_boundaries(hour, part):
    assert text(normalize({"DateTimeOriginal": f"2020:01:01 {hour:02d}:30:00"}), "timeofday") == part


@pytest.mark.parametrize(
    "iso, expected",
    [
        (100, Facet("iso", "100", 100.0)),
        ("400", Facet("iso", "400", 400.0)),
        ([0, 200], Facet("iso", "200", 200.0)),
        ("0 200", Facet("iso", "200", 200.0)),
        ([800, 1600], Facet("iso", "800", 800.0)),
        (64.8419777325505, Facet("iso", "64.8419777326", 64.8419777325505)),
        (0, None),
        ("auto", None),
        (None, None),
        ({"x": 1}, None),
        (True, None),
        (float("nan"), None),
    ],
)
def test_iso_takes_the_first_positive_value(iso, expected):
    assert one(normalize({"ISO": iso}), "iso") == expected


def test_numbers_display_without_trailing_zero_and_exposures_as_photographers_write_them():
    facets = normalize({"FNumber": 2.8, "ExposureTime": 0.004, "FocalLength": 35.0})
    assert one(facets, "fnumber") == Facet("fnumber", "2.8", 2.8)
    assert one(facets, "exposure") == Facet("exposure", "1/250", 0.004)
    assert one(facets, "focal") == Facet("focal", "35", 35.0)
    assert text(normalize({"ExposureTime": 0.0166666667}), "exposure") == "1/60"  # not 0.0166666667
    assert text(normalize({"ExposureTime": 1 / 8000}), "exposure") == "1/8000"
    assert text(normalize({"ExposureTime": 0.3}), "exposure") == "0.3"  # a quarter second and longer: seconds
    assert text(normalize({"ExposureTime": 30}), "exposure") == "30"
    assert text(normalize({"FocalLength": 0.00001}), "focal") == "0.00001"  # no "1e-05"


@pytest.mark.parametrize(
    "tags",
    [
        {"FNumber": 0},
        {"FNumber": "f/2.8"},
        {"ExposureTime": "1/250"},
        {"ExposureTime": -1},
        {"FocalLength": [35, 50]},
        {"FocalLength": None},
    ],
)
def test_odd_exposure_values_are_skipped(tags):
    facets = normalize(tags)
    assert not [f for f in facets if f.key in ("fnumber", "exposure", "focal")]


@pytest.mark.parametrize(
    "tags, size",
    [
        ({"ImageWidth": 4032, "ImageHeight": 3024, "ImageSize": "1 1"}, (4032, 3024)),
        ({"ImageSize": "640 480"}, (640, 480)),
        ({"ImageWidth": "n/a", "ExifImageWidth": 100, "ExifImageHeight": 75}, (100, 75)),
        ({"ImageWidth": 200, "ImageHeight": 0}, None),
        ({"ImageSize": "640x480"}, None),
        ({"ImageWidth": 10.5, "ImageHeight": 3}, None),
    ],
)
def test_width_and_height(tags, size):
    facets = normalize(tags)
    found = (one(facets, "width"), one(facets, "height"))
    if size is None:
        assert found == (None, None)
    else:
        assert found == (Facet("width", str(size[0]), size[0]), Facet("height", str(size[1]), size[1]))


@pytest.mark.parametrize(
    "value, expected", [(1, 1), (8, 8), ("6", 6), (9, None), (0, None), (6.5, None), ("Rotate 90 CW", None)]
)
def test_orientation_is_one_to_eight(value, expected):
    facet = one(normalize({"Orientation": value}), "orientation")
    assert (facet.num if facet else None) == expected
    if facet:
        assert facet.text == str(expected)


def test_format_is_exiftool_file_type():
    assert text(normalize({"FileType": "Extended WEBP"}), "format") == "Extended WEBP"
    assert text(normalize({"Error": "File is empty"}), "format") is None


@pytest.mark.parametrize(
    "lat, lon, gps",
    [
        (40.6892, -74.0445, (40.6892, -74.0445)),
        (-33.8568, "151.2153", (-33.8568, 151.2153)),
        (0, 0, (0.0, 0.0)),  # null island: a real if suspicious recording, kept
        ("", "", None),
        (48.1, None, None),  # half a position is no position
        (123.0, 10.0, None),
        ("N 48", "E 11", None),
        ([1, 2], [3, 4], None),
    ],
)
def test_gps(lat, lon, gps):
    facets = normalize({"GPSLatitude": lat, "GPSLongitude": lon})
    if gps is None:
        assert text(facets, "has_gps") == "no"
        assert one(facets, "lat") is None and one(facets, "lon") is None
    else:
        assert text(facets, "has_gps") == "yes"
        assert (one(facets, "lat").num, one(facets, "lon").num) == gps


def test_has_gps_is_always_present():
    assert texts(normalize({}), "has_gps") == ["no"]


def test_keywords_from_keywords_and_subject_deduplicated():
    facets = normalize({"Keywords": ["XMP", "Blue Square", "xmp", 2015], "Subject": "blue square, sky", "Title": "  "})
    assert texts(facets, "keyword") == ["XMP", "Blue Square", "2015", "blue square, sky"]
    assert texts(normalize({"Subject": "tag"}), "keyword") == ["tag"]
    assert texts(normalize({"Keywords": [None, "", "  ", {"a": 1}]}), "keyword") == []


def test_title_and_description():
    facets = normalize(
        {
            "Title": "Der Goalie bin ig",
            "ObjectName": "der goalie bin ig",
            "ImageDescription": "El cielo sobre Berlin",
            "Description": "El cielo sobre Berlin",
            "Caption-Abstract": "Heaven above Berlin",
        }
    )
    assert texts(facets, "title") == ["Der Goalie bin ig"]
    assert texts(facets, "description") == ["El cielo sobre Berlin", "Heaven above Berlin"]
    assert texts(normalize({"ObjectName": "Communications"}), "title") == ["Communications"]


@pytest.mark.parametrize(
    "junk",
    [
        "OLYMPUS DIGITAL CAMERA         ",
        "                               ",
        "SONY DSC",
        "KODAK Digital Still Camera",
        " DIGITAL CAMERA ",
        "<Digimax i50 MP3, Samsung #1 MP3>",
        "DSC00019",
        "000015",
        "WWL     ",
        "Canon EOS 40D",
        "(Binary data 2048 bytes, use -b option to extract)",
        "base64:AAEC",
        "\x00\x00\x00",
    ],
)
def test_vendor_boilerplate_is_not_a_description(junk):
    tags = {"Make": "WWL", "Model": "Canon EOS 40D", "ImageDescription": junk, "Caption-Abstract": junk}
    assert texts(normalize(tags), "description") == []


def test_real_descriptions_are_kept():
    for value in ["Ünïcödé — 日本語の説明 — описание", "Workshop showing workbench and storage", "mit blauem Kleid"]:
        assert texts(normalize({"ImageDescription": value}), "description") == [value]


ODD_VALUES = [
    None,
    True,
    0,
    -1,
    1e308,
    float("inf"),
    "",
    " ",
    "\x00",
    "(Binary data 12 bytes, use -b option to extract)",
    "base64:AAAA",
    [],
    [None],
    ["a", 1, None],
    {"nested": {"x": 1}},
    "0000:00:00 00:00:00",
    "1 2 3",
    "x" * 5000,
]


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_normalize_never_raises_on_odd_values(value):
    names = [
        "Make",
        "Model",
        "LensModel",
        "Lens",
        "LensID",
        "DateTimeOriginal",
        "CreateDate",
        "DateCreated",
        "DateTimeCreated",
        "MediaCreateDate",
        "ISO",
        "FNumber",
        "ExposureTime",
        "FocalLength",
        "ImageWidth",
        "ImageHeight",
        "ImageSize",
        "ExifImageWidth",
        "ExifImageHeight",
        "Orientation",
        "FileType",
        "GPSLatitude",
        "GPSLongitude",
        "Keywords",
        "Subject",
        "Title",
        "ObjectName",
        "ImageDescription",
        "Description",
        "Caption-Abstract",
    ]
    facets = normalize({name: value for name in names})
    assert all(f.key in FACET_BY_KEY and isinstance(f.text, str) and f.text for f in facets)
    assert all(len(f.text) <= 1000 for f in facets)
    assert all(f.num is None or math.isfinite(f.num) for f in facets)


@pytest.mark.parametrize("tags", [None, [], "Make", 3])
def test_normalize_of_something_that_is_not_an_object(tags):
    assert normalize(tags) == []


# --------------------------------------------------------------------------------------------------
# ExifExtractor with a real exiftool
# --------------------------------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[bytes, tuple]:
    """Every entry below `folder`: kind, bytes and modification time; to prove nothing was written."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(folder)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            info = os.lstat(path)
            content = Path(os.fsdecode(path)).read_bytes() if stat.S_ISREG(info.st_mode) else None
            state[path] = (stat.S_IFMT(info.st_mode), content, info.st_mtime_ns)
    state[b"."] = os.stat(folder).st_mtime_ns
    return state


def facets_of(result) -> list[Facet]:
    assert isinstance(result, list), result
    return result


@pytest.fixture
def extractor(tmp_path):
    with ExifExtractor(scratch_dir=tmp_path / "scratch") as ex:
        yield ex


@needs_exiftool
def test_extracts_what_make_photo_wrote(tmp_path, extractor):
    photo = make_photo(
        tmp_path / "photos" / "IMG_0001.jpg",
        size=(96, 64),
        make="Canon",
        model="Canon EOS 40D",
        lens="EF-S18-55mm f/3.5-5.6 IS II",
        taken="2019:07:14 19:30:05",
        iso=400,
        fnumber=5.6,
        exposure=1 / 250,
        focal=35.0,
        orientation=6,
        description="Lake at dusk",
        gps=(-33.8568, 151.2153),
    )
    plain = make_photo(tmp_path / "photos" / "plain.png")
    results = extractor.extract([os.fsencode(photo), os.fsencode(plain)])
    facets = facets_of(results[os.fsencode(photo)])
    expected = {
        "make": "Canon",
        "model": "Canon EOS 40D",
        "camera": "Canon EOS 40D",
        "lens": "EF-S18-55mm f/3.5-5.6 IS II",
        "date": "2019-07-14",
        "year": "2019",
        "month": "7",
        "hour": "19",
        "timeofday": "evening",
        "iso": "400",
        "fnumber": "5.6",
        "exposure": "1/250",
        "focal": "35",
        "width": "96",
        "height": "64",
        "orientation": "6",
        "format": "JPEG",
        "has_gps": "yes",
        "description": "Lake at dusk",
    }
    assert {key: text(facets, key) for key in expected} == expected
    assert one(facets, "lat").num == pytest.approx(-33.8568, abs=1e-4)
    assert one(facets, "lon").num == pytest.approx(151.2153, abs=1e-4)
    plain_facets = facets_of(results[os.fsencode(plain)])
    assert (text(plain_facets, "format"), text(plain_facets, "has_gps"), text(plain_facets, "camera")) == (
        "PNG",
        "no",
        None,
    )


@needs_exiftool
def test_batches_cover_every_file(tmp_path):
    paths = [os.fsencode(make_photo(tmp_path / f"p{i}.jpg", iso=100 * (i + 1))) for i in range(5)]
    with ExifExtractor(batch=2, scratch_dir=tmp_path / "scratch") as ex:
        results = ex.extract(paths)
    assert [text(facets_of(results[p]), "iso") for p in paths] == ["100", "200", "300", "400", "500"]


@needs_exiftool
def test_names_exiftool_cannot_take_go_through_a_private_symlink(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    odd_names = [b"caf\xe9.jpg", b"new\nline.jpg", "café_фото ünïcödé.jpg".encode()]
    paths = [os.path.join(os.fsencode(photos), name) for name in odd_names]
    for i, path in enumerate(paths):
        make_photo(path, make="Apple", model="iPhone 12", iso=50 + i)
    scratch = tmp_path / "private" / "scratch"
    before = snapshot(photos)
    with ExifExtractor(scratch_dir=scratch) as ex:
        results = ex.extract(paths)
        assert stat.S_IMODE(scratch.stat().st_mode) == 0o700
        assert not any(scratch.rglob("*.*")), "symlinks are removed after each call"
    for i, path in enumerate(paths):
        facets = facets_of(results[path])
        assert (text(facets, "camera"), text(facets, "iso")) == ("Apple iPhone 12", str(50 + i))
    assert snapshot(photos) == before
    assert list(scratch.iterdir()) == []  # close() removes the extractor's own folder


@needs_exiftool
def test_a_name_that_cannot_be_aliased_gets_a_reason(tmp_path):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where scratch_dir should be")
    odd = os.path.join(os.fsencode(tmp_path), b"caf\xe9.jpg")
    make_photo(odd)
    plain = os.fsencode(make_photo(tmp_path / "plain.jpg", iso=100))
    with ExifExtractor(scratch_dir=blocked) as ex:
        results = ex.extract([odd, plain])
    assert results[odd].startswith("exiftool failed: cannot alias the file name")
    assert text(facets_of(results[plain]), "iso") == "100"


@needs_exiftool
def test_empty_text_and_missing_files_never_raise(tmp_path, extractor):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    note = tmp_path / "note.png"
    note.write_text("not a picture\n")
    missing = tmp_path / "missing.jpg"
    good = make_photo(tmp_path / "good.jpg", make="Canon", model="Canon EOS 40D")
    paths = [os.fsencode(p) for p in (empty, note, missing, good)]
    results = extractor.extract(paths)
    assert texts(facets_of(results[paths[0]]), "has_gps") == ["no"]
    assert text(facets_of(results[paths[1]]), "format") == "TXT"
    assert results[paths[2]] == "exiftool failed: File not found"
    assert text(facets_of(results[paths[3]]), "camera") == "Canon EOS 40D"
    assert extractor.extract([]) == {}


@needs_exiftool
def test_source_folder_is_left_byte_identical(tmp_path):
    photos = tmp_path / "photos"
    for i in range(3):
        make_photo(photos / f"IMG_{i}.jpg", seed=i, make="NIKON CORPORATION", model="NIKON D70", gps=(48.1, 11.5))
    make_photo(os.path.join(os.fsencode(photos), b"\xff\xfe.jpg"))
    (photos / "notes.txt").write_text("hello")
    before = snapshot(photos)
    paths = sorted(os.path.join(os.fsencode(photos), name) for name in os.listdir(os.fsencode(photos)))
    with ExifExtractor(scratch_dir=tmp_path / "scratch") as ex:
        results = ex.extract(paths)
    assert all(isinstance(value, list) for value in results.values())
    assert snapshot(photos) == before


# A stand-in for exiftool. The process searchfs starts becomes the real exiftool (exec); a forked helper
# feeds it searchfs's -stay_open argument stream line by line, and when a file name carries a marker it
# stops feeding it (HANG-ME: exiftool waits forever) or kills it (CRASH-ME).
WRAPPER = """\
#!{python}
import os, signal, sys, time
read_end, write_end = os.pipe()
exiftool = os.getpid()
if os.fork() == 0:
    os.close(read_end)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # hold none of searchfs's pipes, so they close when exiftool dies
    os.dup2(devnull, 2)
    for line in sys.stdin.buffer:
        if b"HANG-ME" in line:
            while os.getppid() == exiftool:  # until exiftool is killed
                time.sleep(0.1)
            os._exit(0)
        if b"CRASH-ME" in line:
            os.kill(exiftool, signal.SIGKILL)
            os._exit(0)
        os.write(write_end, line)
    os._exit(0)
os.close(write_end)
os.dup2(read_end, 0)
os.execv({exiftool!r}, [{exiftool!r}, *sys.argv[1:]])
"""


@pytest.fixture
def flaky_exiftool(tmp_path) -> str:
    script = tmp_path / "flaky-exiftool"
    script.write_text(WRAPPER.format(python=sys.executable, exiftool=EXIFTOOL))
    script.chmod(0o755)
    return str(script)


@needs_exiftool
@pytest.mark.parametrize(
    "marker, reason",
    [("HANG-ME", "exiftool timed out after 2s"), ("CRASH-ME", "exiftool failed: it was killed by signal 9")],
)
def test_a_file_that_hangs_or_crashes_exiftool_only_loses_its_own_facets(tmp_path, flaky_exiftool, marker, reason):
    paths = [
        os.fsencode(make_photo(tmp_path / f"{name}.jpg", iso=100 + i))
        for i, name in enumerate(["a", "b", marker, "c", "d"])
    ]
    with ExifExtractor(exiftool_path=flaky_exiftool, timeout=2, batch=64, scratch_dir=tmp_path / "s") as ex:
        started = time.monotonic()
        results = ex.extract(paths)
        assert time.monotonic() - started < 20
        assert results[paths[2]] == reason
        for i in (0, 1, 3, 4):
            assert text(facets_of(results[paths[i]]), "iso") == str(100 + i)
        again = ex.extract([paths[0], paths[4]])  # a fresh exiftool took over
        assert [text(facets_of(again[p]), "iso") for p in (paths[0], paths[4])] == ["100", "104"]


@needs_exiftool
def test_exiftool_that_died_between_calls_is_restarted(tmp_path, extractor):
    path = os.fsencode(make_photo(tmp_path / "a.jpg", iso=200))
    assert text(facets_of(extractor.extract([path])[path]), "iso") == "200"
    process = extractor._tool._process  # white-box: kill the process the way an OOM killer would
    process.kill()
    process.wait()
    assert text(facets_of(extractor.extract([path])[path]), "iso") == "200"


def test_missing_exiftool_is_an_error_with_the_fix(tmp_path):
    with ExifExtractor(exiftool_path=str(tmp_path / "no-exiftool"), scratch_dir=tmp_path / "s") as ex:
        with pytest.raises(ExiftoolError) as caught:
            ex.extract([b"/x.jpg"])
    message = str(caught.value)
    assert "apt install libimage-exiftool-perl" in message and "brew install exiftool" in message
    assert "\n" not in message
    assert exiftool_version(str(tmp_path / "no-exiftool")) is None


@needs_exiftool
def test_exiftool_version():
    assert exiftool_version().replace(".", "").isdigit()


# --------------------------------------------------------------------------------------------------
# The real-photo corpus (optional): facets must equal the manifest's exiftool -j -n values
# --------------------------------------------------------------------------------------------------


def read_manifest() -> list[dict[str, str]]:
    lines = (CORPUS / "MANIFEST.tsv").read_text(encoding="utf-8").split("\n")
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line.strip()]


def manifest_date(value: str) -> str | None:
    """ "2014:03:05 05:28:09" -> "2014-03-05"; None for "0000:00:00 ..." and blanks."""
    import datetime

    try:
        return datetime.date(int(value[0:4]), int(value[5:7]), int(value[8:10])).isoformat()
    except ValueError:
        return None


def raw_tags(paths: list[Path]) -> dict[str, dict]:
    """exiftool's own -j -n output, to check the fallback tags the manifest does not list."""
    if not paths:
        return {}
    done = subprocess.run([EXIFTOOL, "-j", "-n", *map(str, paths)], capture_output=True, check=False)
    return {item["SourceFile"]: item for item in json.loads(done.stdout)}


@needs_exiftool
@pytest.mark.slow
def test_corpus_facets_match_the_manifest(tmp_path):
    if not (CORPUS / "MANIFEST.tsv").is_file():
        pytest.skip("real-photo corpus not present")
    rows = read_manifest()
    paths = [os.fsencode(CORPUS / row["path"]) for row in rows]
    with ExifExtractor(scratch_dir=tmp_path / "scratch") as ex:
        results = ex.extract(paths)
    problems, fallbacks = [], []
    for row, path in zip(rows, paths):
        facets = results[path]
        if not isinstance(facets, list):
            problems.append(f"{row['path']}: {facets}")
            continue
        for key, want in expected_from_manifest(row).items():
            got = one(facets, key)
            if not same(key, got, want):
                (fallbacks if want is None and key in ("lens", "date") else problems).append((row["path"], key, got))
    # Where the manifest's tag is blank, lens and date come from the documented fallback tags
    # (Lens/LensID, CreateDate/DateTimeCreated/DateCreated/MediaCreateDate): prove each one from exiftool.
    raw = raw_tags([CORPUS / p for p, _, _ in fallbacks])
    for relpath, key, got in fallbacks:
        if not from_fallback(key, got.text, raw[str(CORPUS / relpath)]):
            problems.append((relpath, key, got))
    assert not problems, "\n".join(map(str, problems))


def expected_from_manifest(row: dict[str, str]) -> dict[str, object]:
    """The facet each manifest column must give. Deliberate normalization choices, all documented in
    extract.py, are applied here and nowhere else:
    - text is stripped ("LEICA DG SUMMILUX 25/F1.4 " -> no trailing space);
    - a date must be a real calendar day ("0000:00:00 00:00:00" and blanks give no date);
    - ISO is the first positive value: "0 200" -> 200, and ISO 0 ("unknown" in EXIF) gives none;
    - FNumber and ExposureTime must be positive (a manual lens records FNumber 0);
    - Orientation outside 1..8 (one file says 9) gives none;
    - lat/lon only as a pair.
    Numbers are compared to 1e-8: the manifest prints exiftool's values rounded to 8 decimals.
    """

    def number(value: str, positive: bool = False) -> float | None:
        numbers = [float(v) for v in value.split()]
        numbers = [n for n in numbers if n > 0] if positive else numbers
        return numbers[0] if numbers else None

    orientation = number(row["Orientation"])
    lat, lon = number(row["GPSLatitude"]), number(row["GPSLongitude"])
    has_pair = lat is not None and lon is not None
    return {
        "make": row["Make"].strip() or None,
        "model": row["Model"].strip() or None,
        "lens": row["LensModel"].strip() or None,
        "date": manifest_date(row["DateTimeOriginal"]),
        "iso": number(row["ISO"], positive=True),
        "fnumber": number(row["FNumber"], positive=True),
        "exposure": number(row["ExposureTime"], positive=True),
        "lat": lat if has_pair else None,
        "lon": lon if has_pair else None,
        "orientation": orientation if orientation in (1, 2, 3, 4, 5, 6, 7, 8) else None,
        "has_gps": "yes" if has_pair else "no",
    }


def same(key: str, got: Facet | None, want: object) -> bool:
    if got is None or want is None:
        return got is None and want is None
    if isinstance(want, float):
        return got.num is not None and abs(got.num - want) <= 1e-8  # the manifest rounds to 8 decimals
    return got.text == want


def from_fallback(key: str, got: str, tags: dict) -> bool:
    if key == "lens":
        return not str(tags.get("LensModel", "")).strip() and got in (str(tags.get("Lens")), str(tags.get("LensID")))
    sources = [tags.get(name) for name in ("CreateDate", "DateTimeCreated", "DateCreated", "MediaCreateDate")]
    return any(isinstance(value, str) and manifest_date(value) == got for value in sources)


def test_preview_is_the_jpeg_a_raw_file_carries(tmp_path):
    from photos import jpeg_bytes, make_raw_like

    preview = jpeg_bytes((20, 200, 40), seed=3)
    raw = make_raw_like(tmp_path / "DSC_0001.NEF", preview)
    odd = make_raw_like(os.path.join(os.fsencode(tmp_path), b"caf\xe9.nef"), preview)
    plain = make_photo(tmp_path / "plain.jpg")
    with ExifExtractor(scratch_dir=tmp_path / "scratch") as extractor:
        assert extractor.preview(os.fsencode(raw)) == preview
        assert extractor.preview(os.fsencode(odd)) == preview
        assert extractor.preview(os.fsencode(plain)) is None  # no embedded preview
        assert extractor.preview(os.fsencode(tmp_path / "missing.nef")) is None
        facets = extractor.extract([os.fsencode(raw)])[os.fsencode(raw)]
    assert {(f.key, f.text) for f in facets} >= {("camera", "NIKON D850"), ("format", "NEF")}
