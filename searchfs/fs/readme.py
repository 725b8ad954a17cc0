"""The mount's README.txt: the grammar, short, for a person who opened the folder."""

from __future__ import annotations

_HEAD = """searchfs: search your photos from any file manager, shell or script.

Every folder here is a search; it runs when you open (list) it.

  query/<text>/                 photos most like the words, e.g. query/dog on a beach/
  exif/                         metadata keys; exif/camera/ lists the cameras
  exif/<key>=<value>/           photos by metadata, e.g. exif/camera=Canon/  exif/year=2019..2021/
  date/<year>/<month>/          photos taken that month, e.g. date/2019/05/
  similar/<root>/<path>/        your folders; every photo there is a folder of the photos like it

Narrow any result folder by adding more segments (all must hold):
  query/dog/year=2020/                 exif/camera=Canon/query/dog/
  query/dog/exif/lens=f∕2.8/           similar/Photos/2019/a.jpg/exif/year=2020/
  query/dog/limit=200/                 query/dog/min=0.25/       query/dog/date/2020/07/

A folder shows at most {max_entries} entries. A bigger one shows folders instead: by date
(2019/, 2020/, ..., undated/; then months and days) or, for ranked results and limit=N,
page=1/, page=2/, ... (ranks go on across pages; long exif/<key>/ and similar/ folders
page too). Its .results.tsv and .results.json always list every match of the folder
(rank, score, path): scripts should read those.

"""

_LINKS = """Result entries are symlinks named <rank>_<original name>, best first, pointing at your
original photos. Writing to an entry writes to the original photo: searchfs itself is
read-only, but a symlink leads out of it. To copy the photos, not the links, follow them:
  cp -L query/dog/* ~/Pictures/dogs/        (cp -rL for a whole folder)
A file manager's copy of a result folder copies the links; mount with
[mount] entries = "files" to get read-only files that copy as photos.
"""

_FILES = """Result entries are read-only files named <rank>_<original name>, best first: reading one
reads your original photo; nothing here can write to it. Copy them like any files.
"""

_TAIL = """A "/" in a value is written "∕" (or %2F).
`mkdir query/+<text>` keeps <text> in query/ (plain `mkdir query/<text>` says "File exists":
every query folder exists already); `rmdir query/<text>` forgets it. All else is read-only.
"""


def readme_text(max_entries: int, files_mode: bool) -> str:
    return _HEAD.format(max_entries=max_entries) + (_FILES if files_mode else _LINKS) + _TAIL
