# Stages 3-4: the CVAT round trip. Local rules: they talk to the network, not to cluster GPUs.
# Only part of the DAG when preprocess.label_source is cvat.


def upload_message():
    if Path(run_path("cvat/upload.json")).exists():
        return (
            "upload_cvat: pre-labels changed since the last upload; new CVAT tasks will be created "
            "(existing tasks are kept; see cvat/upload.json)"
        )
    return "upload_cvat: uploading images and pre-labels to CVAT"


rule upload_cvat:
    input:
        manifest=run_path("infer/manifest.jsonl"),
    output:
        receipt=run_path("cvat/upload.json"),
    params:
        cfg=stage_config(config, "upload"),
    message:
        upload_message()
    log:
        log_path("upload_cvat"),
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
        receipt=run_path("cvat/upload.json"),
    output:
        receipt=run_path("cvat/download.json"),
    params:
        cfg=stage_config(config, "download"),
    log:
        log_path("download_cvat"),
    localrule: True
    threads: 1
    resources:
        mem_mb=4000,
        runtime=120,
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/download_cvat.py"
