import pytest

from searchfs.errors import QueryError
from searchfs.search.filters import Filter, parse_filter
from searchfs.search.query import Query


@pytest.mark.parametrize(
    "word, expected",
    [
        ("camera=Canon", Filter("camera", "match", value="Canon")),
        ("Camera = canon eos", Filter("camera", "match", value="canon eos")),
        ("iso=100", Filter("iso", "eq", value=100.0)),
        ("exposure=1/250", Filter("exposure", "eq", value=0.004)),
        ("iso=100..400", Filter("iso", "range", lo=100.0, hi=400.0)),
        ("fnumber=..2.8", Filter("fnumber", "range", lo=None, hi=2.8)),
        ("year=2019..2021", Filter("year", "range", lo=2019.0, hi=2021.0)),
        ("date=2019", Filter("date", "range", lo="2019-01-01", hi="2019-12-31")),
        ("date=2020-02", Filter("date", "range", lo="2020-02-01", hi="2020-02-29")),
        ("date=2019-05-01..2019-06", Filter("date", "range", lo="2019-05-01", hi="2019-06-30")),
        ("has_gps=YES", Filter("has_gps", "eq", value="yes")),
        ("format=jpeg", Filter("format", "eq", value="jpeg")),
        ("lens=EF 50mm f/1.8", Filter("lens", "match", value="EF 50mm f/1.8")),
        ("text=beach", Filter("text", "match", value="beach")),
    ],
)
def test_parse_filter(word, expected):
    assert parse_filter(word) == expected


@pytest.mark.parametrize(
    "word, message",
    [
        ("camera", "not key=value"),
        ("colour=red", "unknown metadata key"),
        ("iso=lots", "not a number"),
        ("date=May", "not a date"),
        ("date=2019-13", "month"),
        ("date=2019-02-30", "does not exist"),
        ("iso=..", "at least one end"),
        ("has_gps=maybe", "yes or no"),
        ("camera=", "no value"),
    ],
)
def test_bad_filters_say_why(word, message):
    with pytest.raises(QueryError, match=message):
        parse_filter(word)


def test_filter_str_round_trips():
    for word in ("iso=100..400", "year=2019..2021", "camera=Canon", "fnumber=..2.8"):
        assert str(parse_filter(word)) == word


def test_query_checks_its_fields():
    with pytest.raises(QueryError):
        Query(text="a", image=b"/x.jpg")
    with pytest.raises(QueryError):
        Query(text="  ")
    with pytest.raises(QueryError):
        Query(text="a", limit=0)
    with pytest.raises(QueryError):
        Query(text="a", min_score=2)
    assert Query.build(["iso=100"], text="dog").filters[0].key == "iso"
