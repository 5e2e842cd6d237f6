"""Two nodes without a shared disk, on one machine.

Two `accelerate launch --num_machines 2 --machine_rank 0|1` invocations, one process each on
127.0.0.1, each started in its own copy of the launch files with its own cache, so that no file
one "node" writes is visible to the other (the default output_dir is relative to each node's
working directory). Under FSDP2 and ZeRO-3: the run trains, a stop request makes both nodes
checkpoint and exit, the same two commands resume both at one step, and the final adapter
equals one process trained straight through on the same global batches.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, assert_same_weights, compose

from aot.run import train

pytestmark = pytest.mark.slow
ARGS = [
    "train.max_steps=24",
    "train.save_steps=4",
    "data.max_test_samples=8",
    "train.per_device_train_batch_size=8",
    "train.logging_steps=1",
]
OUT = "outputs/tiny-aot_unpaired-sample"  # the default output_dir of these overrides starts so


def make_node(root: Path, tiny_path: Path) -> Path:
    """A node's own copy of what a launch reads (scripts, recipes, launch configs) and its own cache."""
    for part in ("scripts", "recipes", "configs"):
        shutil.copytree(Path(REPO) / part, root / part)
    (root / ".cache").mkdir()
    (root / ".cache" / tiny_path.name).symlink_to(tiny_path)
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_both(nodes: list[Path], config: str, port: int, stop_file: Path) -> list[subprocess.Popen]:
    procs = []
    for rank, node in enumerate(nodes):
        cmd = [
            str(Path(sys.executable).parent / "accelerate"),
            "launch",
            "--config_file",
            f"configs/accelerate/{config}.yaml",
            "--num_machines",
            "2",
            "--machine_rank",
            str(rank),
            "--num_processes",
            "2",
            "--main_process_ip",
            "127.0.0.1",
            "--main_process_port",
            str(port),
            "scripts/train.py",
            *ARGS,
        ]
        env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "AOT_SHARD_ON_CPU": "1",
            "AOT_CACHE_DIR": str(node / ".cache"),
            "AOT_STOP_FILE": str(stop_file),
        }
        log = open(node / f"launch-{len(list(node.glob('launch-*')))}.log", "w")
        procs.append(
            subprocess.Popen(
                cmd, cwd=node, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        )
    return procs


def finish(procs: list[subprocess.Popen], timeout: float = 600) -> None:
    """Both launches end (a generous limit: ranks that disagree on where to resume hang in their
    first collective until killed), both with exit code 0."""
    try:
        for p in procs:
            p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)  # the launcher and its workers
        pytest.fail(f"the two nodes did not finish within {timeout} s (hung in a collective?)")
    codes = [p.returncode for p in procs]
    assert codes == [0, 0], codes


def log_of(node: Path, run: int) -> str:
    return (node / f"launch-{run}.log").read_text()


def run_dir(node: Path) -> Path:
    (found,) = [p for p in (node / "outputs").glob("tiny-aot_unpaired-sample-*") if p.is_dir()]
    return found


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_path):
    """One process, 16 rows per step (2 nodes x 8), trained straight through."""
    out = tmp_path_factory.mktemp("straight") / "run"
    train(compose(f"output_dir={out}", *ARGS[:-2], "train.per_device_train_batch_size=16"))
    return out


@pytest.mark.parametrize(
    "config,backend", [("fsdp_cpu", "FSDP2 (fully_shard)"), ("deepspeed_zero3_cpu", "DeepSpeed ZeRO-3")]
)
def test_two_nodes_without_a_shared_disk_stop_resume_and_finish_as_one_process(
    tmp_path, tiny_path, straight, config, backend
):
    nodes = [make_node(tmp_path / f"node{r}", tiny_path) for r in range(2)]
    stop = tmp_path / "stop"  # polled by global rank 0 (slurm/train.sh creates it on node 0)
    first = launch_both(nodes, config, free_port(), stop)
    deadline = time.time() + 600
    while not list((nodes[0] / "outputs").glob("*/checkpoint-4/trainer_state.json")):  # an event
        assert all(p.poll() is None for p in first), [p.returncode for p in first]
        assert time.time() < deadline, "no checkpoint-4 after 600 s"
        time.sleep(0.05)
    stop.touch()
    finish(first)
    log0 = log_of(nodes[0], 0)
    assert f"distributed: {backend}, 2 processes on cpu" in log0
    assert "node-local (not shared): each node keeps its own copy of the checkpoints" in log0
    step = int(re.search(r"stopped on request at step (\d+)", log0).group(1))
    assert 4 <= step < 24
    for rank, node in enumerate(nodes):  # each node holds its own part of the checkpoint, and only that
        ckpt = run_dir(node) / f"checkpoint-{step}"
        assert (ckpt / "trainer_state.json").is_file() and (ckpt / f".complete-rank{rank:05d}").is_file()
        assert not (ckpt / f".complete-rank{1 - rank:05d}").exists()
    assert not (run_dir(nodes[1]) / "run.json").exists()  # rank 0's files stay on node 0

    stop.unlink()
    second = launch_both(nodes, config, free_port(), stop)  # the same two commands
    finish(second)
    log0 = log_of(nodes[0], 1)
    assert f"resuming from {OUT}-" in log0 and f"/checkpoint-{step}\n" in log0
    assert "diagnostics before training: from" in log0  # read on node 0, broadcast to node 1
    assert_same_weights(run_dir(nodes[0]), straight)
