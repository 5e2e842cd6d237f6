"""slurm/train.sh: dry runs (node counts, srun options, required DATA, submission from any
directory) and the preemption path end to end, with stand-ins for `srun` and `scontrol` on PATH
(`srun` runs its command locally as node 0; `scontrol` records a requeue and reports the path
the job was submitted with, as Slurm does)."""

import os
import shutil
import signal
import subprocess

import pytest
from conftest import REPO, wait_for_checkpoint

SCRIPT = os.path.join(REPO, "slurm", "train.sh")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    return {**env, **extra}


def slurm_dry_run(nodes=None, *words, cwd=REPO, script=SCRIPT, env=None):
    env = clean_env(DRY_RUN="1", **(env or {}))
    if nodes:
        env["SLURM_NNODES"] = str(nodes)
    proc = subprocess.run(["bash", script, *words], capture_output=True, text=True, cwd=cwd, env=env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("nodes,total", [(None, 8), (2, 16)])
def test_slurm_dry_run(nodes, total):
    out = slurm_dry_run(
        nodes, "MODEL=merlinite", "LOSS=aot_unpaired", "DATA=ultrafeedback", "ARGS=loss.ot_batch_size=64"
    )
    n = nodes or 1
    assert f"{n} node(s) x 8 GPUs = {total} processes" in out
    assert f"srun --nodes={n} --ntasks-per-node=1" in out
    assert f"--num_machines {n} --num_processes {total} --machine_rank $SLURM_NODEID" in out
    assert "--config_file configs/accelerate/fsdp.yaml" in out
    assert (
        "scripts/train.py model=merlinite loss=aot_unpaired data=ultrafeedback loss.ot_batch_size=64" in out
    )
    assert f"cd {REPO}\n" in out


def test_slurm_reads_environment_and_rejects_bad_words():
    env = {**os.environ, "DRY_RUN": "1", "SLURM_JOB_NUM_NODES": "3", "GPUS_PER_NODE": "4", "ACCEL": "ddp"}
    env.pop("SLURM_NNODES", None)
    out = subprocess.run(["bash", SCRIPT, "LOSS=dpo"], capture_output=True, text=True, cwd=REPO, env=env)
    assert "3 node(s) x 4 GPUs = 12 processes" in out.stdout and "configs/accelerate/ddp.yaml" in out.stdout
    assert "loss=dpo data=sample" in out.stdout  # the tiny model's default data
    bad = subprocess.run(
        ["bash", SCRIPT, "merlinite"], capture_output=True, text=True, cwd=REPO, env=clean_env(DRY_RUN="1")
    )
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr


def test_data_is_required_for_every_model_but_tiny():
    proc = subprocess.run(
        ["bash", SCRIPT, "MODEL=merlinite", "LOSS=aot_unpaired"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=clean_env(DRY_RUN="1"),
    )
    assert proc.returncode == 2 and "DATA=" in proc.stderr and "MODEL=merlinite" in proc.stderr


def test_requeued_jobs_append_to_their_log_and_srun_gets_the_cpus():
    header = [line for line in open(SCRIPT) if line.startswith("#SBATCH")]
    assert "#SBATCH --open-mode=append\n" in header and "#SBATCH --requeue\n" in header
    out = slurm_dry_run(None, "DATA=sample", env={"SLURM_CPUS_PER_TASK": "64"})
    assert "srun --nodes=1 --ntasks-per-node=1 --cpus-per-task=64 " in out


def fake_slurm(tmp_path, submitted: str) -> str:
    """A bin directory with stand-in `srun` and `scontrol`; returns it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(
        "#!/usr/bin/env bash\n"
        f'if [ "$1 $2" = "show job" ]; then echo "   Command={submitted} MODEL=tiny"; echo "   WorkDir=/"; fi\n'
        f'if [ "$1" = requeue ]; then echo "requeue $2" >> {tmp_path}/scontrol.log; fi\n'
        'if [ "$1 $2" = "show hostnames" ]; then echo 127.0.0.1; fi\n'
    )
    # srun [options] bash -c CMD: run CMD here as the job's only node.
    (bin_dir / "srun").write_text(
        '#!/usr/bin/env bash\nwhile [ "$1" != bash ]; do shift; done\nSLURM_NODEID=0 exec "$@"\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return str(bin_dir)


def test_submitted_from_any_directory_the_script_finds_the_repo(tmp_path):
    # sbatch runs a copy of the script from its spool directory, in the submission directory.
    spool = tmp_path / "spool"
    spool.mkdir()
    shutil.copy(SCRIPT, spool / "slurm_script")
    bin_dir = fake_slurm(tmp_path, SCRIPT)
    env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SLURM_JOB_ID": "4242",
        "SLURM_SUBMIT_DIR": str(tmp_path),
    }
    out = slurm_dry_run(None, "DATA=sample", cwd=tmp_path, script=str(spool / "slurm_script"), env=env)
    assert f"cd {REPO}\n" in out and f"source {REPO}/.venv/bin/activate" in out
    # Without Slurm, run by path from elsewhere.
    assert f"cd {REPO}\n" in slurm_dry_run(None, "DATA=sample", cwd=tmp_path)
    # A path that is not the repo's gives a clear error, not a launch in the wrong place.
    (tmp_path / "elsewhere").mkdir()
    elsewhere = fake_slurm(tmp_path / "elsewhere", "/nowhere/slurm/train.sh")
    env = {**env, "PATH": f"{elsewhere}:{os.environ['PATH']}"}
    bad = subprocess.run(
        ["bash", str(spool / "slurm_script"), "DATA=sample"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=clean_env(DRY_RUN="1", **env),
    )
    assert bad.returncode == 2 and "AOT_REPO" in bad.stderr


@pytest.mark.slow
def test_time_limit_signal_checkpoints_requeues_and_the_requeued_job_resumes(tmp_path, tiny_path):
    out = tmp_path / "run"
    bin_dir = fake_slurm(tmp_path, SCRIPT)
    env = clean_env(
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NODELIST="node1",
        ACCEL="cpu",
        GPUS_PER_NODE="2",
        PORT=str(29500 + os.getpid() % 1000),
        OMP_NUM_THREADS="1",
        AOT_STOP_FILE=str(tmp_path / "stop"),
    )
    words = [
        "MODEL=tiny",
        f"ARGS=output_dir={out} train.max_steps=60 train.save_steps=5 train.per_device_train_batch_size=8 "
        "data.max_test_samples=8",
    ]
    job = subprocess.Popen(
        ["bash", SCRIPT, *words],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    wait_for_checkpoint(job, out / "checkpoint-5")
    job.send_signal(signal.SIGUSR1)  # what `--signal=B:USR1@120` sends before the time limit
    log, _ = job.communicate(timeout=600)
    assert job.returncode == 0, log[-3000:]
    assert "asking the trainer to checkpoint and stop" in log and "stop file" in log
    assert "preemption: a step takes up to" in log and "the launcher's lead time is 120 s" in log
    step = int(log.split("stopped on request at step ")[1].split()[0])
    assert 5 <= step < 60 and (out / f"checkpoint-{step}" / "trainer_state.json").is_file()
    assert (tmp_path / "scontrol.log").read_text() == "requeue 4242\n"
    assert not (tmp_path / "stop").exists()  # removed, so the requeued job is not stopped at once
    again = subprocess.run(
        ["bash", SCRIPT, *words], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resuming from {out / f'checkpoint-{step}'}" in again.stdout + again.stderr
    assert (out / "adapter_model.safetensors").is_file()


@pytest.mark.parametrize("accel", ["fsdp", "deepspeed_zero3"])
def test_two_nodes_make_one_job_of_one_launcher_per_node(accel, monkeypatch, tmp_path):
    """The launch line slurm/train.sh gives node 1 of 2, through accelerate's own `launch` command
    up to the process start: torch.distributed.run joining node 0's rendezvous as node 1 of 2.
    (DeepSpeed's default multi-node launcher would instead start `deepspeed --hostfile None` on
    every node: N separate jobs writing to one output_dir.)"""
    import shlex
    import types

    import accelerate.commands.launch as accelerate_launch
    import torch.distributed.run

    out = slurm_dry_run(2, "MODEL=merlinite", "LOSS=aot_unpaired", "DATA=ultrafeedback", f"ACCEL={accel}")
    started, spawned = [], []
    monkeypatch.setattr(torch.distributed.run, "run", started.append)
    finished = types.SimpleNamespace(wait=lambda: 0, returncode=0)
    monkeypatch.setattr(
        accelerate_launch.subprocess, "Popen", lambda cmd, **kw: spawned.append(cmd) or finished
    )
    monkeypatch.chdir(tmp_path)  # the pdsh path would write .deepspeed_env into the working directory
    line = next(x for x in out.splitlines() if x.startswith("srun "))
    launch = shlex.split(shlex.split(line)[-1].replace("$SLURM_NODEID", "1"))
    assert launch[:2] == ["accelerate", "launch"]
    args = accelerate_launch.launch_command_parser().parse_args(launch[2:])
    args.config_file = os.path.join(REPO, args.config_file)
    accelerate_launch.launch_command(args)
    assert not [cmd for cmd in spawned if cmd[0] != "nvidia-smi"]  # (accelerate probes the GPUs)
    (run,) = started
    assert (run.nnodes, run.node_rank, run.nproc_per_node) == ("2", 1, "8")
    main = out.split("main node ")[1].split(":")[0]
    endpoint = run.rdzv_endpoint or f"{run.master_addr}:{run.master_port}"
    assert endpoint == f"{main}:29500"  # node 0, where the batch script runs
