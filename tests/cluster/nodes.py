"""The multi-node sandbox (``SLURM_NODES=3 slurm/sandbox/start.sh``) as tests use it: start it, and fail,
drain or bring back one of its nodes as an operator or a hardware fault would.

Each node is a network namespace ``<prefix>-nodeK`` (docs/slurm-sandbox.md). A node that dies loses every
process it ran (slurmd, slurmstepd, the job's own), which is what :func:`kill_node` does before telling
Slurm the node is DOWN, as slurmctld itself concludes after ``SlurmdTimeout`` without an answer.

Knobs for running several copies at once (one per developer): ``MULTINODE_SP_ROOT`` (its SP_ROOT; default
``<repo>/.slurm-sandbox-3nodes``), ``SLURM_NET_PREFIX`` and ``SLURM_SUBNET`` (start.sh's own, passed through).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from kun_hpc.cluster.scheduler import expand_array_ids

REPO = Path(__file__).resolve().parents[2]
NODES = 3
NODE_NAMES = [f"node{k}" for k in range(1, NODES + 1)]


def sp_root() -> Path:
    return Path(os.environ.get("MULTINODE_SP_ROOT", REPO / f".slurm-sandbox-{NODES}nodes"))


def start_multinode(cpus_per_node: int = 2) -> str:
    """Start (or re-check) the 3-node sandbox, every node up (start.sh leaves a node drained or set DOWN by
    someone else as it is: here the nodes an earlier test drained or killed are resumed); returns its
    ``SLURM_CONF``. ``cpus_per_node``: 2, so that each node runs one 2-CPU task at a time and an array
    spreads over the nodes."""
    env = {
        **os.environ,
        "SLURM_NODES": str(NODES),
        "SP_ROOT": str(sp_root()),
        "SLURM_NODE_CPUS": str(cpus_per_node),
        "SLURM_MAX_ARRAY_SIZE": "4",
    }
    env.pop("SLURM_CONF", None)
    start = REPO / "slurm" / "sandbox" / "start.sh"
    p = subprocess.run([str(start)], env=env, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"start.sh (SLURM_NODES={NODES}) failed:\n{p.stdout}\n{p.stderr}")
    conf = str(sp_root() / "etc" / "slurm.conf")
    env = {**os.environ, "SLURM_CONF": conf}
    for _ in range(60):
        states = {n: node_state(n, env) for n in NODE_NAMES}
        if all(s.startswith(("idle", "mixed", "allocated")) for s in states.values()):
            return conf
        for node, state in states.items():
            if state.startswith(("drain", "down", "fail")):
                scontrol("update", f"NodeName={node}", "State=RESUME", env=env)
        time.sleep(0.5)
    raise RuntimeError(f"the 3-node sandbox's nodes are not all up: {states}")


def namespace(node: str) -> str:
    return f"{os.environ.get('SLURM_NET_PREFIX', 'kunsb')}-{node}"


def node_pids(node: str) -> list[int]:
    """Every process running on ``node`` (in its network namespace)."""
    out = subprocess.run(["ip", "netns", "pids", namespace(node)], capture_output=True, text=True, check=True)
    return [int(p) for p in out.stdout.split()]


def signalled(pid: int, sig: int) -> bool:
    """Send ``sig`` to ``pid``; False when the process has ended. ``SIGSTOP`` returns once the process is
    stopped: the kernel stops it only when it next runs, and on a loaded machine that can be after a signal
    sent to it next, which it then takes first (its handler left to run at ``SIGCONT``), so that the signal
    is never seen pending."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    if sig != signal.SIGSTOP:
        return True
    end = time.monotonic() + 30
    while (state := proc_state(pid)) not in ("T", "t"):
        if state in (None, "Z", "X"):
            return False
        if time.monotonic() > end:
            raise AssertionError(f"pid {pid} not stopped 30 s after SIGSTOP (state {state})")
        time.sleep(0.005)
    return True


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name: ``[0]`` the state letter (R, S, D, T,
    Z, ...), ``[2]`` the process group; None once the process is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_state(pid: int) -> str | None:
    """The process's state letter (:func:`proc_stat`); None once it is gone."""
    fields = proc_stat(pid)
    return fields[0] if fields else None


def signal_node(node: str, sig: int) -> list[int]:
    """Send ``sig`` to every process on ``node``; the pids it reached. ``SIGSTOP`` freezes the node (its
    slurmd and units change nothing while a test looks at them), ``SIGCONT`` thaws it."""
    return [pid for pid in node_pids(node) if signalled(pid, sig)]


def kill_node(node: str, reason: str = "node lost (test: power cut)") -> int:
    """Kill everything running on ``node`` (``kill -9``), then set it DOWN as a failed node looks to Slurm.
    Returns how many processes died."""
    killed = len(signal_node(node, signal.SIGKILL))
    scontrol("update", f"NodeName={node}", "State=DOWN", f"Reason={reason}")
    return killed


def lose_contact(node: str, reason: str = "not responding (test: slurmd killed)") -> int:
    """Kill only ``node``'s slurmd, then set the node DOWN: what Slurm sees of a node that crashed and of one
    cut off by a network partition alike, while the jobs' processes there live on. Returns slurmd's pid."""
    pid = int((sp_root() / "run" / f"slurmd-{node}.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    scontrol("update", f"NodeName={node}", "State=DOWN", f"Reason={reason}")
    return pid


def drain_node(node: str, reason: str = "maintenance (test)") -> None:
    """DRAIN ``node``: what runs there finishes, nothing new starts there."""
    scontrol("update", f"NodeName={node}", "State=DRAIN", f"Reason={reason}")


def revive_nodes() -> None:
    """Every node back up: start.sh restarts a dead node's slurmd; :func:`start_multinode` resumes the nodes
    left DOWN or drained."""
    start_multinode()


class Attempt(NamedTuple):
    """One run of a job or array task as ``sacct -D`` keeps it: its state, node list, start and end
    (``2026-12-01T08:42:01``), and its own ``SLURM_JOB_ID`` (an array task's differs from ``123_4``)."""

    state: str
    node: str
    start: str
    end: str
    raw_job: str


def attempts(jobs: Iterable[str]) -> dict[str, list[Attempt]]:
    """Job or array task -> every attempt Slurm ran of it, oldest first (by submit time): one plain ``sacct
    -D`` over the jobs' arrays, polled until every attempt has ended (sacct's rows trail the queue)."""
    want = set(jobs)
    arrays = ",".join(sorted({j.split("_")[0] for j in want}))
    fields = "JobID,State,NodeList,Start,End,JobIDRaw,Submit"
    cmd = ["sacct", "-n", "-P", "-D", "-X", "-j", arrays, "-o", fields]
    for _ in range(120):
        out = subprocess.run(cmd, capture_output=True, text=True).stdout
        rows = [line.split("|") for line in out.splitlines()]
        got = {t for r in rows for t in expand_array_ids(r[0])}
        if want <= got and all(r[4] != "Unknown" for r in rows):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"sacct has not every attempt of {sorted(want)} ended after 120 s: {rows}")
    history: dict[str, list[Attempt]] = {}
    for job, state, node, start, end, raw, _ in sorted(rows, key=lambda r: r[6]):
        for task in expand_array_ids(job):
            history.setdefault(task, []).append(Attempt(state.split()[0], node, start, end, raw))
    return history


def node_of(job: str) -> str:
    """The node a running job (or array task) runs on now, from ``squeue``; "" while it does not run."""
    cmd = ["squeue", "-h", "-j", job, "-t", "RUNNING", "-o", "%N"]
    return subprocess.run(cmd, capture_output=True, text=True).stdout.strip()


def node_state(node: str, env: dict[str, str] | None = None) -> str:
    out = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], capture_output=True, text=True, env=env)
    return out.stdout.strip()


def scontrol(*args: str, env: dict[str, str] | None = None) -> None:
    for _ in range(30):  # the controller may be busy: retry, never ignore
        p = subprocess.run(["scontrol", *args], capture_output=True, text=True, env=env)
        if p.returncode == 0:
            return
        time.sleep(1)
    raise RuntimeError(f"scontrol {' '.join(args)}: {p.stderr}")
