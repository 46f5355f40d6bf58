"""Work sharded over processes so that the result does not depend on how many processes did it.

Used by :class:`~trl_extras.trainers.cem.CEMTrainer` under ``accelerate launch``: a round's prompts are cut into
fixed chunks (by prompt index, never by process), each chunk is sampled from its own random stream (a seed derived
from ``(seed, stream, first prompt index)``) and scored in one call, the chunks are dealt round-robin to the
processes and gathered back in chunk order. One process and N processes therefore produce the same rows.
"""

from __future__ import annotations

import hashlib


def chunk_bounds(num_items: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``range(num_items)`` in chunks of ``chunk_size`` (the last may be shorter)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(s, min(s + chunk_size, num_items)) for s in range(0, num_items, chunk_size)]


def my_chunks(chunks: list, process_index: int, num_processes: int) -> list:
    """The chunks process ``process_index`` of ``num_processes`` handles: round-robin (balanced to one chunk)."""
    return list(chunks[process_index::num_processes])


def stream_seed(*keys: int | str) -> int:
    """A 63-bit seed that depends only on ``keys`` (e.g. ``(seed, "round", r, first_prompt_index)``).

    A hash, not arithmetic such as ``seed * 1000 + r``, so that no two key tuples share a stream by accident.
    """
    digest = hashlib.sha256(repr(tuple(keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def is_distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gather_objects(obj) -> list:
    """Every process's ``obj`` (picklable), in process order, on every process; ``[obj]`` without a process group."""
    if not is_distributed():
        return [obj]
    import torch.distributed as dist

    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait for every process (no-op in one process): e.g. before reading what the main process wrote."""
    if is_distributed():
        import torch.distributed as dist

        dist.barrier()
