"""cli_quick.parse on literal argv lists: what the fast path takes (as click would read it) and everything
it hands to the full CLI. Its answers through a real daemon are in test_service.py."""

from __future__ import annotations

import pytest

from searchfs.cli_quick import parse


def taken(argv: list[str]) -> dict:
    found = parse(argv)
    assert found is not None, argv
    return found


def test_a_plain_text_search_with_every_option_form():
    found = taken(["-L", "work", "search", "red flower", "-n", "5", "--min=0.2", "-w", "year=2019", "--json"])
    assert found["library"] == "work" and found["query"] == "red flower"
    assert (found["limit"], found["min_score"], found["where"]) == (5, 0.2, ["year=2019"])
    assert found["as_json"] and not found["null"] and not found["force_text"]
    found = taken(["--library=home", "--config", "/c.toml", "search", "--limit=3", "dog", "--where=camera=Canon"])
    assert (found["library"], found["config"], found["query"], found["limit"]) == ("home", "/c.toml", "dog", 3)
    assert found["where"] == ["camera=Canon"]  # only the first '=' splits an option from its value


def test_options_repeat_as_click_reads_them():
    found = taken(["search", "x", "-n", "5", "--limit", "7", "-w", "a=1", "--where", "b=2", "-0"])
    assert found["limit"] == 7 and found["where"] == ["a=1", "b=2"] and found["null"]
    assert taken(["search", "x", "-n", "-5"])["limit"] == -5  # a value is the next word, whatever it is


def test_metadata_only_and_text_that_looks_like_a_file():
    assert taken(["search", "-w", "has_gps=yes"])["query"] is None
    assert taken(["search", "holiday/IMG_1.jpg", "--text"])["query"] == "holiday/IMG_1.jpg"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["index", "~/Pictures"],
        ["-v", "search", "x"],  # -v: the full CLI logs who answered
        ["search"],  # a usage error is the full CLI's to say
        ["search", "a", "b"],
        ["search", "x", "-n"],
        ["search", "x", "-n", "many"],
        ["search", "x", "--min", "high"],
        ["search", "x", "-n5"],  # click's glued short form: left to click
        ["search", "x", "--limit"],
        ["search", "x", "--"],
        ["search", "-", "-n", "1"],
        ["search", "x", "--help"],
        ["search", "x", "--image"],
        ["search", "x", "--verbose"],
        ["search", "holiday/IMG_1.jpg"],  # an image, or a typo cli.py reports
        ["search", "IMG_1.jpg"],
        ["search", "x", "--json=yes"],
        ["--library", "search", "x"],  # 'search' is the library's name: no command follows
        ["-L"],
    ],
)
def test_everything_else_is_the_full_clis(argv):
    assert parse(argv) is None


def test_an_existing_file_is_an_image_query(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sunset").write_bytes(b"\xff\xd8\xff")
    assert parse(["search", "sunset"]) is None
    assert taken(["search", "sunset", "--text"])["query"] == "sunset"
    assert taken(["search", "sunrise"])["query"] == "sunrise"
