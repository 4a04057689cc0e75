# Stage 6: train a segmentation model on dataset/ -> model/best.pth (self-describing checkpoint)


rule train_model:
    input:
        index=run_path("dataset/index.csv"),
    output:
        best=run_path("model/best.pth"),
        metrics=run_path("model/metrics.json"),
    params:
        cfg=stage_params("train"),
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
