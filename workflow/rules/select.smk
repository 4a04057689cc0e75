# Active selection: of the candidate pool (the query) the model's least certain images go to people.
# Only part of a round's DAG when select.strategy is not `all`. With select.score_max_side the pool is
# scored at reduced resolution first (score_pool) and only the selected images are pre-labelled in full.


def select_inputs(wildcards):
    cfg = rcfg(wildcards)
    pool = "select/pool/manifest.jsonl" if cfg["select"].get("score_max_side") else "infer/manifest.jsonl"
    return {
        "candidates": rp(wildcards, pool),
        "query": rp(wildcards, "query/query.json"),
        "earlier": earlier_round_files(cfg, "select/selection.json") + earlier_round_files(cfg, "cvat/download.json"),
        # class_balanced weighs classes by the newest labelled set (class_freq: labelled)
        "labelled": earlier_round_files(cfg, "dataset/stats.json")
        if cfg["select"].get("strategy") == "class_balanced" and cfg["select"].get("class_freq", "labelled") == "labelled"
        else [],
    }


def pool_inputs(wildcards):
    inputs = {k: v for k, v in infer_inputs(wildcards).items() if k != "selection"}
    if len(shard_ids(rcfg(wildcards))) > 1:
        inputs["sharded"] = not_used(wildcards, "score_pool-with-shards")
    return inputs


def pool_shards(wildcards):
    n = len(shard_ids(rcfg(wildcards)))
    if n == 1:
        return [not_used(wildcards, "score_gather-without-shards")]
    return [rp(wildcards, f"select/pool/shards/{k}/manifest.jsonl") for k in range(n)]


rule score_pool:
    input:
        unpack(pool_inputs),
    output:
        manifest=run_path("select/pool/manifest.jsonl"),
    params:
        cfg=stage_params("score"),
    log:
        log_path("score_pool"),
    benchmark:
        bench_path("score_pool")
    threads: 2
    resources:
        gpu=infer_gpu,
        mem_mb=6000,
        runtime=120,
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/score_pool.py"


# seg_inference.shards > 1: the pool is scored in N jobs like inference, then gathered.
rule score_pool_shard:
    input:
        unpack(lambda wc: {k: v for k, v in infer_inputs(wc).items() if k != "selection"}),
    output:
        manifest=run_path("select/pool/shards/{shard}/manifest.jsonl"),
    params:
        cfg=stage_params("score"),
        shard_count=lambda wc: len(shard_ids(rcfg(wc))),
    log:
        log_path("score_pool_shard_{shard}"),
    threads: 2
    resources:
        gpu=infer_gpu,
        mem_mb=6000,
        runtime=120,
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/score_pool.py"


rule score_gather:
    input:
        pool_shards,
    output:
        manifest=run_path("select/pool/manifest.jsonl"),
    params:
        cfg=stage_params("score"),
        shard_count=lambda wc: len(shard_ids(rcfg(wc))),
    log:
        log_path("score_gather"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    localrule: True
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/score_gather.py"


rule select_images:
    input:
        unpack(select_inputs),
    output:
        selection=run_path("select/selection.json"),
        scores=run_path("select/scores.parquet"),
        metrics=run_path("select/metrics.json"),
        distribution=report(
            run_path("select/score_distribution.png"),
            caption="../report/select.rst",
            category="3. Selection",
        ),
        gallery=report(
            run_path("select/gallery.png"),
            caption="../report/select.rst",
            category="3. Selection",
        ),
    params:
        cfg=stage_params("select"),
    log:
        log_path("select_images"),
    localrule: True
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/select_images.py"
