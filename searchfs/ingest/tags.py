"""exiftool's tags -> facets (the `exif/<key>/` vocabulary of records.FACETS): pure, no exiftool process.

The tags are one object of `exiftool -j -n FILE` (numbers as numbers, flat names without `-G` group
prefixes), as extract.py reads them.

How tags become facets (`normalize`):

- make, model: `Make`, `Model`, surrounding whitespace removed, otherwise as written.
- camera: make and model without repetition. When the model already starts with a word of the make it
  is used alone ("Canon" + "Canon EOS 40D" -> "Canon EOS 40D", "NIKON CORPORATION" + "NIKON D70" ->
  "NIKON D70"); otherwise the make comes first, with legal-form words such as CORPORATION, CO.,LTD,
  Inc. or OPTICAL dropped ("Apple" + "iPhone 12" -> "Apple iPhone 12", "OLYMPUS OPTICAL CO.,LTD" +
  "C2040Z" -> "OLYMPUS C2040Z"). Only one of them -> that one.
- lens: `LensModel`, else `Lens`, else `LensID`. Under `-n` the last two are often bare numbers
  ("18", "18 55 3.5 5.6") or raw lens-ID bytes ("63 48 2B 44 24 24 68 02"); those are not names and
  are skipped.
- date: "YYYY-MM-DD" from the first of `DateTimeOriginal`, `CreateDate`, `DateTimeCreated`,
  `DateCreated`, `MediaCreateDate` that holds a real calendar day. "0000:00:00 ...", blank and
  unparseable values are skipped (the next tag is tried); 1901 and future dates are kept. The clock
  time is taken as written (camera local time); a time-zone suffix is ignored. Dates without a day
  ("2015", "2015:06") are ignored. `date` has num = None; `year`, `month`, `hour` are numbers.
- timeofday: night (0-5h), morning (6-11h), afternoon (12-17h), evening (18-23h); only when the date
  carries a time.
- iso: `ISO`. Several values ("0 200", or a list) -> the first positive one. ISO 0 means "unknown" in
  EXIF and is skipped.
- fnumber, exposure (seconds), focal (mm): `FNumber`, `ExposureTime`, `FocalLength`; only positive
  values (an f-number of 0 is what a manual lens reports).
- width, height: `ImageWidth`/`ImageHeight`, else `ImageSize` ("W H"), else `ExifImageWidth`/
  `ExifImageHeight`; positive whole numbers only.
- orientation: `Orientation`, 1..8 only.
- format: `FileType` as exiftool names it (JPEG, PNG, HEIC, "Extended WEBP", TXT, ...).
- lat, lon: `GPSLatitude`/`GPSLongitude` (signed degrees under `-n`), kept only as a pair of numbers
  within range. 0,0 is kept: it is a real place and a real (if suspicious) recording.
  has_gps: "yes" when lat/lon are present, "no" otherwise; always present.
- keyword: one facet per value of `Keywords` and `Subject` (a list or a single string), de-duplicated
  ignoring case, first spelling kept. A string with commas is one keyword: it is not split.
- title: `Title`, `ObjectName`; description: `ImageDescription`, `Description`, `Caption-Abstract`.
  Each distinct value (ignoring case) gives a facet. Blank values and camera boilerplate are skipped:
  "OLYMPUS DIGITAL CAMERA", "SONY DSC", "<Digimax i50 MP3, ...>", a bare file number such as
  "DSC00019" or "000015", a lone generic word ("image", "untitled"), or text equal to the make, model
  or camera.

Display text: numbers are written without a trailing ".0" (ISO "100", f-number "2.8") and without an
exponent ("0.000125"); exposures shorter than a quarter second as exiftool prints them ("1/250"); see
`records.display_number`. Text values are stripped of whitespace and NUL padding and cut
at 1000 characters. Odd values (a string where a number belongs, a list, "(Binary data ...)",
"base64:...") skip that field only; `normalize` never raises.

Files exiftool can open but not parse (an empty file, a text file, a truncated JPEG) still get facets
(at least has_gps, usually format). A reason string instead of facets means exiftool itself gave no
answer for the file: not found, timed out, or exiftool crashed on it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Any

from searchfs.records import Facet, display_number, format_number

# The version of what `normalize` makes of exiftool's tags. Bump it when it changes (a new facet, a
# fixed rule): contents read by an older version are read again, lazily and without re-embedding
# (Indexer.process), so the change reaches existing libraries.
EXTRACTOR_VERSION = 1

MAX_TEXT = 1000

# ---------------------------------------------------------------------------------------------------
# normalize: one exiftool -j -n object -> facets
# ---------------------------------------------------------------------------------------------------


def normalize(tags: dict) -> list[Facet]:
    """Turn one `exiftool -j -n` object into facets. Pure; never raises."""
    if not isinstance(tags, dict):
        return []
    facets: list[Facet] = []
    for part in (_camera_facets, _lens_facets, _date_facets, _shot_facets, _image_facets, _gps_facets, _text_facets):
        try:
            facets.extend(part(tags))
        except Exception:  # noqa: BLE001 - a tag shape nobody foresaw costs that group of facets, not the whole file
            continue
    return facets


def _number(value: Any) -> float | None:
    """A finite number from an int, float or numeric string; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def _numbers(value: Any) -> list[float]:
    """All numbers of a value that may be a list or a space-separated string ("0 200")."""
    items = value if isinstance(value, list) else value.split() if isinstance(value, str) else [value]
    return [n for n in map(_number, items) if n is not None]


def _num_facet(key: str, value: float) -> Facet:
    return Facet(key, display_number(key, value), float(value))


def _positive(tags: dict, key: str, name: str) -> list[Facet]:
    value = _number(tags.get(name))
    return [_num_facet(key, value)] if value is not None and value > 0 else []


def _text(value: Any) -> str | None:
    """A display string from a string or number; None for blanks, lists and binary markers."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = _number(value)
        return format_number(number) if number is not None else None
    if not isinstance(value, str):
        return None
    text = value.replace("\x00", " ").strip()
    if not text or text.startswith(("(Binary data", "base64:")):
        return None
    return text[:MAX_TEXT]


# --- camera ---

# Trailing words of a maker's name that only say what kind of company it is.
_COMPANY_WORDS = {
    "co",
    "co.",
    "corp",
    "corp.",
    "corporation",
    "company",
    "ltd",
    "ltd.",
    "limited",
    "inc",
    "inc.",
    "ab",
    "ag",
    "gmbh",
    "llc",
    "plc",
    "optical",
    "imaging",
    "electric",
    "computer",
}


def _camera_facets(tags: dict) -> list[Facet]:
    make, model = _text(tags.get("Make")), _text(tags.get("Model"))
    facets = [Facet(key, value) for key, value in (("make", make), ("model", model)) if value]
    camera = camera_name(make, model)
    return facets + ([Facet("camera", camera)] if camera else [])


def camera_name(make: str | None, model: str | None) -> str | None:
    """Make and model without repetition; see the module docstring."""
    if not make or not model:
        return model or make
    words = [w for w in re.split(r"[\s,]+", make) if w]
    if any(_starts_with_word(model, word) for word in words if word.lower() not in _COMPANY_WORDS):
        return model
    while len(words) > 1 and words[-1].lower() in _COMPANY_WORDS:
        words.pop()
    return f"{' '.join(words).rstrip('.,')} {model}"


def _starts_with_word(text: str, word: str) -> bool:
    """True when `text` begins with `word` as a whole word ("HTC_TyTN_II" begins with "HTC")."""
    word = word.rstrip(".,")
    if not word or not text.casefold().startswith(word.casefold()):
        return False
    rest = text[len(word) :]
    return not rest or not rest[0].isalnum()


# --- lens ---

_NOT_A_LENS_NAME = re.compile(r"[\d\s.+-]*|([0-9A-F]{2}\s+){3,}[0-9A-F]{2}")  # "18 55 3.5 5.6", ID bytes


def _lens_facets(tags: dict) -> list[Facet]:
    for name in ("LensModel", "Lens", "LensID"):
        text = _text(tags.get(name))
        if text and not (name != "LensModel" and _NOT_A_LENS_NAME.fullmatch(text)) and text != "----":
            return [Facet("lens", text)]
    return []


# --- date ---

_DATE_TAGS = ("DateTimeOriginal", "CreateDate", "DateTimeCreated", "DateCreated", "MediaCreateDate")
_DATE = re.compile(r"\s*(\d{4})[:\-](\d{2})[:\-](\d{2})(?:[ T](\d{2}):(\d{2}))?")


def _date_facets(tags: dict) -> list[Facet]:
    for name in _DATE_TAGS:
        parsed = parse_date(tags.get(name))
        if parsed:
            day, hour = parsed
            facets = [Facet("date", day.isoformat()), _num_facet("year", day.year), _num_facet("month", day.month)]
            if hour is not None:
                facets += [_num_facet("hour", hour), Facet("timeofday", time_of_day(hour))]
            return facets
    return []


def parse_date(value: Any) -> tuple[dt.date, int | None] | None:
    """(day, hour or None) from an exiftool date such as "2014:03:05 05:28:09+02:00"; None if not a day."""
    match = _DATE.match(value) if isinstance(value, str) else None
    if not match:
        return None
    year, month, day, hour, minute = match.groups()
    try:
        date = dt.date(int(year), int(month), int(day))  # rejects 0000:00:00 and 2019:02:30
    except ValueError:
        return None
    valid_time = hour is not None and int(hour) < 24 and int(minute) < 60
    return date, int(hour) if valid_time else None


def time_of_day(hour: int) -> str:
    return ("night", "morning", "afternoon", "evening")[hour // 6]


# --- exposure, image, gps ---


def _shot_facets(tags: dict) -> list[Facet]:
    isos = [n for n in _numbers(tags.get("ISO")) if n > 0]
    facets = [_num_facet("iso", isos[0])] if isos else []
    facets += _positive(tags, "fnumber", "FNumber")
    facets += _positive(tags, "exposure", "ExposureTime")
    return facets + _positive(tags, "focal", "FocalLength")


def _image_facets(tags: dict) -> list[Facet]:
    width, height = _dimensions(tags)
    facets = [_num_facet("width", width), _num_facet("height", height)] if width and height else []
    orientation = _number(tags.get("Orientation"))
    if orientation in (1, 2, 3, 4, 5, 6, 7, 8):
        facets.append(_num_facet("orientation", orientation))
    file_type = _text(tags.get("FileType"))
    return facets + ([Facet("format", file_type)] if file_type else [])


def _dimensions(tags: dict) -> tuple[float | None, float | None]:
    size = _numbers(tags.get("ImageSize")) if isinstance(tags.get("ImageSize"), str) else []
    candidates = [
        (_number(tags.get("ImageWidth")), _number(tags.get("ImageHeight"))),
        tuple(size) if len(size) == 2 else (None, None),
        (_number(tags.get("ExifImageWidth")), _number(tags.get("ExifImageHeight"))),
    ]
    for width, height in candidates:
        if width and height and width > 0 and height > 0 and width == int(width) and height == int(height):
            return width, height
    return None, None


def _gps_facets(tags: dict) -> list[Facet]:
    lat, lon = _number(tags.get("GPSLatitude")), _number(tags.get("GPSLongitude"))
    if lat is None or lon is None or abs(lat) > 90 or abs(lon) > 180:
        return [Facet("has_gps", "no")]
    return [_num_facet("lat", lat), _num_facet("lon", lon), Facet("has_gps", "yes")]


# --- keywords, title, description ---

_BOILERPLATE = re.compile(
    r"[\w .,-]*\b(digital( still)? camera|dsc)"  # OLYMPUS DIGITAL CAMERA, KODAK Digital Still Camera, SONY DSC
    r"|<.*>"  # Samsung: "<Digimax i50 MP3, Samsung #1 MP3>"
    r"|[A-Z_]{0,5}\d+"  # a file number: DSC00019, 000015
    r"|exif_jpeg_picture|default|untitled|image|picture|photo|camera",
    re.IGNORECASE,
)


def _text_facets(tags: dict) -> list[Facet]:
    keywords = _distinct(_values(tags.get("Keywords")) + _values(tags.get("Subject")))
    titles = _distinct(_values(tags.get("Title")) + _values(tags.get("ObjectName")))
    camera_words = {(_text(tags.get(name)) or "").casefold() for name in ("Make", "Model")}
    camera_words.add((camera_name(_text(tags.get("Make")), _text(tags.get("Model"))) or "").casefold())
    descriptions = [
        text
        for text in _distinct(
            sum((_values(tags.get(name)) for name in ("ImageDescription", "Description", "Caption-Abstract")), [])
        )
        if not _BOILERPLATE.fullmatch(text) and text.casefold() not in camera_words
    ]
    return (
        [Facet("keyword", k) for k in keywords]
        + [Facet("title", t) for t in titles]
        + [Facet("description", d) for d in descriptions]
    )


def _values(value: Any) -> list[str]:
    items = value if isinstance(value, list) else [value]
    return [text for text in map(_text, items) if text]


def _distinct(values: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for value in values:
        seen.setdefault(value.casefold(), value)
    return list(seen.values())
