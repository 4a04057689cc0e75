"""preprocess.label_source db_masks: only selected images of active selections enter the dataset."""

from agir.data.sources import db_mask_records, db_mask_samples
from agir.runs import write_json, write_jsonl


def cfg(tmp_path, **pp):
    return {"io": {"roots": {"vol": str(tmp_path / "storage")}}, "preprocess": {"label_source": "db_masks", **pp}}


def make_round(root, name, images):
    run = root / "proj" / name
    recs = []
    for img in images:
        for k in range(2):  # two cutouts per image
            recs.append({"cutout_id": f"{img}_{k}", "image_id": img, "ncsu_nfs": "vol",
                         "image_path": f"images/{img}.jpg", "mask_path": f"masks/{img}.png",
                         "category_class_id": 3, "category_common_name": "barley", "category_hex": "#d66edd"})
    write_json(run / "query" / "query.json", recs)
    return run


def images_of(records):
    return sorted({r["image_id"] for r in records})


def test_no_selection_keeps_this_rounds_whole_query(tmp_path):
    make_round(tmp_path, "r1", ["A", "B"])
    r2 = make_round(tmp_path, "r2", ["C", "D"])
    write_json(r2 / "select" / "selection.json", {"strategy": "all", "selected": ["C", "D"]})
    assert images_of(db_mask_records(cfg(tmp_path), r2)) == ["C", "D"]


def test_selections_accumulate_over_rounds(tmp_path):
    r1 = make_round(tmp_path, "r1", ["A", "B"])  # round 1: no selection -> all of its query
    r2 = make_round(tmp_path, "r2", ["C", "D", "E"])
    write_json(r2 / "select" / "selection.json",
               {"strategy": "entropy", "selected": ["E"], "selected_images": ["E"]})
    r3 = make_round(tmp_path, "r3", ["F", "G"])
    # an older selection file without selected_images: item ids are mapped through the manifest
    write_json(r3 / "select" / "selection.json", {"strategy": "diverse", "selected": ["G_1"]})
    write_jsonl(r3 / "infer" / "manifest.jsonl", [{"id": "G_1", "image_id": "G", "record_ids": ["G_1"], "status": "ok"}])
    make_round(tmp_path, "r4", ["H"])  # later round: never part of r3's dataset
    c = cfg(tmp_path)
    assert images_of(db_mask_records(c, r1)) == ["A", "B"]
    assert images_of(db_mask_records(c, r2)) == ["A", "B", "E"]
    recs3 = db_mask_records(c, r3)
    assert images_of(recs3) == ["A", "B", "E", "G"]
    # every record of a selected image (its mask holds all its plants)
    assert sorted(r["cutout_id"] for r in recs3 if r["image_id"] == "G") == ["G_0", "G_1"]
    assert images_of(db_mask_records(cfg(tmp_path, rounds=["r2", "r3"]), r3)) == ["E", "G"]
    samples, rejects = db_mask_samples(c, r3)
    assert [s.image_id for s in samples] == ["A", "B", "E", "G"] and not rejects
