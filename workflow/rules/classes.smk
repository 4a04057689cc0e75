# A round's class set -> {run}/classes.json: the one class list that infer, upload, download, preprocess and
# train read (issue 16 §1). Species mode: earlier rounds' classes (indices kept), then this round's own earlier
# set, the pre-labelling checkpoint's classes and the query records' species, new names appended.
from agir.classes import built_before_class_sets, class_set_config, earlier_class_lists


def classes_input(wildcards):
    """A consumer rule's input `classes` (use with unpack): the round's classes.json, or nothing for a round
    built before class sets existed, so that asking for its outputs never rebuilds it (CVAT upload included)."""
    run = run_of(wildcards)
    if built_before_class_sets(run):
        return {}
    return {"classes": f"{run}/classes.json"}


def round_classes_inputs(wildcards):
    """The query records (species mode, records rounds) and the checkpoint the round pre-labels with."""
    cfg = rcfg(wildcards)
    inputs = {}
    if cfg["classes"].get("mode", "species") != "binary" and not cfg["seg_inference"]["source"]["images"]:
        inputs["query"] = rp(wildcards, "query/query.json")
    ckpt = cfg["seg_inference"]["model"]["ckpt_path"]
    if str(ckpt) == "previous" and previous_round(cfg) is None:
        # a first round evaluated under settings meant for a later one: its set has no checkpoint (its inference
        # says what is wrong, should it run)
        return inputs
    inputs.update(checkpoint_input(wildcards))
    return inputs


def earlier_classes(wildcards):
    """The class lists of the earlier rounds, read now (params, not inputs: no earlier round becomes a job)."""
    cfg = rcfg(wildcards)
    return earlier_class_lists(d for d in earlier_round_files(cfg, "") if Path(d).name < str(wildcards.round))


rule round_classes:
    input:
        unpack(round_classes_inputs),
    output:
        # update: the set of a round only grows (several queries in one run folder add their species)
        classes=update(run_path("classes.json")),
    params:
        cfg=lambda wc: class_set_config(rcfg(wc)),
        earlier=earlier_classes,
    log:
        log_path("round_classes"),
    localrule: True
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/round_classes.py"
