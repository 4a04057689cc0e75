# Stage 5: combine labelled rounds (or the database's masks) into a tiled, grouped-split dataset -> dataset/


rule preprocess_dataset:
    input:
        # the round's class set: dataset/classes.json keeps its order and indices
        unpack(lambda wc: {**preprocess_inputs(wc), **classes_input(wc)}),
    output:
        index=run_path("dataset/index.csv"),
    params:
        cfg=stage_params("preprocess"),
    log:
        log_path("preprocess"),
    benchmark:
        bench_path("preprocess")
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/preprocess.py"
