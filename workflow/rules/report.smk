# Pictures for `snakemake --report report.html`, one set per round. The set is the same for every round
# (a stage that is not part of the round gets a picture saying so).

REPORT_CAPTIONS = str(Path(workflow.basedir) / "workflow" / "report")

REPORT_PICTURES = {
    # output name: (file, caption, category)
    "class_sets": ("class_sets.png", "classes.rst", "1. Query"),
    "query": ("query_summary.png", "query.rst", "1. Query"),
    "quality": ("prelabel_quality.png", "prelabel_quality.rst", "2. Inference"),
    "prelabeler": ("prelabeler.png", "prelabeler.rst", "2. Inference"),
    "cvat": ("cvat_changes.png", "cvat.rst", "4. CVAT"),
    "dataset": ("dataset_stats.png", "dataset.rst", "5. Dataset"),
    "curves": ("training_curves.png", "training.rst", "6. Training"),
    "test_iou": ("test_iou.png", "test_iou.rst", "6. Training"),
    "predictions": ("test_predictions.png", "predictions.rst", "6. Training"),
}


def report_outputs():
    out = {"summary": run_path("report/summary.json")}
    for name, (fname, caption, category) in REPORT_PICTURES.items():
        out[name] = report(run_path(f"report/{fname}"), caption=f"{REPORT_CAPTIONS}/{caption}", category=category)
    return out


rule report_summary:
    input:
        stage_targets,
    output:
        **report_outputs(),
    params:
        cfg=stage_params("report"),
        stages=lambda wc: stages_until(rcfg(wc)),
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


if REPORT_ROUNDS:
    # `snakemake --report`: the landing text (workflow/report/workflow.rst reads project.name / project.subname)
    # names the round the report is built for, not the configured one.
    config["project"]["name"] = " + ".join(dict.fromkeys(p for p, _ in REPORT_ROUNDS))
    config["project"]["subname"] = " + ".join(dict.fromkeys(r for _, r in REPORT_ROUNDS))
    # before the round was built: say what to run first instead of a WorkflowError
    _missing = [f"{OUT_ROOT}/{p}/{r}/report/summary.json" for p, r in REPORT_ROUNDS]
    _missing = [m for m in _missing if not Path(m).exists()]
    if _missing:
        sys.exit(
            f"agir: nothing to report yet: {_missing[0]} is missing; build the round first "
            "(agir-cvtoolkit report, snakemake --cores 2 <that file>, or make demo), then rerun snakemake --report"
        )
