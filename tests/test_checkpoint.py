"""The agir-seg checkpoint: round trip, Lightning .ckpt, refusal of unsafe or foreign files."""

from __future__ import annotations

import os

import pytest
import torch

from agir.checkpoint import (
    build_model,
    checkpoint_fingerprint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from agir.errors import AgirError

META = dict(arch="Unet", encoder="resnet18", in_channels=3, mean=[0.4, 0.5, 0.3], std=[0.2, 0.2, 0.2],
            tile_size=256, overlap=0.25)


def _save(path, classes=("barley", "maize"), head="softmax", **kw):
    torch.manual_seed(0)
    n = 1 if head == "sigmoid" else len(classes) + 1
    model = build_model("Unet", "resnet18", 3, n).eval()
    args = {**META, **kw}
    save_checkpoint(path, model.state_dict(), classes=list(classes), head=head,
                    metrics={"val_miou": torch.tensor(0.5).item()}, config={"epochs": 2}, **args)
    return model


def test_round_trip_predicts_identically(tmp_path):
    model = _save(tmp_path / "best.pth")
    ckpt = load_checkpoint(tmp_path / "best.pth")
    assert ckpt["format"] == "agir-seg" and ckpt["version"] == 1
    assert ckpt["classes"] == ["barley", "maize"] and ckpt["head"] == "softmax"
    assert ckpt["normalization"]["mean"] == [0.4, 0.5, 0.3]
    assert ckpt["input"] == {"tile_size": 256, "overlap": 0.25}
    assert ckpt["metrics"]["val_miou"] == pytest.approx(0.5)
    again = model_from_checkpoint(ckpt, "cpu")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    assert again(x).shape[1] == 3  # K + 1 outputs, channel 0 background


def test_sigmoid_head_has_one_output_and_needs_one_class(tmp_path):
    _save(tmp_path / "bin.pth", classes=("plant",), head="sigmoid")
    model = model_from_checkpoint(load_checkpoint(tmp_path / "bin.pth"))
    assert model(torch.rand(1, 3, 32, 32)).shape[1] == 1
    with pytest.raises(AgirError, match="one foreground class"):
        _save(tmp_path / "bad.pth", classes=("a", "b"), head="sigmoid")


def test_lightning_ckpt_with_prefixed_weights_loads(tmp_path):
    model = build_model("Unet", "resnet18", 3, 3)
    meta = {"arch": "Unet", "encoder": "resnet18", "in_channels": 3, "classes": ["a", "b"], "head": "softmax",
            "normalization": {"mean": [0.5] * 3, "std": [0.2] * 3}, "input": {"tile_size": 128, "overlap": 0.1}}
    ckpt = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            "hyper_parameters": {"agir": meta, "lr": 0.001}, "epoch": 3}
    torch.save(ckpt, tmp_path / "last.ckpt")
    loaded = load_checkpoint(tmp_path / "last.ckpt")
    assert loaded["classes"] == ["a", "b"] and loaded["input"]["tile_size"] == 128
    assert set(loaded["state_dict"]) == set(model.state_dict())
    model_from_checkpoint(loaded)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo owned > /dev/null",))


def test_unsafe_pickle_is_refused_naming_the_file(tmp_path):
    torch.save({"format": "agir-seg", "payload": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(AgirError, match=r"evil\.pth: refused to load.*posix\.system|evil\.pth: refused to load"):
        load_checkpoint(tmp_path / "evil.pth")


@pytest.mark.parametrize(
    "content, match",
    [
        ({"state_dict": {}}, "not an agir-seg checkpoint"),
        ([1, 2, 3], "not an agir-seg checkpoint"),
        ({"format": "agir-seg", "version": 1, "state_dict": {}}, "lacks"),
    ],
)
def test_foreign_dicts_are_refused(tmp_path, content, match):
    torch.save(content, tmp_path / "x.pth")
    with pytest.raises(AgirError, match=match):
        load_checkpoint(tmp_path / "x.pth")


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(AgirError, match="not a readable PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pth")
    with pytest.raises(AgirError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")


def test_metadata_that_does_not_fit_the_weights(tmp_path):
    _save(tmp_path / "best.pth")
    ckpt = load_checkpoint(tmp_path / "best.pth")
    ckpt["classes"] = ["a", "b", "c"]  # 4 outputs expected, weights have 3
    with pytest.raises(AgirError, match="weights do not fit"):
        model_from_checkpoint(ckpt)


def test_fingerprint_changes_with_content(tmp_path):
    _save(tmp_path / "a.pth")
    fa = checkpoint_fingerprint(tmp_path / "a.pth")
    assert fa == checkpoint_fingerprint(tmp_path / "a.pth")
    _save(tmp_path / "b.pth", classes=("x", "y"))
    assert checkpoint_fingerprint(tmp_path / "b.pth") != fa
