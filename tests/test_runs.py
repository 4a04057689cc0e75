"""Atomic writes, JSON helpers, run folders, redaction."""

from __future__ import annotations

import os

import pytest

from agir import runs


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    runs.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with runs.atomic_write(target) as fh:
            fh.write('{"a": 2, "trunc')
            raise RuntimeError("killed mid-write")
    assert runs.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind


def test_atomic_write_creates_parents_and_is_readable(tmp_path):
    p = runs.write_text(tmp_path / "a" / "b" / "c.txt", "hi")
    assert p.read_text() == "hi"
    assert oct(os.stat(p).st_mode & 0o777) == "0o644"


def test_jsonl_roundtrip_and_torn_line(tmp_path):
    p = tmp_path / "m.jsonl"
    runs.write_jsonl(p, [{"id": 1}, {"id": 2}])
    with open(p, "a") as fh:
        fh.write('{"id": 3, "sta')  # a killed append
    assert runs.read_jsonl(p) == [{"id": 1}, {"id": 2}]
    runs.append_jsonl(tmp_path / "j.jsonl", {"id": "x"})
    assert runs.read_jsonl(tmp_path / "j.jsonl") == [{"id": "x"}]
    assert runs.read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []


def test_journal_lines_are_read_back_at_once_but_fsynced_at_most_once_a_second(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(runs.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    journal = tmp_path / "journal.jsonl"
    for i in range(50):
        runs.append_jsonl(journal, {"id": i})
    assert [r["id"] for r in runs.read_jsonl(journal)] == list(range(50))  # a killed process loses no line
    assert len(synced) == 1  # 50 quick lines: one fsync, not 50
    for i in range(3):
        runs.append_jsonl(tmp_path / "every.jsonl", {"id": i}, sync_seconds=0)
    assert len(synced) == 4


def test_json_handles_numpy(tmp_path):
    import numpy as np

    runs.write_json(tmp_path / "n.json", {"v": np.float32(0.5), "a": np.arange(3)})
    assert runs.read_json(tmp_path / "n.json") == {"v": 0.5, "a": [0, 1, 2]}


def test_run_dir_layout():
    cfg = {"io": {"out_root": "outputs/runs"}, "project": {"name": "demo", "subname": "round_001"}}
    assert str(runs.run_dir(cfg)) == "outputs/runs/demo/round_001"


def test_redact_and_record_stage_config(tmp_path):
    cfg = {
        "project": {"name": "p", "subname": "r"},
        "io": {"out_root": str(tmp_path)},
        "cvat": {"host": "http://h", "password": "hunter2", "access_token": "s3cr3t-token"},
        "train": {"lr": 0.1},
    }
    run = runs.run_dir(cfg)
    runs.record_stage_config(run, cfg, ["cvat"])
    runs.record_stage_config(run, cfg, ["train"])
    text = (run / "cfg.yaml").read_text()
    assert "hunter2" not in text and "s3cr3t-token" not in text
    saved = runs.read_yaml(run / "cfg.yaml")
    assert saved["train"] == {"lr": 0.1} and saved["cvat"]["host"] == "http://h"
