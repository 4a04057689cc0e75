"""`agir-cvtoolkit`: the seed-compatible command line.

Each stage command persists its overrides for the run (`{run}/overrides.yaml`) and then runs
Snakemake on that stage's target output, so missing or stale upstream stages run first.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from agir import __version__
from agir.errors import AgirError

# command -> (target output inside the run folder, Snakemake rule to force with --force)
STAGES: dict[str, tuple[str, str]] = {
    "query": ("query/query.json", "query"),
    "infer-seg": ("infer/manifest.jsonl", "infer_seg"),
    "upload-cvat": ("cvat/upload.json", "upload_cvat"),
    "download-cvat": ("cvat/download.json", "download_cvat"),
    "preprocess": ("dataset/index.csv", "preprocess"),
    "train": ("model/best.pth", "train"),
}

QUERY_FLAGS = {
    # flag dest -> config key
    "db": "query.db",
    "filters": "query.filters",
    "sample": "query.sample",
    "projection": "query.projection",
    "sort": "query.sort",
    "limit": "query.limit",
    "offset": "query.offset",
    "preview": "query.preview",
    "out": "query.out",
}


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted config override, value parsed as YAML (repeatable); persists for the run")
    p.add_argument("--config", metavar="FILE", help="config file (default: config/config.yaml of the workflow)")
    p.add_argument("--cores", type=int, default=None, help="cores for Snakemake (default: all, or the profile's)")
    p.add_argument("--profile", metavar="DIR", help="Snakemake profile, e.g. profiles/slurm")
    p.add_argument("-n", "--dry-run", action="store_true", help="show what would run, run nothing")
    p.add_argument("snakemake_args", nargs="*", help="extra Snakemake arguments after --")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agir-cvtoolkit",
        description="Active-learning loop for agricultural image segmentation (a Snakemake workflow).",
        epilog="Example: agir-cvtoolkit infer-seg -o seg_inference.tile.size=256",
    )
    parser.add_argument("--version", action="version", version=f"agir {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    q = sub.add_parser("query", help="select records from the database -> query/query.json")
    q.add_argument("--db", help="database entry: semif | field (db.<name> in config)")
    q.add_argument("--filters", action="append", help="filter expression or JSON object (repeatable, ANDed)")
    q.add_argument("--sample", help="random:n=N | seeded:n=N,seed=S | stratified:by=a|b,per_group=K[,seed=S]")
    q.add_argument("--projection", help="comma-separated columns to keep")
    q.add_argument("--sort", help="col:asc|desc,... (after sampling)")
    q.add_argument("--limit", type=int)
    q.add_argument("--offset", type=int)
    q.add_argument("--preview", type=int, help="print the first N records")
    q.add_argument("--out", help="extra output formats: csv, parquet or csv,parquet (json is always written)")
    _common(q)

    i = sub.add_parser("infer-seg", help="pre-label masks with a model or the vegetation index -> infer/")
    i.add_argument("--force", action="store_true", help="redo every record")
    _common(i)
    _common(sub.add_parser("upload-cvat", help="send images + pre-labels to CVAT -> cvat/upload.json"))
    d = sub.add_parser("download-cvat", help="fetch refined masks from CVAT -> cvat/annotations/")
    d.add_argument("--refresh", action="store_true", help="download even when the server shows no change")
    _common(d)
    _common(sub.add_parser("preprocess", help="build the tiled, split dataset -> dataset/"))
    _common(sub.add_parser("train", help="train a segmentation model -> model/best.pth"))
    _common(sub.add_parser("run", help="run the whole configured loop (Snakemake target all)"))

    st = sub.add_parser("status", help="each round's stages: done / stale / waiting for CVAT / failed")
    st.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    st.add_argument("--config", metavar="FILE")

    dd = sub.add_parser("demo-data", help="generate the embedded demo database and images")
    dd.add_argument("--out", default="data/demo", help="output folder (default data/demo)")
    dd.add_argument("--images", type=int, default=48, help="number of bench images")
    dd.add_argument("--seed", type=int, default=0)
    dd.add_argument("--width", type=int, default=1600)
    dd.add_argument("--height", type=int, default=1066)
    dd.add_argument("--from-examples", metavar="DIR",
                    help="instead, turn real example photos (e.g. ../shared/data/semif_examples) into rows")
    return parser


def query_flag_overrides(args: argparse.Namespace) -> list[str]:
    """Map the seed's query flags onto dotted overrides (YAML-quoted so text stays text)."""
    import yaml

    out = []
    for dest, key in QUERY_FLAGS.items():
        val = getattr(args, dest, None)
        if val is None:
            continue
        if dest == "out":
            val = [v.strip() for v in str(val).split(",") if v.strip()]
        out.append(f"{key}={yaml.safe_dump(val, default_flow_style=True, width=10**9).strip()}")
        if out[-1].endswith("\n..."):
            out[-1] = out[-1][:-4]
    return out


def snakemake_command(args: argparse.Namespace, config_file: Path, overrides_file: Path | None,
                      targets: list[str], force_rule: str | None = None) -> list[str]:
    from agir.config import workflow_root

    root = workflow_root()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile")]
    cmd += ["--configfile", str(config_file)] + ([str(overrides_file)] if overrides_file else [])
    if args.profile:
        cmd += ["--profile", args.profile]
    elif (root / "profiles" / "default").is_dir():
        cmd += ["--workflow-profile", str(root / "profiles" / "default")]
    if args.cores is not None:
        cmd += ["--cores", str(args.cores)]
    elif not args.profile:
        cmd += ["--cores", "all"]
    if args.dry_run:
        cmd.append("--dry-run")
    if force_rule:
        cmd += ["--forcerun", force_rule]
    # targets before the extra arguments: options such as `--quiet rules` take several values
    cmd += targets
    cmd += list(args.snakemake_args or [])
    return cmd


def run_stage(args: argparse.Namespace) -> int:
    from agir.config import default_config_path, overrides_as_tree, persist_overrides, resolve_run_config
    from agir.runs import write_yaml

    overrides = list(args.override)
    if args.command == "query":
        overrides = query_flag_overrides(args) + overrides
    cfg, run, accumulated = resolve_run_config(args.config, overrides)
    config_file = Path(args.config) if args.config else default_config_path()
    overrides_file = None
    if accumulated and not args.dry_run:
        overrides_file = persist_overrides(run, accumulated)
    elif accumulated:
        # a dry run must not change the run's persisted state: use a temporary copy
        import tempfile

        overrides_file = Path(tempfile.mkdtemp(prefix="agir-")) / "overrides.yaml"
        write_yaml(overrides_file, overrides_as_tree(accumulated))

    env = dict(os.environ)
    force_rule = None
    if getattr(args, "force", False):
        env["AGIR_FORCE"] = "1"
        force_rule = "infer_seg" if cfg["seg_inference"]["shards"] == 1 else "infer_seg_shard"
    if getattr(args, "refresh", False):
        env["AGIR_REFRESH"] = "1"
        force_rule = "download_cvat"
    if args.command == "run":
        targets = ["all"]
    else:
        targets = [str(run / STAGES[args.command][0])]
    cmd = snakemake_command(args, config_file, overrides_file, targets, force_rule)
    print("agir: " + " ".join(shlex.quote(c) for c in cmd[2:]), file=sys.stderr)
    proc = subprocess.run(cmd, env=env)
    if proc.returncode == 0 and not args.dry_run:
        where = run if args.command == "run" else run / STAGES[args.command][0]
        print(f"agir: {args.command} done; outputs in {where}")
    elif proc.returncode != 0:
        print(f"agir: {args.command} failed (exit {proc.returncode}); see {run}/logs/", file=sys.stderr)
    return proc.returncode


def run_demo_data(args: argparse.Namespace) -> int:
    out = Path(args.out)
    if args.from_examples:
        from agir.demo import import_examples

        summary = import_examples(Path(args.from_examples), out)
    else:
        from agir.demo import generate_demo_data

        summary = generate_demo_data(out, images=args.images, seed=args.seed, width=args.width, height=args.height)
    print(f"agir: demo data in {out}: {summary}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        if args.command == "demo-data":
            return run_demo_data(args)
        if args.command == "status":
            from agir.status import print_status

            return print_status(args.config, args.override)
        return run_stage(args)
    except AgirError as exc:
        print(f"agir: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("agir: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
