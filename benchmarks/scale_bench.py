"""What a round of thousands of images costs: the workflow's own cost as the round grows (issue 16 §3).

For N = 100, 1,000 and 10,000 records (`--sizes`) it runs, each through the real `snakemake` command on its
stage target, in a fresh project folder:

    query (query/query.json) -> infer-seg (infer/manifest.jsonl) -> upload-cvat (cvat/upload.json)
      -> [the simulated annotator completes every task, painting one small square per task]
      -> download-cvat (cvat/download.json) -> preprocess (dataset/index.csv)

on demo data at small image size (`agir.demo`, 128x96 px frames, about 7 plant cutouts each), one record = one
semif cutout row, `seg_inference.source.image_mode: cutout` (one inference item, one CVAT frame and one dataset
source per record), the vegetation-index backend (no model), `preprocess.label_source: cvat`, and the CVAT test
server (tests/cvat_server, in this process) with the default task split (50 frames per task, jobs of 10).
`cvat.poll_seconds` is 0.05 so that the server's simulated asynchronous steps do not add sleeps.

Per stage it records:
  wall      seconds of the `snakemake` command (start to exit: Snakemake start-up, DAG, the job, metadata);
  rule      seconds of the rule's job process (Snakemake's `benchmark:` file {run}/benchmarks/<rule>.tsv, `s`);
  stage     seconds inside the stage functions the command's rule scripts call (agir.rule.run_rule ->
            run_*_stage), summed over the command's jobs (inference also builds the round's class set);
  io        seconds, inside those stage functions, in agir.runs' JSON writers (write_json, write_jsonl,
            append_jsonl: journals, manifests, receipts, metrics);
  rss       peak resident memory in MiB of the rule's job: the largest of getrusage's maximum RSS of the job
            process (VmHWM) and of its largest waited-for child (getrusage), and the benchmark file's max_rss
            (the process tree, sampled every second).
`stage`, `io` and the RSS of the process come from a `sitecustomize` shim that the benchmark puts on PYTHONPATH for
the Snakemake commands; it acts only in rule-script processes (`.snakemake/scripts/*`) and changes no result.

Printed figures (one `key=value` a line, after a table):
  cost_exponent_<stage>=   least-squares slope of log(rule seconds) over log(N) across the sizes (goal <= 1.1);
                           `cost_exponent_wall_<stage>=` is the same over the command's wall seconds.
  overhead_fraction_<N>=   for the largest N (10,000 by default): sum over the five stages of
                           (wall - stage + io) divided by the sum of wall: everything that is not the stages' own
                           work — Snakemake start-up, DAG and job metadata, the rule process start-up (interpreter,
                           imports, settings), and the journals/manifests/receipts the stages write (goal <= 0.10).
  dry_run_seconds_<R>_rounds=  wall seconds of `snakemake -n` (the configured round's `all`) on a project of R finished
                           rounds (default 20; goal <= 5). Each round is small (`--round-records` records, the loop
                           through CVAT, a 1-step training), round k >= 2 pre-labels with round k-1's model
                           (`ckpt_path: previous`) and its dataset combines every earlier round, so the dry run's DAG
                           spans every round. Round R+1 is the configured one (not yet built), as when a user plans it.
Each measurement line carries the machine's load average (`uptime`); the machine may be shared.

`--profile` also writes cProfile files of every rule process (`<workdir>/profiles/*.prof`) for the largest N;
`--quick` (N = 20, 100; 3 rounds) is the CI smoke run (tests/test_scale_bench.py).

    .venv/bin/python benchmarks/scale_bench.py [--sizes 100,1000,10000] [--rounds 20] [--quick] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from cvat_server.server import CvatTestServer  # noqa: E402

STAGES = {  # stage -> (rule, target inside the run folder)
    "query": ("query_db", "query/query.json"),
    "infer": ("infer_seg", "infer/manifest.jsonl"),
    "upload": ("upload_cvat", "cvat/upload.json"),
    "download": ("download_cvat", "cvat/download.json"),
    "preprocess": ("preprocess_dataset", "dataset/index.csv"),
}
BENCH_FILE = {"query_db": "query", "infer_seg": "infer_seg", "upload_cvat": "upload_cvat",
              "download_cvat": "download_cvat", "preprocess_dataset": "preprocess"}
WIDTH, HEIGHT = 128, 96
CUTOUTS_PER_IMAGE = 6  # the painter makes about 7.6 at 128x96; fewer keeps a margin

# Runs in every Python process started with the shim on PYTHONPATH; acts only in Snakemake rule scripts.
SHIM = r'''
import os, sys
_OUT = os.environ.get("AGIR_SCALE_SHIM")
_ARGV0 = (sys.argv[0] if sys.argv else "") or ""
if _OUT and "/.snakemake/scripts/" in _ARGV0.replace("\\", "/"):
    import atexit, json, resource, time
    _rec = {"script": os.path.basename(_ARGV0), "pid": os.getpid(), "stage_s": None, "io_s": 0.0, "io_calls": 0}
    _depth = [0]

    def _timed(fn):
        def wrapper(*a, **k):
            _depth[0] += 1
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                _depth[0] -= 1
                if _depth[0] == 0:
                    _rec["io_s"] += time.perf_counter() - t
                    _rec["io_calls"] += 1
        wrapper.__name__ = fn.__name__
        wrapper.__doc__ = fn.__doc__
        return wrapper

    import agir.runs as _runs
    for _name in ("write_json", "write_jsonl", "append_jsonl"):
        setattr(_runs, _name, _timed(getattr(_runs, _name)))
    import agir.rule as _rule
    _run_rule = _rule.run_rule

    def run_rule(smk, stage, *a, **k):
        def timed_stage(*sa, **sk):
            _rec["io_s"], _rec["io_calls"] = 0.0, 0  # only what the stage itself writes
            t = time.perf_counter()
            try:
                return stage(*sa, **sk)
            finally:
                _rec["stage_s"] = time.perf_counter() - t
        timed_stage.__name__ = getattr(stage, "__name__", "stage")
        return _run_rule(smk, timed_stage, *a, **k)

    _rule.run_rule = run_rule
    _prof = None
    if os.environ.get("AGIR_SCALE_PROFILE"):
        import cProfile
        _prof = cProfile.Profile()
        _prof.enable()

    def _done():
        if _prof is not None:
            _prof.disable()
            _prof.dump_stats(os.path.join(os.environ["AGIR_SCALE_PROFILE"], _rec["script"] + ".prof"))
        # VmHWM, not getrusage(SELF): after exec, ru_maxrss still counts the forked Snakemake's pages
        with open("/proc/self/status") as fh:
            _rec["maxrss_kb"] = next((int(l.split()[1]) for l in fh if l.startswith("VmHWM:")), 0)
        _rec["children_maxrss_kb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        with open(_OUT, "a") as fh:
            fh.write(json.dumps(_rec) + "\n")

    atexit.register(_done)
'''


def load() -> str:
    try:
        return "load " + " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "load n/a"


# ------------------------------------------------------------------------------------------------ data

def demo_data(folder: Path, records: int) -> dict:
    """Demo database with at least `records` semif rows at 128x96 px (reused when already there).

    The database is renamed from agir_demo.duckdb to scale.duckdb: the workflow's `demo_data` rule owns files of
    that name and would regenerate them at the default size.
    """
    from agir.demo import generate_demo_data

    summary_file = folder / "scale_data.json"
    if summary_file.exists():
        summary = json.loads(summary_file.read_text())
        if (summary.get("cutouts", 0) >= records and summary.get("size") == [WIDTH, HEIGHT]
                and Path(summary["database"]).exists()):
            return summary
    if folder.exists():
        shutil.rmtree(folder)
    images = max(8, math.ceil(records / CUTOUTS_PER_IMAGE))
    t = time.perf_counter()
    summary = generate_demo_data(folder, images=images, seed=7, width=WIDTH, height=HEIGHT, field_images=2)
    if summary["cutouts"] < records:
        raise SystemExit(f"demo data: {summary['cutouts']} cutouts < {records}; raise CUTOUTS_PER_IMAGE's margin")
    db = folder / "scale.duckdb"
    os.replace(summary["database"], db)
    summary["database"] = str(db)
    summary_file.write_text(json.dumps(summary, indent=2))
    print(f"demo data: {images} images, {summary['cutouts']} records in {time.perf_counter() - t:.0f} s ({load()})",
          flush=True)
    return summary


def project_config(data: dict, name: str, limit: int, **extra) -> dict:
    db = data["database"]
    cfg = {
        "project": {"name": name, "subname": "round_001", "until": "preprocess"},
        "io": {"out_root": "outputs/runs", "roots": data["io_roots"], "field_storage_dir": data["field_storage_dir"]},
        "db": {"semif": {"path": db, "table": "semif", "id_column": "cutout_id"},
               "field": {"path": db, "table": "field_data", "id_column": "id"}},
        "query": {"limit": limit},
        "seg_inference": {"source": {"image_mode": "cutout"}, "device": "cpu", "batch_size": 4,
                          "tile": {"size": 128, "overlap": 0.25}},
        "preprocess": {"label_source": "cvat", "tile": {"size": 128, "overlap": 0.0}},
        "cvat": {"keys_file": "no-keys.yaml", "project_name": f"agir-{name}", "poll_seconds": 0.05,
                 "backoff_seconds": 0.05},
        "cvat_download": {"poll_seconds": 0.1},
    }
    for key, value in extra.items():  # dotted keys
        node = cfg
        *path, last = key.split(".")
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return cfg


# ------------------------------------------------------------------------------------------------ running

class Runner:
    """Runs `snakemake` in a project folder with the shim on PYTHONPATH and CVAT_* pointing at the test server."""

    def __init__(self, workdir: Path, shim_dir: Path, server: CvatTestServer | None, profile_dir: Path | None = None):
        self.workdir = workdir
        self.records = workdir / "shim.jsonl"
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "AGIR_SCALE_SHIM": str(self.records),
               "PYTHONPATH": os.pathsep.join(p for p in (str(shim_dir), os.environ.get("PYTHONPATH")) if p)}
        for key in ("CVAT_ACCESS_TOKEN", "CVAT_ORG", "AGIR_SCALE_PROFILE"):
            env.pop(key, None)
        if server is not None:
            env.update(CVAT_HOST=server.url, CVAT_USERNAME=server.username, CVAT_PASSWORD=server.password)
        if profile_dir is not None:
            profile_dir.mkdir(parents=True, exist_ok=True)
            env["AGIR_SCALE_PROFILE"] = str(profile_dir)
        self.env = env

    def snakemake(self, *args: str, timeout: int = 3600) -> tuple[float, subprocess.CompletedProcess]:
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(ROOT / "Snakefile"), "--directory",
               str(self.workdir), "--configfile", str(self.workdir / "config.yaml"), "--cores", "2", *args]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.workdir, capture_output=True, text=True, timeout=timeout, env=self.env)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"snakemake {' '.join(args)} failed ({proc.returncode}) in {self.workdir}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
        return wall, proc

    def status(self) -> float:
        """Wall seconds of `agir-cvtoolkit status` in the project folder (it reads every round and plans each)."""
        cmd = [str(Path(sys.executable).with_name("agir-cvtoolkit")), "status", "--config", "config.yaml"]
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=self.workdir, capture_output=True, text=True, timeout=3600, env=self.env)
        wall = time.perf_counter() - t
        if proc.returncode != 0:
            raise SystemExit(f"agir-cvtoolkit status failed ({proc.returncode}) in {self.workdir}:\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return wall

    def shim_lines(self) -> list[dict]:
        if not self.records.exists():
            return []
        return [json.loads(line) for line in self.records.read_text().splitlines() if line.strip()]


def bench_tsv(run: Path, rule: str) -> tuple[float | None, float | None]:
    """(seconds, max_rss MiB) from Snakemake's benchmark file of a rule, None where missing or NA."""
    path = run / "benchmarks" / f"{BENCH_FILE[rule]}.tsv"
    if not path.exists():
        return None, None
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    if not rows:
        return None, None

    def num(v):
        try:
            return float(v)
        except (TypeError, ValueError):
            return None

    return num(rows[-1].get("s")), num(rows[-1].get("max_rss"))


def annotate(server: CvatTestServer, project_name: str) -> int:
    """The people: paint a small square on the first frame of each task, then complete every job."""
    import numpy as np

    with server.lock:
        pid = next(p["id"] for p in server.projects.values() if p["name"] == project_name)
        done = {j["task_id"] for j in server.jobs.values() if j["stage"] == "acceptance"}
        created = {j["task_id"] for j in server.jobs.values()}  # jobs exist once the task's data has arrived
        tasks = [t for t in server.tasks.values()
                 if t["project_id"] == pid and t["id"] in created and t["id"] not in done and t["frames"]]
        label = next(lab["name"] for lab in sorted(server.labels.values(), key=lambda x: x["id"])
                     if lab.get("project_id") == pid)
    a = server.annotator
    for t in tasks:
        f = t["frames"][0]
        bitmap = np.zeros((f["height"], f["width"]), bool)
        bitmap[: max(1, f["height"] // 3), : max(1, f["width"] // 3)] = True
        a.paint_mask(t["id"], 0, label, bitmap)
    with server.lock:
        ids = {t["id"] for t in tasks}
        for j in server.jobs.values():
            if j["task_id"] in ids:
                j["stage"], j["state"] = "acceptance", "completed"
        for t in tasks:
            server.touch(t["id"])
    return len(tasks)


def measure(n: int, data: dict, base: Path, shim_dir: Path, profile: bool, with_status: bool) -> dict:
    """Run the five stages for N records in a fresh project; per stage: wall, rule, stage, io, rss."""
    workdir = base / f"n{n}"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    name = f"scale{n}"
    (workdir / "config.yaml").write_text(yaml.safe_dump(project_config(data, name, n), sort_keys=False))
    run = workdir / "outputs" / "runs" / name / "round_001"
    server = CvatTestServer().start()
    try:
        runner = Runner(workdir, shim_dir, server, workdir / "profiles" if profile else None)
        out: dict[str, dict] = {}
        for stage, (rule, target) in STAGES.items():
            if stage == "download":
                t = time.perf_counter()
                tasks = annotate(server, f"agir-{name}")
                print(f"  N={n}: annotator completed {tasks} tasks in {time.perf_counter() - t:.1f} s", flush=True)
            before = len(runner.shim_lines())
            wall, _ = runner.snakemake(rel(run / target, workdir))
            lines = runner.shim_lines()[before:]
            rule_s, tsv_rss = bench_tsv(run, rule)
            # every rule process of the command counts (e.g. the round's class set before inference)
            rss = [v for v in [tsv_rss] + [(r.get(k) or 0) / 1024 for r in lines
                                          for k in ("maxrss_kb", "children_maxrss_kb")] if v]
            stage_s = [r["stage_s"] for r in lines if r.get("stage_s") is not None]
            out[stage] = {"wall": wall, "rule": rule_s, "stage": sum(stage_s) if stage_s else None,
                          "io": sum(r.get("io_s", 0.0) for r in lines), "io_calls": sum(r.get("io_calls", 0) for r in lines),
                          "rss": max(rss) if rss else None, "jobs": len(lines), "load": load()}
            m = out[stage]
            print(f"  N={n:>6} {stage:<10} wall {wall:7.2f} s  rule {fmt(m['rule'])} s  stage {fmt(m['stage'])} s  "
                  f"io {m['io']:6.2f} s ({m['io_calls']} writes)  rss {fmt(m['rss'], 0)} MiB  {m['jobs']} job(s)  ({m['load']})",
                  flush=True)
        count = sum(1 for _ in open(run / "infer" / "manifest.jsonl"))
        if count != n:
            raise SystemExit(f"N={n}: infer/manifest.jsonl has {count} lines, expected {n}")
        if not with_status:
            return out
        out["status"] = {"wall": runner.status(), "load": load()}
        print(f"  N={n:>6} status     wall {out['status']['wall']:7.2f} s  ({out['status']['load']})", flush=True)
        return out
    finally:
        server.stop()


def rel(path: Path, workdir: Path) -> str:
    """Targets as the rules name them (io.out_root is relative to the project folder)."""
    return str(path.relative_to(workdir))


def fmt(v: float | None, digits: int = 2) -> str:
    return "   n/a" if v is None else f"{v:7.{digits}f}"


# ------------------------------------------------------------------------------------------------ rounds

class AutoAnnotator(threading.Thread):
    """People who finish every new task of a project within a moment (for rounds built with cvat_download.wait)."""

    def __init__(self, server: CvatTestServer, project_name: str):
        super().__init__(daemon=True)
        self.server, self.project_name, self.stop = server, project_name, threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        while not self.stop.wait(0.1):
            try:
                with self.server.lock:
                    ready = any(p["name"] == self.project_name for p in self.server.projects.values()) and any(
                        j["stage"] == "annotation" for j in self.server.jobs.values())
                if ready:
                    annotate(self.server, self.project_name)
            except BaseException as exc:  # noqa: BLE001 - reported by the main thread
                self.error = exc
                print(f"  rounds: the simulated annotator stopped: {exc!r}", file=sys.stderr, flush=True)
                return


def dry_run_rounds(rounds: int, per_round: int, data: dict, base: Path, shim_dir: Path) -> tuple[float, float]:
    """Build `rounds` finished small rounds, then time `snakemake -n` planning the next and `agir-cvtoolkit status`."""
    workdir = base / "rounds"
    if workdir.exists():
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True)
    name = "rounds"
    cfg = project_config(data, name, per_round, **{
        "query.sort": "cutout_id:asc", "cvat_download.wait": True, "cvat_download.timeout_minutes": 10,
        "train.epochs": 1, "train.max_steps_per_epoch": 1, "train.batch_size": 2, "train.crop_size": 32,
        "train.num_workers": 0, "train.accelerator": "cpu", "train.max_val_batches": 1,
    })
    (workdir / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    server = CvatTestServer().start()
    people = AutoAnnotator(server, f"agir-{name}")
    people.start()
    started = time.perf_counter()
    try:
        runner = Runner(workdir, shim_dir, server)
        for k in range(1, rounds + 1):
            sub = f"round_{k:03d}"
            run = workdir / "outputs" / "runs" / name / sub
            run.mkdir(parents=True, exist_ok=True)
            # each round its own records (as the CLI saves -o values for a run)
            (run / "overrides.yaml").write_text(yaml.safe_dump({"query": {"offset": (k - 1) * per_round}}))
            # one round after the other: a round's class set and dataset take in the rounds before it
            runner.snakemake(rel(run / "dataset" / "index.csv", workdir), "--config", f"project={{subname: {sub}}}")
            if people.error:
                raise people.error
        print(f"  rounds: {rounds} rounds of {per_round} records built in {time.perf_counter() - started:.0f} s "
              f"({load()})", flush=True)
        # the next round pre-labels with round R's model: the plan walks back through round R's dataset, which
        # combines every round's CVAT receipt
        nxt = f"round_{rounds + 1:03d}"
        run = workdir / "outputs" / "runs" / name / nxt
        run.mkdir(parents=True)
        (run / "overrides.yaml").write_text(yaml.safe_dump({
            "project": {"until": "train"}, "query": {"offset": rounds * per_round},
            "seg_inference": {"model": {"ckpt_path": "previous"}}}))
        wall, proc = runner.snakemake("-n", "--config", f"project={{subname: {nxt}}}")
        jobs = planned_jobs(proc.stdout)
        print(f"  rounds: snakemake -n for {nxt}: {wall:.2f} s, plans {jobs} ({load()})", flush=True)
        status = runner.status()
        print(f"  rounds: agir-cvtoolkit status: {status:.2f} s ({load()})", flush=True)
        return wall, status
    finally:
        people.stop.set()
        server.stop()


def planned_jobs(stdout: str) -> dict[str, int]:
    """Job counts of a dry run's summary table."""
    out: dict[str, int] = {}
    lines = stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if line.split() == ["job", "count"]), len(lines))
    for line in lines[start + 1:]:
        parts = line.split()
        if parts and parts[0] == "total":
            break
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def slope(ns: list[int], ts: list[float]) -> float:
    x, y = np.log(np.asarray(ns, float)), np.log(np.maximum(np.asarray(ts, float), 1e-6))
    return float(np.polyfit(x, y, 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="100,1000,10000", help="comma-separated record counts")
    ap.add_argument("--rounds", type=int, default=20, help="finished rounds for the dry-run figure")
    ap.add_argument("--round-records", type=int, default=6, help="records per round of the dry-run project")
    ap.add_argument("--quick", action="store_true", help="N = 20,100 and 3 rounds (CI)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep everything here (default: a temp folder)")
    ap.add_argument("--profile", action="store_true", help="cProfile every rule process at the largest N")
    ap.add_argument("--skip-rounds", action="store_true", help="leave out the dry-run figure")
    args = ap.parse_args()
    sizes = [20, 100] if args.quick else sorted(int(s) for s in args.sizes.split(","))
    rounds = 3 if args.quick else args.rounds
    if len(sizes) < 2:
        ap.error("--sizes needs at least two values for a slope")

    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="agir-scale-")
        base = Path(tmp.name)
    else:
        base = args.workdir.resolve()
        base.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    try:
        shim_dir = base / "shim"
        shim_dir.mkdir(exist_ok=True)
        (shim_dir / "sitecustomize.py").write_text(SHIM)
        print(f"scale bench: sizes {sizes}, {rounds} rounds, in {base} ({load()})", flush=True)
        data = demo_data(base / "demo", max(max(sizes), rounds * args.round_records))
        results = {n: measure(n, data, base, shim_dir, args.profile and n == max(sizes), n == max(sizes)) for n in sizes}
        dry = None if args.skip_rounds else dry_run_rounds(rounds, args.round_records, data, base, shim_dir)

        print("\nseconds of each stage's rule (wall seconds of its command) and peak MiB; slope = log-log slope "
              "between neighbouring sizes")
        print(f"{'stage':<11}" + "".join(f"{'N=' + str(n):>24}" for n in sizes) + "".join(
            f"{'slope ' + str(a) + '-' + str(b):>16}" for a, b in zip(sizes, sizes[1:])))
        for stage in STAGES:
            rows = [results[n][stage] for n in sizes]
            secs = [m["rule"] or m["wall"] for m in rows]
            cells = "".join(f"{s_:9.2f} ({m['wall']:6.1f}) {m['rss'] or 0:5.0f}" for s_, m in zip(secs, rows))
            slopes = "".join(f"{slope([a, b], [x, y]):16.2f}" for a, b, x, y in zip(sizes, sizes[1:], secs, secs[1:]))
            print(f"{stage:<11}{cells}{slopes}")
        print()
        for stage in STAGES:
            print(f"cost_exponent_{stage}={slope(sizes, [results[n][stage]['rule'] or results[n][stage]['wall'] for n in sizes]):.3f}")
        for stage in STAGES:
            print(f"cost_exponent_wall_{stage}={slope(sizes, [results[n][stage]['wall'] for n in sizes]):.3f}")
        top = {k: v for k, v in results[max(sizes)].items() if k in STAGES}
        wall = sum(m["wall"] for m in top.values())
        overhead = sum(m["wall"] - (m["stage"] or 0.0) + m["io"] for m in top.values())
        print(f"overhead_fraction_{max(sizes)}={overhead / wall:.3f}")
        for stage in STAGES:
            print(f"peak_rss_mib_{stage}_{max(sizes)}={top[stage]['rss'] or float('nan'):.0f}")
        print(f"status_seconds_{max(sizes)}={results[max(sizes)]['status']['wall']:.2f}")
        if dry is not None:
            print(f"dry_run_seconds_{rounds}_rounds={dry[0]:.2f}")
            print(f"status_seconds_{rounds}_rounds={dry[1]:.2f}")
        print(f"bench_seconds={time.perf_counter() - started:.0f} ({load()})")
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
