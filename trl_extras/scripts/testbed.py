"""``trl-extras testbed``: build the testbed's SFT policy (a tiny Llama trained on the "sort the digits" task,
cached) and its datasets (prompts, SFT data, dirty and clean preference pairs) into a directory, and print the
policy's numbers (gold reward on holdout prompts), so the other commands' testbed runs start from something known.

examples:
  trl-extras testbed --output_dir outputs/testbed
  trl-extras testbed --output_dir outputs/testbed --num_dirty_pairs 1000 --num_clean_pairs 300
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TestbedArguments:
    output_dir: str = field(default="outputs/testbed", metadata={"help": "Where datasets and the report go."})
    num_clean_pairs: int = field(default=1000, metadata={"help": "Clean (gold-labelled) preference pairs."})
    num_dirty_pairs: int = field(default=5000, metadata={"help": "Dirty (heuristic-labelled) preference pairs."})
    flip_rate: float = field(default=0.1, metadata={"help": "Label flip rate of the clean pairs."})
    easy_share: float = field(default=0.3, metadata={"help": "Share of trivially easy dirty pairs."})
    seed: int = field(default=0, metadata={"help": "Seed of the task."})


def summarize_testbed(args: TestbedArguments, policy_path: str | None = None) -> dict:
    """Build (or reuse) the SFT policy and pair datasets; measure the testbed's headline numbers."""
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..modeling.generation import generate_rollouts
    from ..testbed import SFTBuildConfig, TestbedConfig, build_sft_policy, clean_pairs, dirty_pairs, gold_reward_fn
    from ..testbed.data import prompt_dataset

    task = TestbedConfig(seed=args.seed)
    start = time.perf_counter()
    policy_path = policy_path or build_sft_policy(SFTBuildConfig(testbed=task))
    build_s = time.perf_counter() - start
    model = AutoModelForCausalLM.from_pretrained(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path)
    holdout = prompt_dataset("holdout", task)["prompt"]
    torch.manual_seed(args.seed)
    rollout = generate_rollouts(model, tokenizer, holdout, max_new_tokens=24, temperature=1.0, batch_size=128)
    gold = np.array(gold_reward_fn(rollout.prompts, rollout.completions))
    start = time.perf_counter()
    dirty = dirty_pairs(args.num_dirty_pairs, easy_share=args.easy_share, config=task)
    clean = clean_pairs(args.num_clean_pairs, flip_rate=args.flip_rate, config=task)
    pairs_s = time.perf_counter() - start
    agree = np.array(dirty["agrees_with_gold"])
    easy = np.array(dirty["easy"])
    out = Path(args.output_dir)
    from ..utils.atomic import atomic_writer

    atomic_writer(out / "dirty_pairs.jsonl", dirty.to_json)  # complete or absent (later runs train on them)
    atomic_writer(out / "clean_pairs.jsonl", clean.to_json)
    summary = {
        "sft_policy": policy_path,
        "sft_build_or_load_seconds": round(build_s, 1),
        "pairs_build_seconds": round(pairs_s, 2),
        "holdout_gold_mean_T1": float(gold.mean()),
        "holdout_gold_sem_T1": float(gold.std(ddof=1) / np.sqrt(len(gold))),
        "holdout_exact_sort_rate_T1": float((gold == 1.0).mean()),
        "dirty_agreement_with_gold": float(agree.mean()),
        "dirty_agreement_with_gold_non_easy": float(agree[~easy].mean()),
        "clean_flip_rate_measured": float(np.mean(clean["flipped"])),
    }
    (out / "testbed_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def main(argv=None) -> int:
    from .utils import parse_args

    (args,) = parse_args([TestbedArguments], argv, "testbed")
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)
    summary = summarize_testbed(args)
    for key, value in summary.items():
        print(f"{key:>40}: {value}")
    return 0
