"""Fixtures: a tiny generated project, built once per module."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from wfutil import run_snakemake, write_config


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """A small deterministic demo database with images and masks (generated once per session)."""
    from agir.demo import generate_demo_data

    out = tmp_path_factory.mktemp("tiny-demo") / "demo"
    generate_demo_data(out, images=6, seed=3, width=320, height=214)
    return out


@pytest.fixture()
def workdir(tmp_path, tiny_demo) -> Path:
    shutil.copytree(tiny_demo, tmp_path / "demo")
    write_config(tmp_path)
    return tmp_path


@pytest.fixture(scope="module")
def built_round1(tmp_path_factory, tiny_demo) -> Path:
    """Round 1 of the tiny project built once (query -> infer -> preprocess -> train -> report)."""
    wd = tmp_path_factory.mktemp("built")
    shutil.copytree(tiny_demo, wd / "demo")
    write_config(wd)
    run_snakemake(wd, "all")
    return wd


@pytest.fixture()
def built_copy(built_round1, tmp_path) -> Path:
    """A private copy of the built project (mtimes and Snakemake metadata preserved)."""
    dst = tmp_path / "w"
    shutil.copytree(built_round1, dst, symlinks=True)
    return dst
