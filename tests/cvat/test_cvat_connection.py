"""Credentials, retries under injected faults, old server versions, and secrets kept out of every output."""

from __future__ import annotations

import os

import pytest
from cvat_server.synth import make_infer_outputs

from agir.cvat.credentials import load_credentials
from agir.cvat.download import run_download_stage
from agir.cvat.upload import run_upload_stage
from agir.errors import AgirError
from agir.runs import read_json


def _finish_all(server, run):
    for t in read_json(run / "cvat" / "upload.json")["tasks"]:
        server.annotator.finish_task(t["id"])


def test_twenty_percent_5xx_still_succeeds(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=12)
    cvat_env.fault_rate = 0.2
    cvat_env.rng.seed(1)
    up = run_upload_stage(cfg, run)
    _finish_all(cvat_env, run)
    down = run_download_stage(cfg, run)
    # seeded: the same requests meet the same faults every run, reads and writes alike
    faulted = [(m, s) for m, _, s in cvat_env.log if s in (429, 500, 502, 503)]
    assert len(faulted) == cvat_env.faults_injected >= 5
    assert {m for m, _ in faulted} >= {"GET", "POST"}
    assert up["frames"] == 12 and down["frames"] == 12 and len(cvat_env.tasks) == 3


def test_slow_reads_time_out_and_are_retried(cvat_env, cfg_factory):
    cfg, run = cfg_factory(cvat={"timeout_seconds": 0.3})
    make_infer_outputs(run, n=2)
    cvat_env.slow_rate, cvat_env.slow_seconds = 0.3, 0.8
    assert run_upload_stage(cfg, run)["frames"] == 2


def test_unreachable_host_names_it(cfg_factory, monkeypatch):
    cfg, run = cfg_factory(cvat={"retries": 1, "timeout_seconds": 1})
    make_infer_outputs(run, n=1)
    monkeypatch.setenv("CVAT_HOST", "http://127.0.0.1:9")
    monkeypatch.setenv("CVAT_USERNAME", "u")
    monkeypatch.setenv("CVAT_PASSWORD", "p-secret")
    with pytest.raises(AgirError, match=r"CVAT http://127.0.0.1:9: could not fetch the server version.*check the host URL"):
        run_upload_stage(cfg, run)


def test_wrong_password_is_clear_and_secret_free(cvat_env, cfg_factory, monkeypatch):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=1)
    monkeypatch.setenv("CVAT_PASSWORD", "wrong-secret-value")
    with pytest.raises(AgirError) as err:
        run_upload_stage(cfg, run)
    assert "log in to" in str(err.value) and "$CVAT_PASSWORD" in str(err.value)
    assert "wrong-secret-value" not in str(err.value)


def test_keys_file_token_and_permission_warning(cvat_server, cfg_factory, tmp_path, monkeypatch, caplog):
    for key in ("CVAT_HOST", "CVAT_USERNAME", "CVAT_PASSWORD", "CVAT_ACCESS_TOKEN", "CVAT_ORG"):
        monkeypatch.delenv(key, raising=False)
    keys = tmp_path / "keys.yaml"
    keys.write_text(f"cvat:\n  host: {cvat_server.url}\n  access_token: {cvat_server.token}\n  organization: lab\n")
    os.chmod(keys, 0o644)
    cfg, run = cfg_factory(cvat={"keys_file": str(keys)})
    make_infer_outputs(run, n=2)
    with caplog.at_level("WARNING"):
        creds = load_credentials(cfg)
    assert "readable by group/others" in caplog.text and creds.organization == "lab"
    assert cvat_server.token not in repr(creds)
    monkeypatch.setenv("CVAT_ORG", "env-org")
    assert load_credentials(cfg).organization == "env-org"  # environment first
    assert run_upload_stage(cfg, run)["frames"] == 2


def test_missing_credentials_say_what_to_set(cfg_factory, monkeypatch):
    for key in ("CVAT_HOST", "CVAT_USERNAME", "CVAT_PASSWORD", "CVAT_ACCESS_TOKEN", "CVAT_ORG"):
        monkeypatch.delenv(key, raising=False)
    cfg, _ = cfg_factory(cvat={"host": "http://cvat.example"})
    with pytest.raises(AgirError, match="no CVAT credentials for http://cvat.example: set CVAT_USERNAME/CVAT_PASSWORD"):
        load_credentials(cfg)


def test_works_against_a_2_23_server(cvat_server_2_23, cfg_factory, monkeypatch, caplog):
    srv = cvat_server_2_23
    monkeypatch.setenv("CVAT_HOST", srv.url)
    monkeypatch.setenv("CVAT_USERNAME", srv.username)
    monkeypatch.setenv("CVAT_PASSWORD", srv.password)
    monkeypatch.delenv("CVAT_ACCESS_TOKEN", raising=False)
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=3)
    with caplog.at_level("INFO"):
        up = run_upload_stage(cfg, run)
    assert up["server_version"] == "2.23.0" and "version 2.23.0" in caplog.text
    _finish_all(srv, run)
    assert run_download_stage(cfg, run)["frames"] == 3


def test_secrets_absent_from_every_output_and_log(cvat_env, cfg_factory, caplog, capsys):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=6)
    secrets = [cvat_env.password, cvat_env.token]
    with caplog.at_level("DEBUG"):
        run_upload_stage(cfg, run)
        _finish_all(cvat_env, run)
        run_download_stage(cfg, run, refresh=True)
    out = capsys.readouterr()
    texts = [caplog.text, out.out, out.err]
    for p in run.rglob("*"):
        if p.is_file():
            texts.append(p.read_bytes().decode("latin-1"))
    assert len(texts) > 10
    for text in texts:
        for s in secrets:
            assert s not in text


def test_task_creation_without_request_ids_is_watched_on_the_task(cvat_env, cfg_factory):
    cfg, run = cfg_factory()
    make_infer_outputs(run, n=3)
    cvat_env.no_request_ids = True
    assert run_upload_stage(cfg, run)["frames"] == 3
    assert cvat_env.count("GET", r"/api/requests/") == 0


def test_broken_keys_file_is_one_line(cfg_factory, tmp_path, monkeypatch):
    for key in ("CVAT_HOST", "CVAT_USERNAME", "CVAT_PASSWORD", "CVAT_ACCESS_TOKEN", "CVAT_ORG"):
        monkeypatch.delenv(key, raising=False)
    keys = tmp_path / "bad.yaml"
    keys.write_text("cvat: [host: x\n  password: hunter2-secret\n")
    os.chmod(keys, 0o600)
    cfg, _ = cfg_factory(cvat={"keys_file": str(keys)})
    with pytest.raises(AgirError) as err:
        load_credentials(cfg)
    assert "cannot read the CVAT keys file" in str(err.value) and "hunter2" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
