"""A throwaway single-node SLURM on this machine, for testing ``profiles/slurm`` for real.

What it does (facts measured on this kind of machine: ``../shared/notes/slurm_single_node.md``):

* installs Debian's ``slurm-wlm`` + ``munge`` once when ``slurmctld`` is missing (root only);
* writes ``slurm.conf`` + ``gres.conf`` into a private state folder, with a fake GPU GRES backed by a
  char device made with ``mknod`` so ``resources: gpu=1`` rules get ``--gpus=1`` and
  ``CUDA_VISIBLE_DEVICES`` without a GPU;
* starts ``munged`` (default socket, reused when one already answers), ``slurmctld`` and ``slurmd``
  on loopback with free ports, waits until ``sinfo`` shows the node idle, and later stops exactly the
  processes it started, by PID (recorded in ``state.json`` so another process can stop them).

No slurmdbd: job status comes from ``squeue`` (``slurm-status-command: squeue`` in the profile), which
is reliable because ``MinJobAge`` here is far above 3 x ``slurm-init-seconds-before-status-checks``.
``/etc/slurm`` is never touched: clients find the config through ``SLURM_CONF`` and an ``srun``
wrapper first on ``PATH`` restores it inside jobs, because the jobstep plugin strips ``SLURM_*``
variables before its inner ``srun`` (trap 2 of the notes).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SLURM_PROFILE = REPO_ROOT / "profiles" / "slurm"
DEFAULT_PROFILE = REPO_ROOT / "profiles" / "default"
PARTITION = "agir"
MIN_NODE_CPUS = 8
STATE_FILE = "state.json"
MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
DAEMONS = ("slurmd", "slurmctld", "munged")  # stop order: node first, controller, then auth


class SlurmHarnessError(RuntimeError):
    """The local SLURM could not be set up; the message says what to look at."""


def _run(cmd: Sequence[str], *, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(list(cmd), capture_output=True, text=True, env=env, timeout=timeout)


def why_unavailable() -> str | None:
    """Reason the harness cannot run here, or None when it can (root + Linux)."""
    if sys.platform != "linux":
        return "the single-node SLURM harness needs Linux"
    if os.geteuid() != 0:
        return "the single-node SLURM harness needs root (it starts munged/slurmctld/slurmd)"
    return None


def _binary(name: str) -> str:
    """Full path of a SLURM/munge program; daemons live in /usr/sbin, which a PATH may lack."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not found:
        raise SlurmHarnessError(
            f"{name} not found: install slurm-wlm and munge (apt-get install slurm-wlm munge)"
        )
    return found


def ensure_installed(timeout: float = 600) -> None:
    """Install slurm-wlm and munge with apt when ``slurmctld`` is missing; no-op otherwise."""
    needed = ("slurmctld", "slurmd", "munged", "mungekey", "sbatch", "sinfo", "squeue", "srun")
    if all(shutil.which(b) or shutil.which(b, path="/usr/sbin:/usr/bin") for b in needed):
        return
    if shutil.which("apt-get") is None:
        raise SlurmHarnessError(
            "slurmctld is missing and apt-get is absent: install slurm-wlm and munge by hand"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
        res = _run(cmd, env=env, timeout=timeout)
        if res.returncode != 0:
            raise SlurmHarnessError(
                f"`{' '.join(cmd)}` failed (rc={res.returncode}): {res.stderr.strip()[-400:]}"
            )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still "exists"; treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _total_memory_mb() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) // 1024
    raise SlurmHarnessError("cannot read MemTotal from /proc/meminfo")


def _munge_answers() -> bool:
    if not MUNGE_SOCKET.exists() or shutil.which("munge") is None:
        return False
    enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
    if enc.returncode != 0:
        return False
    dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=10)
    return dec.returncode == 0


@dataclass
class SlurmCluster:
    """One single-node cluster living in ``state_dir``; ``start()`` then ``stop()``.

    ``cpus`` is what the node declares (default: twice the machine's cores, at least 8); ``mem_mb``
    defaults to 80% of RAM; ``gpus`` fake GPUs are offered as GRES ``gpu``.
    """

    state_dir: Path
    partition: str = PARTITION
    cpus: int | None = None
    mem_mb: int | None = None
    gpus: int = 1
    min_job_age_s: int = 600
    pids: dict[str, int] = field(default_factory=dict)
    nodename: str = ""
    ctld_port: int = 0
    slurmd_port: int = 0
    start_seconds: float = 0.0  # how long start() took, for reports

    # ---- paths ---------------------------------------------------------------------------------
    @property
    def conf(self) -> Path:
        return self.state_dir / "slurm.conf"

    @property
    def bin_dir(self) -> Path:
        return self.state_dir / "bin"

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM clients and snakemake pointing at this cluster."""
        env = dict(os.environ)
        # A caller running inside a real SLURM job must not leak its allocation into ours.
        for key in list(env):
            if key.startswith(("SLURM_", "SBATCH_", "SRUN_")):
                del env[key]
        env["SLURM_CONF"] = str(self.conf)
        env["PATH"] = f"{self.bin_dir}{os.pathsep}{env.get('PATH', '/usr/bin:/bin')}"
        return env

    # ---- state file (lets scripts/slurm_local.sh stop what another process started) ---------------
    def save_state(self) -> None:
        data = {k: v for k, v in asdict(self).items() if k not in ("state_dir", "start_seconds")}
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2))
        tmp.replace(self.state_dir / STATE_FILE)

    @classmethod
    def load(cls, state_dir: Path) -> SlurmCluster:
        path = Path(state_dir) / STATE_FILE
        if not path.is_file():
            raise SlurmHarnessError(
                f"no local SLURM state in {state_dir}: start one with `scripts/slurm_local.sh start`"
            )
        data = json.loads(path.read_text())
        return cls(state_dir=Path(state_dir), **data)

    # ---- configuration ----------------------------------------------------------------------------
    def write_config(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        for sub in ("state", "spool", "log", "run", "dev", "bin"):
            (self.state_dir / sub).mkdir(exist_ok=True)
        self.nodename = socket.gethostname().split(".")[0]
        try:
            addr = socket.gethostbyname(self.nodename)
        except OSError as exc:
            raise SlurmHarnessError(
                f"hostname {self.nodename!r} does not resolve ({exc}); add '127.0.0.1 {self.nodename}' to /etc/hosts"
            ) from exc
        if not addr.startswith("127."):
            # slurmctld insists SlurmctldHost is this host's short name; it must map to loopback here.
            raise SlurmHarnessError(
                f"hostname {self.nodename!r} resolves to {addr}, not loopback; add '127.0.0.1 {self.nodename}' to /etc/hosts"
            )
        # Declare more CPUs than the box has (config_overrides lets slurmd accept that; the slots are
        # just oversubscribed) so the profile's set-threads (up to 8) and a test's "more threads than
        # the submit host has cores" rule fit: EnforcePartLimits rejects anything bigger at sbatch time
        # instead of leaving it pending forever, which would hang snakemake.
        self.cpus = self.cpus or max(2 * (os.cpu_count() or 1), MIN_NODE_CPUS)
        self.mem_mb = self.mem_mb or int(_total_memory_mb() * 0.8)
        self.ctld_port = self.ctld_port or _free_port()
        self.slurmd_port = self.slurmd_port or _free_port()
        d = self.state_dir
        gres_lines = ["AutoDetect=off"]
        node_gres = ""
        if self.gpus:
            # The GPU plugin only needs a char device per GPU; /dev/null's numbers (1,3) are harmless.
            for i in range(self.gpus):
                dev = d / "dev" / f"nvidia{i}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))
            files = d / "dev" / (f"nvidia[0-{self.gpus - 1}]" if self.gpus > 1 else "nvidia0")
            gres_lines.append(f"NodeName={self.nodename} Name=gpu Count={self.gpus} File={files}")
            node_gres = f" Gres=gpu:{self.gpus}"
        conf = f"""# generated by tests/slurm_harness: single node on loopback, no accounting, no cgroups
ClusterName=agirtest
SlurmctldHost={self.nodename}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
EnforcePartLimits=ALL
MinJobAge={self.min_job_age_s}
KillWait=5
InactiveLimit=0
SchedulerType=sched/backfill
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
StateSaveLocation={d / "state"}
SlurmdSpoolDir={d / "spool"}
SlurmctldPidFile={d / "run" / "slurmctld.pid"}
SlurmdPidFile={d / "run" / "slurmd.pid"}
SlurmctldLogFile={d / "log" / "slurmctld.log"}
SlurmdLogFile={d / "log" / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
NodeName={self.nodename} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.mem_mb}{node_gres} State=UNKNOWN
PartitionName={self.partition} Nodes={self.nodename} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf.write_text(conf)
        (d / "gres.conf").write_text("\n".join(gres_lines) + "\n")
        # srun wrapper: the jobstep plugin drops SLURM_CONF before its inner srun (notes, trap 2).
        real_srun = shutil.which("srun", path="/usr/local/bin:/usr/bin:/bin") or _binary("srun")
        wrapper = self.bin_dir / "srun"
        wrapper.write_text(
            "#!/bin/sh\n"
            "# generated by tests/slurm_harness: point srun at the test cluster inside jobs\n"
            f'export SLURM_CONF="${{SLURM_CONF:-{self.conf}}}"\n'
            f'exec {shlex.quote(real_srun)} "$@"\n'
        )
        wrapper.chmod(0o755)

    # ---- lifecycle --------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> None:
        with open(self.state_dir / "log" / f"{name}.out", "ab") as log:
            # New session: the daemons outlive `slurm_local.sh start` and ignore the terminal's ^C.
            proc = subprocess.Popen(
                [_binary(cmd[0]), *cmd[1:]],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                start_new_session=True,
            )
        self.pids[name] = proc.pid
        self.save_state()

    def _wait(self, what: str, ok, timeout: float, watch: Sequence[str]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            for name in watch:
                if not _pid_alive(self.pids.get(name)):
                    raise SlurmHarnessError(f"{name} exited while waiting for {what}: {self._log_tail(name)}")
            time.sleep(0.2)
        raise SlurmHarnessError(
            f"timed out after {timeout:.0f}s waiting for {what}: {self._log_tail(*watch)}"
        )

    def _log_tail(self, *names: str) -> str:
        parts = []
        for name in names:
            for path in (self.state_dir / "log" / f"{name}.out", self.state_dir / "log" / f"{name}.log"):
                if path.is_file():
                    lines = path.read_text(errors="replace").strip().splitlines()[-5:]
                    if lines:
                        parts.append(f"[{path.name}] " + " | ".join(lines))
        return " ".join(parts) or "(no log output)"

    def node_state(self) -> str:
        res = _run(["sinfo", "-h", "-N", "-n", self.nodename, "-o", "%t"], env=self.env, timeout=10)
        return res.stdout.strip() if res.returncode == 0 else ""

    def start(self, timeout: float = 60) -> SlurmCluster:
        """Write the config and start munged (if needed), slurmctld and slurmd; wait for an idle node."""
        t0 = time.monotonic()
        ensure_installed()
        self.write_config()
        try:
            if not _munge_answers():
                if not MUNGE_KEY.exists():
                    res = _run([_binary("mungekey"), "--create"])
                    if res.returncode != 0:
                        raise SlurmHarnessError(f"mungekey --create failed: {res.stderr.strip()}")
                MUNGE_SOCKET.parent.mkdir(parents=True, exist_ok=True)
                self._spawn(
                    "munged",
                    ["munged", "-F", "--force", f"--pid-file={self.state_dir / 'run' / 'munged.pid'}"],
                )
                self._wait("munged", _munge_answers, timeout, ["munged"])
            conf = str(self.conf)
            # -i: ignore saved state from an earlier run of this folder; -c: clear the job queue.
            self._spawn("slurmctld", ["slurmctld", "-D", "-c", "-i", "-f", conf])
            self._wait(
                "slurmctld",
                lambda: _run(["scontrol", "ping"], env=self.env, timeout=10).stdout.count("UP") > 0,
                timeout,
                ["slurmctld"],
            )
            self._spawn("slurmd", ["slurmd", "-D", "-N", self.nodename, "-f", conf])
            self._wait(
                "node idle in sinfo", lambda: self.node_state() == "idle", timeout, ["slurmctld", "slurmd"]
            )
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - t0
        return self

    def running(self) -> dict[str, bool]:
        return {name: _pid_alive(pid) for name, pid in self.pids.items()}

    def cancel_all_jobs(self, timeout: float = 15) -> list[str]:
        """scancel every pending/running job of this private cluster and wait until they are gone."""
        if not _pid_alive(self.pids.get("slurmctld")):
            return []
        squeue = _run(["squeue", "-h", "-t", "PD,R,CG", "-o", "%i"], env=self.env, timeout=10)
        job_ids = squeue.stdout.split()
        if job_ids:
            _run(["scancel", *job_ids], env=self.env, timeout=10)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                left = _run(["squeue", "-h", "-t", "PD,R,CG", "-o", "%i"], env=self.env, timeout=10)
                if left.returncode != 0 or not left.stdout.strip():
                    break
                time.sleep(0.5)
        return job_ids

    def stop(self, timeout: float = 15) -> None:
        """Cancel this cluster's jobs, then stop the daemons this harness started, by PID."""
        self.cancel_all_jobs(timeout)
        for name in DAEMONS:
            pid = self.pids.get(name)
            if not _pid_alive(pid):
                continue
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _pid_alive(pid) and time.monotonic() < deadline:
                self._reap(pid)
                time.sleep(0.1)
            if _pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
            self._reap(pid)
        self.pids = {}
        if (self.state_dir / STATE_FILE).exists():
            self.save_state()

    @staticmethod
    def _reap(pid: int) -> None:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass  # not our child (started by another process): nothing to reap

    def run_snakemake(
        self,
        workdir: Path,
        snakefile: Path,
        targets: Sequence[str] = (),
        extra_args: Sequence[str] = (),
        **kwargs,
    ) -> subprocess.CompletedProcess:
        """:func:`run_snakemake_on_slurm` against this cluster; after a hang, cancels what it left queued
        (snakemake killed by ``timeout`` does not scancel, and a stuck job would block the next test)."""
        res = run_snakemake_on_slurm(workdir, snakefile, targets, extra_args, env=self.env, **kwargs)
        if timed_out(res):
            self.cancel_all_jobs()
        return res


def new_cluster(state_dir: Path | None = None, **kwargs) -> SlurmCluster:
    """A cluster in ``state_dir`` (default: a fresh temp folder); call ``.start()`` on it."""
    state_dir = Path(state_dir) if state_dir else Path(tempfile.mkdtemp(prefix="agir-slurm-"))
    return SlurmCluster(state_dir=state_dir, **kwargs)


def snakemake_command() -> list[str]:
    """The snakemake of the interpreter running the tests (the repo's .venv)."""
    exe = Path(sys.executable).parent / "snakemake"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "snakemake"]


def run_snakemake_on_slurm(
    workdir: Path,
    snakefile: Path,
    targets: Sequence[str] = (),
    extra_args: Sequence[str] = (),
    *,
    env: dict[str, str],
    profile: Path = SLURM_PROFILE,
    timeout_s: int = 600,
) -> subprocess.CompletedProcess:
    """``snakemake --profile profiles/slurm --verbose`` in ``workdir``, under ``timeout -k``.

    The plugin can wait forever on a job it lost track of (notes, trap 1), and then ignores SIGTERM,
    so the run is wrapped in ``timeout -k 15``: rc 124/137 means it hung. stdout+stderr are merged
    into ``.stdout`` so the ``sbatch call:`` lines can be asserted on.
    """
    cmd = [
        "timeout",
        "-k",
        "15",
        str(int(timeout_s)),
        *snakemake_command(),
        "--profile",
        str(profile),
        "--snakefile",
        str(snakefile),
        "--directory",
        str(workdir),
        "--verbose",
        *extra_args,
        *targets,
    ]
    return subprocess.run(
        cmd,
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout_s + 60,
    )


def timed_out(res: subprocess.CompletedProcess) -> bool:
    """True when ``timeout`` stopped snakemake: 124 after SIGTERM, -9/137 when it needed SIGKILL."""
    return res.returncode in (124, 137, -signal.SIGKILL)


def sbatch_calls(output: str) -> list[str]:
    """The ``sbatch call: ...`` lines snakemake --verbose printed, one per submitted job."""
    marker = "sbatch call: "
    return [line.split(marker, 1)[1].strip() for line in output.splitlines() if marker in line]


def sbatch_call_for_rule(output: str, rule: str) -> str:
    """The sbatch call of ``rule`` (the plugin tags each job with ``--comment rule_<name>``)."""
    tag = f"--comment rule_{rule}"
    hits = [c for c in sbatch_calls(output) if tag in c or f"--comment 'rule_{rule}" in c]
    if len(hits) != 1:
        raise AssertionError(
            f"expected one sbatch call for rule {rule!r}, found {len(hits)}:\n{output[-3000:]}"
        )
    return hits[0]
