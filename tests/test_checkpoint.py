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


# ---------------------------------------------------------------- bring your own model (issue 10 §3)
TINY = dict(arch="Linknet", encoder_name="timm-mobilenetv3_small_minimal_100")


def _old_tool_ckpt(tmp_path, num_classes=3):
    """A checkpoint made the old tool's way: smp model as `self.model` of a LightningModule, real Trainer."""
    import lightning as L
    import segmentation_models_pytorch as smp

    class OldSegModule(L.LightningModule):
        def __init__(self, arch, encoder_name, num_classes, in_channels=3, lr=1e-3):
            super().__init__()
            self.save_hyperparameters()
            self.model = smp.create_model(arch, encoder_name=encoder_name, encoder_weights=None,
                                          in_channels=in_channels, classes=num_classes)
            # a tensor outside the network: must be dropped, not reported as unexpected
            self.loss = torch.nn.CrossEntropyLoss(weight=torch.ones(max(2, num_classes)))

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, _):
            x, y = batch
            out = self(x)
            if out.shape[1] == 1:
                return torch.nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.float())
            return self.loss(out, y)

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)

    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.rand(2, 3, 64, 64), torch.randint(0, max(2, num_classes), (2, 64, 64)).clamp(max=max(1, num_classes - 1)))
    module = OldSegModule(num_classes=num_classes, **TINY)
    trainer = L.Trainer(max_steps=1, accelerator="cpu", default_root_dir=tmp_path, logger=False,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=2))
    path = tmp_path / "old.ckpt"
    trainer.save_checkpoint(path)
    return module.model.eval(), path


DESCRIBE = {"ckpt_path": "ignored", **TINY, "num_classes": 3, "in_channels": 3,
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}


@pytest.mark.slow
def test_old_tool_lightning_ckpt_loads_when_described(tmp_path):
    model, path = _old_tool_ckpt(tmp_path)
    raw = torch.load(path, map_location="cpu", weights_only=False)
    assert any(k.startswith("model.") for k in raw["state_dict"]) and "loss.weight" in raw["state_dict"]
    ckpt = load_checkpoint(path, describe=DESCRIBE, class_names=["barley", "maize"])
    assert ckpt["classes"] == ["barley", "maize"] and ckpt["head"] == "softmax"
    assert ckpt["arch"] == "Linknet" and ckpt["normalization"]["std"] == [0.25] * 3
    assert not any(k.startswith("model.") for k in ckpt["state_dict"]) and "loss.weight" not in ckpt["state_dict"]
    again = model_from_checkpoint(ckpt)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
    # the old module saved arch/encoder_name/num_classes as hyper-parameters: enough without config
    assert load_checkpoint(path, class_names=["barley", "maize"])["encoder"] == TINY["encoder_name"]
    # class names including background are accepted as K+1 names
    assert load_checkpoint(path, DESCRIBE, ["background", "barley", "maize"])["classes"] == ["barley", "maize"]


@pytest.mark.slow
def test_old_tool_ckpt_with_wrong_description_names_the_keys(tmp_path):
    _, path = _old_tool_ckpt(tmp_path)
    with pytest.raises(AgirError, match=r"num_classes=3 .*2 class names|does not match 3 class names"):
        load_checkpoint(path, DESCRIBE, ["a", "b", "c"])
    wrong_k = load_checkpoint(path, {**DESCRIBE, "num_classes": 4}, ["a", "b", "c"])
    with pytest.raises(AgirError, match=r"shape mismatch.*segmentation_head\.0\.weight \(3, .*\) vs \(4, ") as err:
        model_from_checkpoint(wrong_k)
    assert "\n" not in str(err.value)
    wrong_arch = load_checkpoint(path, {**DESCRIBE, "arch": "Unet"}, ["a", "b"])
    with pytest.raises(AgirError, match=r"missing key\(s\): .*unexpected key\(s\): ") as err:
        model_from_checkpoint(wrong_arch)
    assert "\n" not in str(err.value) and "more)" in str(err.value)


def test_bare_state_dict_binary_model(tmp_path):
    torch.manual_seed(1)
    model = build_model(TINY["arch"], TINY["encoder_name"], 3, 1).eval()
    torch.save(model.state_dict(), tmp_path / "bin.pth")
    describe = {**TINY, "num_classes": 1, "in_channels": 3, "normalization": "imagenet"}
    ckpt = load_checkpoint(tmp_path / "bin.pth", describe)
    assert ckpt["head"] == "sigmoid" and ckpt["classes"] == ["plant"]
    assert ckpt["normalization"]["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert ckpt["input"] == {"tile_size": None, "overlap": None}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), model_from_checkpoint(ckpt)(x))
    with pytest.raises(AgirError, match="binary .* 2 class names"):
        load_checkpoint(tmp_path / "bin.pth", describe, ["a", "b"])
    # num_classes left null: read from the segmentation head
    assert load_checkpoint(tmp_path / "bin.pth", {**describe, "num_classes": None})["head"] == "sigmoid"
    with pytest.raises(AgirError, match=r"normalization='lab' unknown"):
        load_checkpoint(tmp_path / "bin.pth", {**describe, "normalization": "lab"})


def test_undescribed_foreign_checkpoint_says_which_keys_to_set(tmp_path):
    model = build_model(TINY["arch"], TINY["encoder_name"], 3, 3)
    torch.save(model.state_dict(), tmp_path / "sd.pth")
    with pytest.raises(AgirError, match=r"seg_inference\.model\.arch, encoder_name"):
        load_checkpoint(tmp_path / "sd.pth")
    with pytest.raises(AgirError, match="needs 2 class names"):
        load_checkpoint(tmp_path / "sd.pth", {**TINY, "num_classes": 3})
    with pytest.raises(AgirError, match=r"needs seg_inference\.model\.encoder_name"):
        load_checkpoint(tmp_path / "sd.pth", {"arch": "Linknet"}, ["a", "b"])


def test_described_checkpoint_still_refuses_code(tmp_path):
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, tmp_path / "evil.ckpt")
    with pytest.raises(AgirError, match="refused to load"):
        load_checkpoint(tmp_path / "evil.ckpt", DESCRIBE, ["a", "b"])


def test_lightning_attributedict_hparams_are_allowed(tmp_path):
    from lightning.fabric.utilities.data import AttributeDict

    model = build_model(TINY["arch"], TINY["encoder_name"], 3, 3)
    hp = AttributeDict(arch=TINY["arch"], encoder_name=TINY["encoder_name"], num_classes=3)
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, "hyper_parameters": hp},
               tmp_path / "hp.ckpt")
    ckpt = load_checkpoint(tmp_path / "hp.ckpt", class_names=["a", "b"])
    assert ckpt["arch"] == "Linknet" and ckpt["classes"] == ["a", "b"]
    model_from_checkpoint(ckpt)


# --- transfer_weights (contract C2): a grown class set starts from the previous model ---------------

def _src(classes, head="softmax", encoder="resnet18", in_channels=3, seed=1, path="/x/proj/round_001/model/best.pth"):
    from agir.checkpoint import num_outputs_for

    torch.manual_seed(seed)
    model = build_model("Unet", encoder, in_channels, num_outputs_for(list(classes), head)).eval()
    src = {"arch": "Unet", "encoder": encoder, "in_channels": in_channels, "classes": list(classes), "head": head,
           "state_dict": model.state_dict(), "path": path}
    return model, src


def _fresh(classes, head="softmax", seed=2):
    from agir.checkpoint import num_outputs_for

    torch.manual_seed(seed)
    return build_model("Unet", "resnet18", 3, num_outputs_for(list(classes), head)).eval()


def test_transfer_widens_the_head_by_class_name():
    from agir.checkpoint import transfer_weights

    old, src = _src(["barley"])
    model = _fresh(["cereal rye", "barley"])  # reordered: barley is now row 2
    fresh_w = model.state_dict()["segmentation_head.0.weight"].clone()
    line = transfer_weights(model, src, ["cereal rye", "barley"])
    assert line == "initialised from round_001/model/best.pth: kept 1 class (barley), new head rows for 1 (cereal rye)"
    w, ow = model.state_dict()["segmentation_head.0.weight"], old.state_dict()["segmentation_head.0.weight"]
    assert torch.equal(w[0], ow[0]) and torch.equal(w[2], ow[1])  # background, barley copied
    assert torch.equal(w[1], fresh_w[1])  # rye keeps its fresh init
    assert torch.equal(model.state_dict()["encoder.conv1.weight"], old.state_dict()["encoder.conv1.weight"])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x)[:, [0, 2]], old(x), atol=1e-5)


def test_transfer_same_classes_is_an_exact_copy_and_drops_are_named():
    from agir.checkpoint import transfer_weights

    old, src = _src(["a", "b"])
    model = _fresh(["b", "a"])
    assert transfer_weights(model, src, ["B", "a"]).endswith("kept 2 classes (B, a), new head rows for 0")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), old(x)[:, [0, 2, 1]], atol=1e-5)
    model = _fresh(["a", "c"])
    assert transfer_weights(model, src, ["a", "c"]).endswith("new head rows for 1 (c); dropped 1 (b)")


@pytest.mark.parametrize("change, expect", [
    ({"encoder": "resnet34"}, "from scratch: round_001/model/best.pth is encoder resnet34, this model resnet18"),
    ({"in_channels": 4}, "is in_channels 4, this model 3"),
    ({"head": "sigmoid"}, "has a sigmoid head over 2 classes, this model a softmax head"),
])
def test_transfer_refuses_what_does_not_fit_and_leaves_the_model(change, expect):
    from agir.checkpoint import transfer_weights

    _, src = _src(["a", "b"])
    src = {**src, **change}
    model = _fresh(["a", "b", "c"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    line = transfer_weights(model, src, ["a", "b", "c"])
    assert line.startswith("from scratch: ") and expect in line
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_transfer_refuses_foreign_shapes():
    from agir.checkpoint import transfer_weights

    _, src = _src(["a"])
    state = dict(src["state_dict"])
    state["decoder.blocks.0.conv1.0.weight"] = torch.zeros(1, 1, 1, 1)
    model = _fresh(["a", "b"])
    line = transfer_weights(model, {**src, "state_dict": state}, ["a", "b"])
    assert line.startswith("from scratch: round_001/model/best.pth does not fit this model (")
    assert "decoder.blocks.0.conv1.0.weight" in line


def test_transfer_binary_sigmoid_becomes_an_equivalent_softmax():
    from agir.checkpoint import transfer_weights

    old, src = _src(["plant"], head="sigmoid")
    model = _fresh(["plant"])
    line = transfer_weights(model, src, ["plant"])
    assert line == ("initialised from round_001/model/best.pth: kept 1 class (plant), new head rows for 0 "
                    "(sigmoid head converted to softmax)")
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x).softmax(1)[:, 1], old(x).sigmoid()[:, 0], atol=1e-5)
    back = _fresh(["plant"], head="sigmoid")
    assert "kept 1 class (plant)" in transfer_weights(back, {**src, "state_dict": model.state_dict(), "head": "softmax"},
                                                      ["plant"], head="sigmoid")
    with torch.no_grad():
        assert torch.allclose(back(x), old(x), atol=1e-5)


def test_transfer_wrong_class_count_for_the_model_is_an_error():
    from agir.checkpoint import transfer_weights

    _, src = _src(["a"])
    with pytest.raises(AgirError, match="need 4"):
        transfer_weights(_fresh(["a", "b"]), src, ["a", "b", "c"])
