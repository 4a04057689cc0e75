# Stage 6: train a segmentation model on dataset/ -> model/best.pth (self-describing checkpoint)
from agir.train.init import init_choice, init_input


def train_inputs(wildcards):
    """dataset/, and the model training starts from (train.init; agir.train.init says how it is declared)."""
    return {"index": rp(wildcards, "dataset/index.csv"), **init_input(rcfg(wildcards))}


rule train_model:
    input:
        unpack(train_inputs),
    output:
        best=run_path("model/best.pth"),
        metrics=run_path("model/metrics.json"),
    params:
        cfg=stage_params("train"),
        # the resolved starting model (path, or why none): another one reruns training
        init=lambda wc: init_choice(rcfg(wc)),
    log:
        log_path("train"),
    benchmark:
        bench_path("train")
    threads: 2
    resources:
        gpu=lambda wc: gpu_count(rcfg(wc)["train"]["accelerator"]),
        mem_mb=12000,
        runtime=720,
    conda:
        f"{ENVS}/torch.yaml"
    script:
        f"{SCRIPTS}/train.py"
