# Stage 2: pre-label masks (a trained checkpoint, or the vegetation-index baseline in round 1) -> infer/
# With seg_inference.shards > 1 the records are scattered over N jobs and gathered again.

INFER_GPU = gpu_count(config["seg_inference"]["device"])

if len(shard_ids(config)) == 1:

    rule infer_seg:
        input:
            unpack(infer_inputs),
        output:
            manifest=run_path("infer/manifest.jsonl"),
            metrics=run_path("infer/metrics.json"),
        params:
            cfg=stage_config(config, "infer"),
        log:
            log_path("infer_seg"),
        benchmark:
            bench_path("infer_seg")
        threads: 2
        resources:
            gpu=INFER_GPU,
            mem_mb=6000,
            runtime=120,
        conda:
            f"{ENVS}/torch.yaml"
        script:
            f"{SCRIPTS}/infer_seg.py"

else:

    rule infer_seg_shard:
        input:
            unpack(infer_inputs),
        output:
            manifest=run_path("infer/shards/{shard}/manifest.jsonl"),
        params:
            cfg=stage_config(config, "infer"),
            shard_count=len(shard_ids(config)),
        log:
            log_path("infer_seg_shard_{shard}"),
        benchmark:
            bench_path("infer_seg_shard_{shard}")
        threads: 2
        resources:
            gpu=INFER_GPU,
            mem_mb=6000,
            runtime=120,
        conda:
            f"{ENVS}/torch.yaml"
        script:
            f"{SCRIPTS}/infer_seg.py"

    rule infer_gather:
        input:
            expand(run_path("infer/shards/{shard}/manifest.jsonl"), shard=shard_ids(config)),
        output:
            manifest=run_path("infer/manifest.jsonl"),
            metrics=run_path("infer/metrics.json"),
        params:
            cfg=stage_config(config, "infer"),
            shard_count=len(shard_ids(config)),
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
        cfg=stage_config(config, "evaluate"),
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
