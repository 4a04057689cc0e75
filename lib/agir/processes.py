"""Which processes are Snakemake, read from Linux /proc (empty answers elsewhere).

Used to release a lock a killed run left behind, and to stop a rule job whose Snakemake died.
"""

from __future__ import annotations

import os
from pathlib import Path


def command_words(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [w.decode(errors="replace") for w in raw.split(b"\0") if w]


def parent_pid(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def ancestors(pid: int | None = None) -> list[tuple[int, list[str]]]:
    """(pid, command words) of `pid` (default: this process) and its ancestors, nearest first."""
    out, pid = [], os.getpid() if pid is None else pid
    while pid > 1:
        try:
            out.append((pid, command_words(pid)))
            pid = parent_pid(pid)
        except (OSError, ValueError, IndexError):
            break
    return out


def is_snakemake(words: list[str]) -> bool:
    """`snakemake ...` or `python -m snakemake ...` (not a shell running a script from .snakemake/scripts)."""
    head = words[:3]
    return any(Path(w).name == "snakemake" for w in head) or ("-m" in head and "snakemake" in head)


def snakemake_processes(workdir: Path, exclude: set[int]) -> list[int]:
    """PIDs of live Snakemake main processes (not job steps: `--mode`) working in `workdir`."""
    proc = Path("/proc")
    if not proc.is_dir():
        return []
    target = str(Path(workdir).resolve())
    out = []
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in exclude:
            continue
        try:
            words = command_words(int(entry.name))
            cwd = str((entry / "cwd").resolve())
        except OSError:
            continue
        if cwd == target and is_snakemake(words) and "--mode" not in words:
            out.append(int(entry.name))
    return out
