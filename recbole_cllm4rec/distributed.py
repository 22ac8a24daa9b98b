"""CLLM4Rec's own data parallelism over torch.distributed (RecBole's launcher or torchrun).

Each rank builds every batch's documents, runs its own share of them, and the trained parameters'
gradients are summed over ranks, so a run on N ranks follows the one-process run; evaluation gathers
every rank's users before computing metrics.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from recbole.trainer.trainer import AbstractTrainer

Shard = tuple[int, int]  # (rank, world size) under data parallelism; (0, 1) in one process


def own_rows(shard: Shard, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """This rank's rows (``rank::world``) of per-document tensors; all of them in one process.

    Every rank builds the documents of the whole batch (so random reordering and masking match one
    process) and runs its own rows; losses are divided by the whole batch's target count, so
    gradients summed over ranks are exactly the one-process gradients."""
    rank, world = shard
    return tensors if world == 1 else tuple(t[rank::world] for t in tensors)


class GatheredEvaluator:
    """RecBole's evaluator over every rank's users: exactly the metrics of one process.

    Under torch.distributed RecBole's evaluation loader gives each rank users ``rank::world``,
    padded with repeats to equal counts, and averages per-rank metrics (rounded first). Instead, the
    per-user rows each rank collected are gathered, the repeats dropped, and metrics computed once.
    ``n_users``: the users of the evaluation set, which tells the repeats apart.
    """

    def __init__(self, evaluator, n_users: int, rank: int, world: int) -> None:
        self.evaluator, self.n_users, self.rank, self.world = evaluator, n_users, rank, world

    def evaluate(self, struct):
        real = [len(range(r, self.n_users, self.world)) for r in range(self.world)]
        for key, value in list(struct._data_dict.items()):
            if isinstance(value, torch.Tensor) and value.dim() > 0 and len(value) == max(real):
                parts = [torch.empty_like(value) for _ in range(self.world)]
                dist.all_gather(parts, value.contiguous())
                struct[key] = torch.cat([part[:n] for part, n in zip(parts, real)])
        return self.evaluator.evaluate(struct)


def all_reduce_gradients(parameters: list[torch.nn.Parameter]) -> None:
    """Sum the gradients of ``parameters`` over ranks (each rank's loss is already scaled to the whole batch).

    A parameter no rank touched keeps ``grad = None``, so Adam leaves it alone as in one process.
    """
    touched = torch.tensor([p.grad is not None for p in parameters], dtype=torch.int32)
    dist.all_reduce(touched)
    for parameter, flag in zip(parameters, touched.tolist()):
        if flag:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad)


def from_first_rank(value, rank: int, world: int):
    """``value`` as rank 0 has it, on every rank (any picklable object)."""
    if world == 1:
        return value
    box = [value if rank == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class WithoutDDP(AbstractTrainer):
    """Data parallelism is CLLM4Rec's own, not RecBole's: RecBole's ``AbstractTrainer`` would wrap the
    whole model (frozen backbone included) in DDP with CUDA device ids; here only the trained
    parameters' gradients are all-reduced. Placed after ``Trainer`` in a trainer's MRO, its
    constructor replaces ``AbstractTrainer``'s for that trainer alone."""

    def __init__(self, config, model):
        self.config = config
        self.model = model
