# Stage 1: select records from the database (DuckDB engine) -> query/query.json


rule query_db:
    input:
        db=lambda wc: db_source_files(rcfg(wc)),
    output:
        records=run_path("query/query.json"),
        spec=run_path("query/query_spec.json"),
        metrics=run_path("query/metrics.json"),
    params:
        cfg=stage_params("query"),
    log:
        log_path("query"),
    benchmark:
        bench_path("query")
    localrule: True
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        f"{ENVS}/base.yaml"
    script:
        f"{SCRIPTS}/query.py"


# A fresh clone has no database yet: when the configured source is the embedded demo database,
# generate it (deterministic; `agir-cvtoolkit demo-data` does the same by hand).
DEMO_DB = demo_db_path(config)
if DEMO_DB:

    rule demo_data:
        output:
            db=DEMO_DB,
        params:
            out=str(Path(DEMO_DB).parent),
        log:
            f"{Path(DEMO_DB).parent}/demo_data.log",
        localrule: True
        threads: 2
        resources:
            mem_mb=2000,
            runtime=10,
        conda:
            f"{ENVS}/base.yaml"
        script:
            f"{SCRIPTS}/demo_data.py"
