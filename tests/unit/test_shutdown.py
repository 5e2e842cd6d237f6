"""A training process ends its process group. ``aot.distributed.shut_down`` waits for every rank
and leaves no group behind, and every entry point that trains under a launcher calls it: a process
that exits with a live gloo group can abort (SIGABRT, "terminate called without an active
exception") after a finished run, which fails the job."""

import ast
import json
from pathlib import Path

import torch.distributed as dist
import torch.multiprocessing as mp

from aot.distributed import shut_down

REPO = Path(__file__).resolve().parents[2]
ENTRY_POINTS = ["scripts/train.py", "tests/helpers/sharded_cases.py"]


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    if rank == 0:
        Path(out_dir, "written-by-rank0").touch()
    shut_down()
    state = {"initialised": dist.is_initialized(), "saw_rank0": Path(out_dir, "written-by-rank0").exists()}
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(state))


def test_shut_down_waits_for_every_rank_and_ends_the_group(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    for rank in range(2):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text()) == {
            "initialised": False,
            "saw_rank0": True,
        }
    shut_down()  # one process, no group: nothing to do


def called(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}


def test_every_launched_entry_point_that_trains_shuts_down():
    launched = [
        p for p in [*REPO.glob("scripts/*.py"), *REPO.glob("tests/helpers/*.py")] if "train" in called(p)
    ]
    assert sorted(str(p.relative_to(REPO)) for p in launched) == ENTRY_POINTS
    for path in launched:
        assert "shut_down" in called(path), f"{path.relative_to(REPO)} trains but never calls shut_down()"
