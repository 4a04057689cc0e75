# Stages 3-4: the CVAT round trip. Local rules: they talk to the network, not to cluster GPUs.
# Only part of `all` when preprocess.label_source is cvat; any round's cvat/*.json is a target.


def upload_inputs(wildcards):
    """infer/'s manifest, the round's class set (input `classes`, classes.smk; none for a round built before class
    sets: the stage then labels with infer/masks' classes) and the selection when one applies."""
    inputs = {"manifest": rp(wildcards, "infer/manifest.jsonl"), **classes_input(wildcards)}
    if selection_applies(rcfg(wildcards)):
        inputs["selection"] = rp(wildcards, "select/selection.json")
    return inputs


def download_inputs(wildcards):
    """The upload receipt and the class set only when the tasks come from the upload. With cvat_download.task_ids /
    project_id nothing: that works in a fresh round (no query to build a class set from); the stage still reads
    {run}/classes.json when the round has one."""
    dl = rcfg(wildcards)["cvat_download"]
    if dl.get("task_ids") or dl.get("project_id"):
        return {}
    return {"receipt": rp(wildcards, "cvat/upload.json"), **classes_input(wildcards)}


rule upload_cvat:
    input:
        unpack(upload_inputs),
    output:
        receipt=run_path("cvat/upload.json"),
    params:
        cfg=stage_params("upload"),
    message:
        "upload_cvat: sending images and pre-labels of {wildcards.project}/{wildcards.round} to CVAT "
        "(earlier batches of the round and their tasks are kept; see cvat/upload.json)"
    log:
        log_path("upload_cvat"),
    benchmark:
        bench_path("upload_cvat")
    localrule: True
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/upload_cvat.py"


rule download_cvat:
    input:
        unpack(download_inputs),
    output:
        receipt=run_path("cvat/download.json"),
    params:
        cfg=stage_params("download"),
    log:
        log_path("download_cvat"),
    benchmark:
        bench_path("download_cvat")
    localrule: True
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/download_cvat.py"
