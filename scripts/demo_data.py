"""Rule `demo_data`: generate the embedded demo database and images (fresh clones)."""
from pathlib import Path

from agir.demo import generate_demo_data
from agir.logs import setup_logging
from agir.rule import main_guard

setup_logging(snakemake.log[0])
main_guard(lambda: generate_demo_data(Path(snakemake.params.out), workers=snakemake.threads))
