"""``trl-extras sbs``: side-by-side comparison of two models with a binomial test.

    trl-extras sbs --model_a out/sft_v2 --model_b out/sft_v1 --reward_model out/rm
    trl-extras sbs --model_a out/ppo --judge gold            # testbed: B defaults to the testbed SFT policy
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

_TESTBED_JUDGES = ("gold", "heuristic")


@dataclass
class SideBySideArguments:
    model_a: str | None = field(default=None, metadata={"help": "Model A (path). Default: the testbed SFT policy."})
    model_b: str | None = field(default=None, metadata={"help": "Model B, the baseline (path). Default: the testbed SFT policy."})
    reward_model: str | None = field(default=None, metadata={"help": "Reward-model path used as the judge (score difference)."})
    judge: str | None = field(
        default=None, metadata={"help": "Built-in testbed judge instead of a reward model: 'gold' or 'heuristic'."}
    )
    prompts_file: str | None = field(
        default=None, metadata={"help": "JSON/JSONL file with a 'prompt' column. Default: the testbed holdout prompts."}
    )
    num_prompts: int | None = field(default=None, metadata={"help": "Use only the first N prompts."})
    max_new_tokens: int = field(default=64, metadata={"help": "Longest answer, in tokens."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for both models (0 = greedy)."})
    tie_tolerance: float = field(default=0.0, metadata={"help": "Score differences up to this are ties."})
    ci_method: str = field(default="wilson", metadata={"help": "Win-rate interval: 'wilson' or 'clopper-pearson'."})
    confidence: float = field(default=0.95, metadata={"help": "Confidence level of the interval."})
    seed: int = field(default=0, metadata={"help": "Seed of sampling."})
    batch_size: int = field(default=64, metadata={"help": "Sequences per generate call / reward forward."})
    output_json: str | None = field(default=None, metadata={"help": "Write the result (with per-prompt records) here."})


def resolve_judge(reward_model: str | None, judge: str | None):
    """A reward-model path, or the testbed's gold / heuristic reward function; exactly one must be given."""
    if (reward_model is None) == (judge is None):
        raise ValueError("Give exactly one of --reward_model PATH or --judge {gold,heuristic}.")
    if reward_model is not None:
        return reward_model
    if judge not in _TESTBED_JUDGES:
        raise ValueError(f"--judge must be one of {_TESTBED_JUDGES}, got {judge!r}")
    from ..testbed import gold_reward_fn, heuristic_reward_fn

    return gold_reward_fn if judge == "gold" else heuristic_reward_fn


def resolve_prompts(prompts_file: str | None, num_prompts: int | None, split: str = "holdout") -> list:
    if num_prompts is not None and (isinstance(num_prompts, bool) or not isinstance(num_prompts, int) or num_prompts < 1):
        raise ValueError(f"--num_prompts must be an integer >= 1 (omit it to use every prompt), got {num_prompts!r}.")
    if prompts_file:
        import os

        from datasets import load_dataset

        if not os.path.isfile(prompts_file):
            raise ValueError(f"--prompts_file {prompts_file!r} does not exist.")
        if os.path.getsize(prompts_file) == 0 or not open(prompts_file, encoding="utf-8").read(4096).strip():
            raise ValueError(f"--prompts_file {prompts_file!r} is empty: expected JSON/JSONL rows with a 'prompt'.")
        data = load_dataset("json", data_files=prompts_file, split="train")
    else:
        from ..testbed import prompt_dataset

        data = prompt_dataset(split)
    from ..evaluation._common import prompts_from

    prompts = prompts_from(data)
    return prompts[:num_prompts] if num_prompts else prompts


def main(argv=None) -> int:
    from ..evaluation.side_by_side import side_by_side
    from .utils import parse_args

    (args,) = parse_args([SideBySideArguments], argv, "sbs")
    judge = resolve_judge(args.reward_model, args.judge)
    if args.model_a is None or args.model_b is None:
        from ..testbed import build_sft_policy

        sft = build_sft_policy()
        args.model_a, args.model_b = args.model_a or sft, args.model_b or sft
    result = side_by_side(
        args.model_a, args.model_b, resolve_prompts(args.prompts_file, args.num_prompts), judge,
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, tie_tolerance=args.tie_tolerance,
        ci_method=args.ci_method, confidence=args.confidence, seed=args.seed, batch_size=args.batch_size,
        progress=True,
    )
    print(result.summary())
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        result.to_json(args.output_json)
    else:
        print(json.dumps(result.to_dict(with_records=False), indent=2))
    return 0
