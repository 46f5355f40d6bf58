"""Normalize the advantages of a fixed global batch split across processes; write the global result.

Run with ``accelerate launch --num_processes 2 --cpu tests/scripts/normalize_advantages_dist.py OUT.json``.
Each process holds a contiguous shard of rows (uneven valid counts: the shards have different masks); the
normalized shards are gathered and rank 0 writes them with the global statistics.
"""

import json
import sys

import torch
from accelerate import Accelerator

from trl_extras.core.advantages import normalize_advantages
from trl_extras.core.masked import masked_moments


def global_batch():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(8, 6, generator=g, dtype=torch.float64) * 3 + 1.5
    mask = torch.rand(8, 6, generator=g) > 0.35
    mask[:, 0] = True
    mask[:4, 3:] = False  # the first shard has far fewer valid tokens than the second
    return adv, mask


def main(out_path: str) -> None:
    acc = Accelerator(cpu=True)
    adv, mask = global_batch()
    rows = adv.shape[0] // acc.num_processes
    sl = slice(acc.process_index * rows, (acc.process_index + 1) * rows)
    result = {"num_processes": acc.num_processes}
    for keep_mean in (False, True):
        local = normalize_advantages(adv[sl], mask[sl], mode="batch", keep_mean=keep_mean, accelerator=acc)
        full = acc.gather(local.contiguous())
        mean, var, count = masked_moments(adv[sl], mask[sl], accelerator=acc)
        result[f"keep_mean={keep_mean}"] = {
            "normalized": full.tolist(),
            "input_mean": mean.item(),
            "input_var": var.item(),
            "count": count.item(),
        }
    if acc.is_main_process:
        with open(out_path, "w") as f:
            json.dump(result, f)
    acc.wait_for_everyone()
    # tear the gloo group down explicitly: leaving it to interpreter exit can abort ("terminate called without an
    # active exception") and fail the launch
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
