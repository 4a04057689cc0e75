"""Label sources: CVAT rounds (newest wins, round discovery) and the database's own masks."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from agir.data import run_preprocess_stage
from agir.data.sources import cvat_round_samples, db_mask_samples, discover_rounds
from agir.errors import AgirError
from agir.masks import read_mask


def _dataset_masks(run, record_id):
    import csv

    with open(run / "dataset" / "index.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["record_id"] == record_id]
    return rows, [read_mask(run / "dataset" / r["mask"]) for r in rows]


def test_newest_round_wins_and_is_logged(kit, caplog):
    cfg = kit.cfg(**{"preprocess.label_source": "cvat", "preprocess.tile.size": 64})
    run = kit.run_of(cfg)
    old = kit.synth(40, 40, [(1, 0, 0, 10, 10)])  # barley in the corner
    new = kit.synth(40, 40, [(1, 20, 20, 40, 40)])  # refined: barley elsewhere
    other = kit.synth(40, 40, [(1, 5, 5, 15, 15)], seed=3)
    kit.add_cvat_round(cfg, "round_001", {"A": old, "B": other}, ["barley"])
    kit.add_cvat_round(cfg, "round_002", {"A": new}, ["barley"])
    agir_log = logging.getLogger("agir")  # may not propagate to root once a rule set up logging
    agir_log.addHandler(caplog.handler)
    try:
        with caplog.at_level("INFO", logger="agir"):
            metrics = run_preprocess_stage(cfg, run)
    finally:
        agir_log.removeHandler(caplog.handler)
    assert "round round_002 replaces its label from round round_001" in caplog.text
    assert metrics["replaced"] == [{"record_id": "A", "round": "round_002", "replaced_round": "round_001"}]
    rows, masks = _dataset_masks(run, "A")
    assert [r["round"] for r in rows] == ["round_002"]
    # the dataset mask is the newer one: barley at the bottom-right, none top-left
    assert masks[0][30, 30] == 1 and masks[0][2, 2] == 0
    rows_b, _ = _dataset_masks(run, "B")
    assert [r["round"] for r in rows_b] == ["round_001"]


def test_round_discovery_skips_later_and_undownloaded_rounds(kit):
    cfg = kit.cfg(**{"preprocess.label_source": "cvat"})
    item = {"A": kit.synth(40, 40, [(1, 0, 0, 10, 10)])}
    kit.add_cvat_round(cfg, "round_001", item, ["barley"])
    kit.add_cvat_round(cfg, "round_002", item, ["barley"], download=False)  # not downloaded yet
    kit.add_cvat_round(cfg, "round_003", item, ["barley"])  # after the current round_002
    assert discover_rounds(cfg, kit.run_of(cfg)) == ["round_001"]


def test_explicit_rounds_must_exist(kit):
    cfg = kit.cfg(**{"preprocess.label_source": "cvat", "preprocess.rounds": ["round_001", "round_009"]})
    kit.add_cvat_round(cfg, "round_001", {"A": kit.synth(40, 40, [])}, ["barley"])
    with pytest.raises(AgirError, match="round_009.*download-cvat"):
        discover_rounds(cfg, kit.run_of(cfg))


def test_no_rounds_gives_clear_error(kit):
    cfg = kit.cfg(**{"preprocess.label_source": "cvat"})
    kit.run_of(cfg).mkdir(parents=True)
    with pytest.raises(AgirError, match="label_source=db_masks"):
        run_preprocess_stage(cfg, kit.run_of(cfg))


def test_image_id_from_manifest_and_missing_image_rejected(kit):
    cfg = kit.cfg(**{"preprocess.label_source": "cvat"})
    rnd = kit.add_cvat_round(
        cfg, "round_001", {"c1": kit.synth(40, 40, []), "c2": kit.synth(40, 40, [])}, ["barley"], image_ids={"c1": "IMG_1"}
    )
    (rnd / "cvat" / "annotations" / "images" / "c2.jpg").unlink()
    samples, rejects, _, _ = cvat_round_samples(cfg, kit.run_of(cfg))
    assert [(s.record_id, s.image_id) for s in samples] == [("c1", "IMG_1")]
    assert rejects[0]["record_id"] == "c2" and "missing" in rejects[0]["reason"]


def test_db_masks_map_class_ids_by_name_and_report_unknown_values(kit):
    cfg = kit.cfg(**{"preprocess.tile.size": 128})
    records: list = []
    # value 7 (maize) has no record in this image but another image's record explains it; 99 is unknown.
    kit.add_db_image(cfg, records, "IMG_1", 60, 60, [(3, 0, 0, 10, 10), (7, 20, 20, 30, 30), (99, 50, 50, 52, 55)], ["barley"])
    kit.add_db_image(cfg, records, "IMG_2", 60, 60, [(7, 0, 0, 10, 10)], ["maize"])
    kit.add_db_image(cfg, records, "IMG_3", 60, 60, [], ["soybean"], mask=False)
    kit.write_query(cfg, records)
    samples, rejects = db_mask_samples(cfg, kit.run_of(cfg))
    assert [s.image_id for s in samples] == ["IMG_1", "IMG_2"]
    assert rejects[0]["image_id"] == "IMG_3" and "no mask_path" in rejects[0]["reason"]
    metrics = run_preprocess_stage(cfg, kit.run_of(cfg))
    assert metrics["classes"] == ["barley", "maize", "soybean"]
    assert metrics["unknown_mask_values"] == {"99": {"samples": 1, "pixels": 10}}
    assert metrics["counts"]["rejected"] == 1
    _, (mask,) = _dataset_masks(kit.run_of(cfg), "IMG_1")
    assert mask[5, 5] == 1 and mask[25, 25] == 2 and mask[51, 52] == 255 and mask[40, 40] == 0


def test_db_colour_painted_masks_are_decoded_by_species_colour(kit):
    """The repository's example masks are painted in the species' display colour, not class ids."""
    from agir.images import write_image
    from agir.masks import hex_to_rgb

    cfg = kit.cfg(**{"preprocess.tile.size": 64})
    records: list = []
    img, msk = kit.add_db_image(cfg, records, "IMG_1", 40, 40, [(3, 0, 0, 10, 10), (7, 20, 20, 30, 30)], ["barley", "maize"])
    painted = np.zeros((40, 40, 3), np.uint8)
    painted[msk == 3] = hex_to_rgb("#d66edd")
    painted[msk == 7] = np.array(hex_to_rgb("#4caf50")) + 10  # a little compression noise
    painted[35:37, 35:37] = (255, 255, 0)  # a colour that is no species
    write_image(kit.tmp / "storage" / "masks" / "IMG_1.png", painted)
    kit.write_query(cfg, records)
    metrics = run_preprocess_stage(cfg, kit.run_of(cfg))
    _, (mask,) = _dataset_masks(kit.run_of(cfg), "IMG_1")
    assert mask[5, 5] == 1 and mask[25, 25] == 2 and mask[36, 36] == 255 and mask[15, 15] == 0
    assert metrics["unmatched_colour_pixels"] == {"samples": 1, "pixels": 4}
