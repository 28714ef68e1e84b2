"""Several nodes under torchrun, simulated on this machine: two agents (one process each) meet
through the c10d rendezvous as two hosts would, and a node that cannot see rank 0's run
directory stops every rank with a clear error instead of training other epochs and hanging."""

import os
import signal
import socket

import pytest
from safetensors import safe_open

from tests.training.test_distributed import TORCHRUN, launch, torchrun, torchrun_script
from tests.training.test_distributed_runs import EVEN, PRUNE, one_run


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(path: str) -> str:
    with safe_open(path, "pt") as f:
        return f.metadata()["payload_sha256"]


@pytest.mark.slow
def test_two_nodes_meet_through_the_rendezvous_and_train_one_run(tmp_path):
    endpoint = f"127.0.0.1:{free_port()}"
    out = tmp_path / "two-nodes"
    command = [*TORCHRUN, "--nnodes=2", "--nproc_per_node=1"]
    command += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", "--rdzv-id=ticketkit-test"]
    command += ["--local-addr=127.0.0.1"]  # the "hosts" are this one, whatever its name resolves to
    command += ["-m", "ticketkit", *PRUNE, *EVEN, "--out", str(out)]
    nodes = [launch(command) for _ in range(2)]
    try:
        done = [node.communicate(timeout=150) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                os.killpg(node.pid, signal.SIGKILL)
                node.communicate()
    assert [node.returncode for node in nodes] == [0, 0], [err for _, err in done]
    printed = [stdout for stdout, _ in done if stdout.strip()]
    assert len(printed) == 1  # the node that drew rank 0 prints; the other is quiet
    record = one_run(out, printed[0])

    # two processes on one node, same global batch: the same ticket, bit for bit
    one_node = torchrun(*PRUNE, *EVEN, out=tmp_path / "one-node")
    assert one_node.returncode == 0, one_node.stderr
    assert digest(record["path"]) == digest(one_run(tmp_path / "one-node", one_node.stdout)["path"])


NODE_CANNOT_SEE_THE_RUN = """
import sys

from ticketkit import jobs
from ticketkit.errors import JobError
from ticketkit.runs.config import PruneConfig, resolve
from ticketkit.runs.directory import Run
from ticketkit.testing import interrupted_after_first_checkpoint
from ticketkit.training import distributed

def cfg():
    settings = dict(method="biprop", arch="mlp", k=0.5, dataset="digits", epochs=3,
                    out=sys.argv[1])
    return resolve(PruneConfig, settings)

try:
    with interrupted_after_first_checkpoint():
        jobs.prune(cfg())
except KeyboardInterrupt:
    pass
if distributed.rank() == 1:  # another node's disk: rank 0's checkpoint is not there
    Run.load_checkpoint = lambda *args, **kwargs: None
try:
    jobs.prune(cfg())
except JobError as exc:
    print(f"rank {distributed.rank()}: {exc}", flush=True)
    distributed.abandon()
    sys.exit(3)
distributed.finish()
"""


@pytest.mark.slow
def test_a_node_that_cannot_see_the_checkpoint_stops_every_rank(tmp_path):
    done = torchrun_script(tmp_path, NODE_CANNOT_SEE_THE_RUN, str(tmp_path / "out"))
    assert done.returncode != 0
    for rank in (0, 1):
        assert (
            f"rank {rank}: the processes resume {tmp_path / 'out'}" in done.stdout
            and "(rank 0: 1, rank 1: 0)" in done.stdout
            and "put --out on a shared filesystem" in done.stdout
        ), done.stdout + done.stderr
    assert not list((tmp_path / "out").rglob("ticket.safetensors"))


STAGES_DIFFER = """
from ticketkit.errors import JobError
from ticketkit.training import distributed

stage = "2" if distributed.rank() == 0 else "0"  # rank 1 would redo find-ticket's level 0
try:
    distributed.check_resumed(stage, 0, "RUN")
except JobError as exc:
    print(f"rank {distributed.rank()}: {exc}", flush=True)
distributed.finish()
"""


@pytest.mark.slow
def test_ranks_at_different_stages_are_named_with_their_stage(tmp_path):
    done = torchrun_script(tmp_path, STAGES_DIFFER)
    assert done.returncode == 0, done.stderr
    for rank in (0, 1):
        assert (
            f"rank {rank}: the processes resume RUN from different epochs "
            "(rank 0: stage 2 epoch 0, rank 1: stage 0 epoch 0)" in done.stdout
        ), done.stdout + done.stderr
