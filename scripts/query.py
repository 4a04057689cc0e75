"""Rule `query_db`: select records from the database -> query/query.json."""
from agir.db.query import run_query_stage
from agir.rule import run_rule

run_rule(snakemake, run_query_stage, sections=["db", "query"])
