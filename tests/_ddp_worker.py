"""One process of the two-process AlphaSync test (tests/test_ddp.py): kept apart from the test module so that
the spawned processes import torch, Lightning and the sync alone, not the whole test module's imports."""

from types import SimpleNamespace

import torch
import torch.distributed as dist

from nas_restore.nni_layer.ddp import AlphaSync


def _steps(rank: int, sync: bool) -> dict:
    """Its own start and its own data: an architecture optimiser stepped three times under ``AlphaSync(sync)``."""
    alpha = torch.nn.Parameter(torch.linspace(-1, 1, 4) + rank)  # each its own start: the broadcast aligns them
    beta = torch.nn.Parameter(torch.zeros(3))                    # a gradient on rank 0 only
    arch = torch.optim.Adam([alpha, beta], lr=0.1)
    arch.is_arch_optimizer = True
    weights = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)  # not an architecture optimiser
    trainer = SimpleNamespace(optimizers=[weights, arch])
    callback = AlphaSync(sync=sync)
    callback.on_train_start(trainer, None)
    for _ in range(3):
        arch.zero_grad(set_to_none=True)
        loss = ((alpha - torch.arange(4.0) * (rank + 1)) ** 2).sum()  # each process its own data
        if rank == 0:
            loss = loss + beta.sum()
        loss.backward()
        arch.step()
    callback.on_train_end(trainer, None)
    return {"alpha": alpha.detach(), "beta": beta.detach(), "history": [(s.step, s.digests) for s in callback.history],
            "hooks_left": len(arch._optimizer_step_pre_hooks) + len(arch._optimizer_step_post_hooks)}


def worker(rank: int, world: int, init_file: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save({"synced": _steps(rank, sync=True), "loose": _steps(rank, sync=False)}, f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
