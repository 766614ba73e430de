"""Patching in several processes (``accelerate launch`` or ``torchrun``): FSDP2 sharding of the model being trained,
each rank's share of a batch, and rank 0's word on whatever the ranks must agree on.

Every rank loads the whole model and prepares the same data; training shards the weights, LoRA state, gradients
and optimizer moments over the ranks, and each rank computes its share of every batch. Rank 0 writes the output.
In one process (no launcher, or a world of one: what runs on a CPU) every function here is an identity or a
constant, and nothing of ``torch.distributed`` is touched.
"""

from __future__ import annotations

import os


def launched() -> bool:
    """Return whether a launcher started this process as one of several (WORLD_SIZE > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start() -> None:
    """Join the launcher's process group (NCCL between GPUs, gloo between CPUs) and take this rank's own GPU."""
    import torch
    import torch.distributed as dist

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group()


def finish() -> None:
    """End this process with exit code 0 once every rank is done (rank 0 may still be writing the output).

    The process leaves at once, without the interpreter's teardown: there, gloo's worker threads still referenced
    by the sharded model were at times destroyed while running, and the rank died of SIGABRT after its work was
    done and written (about one run in six on a 2-core CPU).
    """
    import sys

    import torch.distributed as dist

    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def active() -> bool:
    """Return whether this process works in a process group of more than one rank."""
    import torch.distributed as dist

    return dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Return this process's rank (0 in one process)."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Return the number of ranks (1 in one process)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_initialized() else 1


def shard(model) -> None:
    """Shard a Hugging Face causal LM in place with FSDP2 over every rank.

    Each decoder layer (LoRA weights included) is one unit and the rest (embeddings, final norm, head) another:
    a unit's weights are split by rows over the ranks and gathered only for its own forward and backward.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(model.device.type, (world_size(),))
    layer_classes = set(model._no_split_modules)
    for module in model.modules():
        if type(module).__name__ in layer_classes:
            fully_shard(module, mesh=mesh)
    # The causal LM itself is the outer unit, not a peft wrapper around it: ``generate`` calls the causal LM
    # directly, and only a unit's own call gathers its weights.
    fully_shard(model, mesh=mesh)
    # transformers reads this flag to keep every rank generating until all are done (synced_gpus): a rank whose
    # greedy tokens ended first would otherwise stop, and leave the others waiting in a gather.
    model._is_fsdp_managed_module = True


def share(rows: list) -> list:
    """Return this rank's share of a batch: every world_size-th row, from the rank's own index on."""
    return rows[rank()::world_size()] if active() else rows


def batch_weights(counts: list[float]) -> list[float]:
    """Return per count (rows or tokens a rank's mean is taken over): this rank's count x world size / the count
    over all ranks. A rank's mean times its weight, averaged over the ranks as FSDP averages gradients, is the
    mean over the whole batch, however unevenly the rows fell."""
    import torch
    import torch.distributed as dist

    local = torch.tensor([float(c) for c in counts], dtype=torch.float64)
    total = local.clone()
    dist.all_reduce(total)
    return (local * world_size() / total.clamp(min=1)).tolist()


def mean_over_ranks(values: dict[str, float]) -> dict[str, float]:
    """Return the mean over the ranks of each value."""
    import torch
    import torch.distributed as dist

    summed = torch.tensor(list(values.values()), dtype=torch.float64)
    dist.all_reduce(summed)
    return {name: value / world_size() for name, value in zip(values, summed.tolist())}


def from_rank0(value):
    """Return rank 0's ``value`` on every rank (pickled), so all ranks go on from the same data and decisions:
    on GPUs, kernels need not be bitwise repeatable, and greedy text or a close choice could differ by rank."""
    if not active():
        return value
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def full_state_dict(model) -> dict:
    """Return the sharded model's whole state dict on the CPU at rank 0, and an empty dict on the other ranks;
    every rank must call it (it gathers)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
