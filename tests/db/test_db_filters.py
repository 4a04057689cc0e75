"""The filter language: every form, typing, AND semantics, dates, aliases, unknown columns."""

from __future__ import annotations

import pytest

from agir.errors import AgirError


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (["state=NC"], ["NC_1_0", "NC_1_1", "NC_2_0"]),
        (["category_common_name=wheat,rye"], ["NC_1_1", "NC_2_0"]),
        (["category_common_name = wheat , rye"], ["NC_1_1", "NC_2_0"]),
        # != keeps rows whose value is NULL (MD_1_0 has no state): NULL is "not NC"
        (["state!=NC"], ["MD_1_0", "TX_1_0", "TX_1_1"]),
        (["state<>NC"], ["MD_1_0", "TX_1_0", "TX_1_1"]),
        (["state!=NC,TX"], ["MD_1_0"]),
        (["estimated_bbox_area_cm2>=150"], ["MD_1_0", "NC_1_1", "NC_2_0", "TX_1_0"]),
        (["estimated_bbox_area_cm2>150"], ["MD_1_0", "NC_2_0", "TX_1_0"]),
        (["estimated_bbox_area_cm2<99.5"], ["NC_1_0"]),
        (["estimated_bbox_area_cm2<=99.5"], ["NC_1_0", "TX_1_1"]),
        (["estimated_bbox_area_cm2==700"], ["NC_2_0"]),
        (["estimated_bbox_area_cm2 between 99.5 and 250"], ["MD_1_0", "NC_1_1", "TX_1_1"]),
        (["estimated_bbox_area_cm2 BETWEEN 99.5 AND 250"], ["MD_1_0", "NC_1_1", "TX_1_1"]),
        (["state is null"], ["MD_1_0"]),
        (["state IS NOT NULL", "category_common_name=barley"], ["NC_1_0", "TX_1_0"]),
        (["mask_path is null"], ["NC_2_0"]),
        # JSON objects: scalar, list (any of), null, operator objects
        (['{"state": "NC", "category_common_name": ["barley", "rye"]}'], ["NC_1_0", "NC_2_0"]),
        ([{"state": None}], ["MD_1_0"]),
        (['{"estimated_bbox_area_cm2": {">=": 700, "<": 1500}}'], ["NC_2_0"]),
        (['{"estimated_bbox_area_cm2": {"between": [50, 99.5]}}'], ["NC_1_0", "TX_1_1"]),
        (['{"state": {"!=": "NC"}}'], ["MD_1_0", "TX_1_0", "TX_1_1"]),
        # different filters AND together
        (["state=NC", "estimated_bbox_area_cm2>100"], ["NC_1_1", "NC_2_0"]),
        # the same column twice ANDs too (a range; a contradiction matches nothing)
        (["estimated_bbox_area_cm2>=99", "estimated_bbox_area_cm2<=150"], ["NC_1_1", "TX_1_1"]),
        (["state=NC", "state=TX"], []),
        ('state=TX', ["TX_1_0", "TX_1_1"]),  # a single string is one filter
    ],
)
def test_filter_forms(tiny_db, query_ids, filters, expected):
    assert query_ids(tiny_db, filters=filters) == expected


def test_has_masks_zero_selects_rows_without_masks(tiny_db, query_ids):
    assert query_ids(tiny_db, filters=["has_masks=0"]) == ["NC_2_0", "TX_1_1"]
    assert query_ids(tiny_db, filters=["has_masks=1"]) == ["MD_1_0", "NC_1_0", "NC_1_1", "TX_1_0"]
    assert query_ids(tiny_db, filters=["has_masks=false"]) == ["NC_2_0", "TX_1_1"]
    assert query_ids(tiny_db, filters=[{"has_masks": 0}]) == ["NC_2_0", "TX_1_1"]


def test_values_are_typed_by_column(tiny_db, query_ids):
    # text column: 007 stays text and does not equal 7; numeric column: 1.5e3 is a number
    assert query_ids(tiny_db, filters=["code=007"]) == ["NC_1_0"]
    assert query_ids(tiny_db, filters=["code=7"]) == ["NC_1_1"]
    # text compares as text: '12' < '3' < '7' < '8'
    assert query_ids(tiny_db, filters=["code<3"]) == ["NC_1_0", "NC_2_0"]
    assert query_ids(tiny_db, filters=["estimated_bbox_area_cm2=1.5e3"]) == ["TX_1_0"]
    # a quoted value is text and keeps its commas
    assert query_ids(tiny_db, filters=['notes="a, b"']) == ["NC_1_0"]
    assert query_ids(tiny_db, filters=["notes='a, b',x"]) == ["NC_1_0", "NC_2_0"]
    with pytest.raises(AgirError, match=r"numeric.*'abc' is not a number"):
        query_ids(tiny_db, filters=["estimated_bbox_area_cm2>abc"])
    # quoted on a numeric column: compared as text
    assert query_ids(tiny_db, filters=['estimated_bbox_area_cm2="700.0"']) == ["NC_2_0"]


@pytest.mark.parametrize("expr", ["state==", "state=", "state!=", "state=NC,", "state=NC,,TX", "estimated_bbox_area_cm2>="])
def test_a_missing_value_is_an_error(tiny_db, query_ids, expr):
    with pytest.raises(AgirError, match=r"a value is missing after .*quote an empty text.*is null") as err:
        query_ids(tiny_db, filters=[expr])
    assert "\n" not in str(err.value)


def test_an_empty_text_is_asked_for_with_quotes(tiny_db, query_ids):
    assert query_ids(tiny_db, filters=['state=""']) == []
    assert query_ids(tiny_db, filters=['state!=""']) == ["MD_1_0", "NC_1_0", "NC_1_1", "NC_2_0", "TX_1_0", "TX_1_1"]


def test_area_bin_alias(tiny_db, query_ids):
    assert query_ids(tiny_db, filters=["area_bin=0-100"]) == ["NC_1_0", "TX_1_1"]
    assert query_ids(tiny_db, filters=['{"area_bin": ["500-1000", "1000-5000"]}']) == ["NC_2_0", "TX_1_0"]


def test_exif_dates_compare_with_iso(tiny_db, query_ids):
    # stored as YYYY:MM:DD HH:MM:SS; a plain text comparison would get these wrong
    assert query_ids(tiny_db, filters=["datetime>=2023-06-01"]) == ["MD_1_0", "NC_1_1", "NC_2_0", "TX_1_0"]
    # a date-only value means the whole day
    assert query_ids(tiny_db, filters=["datetime<=2023-06-01"]) == ["NC_1_0", "NC_1_1", "NC_2_0", "TX_1_1"]
    assert query_ids(tiny_db, filters=["datetime=2023-06-01"]) == ["NC_1_1", "NC_2_0"]
    assert query_ids(tiny_db, filters=["datetime between 2023-06-01 and 2023-06-02"]) == \
        ["NC_1_1", "NC_2_0", "TX_1_0"]
    # date-time values compare as timestamps
    assert query_ids(tiny_db, filters=["datetime>2023-06-01 12:00:00"]) == ["MD_1_0", "NC_2_0", "TX_1_0"]
    assert query_ids(tiny_db, filters=["datetime<2023-01-01T00:00"]) == ["TX_1_1"]
    with pytest.raises(AgirError, match="not a valid date"):
        query_ids(tiny_db, filters=["datetime>=2023-13-45"])


@pytest.mark.parametrize(
    ("filters", "bad", "suggestion"),
    [
        (["stat=NC"], "stat", "state"),
        (["categroy_common_name=barley"], "categroy_common_name", "category_common_name"),
        (['{"has_mask": 0}'], "has_mask", "has_masks"),
        (["estimated_bbox_area between 1 and 2"], "estimated_bbox_area", "estimated_bbox_area_cm2"),
        (["mask_pth is null"], "mask_pth", "mask_path"),
    ],
)
def test_unknown_column_names_the_closest(tiny_db, query_ids, filters, bad, suggestion):
    with pytest.raises(AgirError) as err:
        query_ids(tiny_db, filters=filters)
    msg = str(err.value)
    assert f"unknown column {bad!r}" in msg and f"did you mean {suggestion!r}" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "filters",
    [["state"], ["=NC"], ["state ~ NC"], ["{not json"], ['["state", "NC"]'], [42]],
)
def test_malformed_filters_are_clear_errors(tiny_db, query_ids, filters):
    with pytest.raises(AgirError, match="filter"):
        query_ids(tiny_db, filters=filters)
