"""Sampling: reproducibility, seeds, group sizes, NULL groups, no helper column; sort/limit/offset."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from agir.db.query import run_query_stage
from agir.demo.tables import write_duckdb
from agir.errors import AgirError
from agir.runs import read_json


def _records(cfg: dict, run: Path) -> list[dict]:
    run_query_stage(cfg, run)
    return read_json(run / "query" / "query.json")


@pytest.fixture()
def shuffled_db(tmp_path: Path, semif_table_3k) -> Path:
    """The same rows in a different order on disk."""
    import numpy as np

    perm = np.random.default_rng(1).permutation(semif_table_3k.num_rows)
    return write_duckdb(tmp_path / "shuffled.duckdb", {"semif": semif_table_3k.take(perm)})


@pytest.mark.parametrize("spec", ["seeded:n=40,seed={s}", "stratified:by=category_common_name|state,per_group=3,seed={s}"])
def test_same_seed_same_rows_any_disk_order(semif_db, shuffled_db, query_ids, spec):
    a = query_ids(semif_db, sample=spec.format(s=5))
    b = query_ids(semif_db, sample=spec.format(s=5))
    c = query_ids(shuffled_db, sample=spec.format(s=5))
    d = query_ids(semif_db, sample=spec.format(s=6))
    assert a == b == c
    assert len(a) > 20
    assert set(a) != set(d)  # a different seed draws different rows
    assert len(set(a) & set(d)) < len(a) * 0.7


def test_seeded_draws_n_distinct_matching_rows(semif_db, query_ids, semif_table_3k):
    ids = query_ids(semif_db, filters=["state=NC"], sample="seeded:n=25,seed=1")
    nc = {i for i, s in zip(semif_table_3k.column("cutout_id").to_pylist(), semif_table_3k.column("state").to_pylist())
          if s == "NC"}
    assert len(ids) == len(set(ids)) == 25 and set(ids) <= nc
    # n larger than the matches gives all of them
    assert len(query_ids(semif_db, filters=["state=MS"], sample="seeded:n=100000,seed=1")) == \
        sum(1 for s in semif_table_3k.column("state").to_pylist() if s == "MS")


def test_random_records_its_seed_so_the_draw_repeats(semif_db, cfg_for, tmp_path):
    run_query_stage(cfg_for(semif_db, sample="random:n=30"), tmp_path / "a")
    spec = read_json(tmp_path / "a" / "query" / "query_spec.json")
    seed = spec["sample"]["seed"]
    first = [r["cutout_id"] for r in read_json(tmp_path / "a" / "query" / "query.json")]
    again = _records(cfg_for(semif_db, sample=f"seeded:n=30,seed={seed}"), tmp_path / "b")
    assert [r["cutout_id"] for r in again] == first


def test_stratified_group_sizes_null_group_and_no_helper_column(tmp_path, semif_table_3k, cfg_for):
    import pyarrow as pa

    # make some states NULL: NULL must be a group of its own
    states = semif_table_3k.column("state").to_pylist()
    states = [None if i % 10 == 0 else s for i, s in enumerate(states)]
    table = semif_table_3k.set_column(semif_table_3k.column_names.index("state"), "state", pa.array(states))
    db = write_duckdb(tmp_path / "nulls.duckdb", {"semif": table})
    k = 15
    recs = _records(cfg_for(db, sample=f"stratified:by=state|area_bin,per_group={k}"), tmp_path / "r")
    truth = Counter(zip(states, table.column("estimated_area_bin").to_pylist()))
    got = Counter((r["state"], r["estimated_area_bin"]) for r in recs)
    assert got == {g: min(n, k) for g, n in truth.items()}
    assert any(g[0] is None for g in got)
    assert any(n < k for n in truth.values())  # small groups give all their rows
    assert set(recs[0]) == set(table.column_names)  # no rank/helper column leaks
    spec = read_json(tmp_path / "r" / "query" / "query_spec.json")
    assert spec["sample"]["by"] == ["state", "estimated_area_bin"]
    assert {(g["group"]["state"], g["group"]["estimated_area_bin"]): (g["matched"], g["sampled"])
            for g in spec["groups"]} == {g: (n, min(n, k)) for g, n in truth.items()}
    metrics = read_json(tmp_path / "r" / "query" / "metrics.json")
    assert metrics["n_groups"] == len(truth) and metrics["rows_returned"] == sum(got.values())


def test_sort_limit_offset(semif_db, query_ids, cfg_for, tmp_path):
    all_ids = query_ids(semif_db, filters=["state=NC"])
    assert all_ids == sorted(all_ids)  # default order: id column
    assert query_ids(semif_db, filters=["state=NC"], offset=10) == all_ids[10:]  # offset alone
    assert query_ids(semif_db, filters=["state=NC"], limit=5) == all_ids[:5]
    assert query_ids(semif_db, filters=["state=NC"], limit=5, offset=3) == all_ids[3:8]
    assert query_ids(semif_db, filters=["state=NC"], limit=0) == []
    recs = _records(cfg_for(semif_db, filters=["state=NC"], sort="datetime:desc,cutout_id:asc"), tmp_path / "s")
    keys = [(r["datetime"], r["cutout_id"]) for r in recs]
    assert keys == sorted(keys, key=lambda k: (_neg(k[0]), k[1]))
    # sort, limit and offset apply after sampling
    sampled = query_ids(semif_db, sample="seeded:n=20,seed=3")
    assert query_ids(semif_db, sample="seeded:n=20,seed=3", limit=5, offset=5) == sorted(sampled)[5:10]
    by_area = _records(cfg_for(semif_db, sample="seeded:n=20,seed=3", sort="estimated_bbox_area_cm2:desc", limit=3),
                       tmp_path / "t")
    all_sampled = _records(cfg_for(semif_db, sample="seeded:n=20,seed=3"), tmp_path / "u")
    top = sorted(all_sampled, key=lambda r: (-r["estimated_bbox_area_cm2"], r["cutout_id"]))[:3]
    assert [r["cutout_id"] for r in by_area] == [r["cutout_id"] for r in top]


def _neg(text: str) -> tuple:
    return tuple(-ord(c) for c in text)


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        ("shuffle:n=3", "unknown mode"),
        ("seeded:n=3", "needs seed"),
        ("random:n=abc", "not an integer"),
        ("random:n=-1", "must be >= 0"),
        ("stratified:by=state", "needs by="),
        ("stratified:by=stat,per_group=2", "did you mean 'state'"),
        ("stratified:by=state,per_group=0", "per_group must be >= 1"),
        ("random:n=3,size=2", "unknown option"),
    ],
)
def test_bad_sample_specs(semif_db, query_ids, sample, message):
    with pytest.raises(AgirError, match=message):
        query_ids(semif_db, sample=sample)


@pytest.mark.parametrize(("key", "value", "message"), [("limit", -1, "non-negative"), ("offset", "x", "not an integer"),
                                                       ("sort", "datetime:up", "asc or desc"),
                                                       ("out", ["xlsx"], "unknown format")])
def test_bad_output_settings(semif_db, query_ids, key, value, message):
    with pytest.raises(AgirError, match=message):
        query_ids(semif_db, **{key: value})
