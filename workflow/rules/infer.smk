# Stage 2: pre-label masks (a trained checkpoint, or the vegetation-index baseline in round 1) -> infer/
# With seg_inference.shards > 1 the records are scattered over N jobs and gathered again. Which of the two
# rules builds a round's infer/manifest.jsonl follows that round's settings.


def infer_gpu(wildcards):
    return gpu_count(rcfg(wildcards)["seg_inference"]["device"])


def unsharded_inputs(wildcards):
    inputs = shard_inputs(wildcards)
    if len(shard_ids(rcfg(wildcards))) > 1:
        inputs["sharded"] = not_used(wildcards, "infer_seg-with-shards")
    return inputs


def shard_inputs(wildcards):
    """Records, checkpoint, selection, and the round's class set (every shard labels with the same classes)."""
    return {**infer_inputs(wildcards), **classes_input(wildcards)}


def gathered_inputs(wildcards):
    n = len(shard_ids(rcfg(wildcards)))
    if n == 1:
        return [not_used(wildcards, "infer_gather-without-shards")]
    return [rp(wildcards, f"infer/shards/{k}/manifest.jsonl") for k in range(n)]


rule infer_seg:
    input:
        unpack(unsharded_inputs),
    output:
        manifest=run_path("infer/manifest.jsonl"),
        metrics=run_path("infer/metrics.json"),
    params:
        cfg=stage_params("infer"),
    log:
        log_path("infer_seg"),
    benchmark:
        bench_path("infer_seg")
    threads: 2
    resources:
        gpu=infer_gpu,
        mem_mb=6000,
        runtime=120,
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/infer_seg.py"


rule infer_seg_shard:
    input:
        unpack(shard_inputs),
    output:
        manifest=run_path("infer/shards/{shard}/manifest.jsonl"),
    params:
        cfg=stage_params("infer"),
        shard_count=lambda wc: len(shard_ids(rcfg(wc))),
    log:
        log_path("infer_seg_shard_{shard}"),
    benchmark:
        bench_path("infer_seg_shard_{shard}")
    threads: 2
    resources:
        gpu=infer_gpu,
        mem_mb=6000,
        runtime=120,
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/infer_seg.py"


rule infer_gather:
    input:
        gathered_inputs,
    output:
        manifest=run_path("infer/manifest.jsonl"),
        metrics=run_path("infer/metrics.json"),
    params:
        cfg=stage_params("infer"),
        shard_count=lambda wc: len(shard_ids(rcfg(wc))),
    log:
        log_path("infer_gather"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    localrule: True
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/infer_gather.py"


rule choose_prelabeler:
    """seg_inference.model.ckpt_path: auto -> the best of the vegetation index and the project's trained models,
    measured on labelled images none of them trained on."""
    input:
        models=lambda wc: earlier_round_files(rcfg(wc), "model/best.pth"),
        datasets=lambda wc: earlier_round_files(rcfg(wc), "dataset/index.csv"),
    output:
        choice=run_path("infer/prelabeler.json"),
    params:
        cfg=stage_params("prelabeler"),
    log:
        log_path("choose_prelabeler"),
    threads: 2
    resources:
        gpu=infer_gpu,
        mem_mb=6000,
        runtime=60,
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/choose_prelabeler.py"


rule evaluate_prelabels:
    """Pre-label quality against the database's own masks (where the records have them)."""
    input:
        manifest=run_path("infer/manifest.jsonl"),
    output:
        quality=run_path("infer/quality.json"),
        overlays=report(
            run_path("infer/quality_gallery.png"),
            caption="../report/infer_gallery.rst",
            category="2. Inference",
        ),
    params:
        cfg=stage_params("evaluate"),
    log:
        log_path("evaluate_prelabels"),
    localrule: True
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/evaluate_prelabels.py"
