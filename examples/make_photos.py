"""Draw the bundled example library: simple scenes with real EXIF, so nothing third-party is shipped.

python3 examples/make_photos.py examples/photos
"""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageDraw

EXIF_IFD, GPS_IFD = 0x8769, 0x8825


def sky(draw, size, top, bottom):
    w, h = size
    for y in range(h):
        t = y / h
        draw.line([(0, y), (w, y)], fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom)))


def red_flower(img, draw):
    w, h = img.size
    draw.rectangle([0, 0, w, h], fill=(90, 150, 70))
    draw.line([(w // 2, h // 2), (w // 2, h)], fill=(30, 110, 30), width=10)
    for dx, dy in ((-40, 0), (40, 0), (0, -40), (0, 40), (-28, -28), (28, 28), (-28, 28), (28, -28)):
        draw.ellipse([w // 2 + dx - 30, h // 2 + dy - 30, w // 2 + dx + 30, h // 2 + dy + 30], fill=(210, 20, 40))
    draw.ellipse([w // 2 - 18, h // 2 - 18, w // 2 + 18, h // 2 + 18], fill=(250, 210, 40))


def sunset_beach(img, draw):
    w, h = img.size
    sky(draw, (w, h * 2 // 3), (250, 120, 40), (250, 200, 120))
    draw.ellipse([w // 2 - 50, h * 2 // 3 - 60, w // 2 + 50, h * 2 // 3 + 40], fill=(255, 230, 120))
    draw.rectangle([0, h * 2 // 3, w, h * 5 // 6], fill=(40, 70, 130))
    draw.rectangle([0, h * 5 // 6, w, h], fill=(230, 200, 150))


def snowy_mountain(img, draw):
    w, h = img.size
    sky(draw, (w, h), (60, 120, 220), (180, 210, 250))
    draw.polygon([(0, h), (w // 2, h // 5), (w, h)], fill=(110, 110, 120))
    draw.polygon([(w // 2 - 60, h // 5 + 80), (w // 2, h // 5), (w // 2 + 60, h // 5 + 80)], fill=(250, 250, 255))


def green_forest(img, draw):
    w, h = img.size
    draw.rectangle([0, 0, w, h], fill=(150, 200, 240))
    draw.rectangle([0, h * 3 // 4, w, h], fill=(60, 120, 40))
    for x in range(0, w, 60):
        draw.polygon([(x, h * 3 // 4), (x + 30, h // 4), (x + 60, h * 3 // 4)], fill=(20, 90, 30))


def night_city(img, draw):
    w, h = img.size
    draw.rectangle([0, 0, w, h], fill=(10, 10, 40))
    for i, x in enumerate(range(10, w, 70)):
        top = h // 3 + (i * 37) % (h // 3)
        draw.rectangle([x, top, x + 50, h], fill=(30, 30, 50))
        for y in range(top + 10, h - 10, 20):
            draw.rectangle([x + 10, y, x + 18, y + 8], fill=(250, 220, 120))


SCENES = [
    ("garden/red_flower.jpg", red_flower, "Canon", "Canon EOS 40D", "2019:05:04 10:12:00", (48.8566, 2.3522)),
    ("garden/red_flower_2.jpg", red_flower, "Apple", "iPhone 12", "2021:06:11 16:40:00", None),
    (
        "holidays/sunset_beach.jpg",
        sunset_beach,
        "NIKON CORPORATION",
        "NIKON D70",
        "2020:08:15 20:31:00",
        (43.2965, 5.3698),
    ),
    ("holidays/snowy_mountain.jpg", snowy_mountain, "Canon", "Canon EOS 40D", "2020:02:02 11:05:00", (45.8326, 6.8652)),
    ("holidays/green_forest.jpg", green_forest, "Apple", "iPhone 12", "2021:09:30 09:15:00", None),
    ("city/night_city.jpg", night_city, "NIKON CORPORATION", "NIKON D70", "2018:12:24 23:02:00", (51.5072, -0.1276)),
]


def exif_for(make, model, taken, gps):
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = make, model
    sub = exif.get_ifd(EXIF_IFD)
    sub[0x9003] = taken
    sub[0x8827] = 200
    sub[0x829D] = 4.0
    sub[0x829A] = 1 / 250
    if gps:
        lat, lon = gps
        exif.get_ifd(GPS_IFD).update(
            {1: "N" if lat >= 0 else "S", 2: _dms(abs(lat)), 3: "E" if lon >= 0 else "W", 4: _dms(abs(lon))}
        )
    return exif


def _dms(value):
    d = int(value)
    m = int((value - d) * 60)
    return (float(d), float(m), round(((value - d) * 60 - m) * 60, 3))


def main(target: Path) -> None:
    for relpath, draw_scene, make, model, taken, gps in SCENES:
        path = target / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        img = Image.new("RGB", (640, 480))
        draw_scene(img, ImageDraw.Draw(img))
        img.save(path, "JPEG", quality=88, exif=exif_for(make, model, taken, gps).tobytes())
    print(f"wrote {len(SCENES)} example photos under {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "examples/photos"))
