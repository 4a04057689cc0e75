"""`agir-cvtoolkit`: the seed-compatible command line.

Each stage command persists its overrides for the run (`{run}/overrides.yaml`) and then runs
Snakemake on that stage's target output, so missing or stale upstream stages run first.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from agir import __version__
from agir.errors import AgirError

# command -> (target output inside the run folder, Snakemake rule to force with --force)
STAGES: dict[str, tuple[str, str]] = {
    "query": ("query/query.json", "query_db"),
    "infer-seg": ("infer/manifest.jsonl", "infer_seg"),
    "select": ("select/selection.json", "select_images"),
    "upload-cvat": ("cvat/upload.json", "upload_cvat"),
    "download-cvat": ("cvat/download.json", "download_cvat"),
    "preprocess": ("dataset/index.csv", "preprocess_dataset"),
    "train": ("model/best.pth", "train_model"),
    # the round's report pictures; the command then writes {run}/report.html with `snakemake --report`
    "report": ("report/summary.json", "report_summary"),
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


def _int_or_null(text: str) -> int | str:
    """An integer, or `null`/`none` to clear the saved value."""
    if text.strip().lower() in ("null", "none", "~"):
        return "null"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer or null, got {text!r}") from None


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
    q.add_argument("--limit", type=_int_or_null, help="at most N records (null clears an earlier --limit)")
    q.add_argument("--offset", type=_int_or_null)
    q.add_argument("--preview", type=_int_or_null, help="print the first N records")
    q.add_argument("--out", help="extra output formats: csv, parquet or csv,parquet (json is always written)")
    _common(q)

    i = sub.add_parser("infer-seg", help="pre-label masks with a model or the vegetation index -> infer/")
    i.add_argument("--force", action="store_true", help="redo every record")
    _common(i)
    _common(sub.add_parser("select", help="pick the images people annotate (select.strategy) -> select/"))
    _common(sub.add_parser("upload-cvat", help="send images + pre-labels to CVAT -> cvat/upload.json"))
    d = sub.add_parser("download-cvat", help="fetch refined masks from CVAT -> cvat/annotations/")
    d.add_argument("--refresh", action="store_true", help="download even when the server shows no change")
    _common(d)
    _common(sub.add_parser("preprocess", help="build the tiled, split dataset -> dataset/"))
    _common(sub.add_parser("train", help="train a segmentation model -> model/best.pth"))
    _common(sub.add_parser("run", help="run the whole configured loop (Snakemake target all)"))
    _common(sub.add_parser("report", help="the round's Snakemake report (builds what is missing) -> report.html"))

    st = sub.add_parser("status", help="every project's rounds: done / stale / waiting for CVAT / failed")
    st.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE")
    st.add_argument("--config", metavar="FILE")
    st.add_argument("--project", help="only this project (default: every project under io.out_root)")

    ov = sub.add_parser("overrides", help="show (or --clear) the settings saved for a run (overrides.yaml)")
    ov.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                    help="which run, e.g. -o project.subname=round_002")
    ov.add_argument("--config", metavar="FILE")
    ov.add_argument("--clear", action="store_true", help="forget every saved setting of the run")

    sim = sub.add_parser("simulate", help="measure what active selection buys with a simulated annotator")
    sim.add_argument("sim_args", nargs="*", help="the simulator's options: agir-cvtoolkit simulate --help")

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
        if isinstance(val, str) and val.strip().lower() in ("null", "none", "~"):
            out.append(f"{key}=null")  # clears the saved value
            continue
        if dest == "out":
            val = [v.strip() for v in str(val).split(",") if v.strip()]
        out.append(f"{key}={yaml.safe_dump(val, default_flow_style=True, width=10**9).strip()}")
        if out[-1].endswith("\n..."):
            out[-1] = out[-1][:-4]
    return out


def snakemake_command(args: argparse.Namespace, config_file: Path | None, targets: list[str],
                      force_rule: str | None = None) -> list[str]:
    from agir.config import workflow_root

    root = workflow_root()
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(root / "Snakefile")]
    # options that take several values are written --opt=VALUE, so nothing after them is read as theirs
    if config_file is not None:
        cmd.append(f"--configfile={config_file}")
    if args.profile:
        cmd.append(f"--profile={args.profile}")
    elif (root / "profiles" / "default").is_dir():
        cmd.append(f"--workflow-profile={root / 'profiles' / 'default'}")
    if args.cores is not None:
        cmd.append(f"--cores={args.cores}")
    elif not args.profile:
        cmd.append("--cores=all")
    if args.dry_run:
        cmd.append("--dry-run")
    if force_rule:
        cmd.append(f"--forcerun={force_rule}")
    cmd += targets
    cmd += list(args.snakemake_args or [])
    return cmd


def _die_with_parent() -> None:
    """Snakemake ends (SIGTERM: it stops its jobs and unlocks) when this CLI is killed, even with -9."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def stage_overrides(args: argparse.Namespace) -> tuple[list[str], tuple[str, ...]]:
    """The command's overrides and the saved keys they replace (query flags replace earlier query flags)."""
    overrides = list(args.override)
    replace: tuple[str, ...] = ()
    if args.command == "query":
        flags = query_flag_overrides(args)
        if flags:
            replace = tuple(QUERY_FLAGS.values())
        overrides = flags + overrides
    return overrides, replace


def precheck(cfg: dict, command: str, accumulated: dict) -> None:
    """Errors Snakemake would only meet after deleting a stage's outputs: check them first."""
    if command == "query" or any(k.startswith(("query.", "db.")) for k in accumulated):
        from agir.db import query as dbq

        entry = (cfg.get("db") or {}).get(cfg["query"]["db"]) or {}
        path = str(entry.get("path", ""))
        if path and not any(ch in path for ch in "*?[") and not Path(path).exists():
            return  # a database a rule builds (the demo) or one that appears later: Snakemake says so
        dbq.check_query_config(cfg)


def run_stage(args: argparse.Namespace) -> int:
    import logging

    from agir.config import (
        OUT_ROOT_ENV,
        choose_out_root,
        config_file_differences,
        persist_config_file_settings,
        persist_overrides,
        remember_out_root,
        resolve_run_config,
        saved_config_file_settings,
    )
    from agir.logs import setup_logging

    setup_logging()
    log = logging.getLogger("agir")
    overrides, replace = stage_overrides(args)
    # where the runs are: -o io.out_root, --config FILE's, the folder's remembered one, or the config's
    out_root = choose_out_root(args.config, overrides, Path.cwd())
    cfg, run, accumulated = resolve_run_config(args.config, overrides, replace_prefixes=replace,
                                               out_root=out_root.path)
    if args.command == "download-cvat" and "preprocess.label_source" not in accumulated \
            and cfg["preprocess"]["label_source"] != "cvat":
        # people's corrections are what this round trains on from now on
        accumulated["preprocess.label_source"] = "cvat"
        cfg["preprocess"]["label_source"] = "cvat"
        log.info("download-cvat: this round's dataset will be built from the CVAT annotations "
                 "(preprocess.label_source=cvat saved for %s)", run)
    precheck(cfg, args.command, accumulated)
    file_settings = config_file_differences(args.config) if args.config else saved_config_file_settings(run)
    if not args.dry_run:
        persist_overrides(run, accumulated)
        if args.config:
            persist_config_file_settings(run, file_settings)
        note = remember_out_root(Path.cwd(), out_root, command=" ".join(["agir-cvtoolkit", *sys.argv[1:]]))
        if note:
            log.info(note)
    elif accumulated:
        log.info("dry run: the settings are not saved")
    if out_root.why.startswith("remembered"):
        log.info("io.out_root=%s (%s)", out_root.path, out_root.why)

    env = dict(os.environ)
    env[OUT_ROOT_ENV] = out_root.path  # the Snakefile places the run folders where this command found them
    force_rule = None
    if getattr(args, "force", False):
        env["AGIR_FORCE"] = "1"
        force_rule = "infer_seg" if int(cfg["seg_inference"]["shards"]) == 1 else "infer_seg_shard"
    if getattr(args, "refresh", False):
        env["AGIR_REFRESH"] = "1"
        force_rule = "download_cvat"
    if args.command == "run":
        targets = [str(run / "report" / "summary.json")]
        targets += [str(run / t) for t in run_targets(cfg)]
    else:
        targets = [str(run / STAGES[args.command][0])]
    if args.dry_run and accumulated:
        # a dry run must not change the run's saved state: show what Snakemake would do with the new settings
        env["AGIR_PENDING_OVERRIDES"] = json.dumps({**file_settings, **accumulated}, default=str)
        env["AGIR_PENDING_RUN"] = str(run)
    config_file = Path(args.config) if args.config else None
    cmd = snakemake_command(args, config_file, targets, force_rule)
    print("agir: " + " ".join(shlex.quote(c) for c in cmd[2:]), file=sys.stderr)
    code, tail = run_snakemake(cmd, env)
    if code == 0 and not args.dry_run and args.command == "report":
        # a second Snakemake: --report only reads finished outputs; the targets name the round it is about
        cmd = snakemake_command(args, config_file, targets + [f"--report={run / 'report.html'}"])
        print("agir: " + " ".join(shlex.quote(c) for c in cmd[2:]), file=sys.stderr)
        code, tail = run_snakemake(cmd, env)
    if code == 0 and not args.dry_run:
        where = {"run": run, "report": run / "report.html"}.get(args.command) or run / STAGES[args.command][0]
        print(f"agir: {args.command} done; outputs in {where}")
    elif code != 0:
        print(f"agir: error: {args.command}: {snakemake_error(tail, run)}", file=sys.stderr)
    return code


def run_targets(cfg: dict) -> list[str]:
    from agir.workflow import STAGE_TARGETS, stages_until

    return [t for stage in stages_until(cfg) for t in STAGE_TARGETS[stage]]


def run_snakemake(cmd: list[str], env: dict) -> tuple[int, list[str]]:
    """Run Snakemake, passing its output through, and keep the tail of stderr to name the error."""
    import collections

    tail: collections.deque[str] = collections.deque(maxlen=400)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True, errors="replace", bufsize=1,
                            preexec_fn=_die_with_parent)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            sys.stderr.write(line)
            tail.append(line.rstrip("\n"))
        return proc.wait(), list(tail)
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise


def snakemake_error(lines: list[str], run: Path) -> str:
    """One line for the actual error: the failed rule's own message from its log, or what Snakemake refused."""
    text = "\n".join(lines)
    for rule, files in re.findall(r"Missing input files for rule (\S+?):.*?affected files:\s*\n((?:\s+\S+\n?)+)", text, re.S):
        missing = [f for f in files.split() if "/.agir/not-used/" not in f]
        if missing:
            return (f"rule {rule} needs {missing[0]}, which is missing and no rule makes it; "
                    "create it or fix the setting that names it")
    if "LockException" in text or "Directory cannot be locked" in text:
        return ("another Snakemake is running in this folder (its lock is held by a live process); wait for it, "
                "or stop it and rerun this command")
    m = re.search(r"agir: config error: (.+)", text)
    if m:
        return m.group(1).strip()
    for rule, log in re.findall(r"Error in rule (\S+?):.*?log: (\S+)", text, re.S)[::-1]:
        path = Path(log)
        if path.exists():
            errors = [ln for ln in path.read_text(errors="replace").splitlines() if " ERROR " in f" {ln} "
                      or ln.startswith("ERROR")]
            if errors:
                msg = errors[-1].split("ERROR", 1)[1].strip(" :")
                return f"{rule}: {msg} (log: {path})"
            return f"rule {rule} failed; see its log {path}"
        return f"rule {rule} failed before writing its log (see the Snakemake output above)"
    m = re.search(r"(\w+(?:Exception|Error))[:\s]+(.+)", text)
    if m:
        return f"{m.group(1)}: {m.group(2).strip()}"
    errs = [ln for ln in lines if ln.strip()]
    return errs[-1].strip() if errs else f"Snakemake failed; rerun with --dry-run to see why ({run})"


def show_overrides(args: argparse.Namespace) -> int:
    """`agir-cvtoolkit overrides [--clear]`: the settings saved for a run, as YAML."""
    import yaml

    from agir.config import (
        CONFIG_FILE_SETTINGS,
        OVERRIDES_FILE,
        choose_out_root,
        load_config,
        overrides_as_tree,
        persisted_overrides,
    )
    from agir.runs import run_dir

    cfg = load_config(args.config, overrides=args.override, validate=False)
    cfg["io"]["out_root"] = choose_out_root(args.config, args.override, Path.cwd()).path
    run = run_dir(cfg)
    paths = [run / OVERRIDES_FILE, run / CONFIG_FILE_SETTINGS]
    saved = persisted_overrides(run)
    if args.clear:
        for path in paths:
            path.unlink(missing_ok=True)
        print(f"agir: cleared {len(saved)} saved setting(s) of {run}")
        return 0
    if not saved:
        print(f"# {run}: nothing saved; the round uses {args.config or 'config/config.yaml'} as it is")
        return 0
    print(f"# {' + '.join(str(p) for p in paths if p.exists())}")
    print(yaml.safe_dump(overrides_as_tree(saved), sort_keys=False).rstrip())
    return 0


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
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["simulate"]:
        # everything after `simulate` belongs to the simulator's own parser
        from agir.simulate import main as simulate_main

        return int(simulate_main(argv[1:]) or 0)
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 2
    try:
        if args.command == "demo-data":
            return run_demo_data(args)
        if args.command == "status":
            from agir.status import print_status

            return print_status(args.config, args.override, project=args.project)
        if args.command == "overrides":
            return show_overrides(args)
        return run_stage(args)
    except AgirError as exc:
        print(f"agir: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("agir: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
