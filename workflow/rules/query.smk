# Stage 1: select records from the database (DuckDB engine) -> query/query.json


rule query:
    input:
        db=lambda wc: db_source_files(config),
    output:
        records=run_path("query/query.json"),
        spec=run_path("query/query_spec.json"),
        metrics=run_path("query/metrics.json"),
    params:
        cfg=stage_config(config, "query"),
    log:
        log_path("query"),
    benchmark:
        bench_path("query")
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/query.py"
