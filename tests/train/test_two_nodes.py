"""Two-node training on the 3-node sandbox (tests/cluster/nodes.py, issue 18): ``kun-hpc train`` with
``train.nodes=2``, one task per node, meets over the nodes' own addresses on the sandbox's bridge (each node
is its own network namespace: a rank on another node cannot reach 127.0.0.1 of the first) and ends with the
same weights on both ranks, bit for bit those of one process taking the same global batch.

What each rank did is read from its own summary (submitit's per-task results: host name, the rendezvous
torch.distributed used, the sha256 of its weights); where Slurm ran the job, from ``sacct``; the nodes'
addresses, from their network namespaces.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import submitit
import torch
from safetensors.torch import load_file

from kun_hpc.train.launch import JOBS_FILE, master_port
from kun_hpc.train.sft import weights_sha256
from tests.cluster import nodes
from tests.train.test_sft import FAST, log_rows, run_cli

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# 4 optimizer steps of 8 examples: 2 ranks x micro-batch 4 on two nodes, 1 process x micro-batch 4 x 2
# accumulated in the reference. length_group=false: transformers' length-grouped sampler sorts megabatches
# of micro_batch_size x grad_accum examples, so the two would not even take the same batches.
GLOBAL_BATCH_8 = [*FAST, "train.max_steps=4", "train.length_group=false", "train.save_steps=100"]


def job_nodes(job_id: str, polls: int = 60) -> list[str]:
    """The hosts Slurm ran a finished job on, in Slurm's order (``sacct`` NodeList, expanded by
    ``scontrol show hostnames``); sacct's row arrives a little after the job ends: polled once a second."""
    for _ in range(polls):
        sacct = ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State,NodeList"]
        rows = subprocess.run(sacct, capture_output=True, text=True, check=True).stdout.split()
        if rows and rows[0].startswith("COMPLETED|"):
            break
        time.sleep(1)
    assert rows and rows[0].startswith("COMPLETED|"), f"sacct -j {job_id}: {rows}"
    nodelist = rows[0].split("|")[1]
    hosts = ["scontrol", "show", "hostnames", nodelist]
    return subprocess.run(hosts, capture_output=True, text=True, check=True).stdout.split()


def node_address(node: str) -> str:
    """The IPv4 address of ``node``'s interface on the sandbox bridge, read in its network namespace."""
    show = ["ip", "-n", nodes.namespace(node), "-4", "-o", "addr", "show", "dev", "eth0"]
    out = subprocess.run(show, capture_output=True, text=True, check=True).stdout
    return out.split()[3].split("/")[0]  # "2: eth0    inet 10.213.0.11/24 brd ..."


def test_two_nodes_meet_over_their_addresses_and_train_the_weights_of_one_process(
    multinode, tiny_model, tmp_path
):
    """(a) the two ranks ran on two different nodes, those sacct names; (b) both met at the first node's
    name, resolved on each node to that node's bridge address, at the job's port; (c) both ended with the
    same weights, those rank 0 saved; (d) the weights equal bit for bit those of one process with twice the
    gradient accumulation. Exact, not within a tolerance: both take the same 8 examples per step in the same
    micro-batches of 4 (accelerate deals the sampler's micro-batches to the ranks in turn, the reference
    accumulates the same two), the same token count divides the loss, and DDP's scaling (loss x 2, gradients
    / 2) is exact in binary floating point, so each step adds the same two gradients."""
    two = tmp_path / "two-nodes"
    run_cli(tiny_model, two, "chat", *GLOBAL_BATCH_8, "train.nodes=2", "train.tasks_per_node=1",
            "--executor=slurm", "--wait")  # fmt: skip
    (job,) = [json.loads(line)["job"] for line in (two / JOBS_FILE).read_text().splitlines()]
    ranks = submitit.SlurmJob(two / "logs", job, tasks=(0, 1)).results()
    assert [(r["rank"], r["world_size"], r["status"]) for r in ranks] == [(0, 2, "done"), (1, 2, "done")]

    # (a) two nodes: the hosts the ranks ran on are the two sacct names, one rank each
    hosts = job_nodes(job)
    assert len(hosts) == 2 and [r["hostname"] for r in ranks] == hosts, (hosts, ranks)

    # (b) the rendezvous: the first node of the allocation, by its name, at its bridge address on both
    first = node_address(hosts[0])
    assert not first.startswith("127.") and first != node_address(hosts[1])
    for r in ranks:
        assert r["rendezvous"] == {
            "master_addr": hosts[0],
            "master_port": master_port(job),
            "master_ip": first,
        }

    # (c) the replicas agree, bit for bit, with the model rank 0 saved
    saved = load_file(two / "model" / "model.safetensors")
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"] == weights_sha256(saved)

    # (d) one process (in this one) with the same global batch: the same weights, learning rates and losses
    one = tmp_path / "one-process"
    run_cli(tiny_model, one, "chat", *GLOBAL_BATCH_8, "train.grad_accum=2")
    reference = load_file(one / "model" / "model.safetensors")
    assert saved.keys() == reference.keys()
    assert [k for k in saved if not torch.equal(saved[k], reference[k])] == []
    base = load_file(tiny_model / "model.safetensors")
    assert any(not torch.equal(saved[k], base[k]) for k in saved)  # it trained: not two untouched models
    a, b = log_rows(two), log_rows(one)
    assert [r["step"] for r in a] == [r["step"] for r in b] == [1, 2, 3, 4]
    assert [(r["lr"], r["loss"]) for r in a] == [(r["lr"], r["loss"]) for r in b]
