"""``trl-extras synth-pairs``: DPO preference pairs from a policy's own samples ranked by a reward (chosen = best of
``n``, rejected = worst), and optionally the article's two-stage DPO on them (synthetic pairs first, then real
pairs). ``--reward_funcs`` takes reward-model paths, adapter or RewardEnsemble folders, ``module:function`` and the
testbed's ``gold`` / ``heuristic`` (summed with ``--reward_weights``). On the testbed (a testbed reward named, or no
policy and no prompts given) the policy is the testbed SFT policy, prompts and real pairs the testbed's; otherwise
``--policy``, ``--prompts_file`` (and with ``--two_stage_dpo`` ``--real_pairs_file``) are required.

examples:
  trl-extras synth-pairs --policy out/sft --prompts_file prompts.jsonl --reward_funcs out/rm --n 4 --output_dir out/synth
  trl-extras synth-pairs --reward_funcs gold --n 4 --output_dir out/synth                 # testbed
  trl-extras synth-pairs --config recipes/dpo_two_stage.yaml                             # pairs + two DPO stages

Sampling is seeded by ``--seed`` (shared with DPO's ``seed``). Pairs go to ``<output_dir>/pairs.jsonl``, counts to
``<output_dir>/synthesis_stats.json``; with ``--two_stage_dpo`` the stages train into
``<output_dir>/stage1_synthetic`` and ``<output_dir>/stage2_real``. Deprecated: ``--reward_model``, ``--judge``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .utils import REWARD_FUNCS_HELP, REWARD_WEIGHTS_HELP


@dataclass
class SynthPairsArguments:
    policy: str | None = field(default=None, metadata={"help": "Policy path. Default: the testbed SFT policy."})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": REWARD_FUNCS_HELP + " Ranks the samples."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": REWARD_WEIGHTS_HELP})
    reward_model: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs PATH."})
    judge: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs gold|heuristic."})
    prompts_file: str | None = field(
        default=None, metadata={"help": "JSON/JSONL with a 'prompt' column. Default: the testbed train prompts."}
    )
    num_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    n: int = field(default=4, metadata={"help": "Samples per prompt (>= 2); chosen = best, rejected = worst."})
    min_margin: float = field(default=0.0, metadata={"help": "Drop prompts whose best - worst score is below this."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest sample, in tokens."})
    sampling_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature."})
    generation_chunk_size: int = field(default=64, metadata={"help": "Sequences per generate call / reward forward. (a memory knob)"})
    two_stage_dpo: bool = field(
        default=False, metadata={"help": "Then run DPO on the synthetic pairs and continue on the real pairs."}
    )
    real_pairs_file: str | None = field(
        default=None, metadata={"help": "JSON/JSONL real preference pairs (prompt/chosen/rejected). Default: testbed clean pairs."}
    )
    num_real_pairs: int = field(default=500, metadata={"help": "Testbed: number of clean (gold-labelled) real pairs."})


def main(argv=None) -> int:
    from trl import DPOConfig

    from ..evaluation.synthetic_pairs import run_two_stage_dpo, synthesize_preference_pairs
    from .sbs import resolve_judge, resolve_prompts
    from .utils import parse_args, require, resolve_model_name, testbed_asked

    args, dpo_args = parse_args([SynthPairsArguments, DPOConfig], argv, "synth-pairs")
    reward = resolve_judge(args, "synth-pairs")
    testbed = testbed_asked({"--policy": args.policy, "--prompts_file": args.prompts_file}, named=tuple(args.reward_funcs))
    if not testbed:
        require(args.policy, "--policy", "synth-pairs", "the policy whose samples become pairs")
        require(args.prompts_file, "--prompts_file", "synth-pairs", "the prompts to sample on")
        if args.two_stage_dpo:
            require(args.real_pairs_file, "--real_pairs_file", "synth-pairs", "the real pairs of DPO's second stage")
    args.policy = resolve_model_name(args.policy or "testbed", "--policy")
    dataset, stats = synthesize_preference_pairs(
        args.policy, reward, resolve_prompts(args.prompts_file, args.num_prompts, split="train"), n=args.n,
        min_margin=args.min_margin, max_new_tokens=args.max_new_tokens, temperature=args.sampling_temperature,
        batch_size=args.generation_chunk_size, seed=dpo_args.seed, return_stats=True, progress=True,
    )
    out = Path(dpo_args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    from ..utils.atomic import atomic_write_json, atomic_writer

    atomic_writer(out / "pairs.jsonl", dataset.to_json)  # complete or absent: a later DPO run trusts it
    atomic_write_json(out / "synthesis_stats.json", stats.to_dict())
    print(json.dumps(stats.to_dict(), indent=2))
    print(f"wrote {len(dataset)} pairs to {out / 'pairs.jsonl'}")
    if args.two_stage_dpo:
        if args.real_pairs_file:
            from datasets import load_dataset

            real = load_dataset("json", data_files=args.real_pairs_file, split="train")
        else:
            from ..testbed import clean_pairs

            real = clean_pairs(args.num_real_pairs, seed=dpo_args.seed)
        real = real.select_columns([c for c in ("id", "prompt", "chosen", "rejected") if c in real.column_names])
        _, stage2 = run_two_stage_dpo(args.policy, dataset, real, dpo_args)
        stage2.save_model(str(out / "stage2_real"))
        print(f"two-stage DPO done: final model in {out / 'stage2_real'}")
    return 0
