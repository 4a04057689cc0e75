# Pictures for `snakemake --report report.html`, one set per round.

REPORT_CAPTIONS = str(Path(workflow.basedir) / "workflow" / "report")


def report_outputs():
    stages = stages_until(config)
    out = {
        "summary": run_path("report/summary.json"),
        "query": report(run_path("report/query_summary.png"), caption=f"{REPORT_CAPTIONS}/query.rst", category="1. Query"),
    }
    if "infer" in stages:
        out["quality"] = report(
            run_path("report/prelabel_quality.png"), caption=f"{REPORT_CAPTIONS}/prelabel_quality.rst", category="2. Inference"
        )
    if "download" in stages:
        out["cvat"] = report(run_path("report/cvat_changes.png"), caption=f"{REPORT_CAPTIONS}/cvat.rst", category="3. CVAT")
    if "preprocess" in stages:
        out["dataset"] = report(
            run_path("report/dataset_stats.png"), caption=f"{REPORT_CAPTIONS}/dataset.rst", category="4. Dataset"
        )
    if "train" in stages:
        out["curves"] = report(
            run_path("report/training_curves.png"), caption=f"{REPORT_CAPTIONS}/training.rst", category="5. Training"
        )
        out["test_iou"] = report(run_path("report/test_iou.png"), caption=f"{REPORT_CAPTIONS}/test_iou.rst", category="5. Training")
        out["predictions"] = report(
            run_path("report/test_predictions.png"), caption=f"{REPORT_CAPTIONS}/predictions.rst", category="5. Training"
        )
    return out


rule report_summary:
    input:
        stage_targets(),
    output:
        **report_outputs(),
    params:
        cfg=stage_config(config, "report"),
        stages=stages_until(config),
    log:
        log_path("report_summary"),
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    localrule: True
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/report_summary.py"
