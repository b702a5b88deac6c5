"""The single-node sandbox Slurm cluster (slurm/sandbox/start.sh) works end to end.

These talk to the real cluster through SLURM_CONF (set by `. slurm/sandbox/env.sh`, or derived here).
If the cluster does not answer, start.sh is run first (it is idempotent).
"""

from __future__ import annotations

import fcntl
import os
import re
import socket
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(180)]

REPO = Path(__file__).resolve().parents[2]
START = REPO / "slurm" / "sandbox" / "start.sh"
DAEMONS = ("munged", "mariadbd", "slurmdbd", "slurmctld", "slurmd")
UNFINISHED = {"PENDING", "RUNNING", "REQUEUED", "COMPLETING", "CONFIGURING", "RESIZING", "SUSPENDED"}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    if "SLURM_CONF" not in env:
        root = Path(env["SP_ROOT"]) if env.get("SP_ROOT") else REPO / ".slurm-sandbox"
        env["SLURM_CONF"] = str(root / "etc" / "slurm.conf")
    if "/usr/sbin" not in env.get("PATH", "").split(":"):
        env["PATH"] = env.get("PATH", "") + ":/usr/sbin"
    return env


def _run(cmd: list[str], env: dict[str, str], timeout: float = 30, check: bool = True):
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=check)


def _poll(what: str, fn, timeout: float = 45, every: float = 0.5):
    end = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > end:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


@pytest.fixture(scope="module")
def env() -> dict[str, str]:
    env = _env()
    try:
        ok = _run(["scontrol", "ping"], env, timeout=15, check=False).returncode == 0
    except (FileNotFoundError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        p = _run([str(START)], env, timeout=900, check=False)
        if p.returncode != 0:
            pytest.fail(f"start.sh failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return env


def _sbatch(env: dict[str, str], *args: str) -> str:
    out = _run(["sbatch", "--parsable", "-t", "2", "-J", "kun-sandbox-test", *args], env).stdout
    return out.strip().split(";")[0]


def _sacct_states(env: dict[str, str], jobid: str) -> dict[str, str]:
    p = _run(["sacct", "-n", "-P", "-X", "-j", jobid, "-o", "JobID,State"], env, check=False)
    rows = (line.split("|") for line in p.stdout.splitlines() if "|" in line)
    return {jid: state.split()[0] for jid, state in rows if state}


def _sp_root(env: dict[str, str]) -> Path:
    return Path(env["SLURM_CONF"]).resolve().parents[1]


def test_sbatch_job_completes_and_sacct_sees_it(env, tmp_path):
    jobid = _sbatch(env, f"--chdir={tmp_path}", "-o", "out.txt", "--wrap", "echo hello-from-slurm")

    def done():
        st = _sacct_states(env, jobid).get(jobid)
        return st if st and st not in UNFINISHED else None

    assert _poll(f"sacct to show job {jobid} finished", done) == "COMPLETED"
    assert (tmp_path / "out.txt").read_text().strip() == "hello-from-slurm"


def test_live_max_array_size_is_the_configured_one(env):
    conf = Path(env["SLURM_CONF"]).read_text()
    want = re.search(r"^MaxArraySize=(\d+)$", conf, re.M)
    assert want, "start.sh must write MaxArraySize into slurm.conf"
    live = re.search(r"^MaxArraySize\s*=\s*(\d+)", _run(["scontrol", "show", "config"], env).stdout, re.M)
    assert live and live.group(1) == want.group(1)
    if os.environ.get("SLURM_MAX_ARRAY_SIZE"):
        assert want.group(1) == os.environ["SLURM_MAX_ARRAY_SIZE"]


def test_throttled_array_runs_every_task(env, tmp_path):
    script = 'echo "$(date +%s.%N)"; sleep 1; echo "$(date +%s.%N)"'
    jobid = _sbatch(env, f"--chdir={tmp_path}", "--array=0-3%2", "-o", "t_%a.txt", "--wrap", script)
    want = {f"{jobid}_{i}" for i in range(4)}

    def all_done():
        st = _sacct_states(env, jobid)
        return st if want <= st.keys() and all(st[k] not in UNFINISHED for k in want) else None

    states = _poll(f"all 4 tasks of array {jobid} to finish", all_done, timeout=60)
    assert {states[k] for k in want} == {"COMPLETED"}
    spans = []
    for i in range(4):
        lines = (tmp_path / f"t_{i}.txt").read_text().split()
        spans.append((float(lines[0]), float(lines[1])))
    # %2: never more than two tasks running at once
    for t, _ in spans:
        assert sum(1 for a, b in spans if a <= t <= b) <= 2, spans


def test_failed_dependency_cancels_only_the_matching_task(env, tmp_path):
    # kill_invalid_depend (DependencyParameters): a task whose aftercorr parent failed is cancelled,
    # not left PENDING (DependencyNeverSatisfied) forever; its healthy sibling still runs.
    parent = _sbatch(
        env,
        f"--chdir={tmp_path}",
        "-o",
        "/dev/null",
        "--array=0-1",
        "--wrap",
        '[ "$SLURM_ARRAY_TASK_ID" = 0 ]',
    )
    child = _sbatch(
        env,
        f"--chdir={tmp_path}",
        "-o",
        "/dev/null",
        "--array=0-1",
        f"--dependency=aftercorr:{parent}",
        "--wrap",
        "true",
    )

    def states():
        out = _run(["squeue", "-h", "-t", "all", "-j", f"{parent},{child}", "-o", "%i %T"], env).stdout
        st = dict(line.split() for line in out.splitlines() if line.strip())
        return st if len(st) == 4 and not UNFINISHED & set(st.values()) else None

    st = _poll("the aftercorr chain to settle", states, timeout=45)
    assert st == {
        f"{parent}_0": "COMPLETED",
        f"{parent}_1": "FAILED",
        f"{child}_0": "COMPLETED",
        f"{child}_1": "CANCELLED",
    }, st


def _pids(env: dict[str, str]) -> dict[str, str]:
    run = _sp_root(env) / "run"
    return {d: (run / f"{d}.pid").read_text().strip() for d in DAEMONS if (run / f"{d}.pid").exists()}


def test_start_again_keeps_the_daemons(env):
    before = _pids(env)
    assert {"slurmctld", "slurmd"} <= before.keys()
    # the same settings as the running cluster (make test starts it with a small MaxArraySize)
    live = re.search(r"^MaxArraySize\s*=\s*(\d+)", _run(["scontrol", "show", "config"], env).stdout, re.M)
    p = _run([str(START)], {**env, "SLURM_MAX_ARRAY_SIZE": live.group(1)}, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "already running" in p.stdout, p.stdout
    assert _pids(env) == before
    for d, pid in before.items():
        assert Path(f"/proc/{pid}/comm").read_text().strip() == d
    assert "export SLURM_CONF=" in p.stdout


# ------------------------------------------------------------------------------ SLURM_NODES=N (issue 18)
def _node_addrs(conf: str) -> dict[str, str]:
    """NodeName -> NodeAddr, as slurm.conf gives them."""
    return dict(re.findall(r"^NodeName=(\S+) .*NodeAddr=(\S+)", Path(conf).read_text(), re.M))


def test_each_node_is_a_host_of_its_own(multinode):
    env = _env()
    addrs = _node_addrs(multinode)
    assert sorted(addrs) == ["node1", "node2", "node3"]
    script = 'echo "$(hostname)|$(hostname -I)|$(getent hosts node1)|$(ip -4 route)"'
    out = _run(["srun", "-t", "1", "-N", "3", "-n", "3", "bash", "-c", script], env, timeout=60).stdout
    seen = {}
    for line in out.splitlines():
        host, ip, node1, routes = line.split("|")
        seen[host] = ip.strip()
        assert node1.split() == [addrs["node1"], "node1"], line  # names resolve on every node
        subnet = addrs["node1"].rsplit(".", 1)[0]
        assert routes.split()[:3] == [f"{subnet}.0/24", "dev", "eth0"] and "default" not in routes, line
    assert seen == addrs, out  # its own hostname and the address Slurm knows it by
    assert socket.gethostname() not in addrs  # this machine kept its own name


@pytest.mark.timeout(600)  # a cold start of a second cluster (MariaDB, slurmdbd, 2 slurmd) may take minutes
def test_a_second_sandbox_starts_and_stops_only_what_it_made(multinode, tmp_path):
    knobs = {"SLURM_NODES": "2", "SLURM_NET_PREFIX": "kunsx", "SLURM_SUBNET": "10.213.99"}
    env = {
        **_env(),
        **knobs,
        "SP_ROOT": str(tmp_path / "sb"),
        "SLURM_CONF": str(tmp_path / "sb/etc/slurm.conf"),
    }
    spaces = ["kunsx-head", "kunsx-node1", "kunsx-node2"]
    # what a sandbox of another checkout left behind when its run was killed (as CI's end kills it): its
    # bridge and a host with its veth and another address, nothing running there
    gone = "/elsewhere/.slurm-sandbox-2nodes"
    _run(["ip", "link", "add", "kunsx0", "type", "bridge"], env)
    _run(["ip", "link", "set", "kunsx0", "alias", f"kun-sandbox:{gone}"], env)
    _run(["ip", "addr", "add", "10.213.99.1/24", "dev", "kunsx0"], env)
    _run(["ip", "netns", "add", "kunsx-node1"], env)
    _run(
        ["ip", "link", "add", "kunsx-node1", "type", "veth", "peer", "name", "eth0", "netns", "kunsx-node1"],
        env,
    )
    _run(["ip", "-n", "kunsx-node1", "addr", "add", "10.213.99.211/24", "dev", "eth0"], env)
    # while another start.sh or stop.sh works on that network (a sandbox still starting runs nothing on its
    # hosts yet), nothing of it is touched: the start waits for it (4 x SLURM_WAIT_S), then refuses
    with open(f"/run/kun-sandbox-{knobs['SLURM_NET_PREFIX']}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        busy = _run([str(START)], {**env, "SLURM_WAIT_S": "1"}, timeout=60, check=False)
    assert busy.returncode != 0, busy.stdout
    refused = "another sandbox's start.sh/stop.sh on bridge kunsx0 holds /run/kun-sandbox-kunsx.lock"
    assert refused in busy.stderr, busy.stderr
    assert f"alias kun-sandbox:{gone}" in _run(["ip", "link", "show", "kunsx0"], env).stdout
    # nothing runs there and nothing holds it: taken over, and said
    p = _run([str(START)], env, timeout=300, check=False)
    try:
        assert p.returncode == 0, p.stdout + p.stderr
        left = f"network: bridge kunsx0 of {gone} was left behind (nothing runs on its hosts): removed it"
        assert left in p.stdout, p.stdout
        eth0 = _run(["ip", "-n", "kunsx-node1", "-4", "-o", "addr", "show", "dev", "eth0"], env).stdout
        assert " 10.213.99.11/24 " in eth0 and "10.213.99.211" not in eth0, eth0  # the host made anew
        assert set(spaces) <= set(_run(["ip", "netns", "list"], env).stdout.split())
        nodes = _run(["sinfo", "-h", "-N", "-o", "%N %T"], env).stdout.split()
        assert nodes == ["node1", "idle", "node2", "idle"], nodes
        again = _run([str(START)], env, timeout=60)
        assert "already running" in again.stdout, again.stdout
        # its bridge is its own: another SP_ROOT with the same names is refused, naming the knobs; so is
        # another subnet or prefix for this one while it runs
        other = _run([str(START)], {**env, "SP_ROOT": str(tmp_path / "other")}, timeout=60, check=False)
        assert other.returncode != 0 and "bridge kunsx0 exists and is not this sandbox's" in other.stderr
        assert re.search(r"; [1-9]\d* processes run on its hosts\): set SLURM_NET_PREFIX", other.stderr)
        moved = _run([str(START)], {**env, "SLURM_SUBNET": "10.213.98"}, timeout=60, check=False)
        assert moved.returncode != 0, moved.stdout
        assert "bridge kunsx0 is on 10.213.99.1/24, not 10.213.98.0/24: stop it" in moved.stderr, moved.stderr
        renamed = _run([str(START)], {**env, "SLURM_NET_PREFIX": "kunsw"}, timeout=60, check=False)
        assert renamed.returncode != 0 and "runs on bridge kunsx0 (SLURM_NET_PREFIX=kunsx)" in renamed.stderr
        # a node someone drained stays drained: start.sh says so and leaves it
        _run(["scontrol", "update", "NodeName=node2", "State=DRAIN", "Reason=maintenance"], env)
        drained = _run([str(START)], env, timeout=60)
        assert "left as they are: node2 drained" in drained.stdout, drained.stdout
        assert _run(["sinfo", "-h", "-n", "node2", "-o", "%T"], env).stdout.strip() == "drained"
    finally:
        # stop.sh finds the sandbox's network by its owner, without the prefix it was started with
        rest = {k: v for k, v in env.items() if k != "SLURM_NET_PREFIX"}
        stop = _run([str(START.parent / "stop.sh")], rest, timeout=120, check=False)
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert not set(spaces) & set(_run(["ip", "netns", "list"], env).stdout.split())
    assert _run(["ip", "link", "show", "kunsx0"], env, check=False).returncode != 0
    assert not list(Path("/etc/netns").glob("kunsx-*"))
    # the other sandboxes and the machine's munged are untouched
    assert _run(["scontrol", "ping"], {**env, "SLURM_CONF": multinode}).returncode == 0
    assert _run(["munge", "-n"], env).returncode == 0


@pytest.mark.parametrize(
    ("knob", "value", "why"),
    [
        ("SLURM_NODES", "abc", "SLURM_NODES must be a number of nodes from 1 to 99, not 'abc'"),
        ("SLURM_NODES", "100", "SLURM_NODES must be a number of nodes from 1 to 99, not '100'"),
        ("SLURM_NET_PREFIX", "kun.b", "SLURM_NET_PREFIX must be 1-8 lowercase letters or digits"),
        ("SLURM_NET_PREFIX", "kunsandboxrev", "SLURM_NET_PREFIX must be 1-8 lowercase letters or digits"),
        ("SLURM_SUBNET", "10.213.300", "SLURM_SUBNET must be the first three numbers of a private /24"),
        ("SLURM_SUBNET", "10.213", "SLURM_SUBNET must be the first three numbers of a private /24"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_made(tmp_path, knob, value, why):
    env = {**_env(), "SLURM_NODES": "2", "SP_ROOT": str(tmp_path / "sb"), knob: value}
    for script in (START, START.parent / "stop.sh"):
        p = _run([str(script)], env, timeout=60, check=False)
        assert p.returncode != 0 and why in p.stderr, (script.name, p.stdout, p.stderr)
    assert not (tmp_path / "sb").exists()


def test_a_bridge_no_sandbox_made_is_never_taken_over(tmp_path):
    env = {**_env(), "SLURM_NODES": "2", "SLURM_NET_PREFIX": "kunsy", "SLURM_SUBNET": "10.213.98"}
    _run(["ip", "link", "add", "kunsy0", "type", "bridge"], env)  # someone's own bridge, no sandbox alias
    try:
        p = _run([str(START)], {**env, "SP_ROOT": str(tmp_path / "sb")}, timeout=60, check=False)
        assert p.returncode != 0
        assert "bridge kunsy0 exists and is not this sandbox's (alias ''; 0 processes" in p.stderr, p.stderr
        assert _run(["ip", "link", "show", "kunsy0"], env).returncode == 0
    finally:
        _run(["ip", "link", "del", "kunsy0"], env, check=False)


def test_a_subnet_in_use_is_refused(tmp_path):
    env = {**_env(), "SLURM_NODES": "2", "SLURM_NET_PREFIX": "kunsy", "SLURM_SUBNET": "127.0.0"}
    p = _run([str(START)], {**env, "SP_ROOT": str(tmp_path / "sb")}, timeout=60, check=False)
    assert p.returncode != 0
    assert "an interface already holds an address in 127.0.0.0/24: set SLURM_SUBNET" in p.stderr, p.stderr
    assert _run(["ip", "link", "show", "kunsy0"], env, check=False).returncode != 0
