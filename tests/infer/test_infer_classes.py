"""Inference in the round's class set: model classes mapped by name, species the model does not know labelled
by their own record inside its box on the model's plant shape, never with a known species' label."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agir.classes import round_class_set
from agir.infer.baseline import label_unknown_species
from agir.infer.stage import merge_infer_shards, run_infer_stage
from agir.masks import make_classes, read_classes, read_mask
from agir.runs import read_jsonl, write_json

BARLEY, AMARANTH = 1, 2  # round indices: barley (round 1's model), palmer amaranth (new this round)


class GreenModel(torch.nn.Module):
    """A stand-in network that finds green plants: every plant pixel is its class `fg` (an index of its
    outputs), soil is background. `outputs` = 1 is a sigmoid head."""

    def __init__(self, outputs: int, fg: int = 1):
        super().__init__()
        self.outputs, self.fg = outputs, fg
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        g = x[:, 1] - 0.5 * (x[:, 0] + x[:, 2])  # normalised green excess: ~1.7 on plants, ~0 on soil
        plant = 10.0 * (g - 0.8)
        if self.outputs == 1:
            return plant[:, None]
        logits = torch.zeros((x.shape[0], self.outputs, *x.shape[2:]), dtype=x.dtype, device=x.device)
        logits[:, 0] = -plant
        logits[:, self.fg] = plant
        return logits


@pytest.fixture
def fake_model(monkeypatch):
    """Checkpoints load as GreenModel (plants = the checkpoint's class `fg`)."""
    chosen = {"fg": 1}

    def model_from_checkpoint(ckpt, device="cpu"):
        n = 1 if ckpt["head"] == "sigmoid" else len(ckpt["classes"]) + 1
        return GreenModel(n, chosen["fg"]).to(device).eval()

    monkeypatch.setattr("agir.checkpoint.model_from_checkpoint", model_from_checkpoint)
    return chosen


def model_cfg(semif_run, ckpt, **more):
    return semif_run["make_cfg"](**{"seg_inference.model.ckpt_path": str(ckpt), "seg_inference.device": "cpu",
                                    "seg_inference.tile.size": 64, **more})[0]


def round_set(names):
    return round_class_set({"classes": {"mode": "species"}}, earlier=[make_classes(names[:1])],
                           record_species=names[1:])


def center(mask, cx, cy):
    return int(mask[cy, cx])


def box_pixels(mask, plant, bbox):
    x, y, w, h = bbox
    return mask[y:y + h, x:x + w][plant[y:y + h, x:x + w]]


def test_a_new_species_gets_its_own_label_on_the_model_shape(semif_run, tiny_checkpoint, fake_model, tmp_path):
    """Round 1's model knows barley; this round's records add palmer amaranth (image A has both)."""
    ckpt = tiny_checkpoint(tmp_path / "best.pth", classes=("barley",))
    cfg, run = model_cfg(semif_run, ckpt), semif_run["run"]
    doc = round_set(["barley", "palmer amaranth"])
    write_json(run / "classes.json", doc)
    metrics = run_infer_stage(cfg, run, classes=run / "classes.json")
    assert read_classes(run / "infer" / "masks") == doc["classes"]
    assert metrics["classes"] == ["barley", "palmer amaranth"] and metrics["model"]["classes"] == ["barley"]
    a = read_mask(run / "infer" / "masks" / "A.png")
    truth = semif_run["truth"]["A"]
    assert center(a, 40, 40) == BARLEY  # the model's own species keeps the model's label
    assert center(a, 120, 80) == AMARANTH
    amaranth_px = box_pixels(a, truth, [93, 53, 55, 55])
    assert (amaranth_px == AMARANTH).mean() > 0.9 and not (amaranth_px == BARLEY).any()
    assert set(np.unique(a)) <= {0, BARLEY, AMARANTH}
    lines = list(read_jsonl(run / "infer" / "manifest.jsonl"))
    assert all(line["status"] == "ok" and "uncertainty" in line for line in lines)


def test_cutout_mode_labels_the_cutouts_own_species(semif_run, tiny_checkpoint, fake_model, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "best.pth", classes=("barley",))
    cfg = model_cfg(semif_run, ckpt, **{"seg_inference.source.image_mode": "cutout",
                                       "seg_inference.source.margin": 0.2})
    run = semif_run["run"]
    run_infer_stage(cfg, run, classes=round_set(["barley", "palmer amaranth"])["classes"])
    amaranth = read_mask(run / "infer" / "masks" / "A_1.png")
    h, w = amaranth.shape
    assert amaranth[h // 2, w // 2] == AMARANTH and not (amaranth == BARLEY)[h // 4: 3 * h // 4, w // 4: 3 * w // 4].any()
    barley = read_mask(run / "infer" / "masks" / "B_0.png")
    assert barley[barley.shape[0] // 2, barley.shape[1] // 2] == BARLEY


def test_a_binary_model_gives_shape_and_the_records_give_every_species(semif_run, tiny_checkpoint, fake_model, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "bin.pth", classes=("plant",), head="sigmoid")
    cfg, run = model_cfg(semif_run, ckpt), semif_run["run"]
    run_infer_stage(cfg, run, classes=round_set(["barley", "palmer amaranth"])["classes"])
    a = read_mask(run / "infer" / "masks" / "A.png")
    assert center(a, 40, 40) == BARLEY and center(a, 120, 80) == AMARANTH
    b = read_mask(run / "infer" / "masks" / "B.png")
    assert center(b, 70, 50) == BARLEY


def test_known_classes_are_mapped_by_name_not_by_position(semif_run, tiny_checkpoint, fake_model, tmp_path):
    """The model's class 1 is palmer amaranth, the round's index 1 is barley."""
    ckpt = tiny_checkpoint(tmp_path / "best.pth", classes=("palmer amaranth", "barley"))
    fake_model["fg"] = 1  # predicts its class 1 (palmer amaranth) on every plant
    cfg, run = model_cfg(semif_run, ckpt), semif_run["run"]
    run_infer_stage(cfg, run, classes=round_set(["barley", "palmer amaranth"])["classes"])
    a = read_mask(run / "infer" / "masks" / "A.png")
    # both species are known to the model: its prediction (amaranth) stands, in the round's index
    assert center(a, 120, 80) == AMARANTH and center(a, 40, 40) == AMARANTH


def test_binary_mode_maps_every_model_class_to_plant(semif_run, tiny_checkpoint, fake_model, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "best.pth", classes=("barley",))
    cfg = model_cfg(semif_run, ckpt, **{"classes.mode": "binary"})
    run = semif_run["run"]
    doc = round_class_set({"classes": {"mode": "binary"}})
    run_infer_stage(cfg, run, classes=doc["classes"])
    a = read_mask(run / "infer" / "masks" / "A.png")
    assert center(a, 40, 40) == 1 and center(a, 120, 80) == 1
    assert [c["name"] for c in read_classes(run / "infer" / "masks")] == ["plant"]


def test_shards_and_gather_agree_on_the_round_set(semif_run, tiny_checkpoint, fake_model, tmp_path):
    ckpt = tiny_checkpoint(tmp_path / "best.pth", classes=("barley",))
    cfg, run = model_cfg(semif_run, ckpt), semif_run["run"]
    doc = round_set(["barley", "palmer amaranth"])
    write_json(run / "classes.json", doc)
    for k in range(2):
        run_infer_stage(cfg, run, shard_index=k, shard_count=2, classes=run / "classes.json")
    merge_infer_shards(cfg, run, 2)
    assert read_classes(run / "infer" / "masks") == doc["classes"]
    assert center(read_mask(run / "infer" / "masks" / "A.png"), 120, 80) == AMARANTH


def test_without_a_round_set_the_checkpoint_classes_stay(semif_run, tiny_checkpoint, fake_model, tmp_path):
    """Rounds built before class sets: the model's classes and indices, as before."""
    ckpt = tiny_checkpoint(tmp_path / "best.pth", classes=("barley",))
    cfg, run = model_cfg(semif_run, ckpt), semif_run["run"]
    run_infer_stage(cfg, run)
    assert [c["name"] for c in read_classes(run / "infer" / "masks")] == ["barley"]
    assert center(read_mask(run / "infer" / "masks" / "A.png"), 120, 80) == 1


def test_the_baseline_paints_records_in_the_round_indices(semif_run):
    cfg, run = semif_run["cfg"], semif_run["run"]
    doc = round_class_set({"classes": {"mode": "species"}}, earlier=[make_classes(["soybean"])],
                          record_species=["barley", "palmer amaranth"])
    run_infer_stage(cfg, run, classes=doc["classes"])
    assert [c["name"] for c in read_classes(run / "infer" / "masks")] == ["soybean", "barley", "palmer amaranth"]
    a = read_mask(run / "infer" / "masks" / "A.png")
    assert center(a, 40, 40) == 2 and center(a, 120, 80) == 3


def test_label_unknown_species_smaller_box_wins_and_known_boxes_keep_the_model():
    model = np.zeros((10, 10), np.uint8)
    model[:, :] = 1  # the model calls everything its known class 1
    shape = np.zeros((10, 10), np.uint8)
    shape[2:8, 2:8] = 1
    # a large unknown-species box (class 2) with a small known-species box (class 1) inside it
    out = label_unknown_species(model, shape, [((0, 0, 10, 10), 2), ((4, 4, 6, 6), 1)], None, {1})
    assert out[3, 3] == 2 and out[0, 0] == 0 and out[5, 5] == 1
    # the cutout's own record (top) is painted last, over a smaller known box
    out = label_unknown_species(model, shape, [((4, 4, 6, 6), 1)], ((2, 2, 8, 8), 2), {1})
    assert out[5, 5] == 2


class ConstantModel(torch.nn.Module):
    """Logits giving P = (0.4, 0.3, 0.3) everywhere: background wins the argmax, yet 60 % says plant."""

    def __init__(self):
        super().__init__()
        self.logits = torch.nn.Parameter(torch.log(torch.tensor([0.4, 0.3, 0.3])), requires_grad=False)

    def forward(self, x):
        return self.logits.view(1, 3, 1, 1).expand(x.shape[0], 3, *x.shape[2:]).clone()


def test_plant_shape_is_one_minus_background_probability():
    from agir.infer.predictor import TiledPredictor

    p = TiledPredictor(ConstantModel(), head="softmax", mean=[0.5] * 3, std=[0.25] * 3, tile_size=64, overlap=0.25,
                       divisor=1)
    mask, info = p.predict(np.zeros((40, 50, 3), np.uint8), return_shape=True)
    assert (mask == 0).all() and info["shape"].shape == (40, 50) and (info["shape"] == 1).all()
    assert "shape" not in p.predict(np.zeros((40, 50, 3), np.uint8))[1]
