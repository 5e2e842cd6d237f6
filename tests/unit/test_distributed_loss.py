"""gather=True across 2 gloo processes equals the single-process loss on the concatenated batch.

Ranks hold different numbers of values (as with truly unpaired data). Each rank's gradient
divided by the world size (what DDP's averaging does) must equal the single-process gradient
of the global loss with respect to that rank's values.
"""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from aot.losses import aot_loss

WORLD = 2
# (u sizes per rank, v sizes per rank): equal, unequal, and a rank holding no v at all
SPLITS = [((4, 4), (4, 4)), ((3, 5), (4, 2)), ((3, 3), (5, 0))]
OPTIONS = [
    dict(penalty="logistic", sort="hard"),
    dict(penalty="squared_hinge", sort="soft", sort_strength=0.5),
]


def global_values(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(sum(sizes), generator=g, dtype=torch.float64) * 5


def _worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = []
    for su, sv in SPLITS:
        u_all, v_all = global_values(su, 1), global_values(sv, 2)
        u = u_all[sum(su[:rank]) : sum(su[: rank + 1])].clone().requires_grad_()
        v = v_all[sum(sv[:rank]) : sum(sv[: rank + 1])].clone().requires_grad_()
        for opts in OPTIONS:
            loss = aot_loss(u, v, beta=0.5, gather=True, **opts)
            gu, gv = torch.autograd.grad(loss, (u, v))
            results.append((loss.detach(), gu, gv))
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(str(tmp / "init"), str(tmp)), nprocs=WORLD, join=True)
    return [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize("case", range(len(SPLITS) * len(OPTIONS)))
def test_gathered_loss_and_gradients_equal_the_global_batch(ranks, case):
    su, sv = SPLITS[case // len(OPTIONS)]
    opts = OPTIONS[case % len(OPTIONS)]
    u = global_values(su, 1).requires_grad_()
    v = global_values(sv, 2).requires_grad_()
    loss = aot_loss(u, v, beta=0.5, **opts)
    gu, gv = torch.autograd.grad(loss, (u, v))
    for rank in range(WORLD):
        r_loss, r_gu, r_gv = ranks[rank][case]
        assert torch.allclose(r_loss, loss, rtol=0, atol=1e-6)
        assert torch.allclose(r_gu / WORLD, gu[sum(su[:rank]) : sum(su[: rank + 1])], rtol=0, atol=1e-6)
        assert torch.allclose(r_gv / WORLD, gv[sum(sv[:rank]) : sum(sv[: rank + 1])], rtol=0, atol=1e-6)
    # The averaged gradients are the global gradient, not a rank-local one.
    assert not torch.allclose(ranks[0][case][1] / WORLD, torch.zeros_like(ranks[0][case][1]))


def test_gather_outside_distributed_is_the_local_loss():
    u, v = global_values((4,), 3), global_values((6,), 4)
    assert torch.equal(aot_loss(u, v, gather=True), aot_loss(u, v))
