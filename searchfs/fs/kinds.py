"""The folder kinds of the mounted tree, as a table: for each kind, how to list it and how to look up a
child. A new top-level folder is one entry in TOP and one in FOLDERS.

Every function takes the View (for its caches and backend), the folder's Node, and for lookups the
segment as bytes plus its unescaped text.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from ..records import FACET_BY_KEY, FACETS
from ..search.filters import parse_filter
from ..search.query import Query
from . import names as N
from .nodes import DIR, FILE, Kind, Node, NoEntry, Period, Type
from .results import MANIFESTS, MAX_LIMIT, PROGRESS_NAME

if TYPE_CHECKING:
    from .view import View

log = logging.getLogger(__name__)

README_NAME = b"README.txt"
Listing = list[tuple[bytes, Type]]


@dataclass(frozen=True)
class Folder:
    """One folder kind: its listing, its child lookup, whether probe names (dot-names, desktop.ini,
    folder.jpg, ...) answer ENOENT here without a lookup (not in the mirror, where photos have real names),
    and whether a listing longer than max_entries shows `page=<N>/` folders instead (each a slice of it;
    the children still resolve in the folder itself)."""

    list: Callable[[View, Node], Listing]
    child: Callable[[View, Node, bytes, str], Node]
    probes: bool = True
    paged: bool = False


# -------------------------------------------------------------------------------------------- the root

TOP = {b"query": Kind.QUERIES, b"exif": Kind.EXIF, b"similar": Kind.SIMILAR, b"date": Kind.DATES}
# inside a result folder these narrow it (not listed there, so `cp folder/* dest/` copies only photos)
NESTED = TOP


def is_marked(node: Node) -> bool:
    """The folders that hold indexer opt-out files (.nomedia, .trackerignore): the root and the top-level
    folders. GNOME Tracker skips a folder holding one, but always crawls a folder it was told to index,
    so a marker at the root alone does not keep it out of query/, exif/ and similar/."""
    top = node.kind in TOP.values() and node.query == Query() and not node.key and node.period is None
    return node.kind is Kind.ROOT or top


def _markers(node: Node) -> Listing:
    return [(name, FILE) for name in N.INDEXER_MARKERS] if is_marked(node) else []


def _list_root(view: View, node: Node) -> Listing:
    files = [(README_NAME, FILE)] + _markers(node)
    return [(name, DIR) for name in TOP] + files


def _child_root(view: View, node: Node, seg: bytes, text: str) -> Node:
    if seg in TOP:
        return Node(TOP[seg])
    if seg == README_NAME:
        return Node(Kind.README)
    if seg in N.INDEXER_MARKERS:
        return Node(Kind.MARKER, name=seg)
    raise NoEntry(seg)


# -------------------------------------------------------------------------------------------- query/


def _list_queries(view: View, node: Node) -> Listing:
    return [(name, DIR) for name in view.query_names()] + _markers(node)


def _child_queries(view: View, node: Node, seg: bytes, text: str) -> Node:
    if node.query.ranked or not text.strip() or _has_surrogates(text):
        raise NoEntry(seg)  # one ranker per folder; words must be text (valid UTF-8)
    if text.startswith("+") and node.query == Query():
        # `query/+<text>`: the mkdir spelling; exists once <text> is saved
        saved = text[1:]
        if not saved.strip() or saved not in view.backend.saved_queries():
            raise NoEntry(seg)
        text = saved
    return view.result(replace(node.query, text=text))


# --------------------------------------------------------------------------------------------- exif/


def _list_exif(view: View, node: Node) -> Listing:
    return [(spec.key.encode(), DIR) for spec in FACETS] + _markers(node)


def _child_exif(view: View, node: Node, seg: bytes, text: str) -> Node:
    if "=" in text:
        return view.result(node.narrowed(parse_filter(text)))
    if text in FACET_BY_KEY:
        return Node(Kind.EXIF_KEY, node.query, key=text)
    raise NoEntry(seg)


def _list_exif_key(view: View, node: Node) -> Listing:
    return [(name, DIR) for name in view.value_names(node.key, counts=node.query == Query())]


def _child_exif_key(view: View, node: Node, seg: bytes, text: str) -> Node:
    key, sep, _ = text.partition("=")
    if not sep or key.strip().lower() != node.key:
        raise NoEntry(seg)
    return view.result(node.narrowed(parse_filter(text)))


# ------------------------------------------------------------------------------------------ similar/


def _list_similar(view: View, node: Node) -> Listing:
    return [(name, DIR) for name in map(N.fsencode, view.root_names()) if _plain_name(name)] + _markers(node)


def _child_similar(view: View, node: Node, seg: bytes, text: str) -> Node:
    name = N.fsdecode(seg)
    if name not in view.root_names():
        raise NoEntry(seg)
    return Node(Kind.TREE, node.query, root=name)


def _list_tree(view: View, node: Node) -> Listing:
    # photos are folders too: each one holds the photos most like it
    return [(name, DIR) for name, _is_dir in view.tree(node.root, node.relpath)]


def _child_tree(view: View, node: Node, seg: bytes, text: str) -> Node:
    is_dir = view.tree_map(node.root, node.relpath).get(seg)
    if is_dir is None:
        raise NoEntry(seg)
    relpath = node.relpath + b"/" + seg if node.relpath else seg
    if is_dir:
        return replace(node, relpath=relpath)
    if node.query.ranked:
        raise NoEntry(seg)  # a folder ranks by one thing only
    return view.result(replace(node.query, similar_to=(node.root, relpath)))


# --------------------------------------------------------------------------------------------- date/


def _list_dates(view: View, node: Node) -> Listing:
    # The years present, as exif/year/ knows them (cached per generation): listing date/ must stay cheap,
    # a desktop indexer lists it only to find the opt-out marker in it.
    years = sorted({int(float(value)) for value, _ in view.backend.facet_values("year")})
    return [(f"{year:04d}".encode(), DIR) for year in years] + _markers(node)


def _child_dates(view: View, node: Node, seg: bytes, text: str) -> Node:
    if len(seg) != 4 or not seg.isdigit():
        raise NoEntry(seg)
    return Node(Kind.YEAR, node.query, period=Period(int(seg)))


def _list_year(view: View, node: Node) -> Listing:
    year = Query(filters=(parse_filter(f"date={node.period.year:04d}"),))  # type: ignore[union-attr]
    return [(period[-2:].encode(), DIR) for period, _ in view.periods(year, 7) if period]


def _child_year(view: View, node: Node, seg: bytes, text: str) -> Node:
    year = node.period.year  # type: ignore[union-attr]
    if not seg.isdigit() or len(seg) > 2 or not 1 <= int(seg) <= 12:
        raise NoEntry(seg)
    return view.result(node.query, period=Period(year, int(seg)))


# ------------------------------------------------------------------------------------- result folders


def _list_result(view: View, node: Node) -> Listing:
    shown = view.shown(node)
    if node.query.text is not None and not node.page:
        view.remember(node.query.text)
    items: Listing = [(name, view.entry_type) for name in shown.names]
    items += [(name, DIR) for name, _ in shown.folders]
    items += [(name, FILE) for name in MANIFESTS]
    if node.query.ranked and view.indexing_line():
        items.append((PROGRESS_NAME, FILE))
    return items


def _child_result(view: View, node: Node, seg: bytes, text: str) -> Node:
    if seg in MANIFESTS:
        return Node(Kind.MANIFEST, node.query, name=seg, period=node.period, page=node.page)
    if seg == PROGRESS_NAME and node.query.ranked:
        if not view.indexing_line():
            raise NoEntry(seg)
        return Node(Kind.PROGRESS)
    if N.is_probe(seg):
        raise NoEntry(seg)
    if N.looks_like_entry(seg):
        return Node(Kind.ENTRY, node.query, name=seg, period=node.period, page=node.page)
    if node.page:
        raise NoEntry(seg)  # a page holds its entries only
    period = view.results.child_period(node, seg)
    if period is not None:
        return period
    key, sep, value = text.partition("=")
    key = key.strip().lower()
    if sep and key == "page":
        number = _number(seg, value, int)
        if number < 1:
            raise NoEntry(seg)
        return replace(node, page=number)
    if node.period is not None and node.period.undated:
        raise NoEntry(seg)  # nothing else can narrow undated/: no filter says "no date"
    query = node.query if node.period is None else node.narrowed(parse_filter(f"date={node.period.word()}"))
    if seg in NESTED:
        return Node(NESTED[seg], query)
    if not sep:
        raise NoEntry(seg)
    return _narrow_result(view, query, seg, text, key, value)


def _narrow_result(view: View, query: Query, seg: bytes, text: str, key: str, value: str) -> Node:
    """`limit=N`, `min=S` or `<key>=<value>` inside a result folder."""
    if key == "limit":
        limit = _number(seg, value, int)
        if limit > MAX_LIMIT:
            log.info("%r names nothing: the largest limit is %d", text, MAX_LIMIT)
        if not 1 <= limit <= MAX_LIMIT:
            raise NoEntry(seg)
        return view.result(replace(query, limit=limit))
    if key in ("min", "min_score"):
        score = _number(seg, value, float)
        if not -1.0 <= score <= 1.0:
            raise NoEntry(seg)
        return view.result(replace(query, min_score=score))
    if key in FACET_BY_KEY:
        return view.result(Node(Kind.RESULT, query).narrowed(parse_filter(text)))
    raise NoEntry(seg)


def _number(seg: bytes, value: str, kind: type):
    try:
        return kind(value.strip())
    except ValueError:
        raise NoEntry(seg) from None


FOLDERS: dict[Kind, Folder] = {
    Kind.ROOT: Folder(_list_root, _child_root),
    Kind.QUERIES: Folder(_list_queries, _child_queries),
    Kind.EXIF: Folder(_list_exif, _child_exif),
    Kind.EXIF_KEY: Folder(_list_exif_key, _child_exif_key, paged=True),
    Kind.SIMILAR: Folder(_list_similar, _child_similar),
    Kind.TREE: Folder(_list_tree, _child_tree, probes=False, paged=True),
    Kind.DATES: Folder(_list_dates, _child_dates),
    Kind.YEAR: Folder(_list_year, _child_year),
    Kind.RESULT: Folder(_list_result, _child_result),
}


def _has_surrogates(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def _plain_name(name: bytes) -> bool:
    return bool(name) and b"/" not in name and name not in (b".", b"..") and len(name) <= N.NAME_MAX
