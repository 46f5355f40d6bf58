"""``trl-extras sbs``: side-by-side comparison of two models: both answer the same prompts, a reward (or the sum of
several, ``--reward_funcs`` / ``--reward_weights``: reward-model paths, adapter or RewardEnsemble folders,
``module:function``, the testbed's ``gold`` / ``heuristic``) judges each pair, and a binomial test with a confidence
interval says whether A beats B. On the testbed (a testbed reward named, or no models and no prompts given) a missing
model is the testbed SFT policy and the prompts are the testbed holdout; otherwise ``--model_a``, ``--model_b`` and
``--prompts_file`` are required.

examples:
  trl-extras sbs --model_a out/sft_v2 --model_b out/sft_v1 --prompts_file prompts.jsonl --reward_funcs out/rm
  trl-extras sbs --model_a out/ppo --reward_funcs gold        # testbed: B is the testbed SFT policy

Deprecated: ``--reward_model``, ``--judge`` (use ``--reward_funcs``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .utils import REWARD_FUNCS_HELP, REWARD_WEIGHTS_HELP


@dataclass
class SideBySideArguments:
    model_a: str | None = field(default=None, metadata={"help": "Model A (path). Default: the testbed SFT policy."})
    model_b: str | None = field(default=None, metadata={"help": "Model B, the baseline (path). Default: the testbed SFT policy."})
    reward_funcs: list[str] | None = field(default=None, metadata={"help": REWARD_FUNCS_HELP + " The judge."})
    reward_weights: list[float] | None = field(default=None, metadata={"help": REWARD_WEIGHTS_HELP})
    reward_model: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs PATH."})
    judge: str | None = field(default=None, metadata={"help": "Deprecated: use --reward_funcs gold|heuristic."})
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


def resolve_judge(args, prog: str):
    """The one reward of ``--reward_funcs`` / ``--reward_weights`` (deprecated ``--reward_model`` / ``--judge``
    folded in with a warning), through the CLI's resolver; required."""
    from .utils import (
        check_reward_weights,
        deprecated_reward_flags,
        require,
        resolve_reward_funcs,
        testbed_reward_name,
        weighted_reward,
    )

    deprecated_reward_flags(args, prog, {"reward_model": lambda v: [v], "judge": testbed_reward_name("--judge")})
    require(args.reward_funcs, "--reward_funcs", prog, "the judge: a reward-model path, a RewardEnsemble folder, "
            "module:function, or the testbed's gold / heuristic", own_data=False)  # fmt: skip
    check_reward_weights(args.reward_weights, len(args.reward_funcs))
    return weighted_reward(resolve_reward_funcs(args.reward_funcs), args.reward_weights)


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
    from .utils import parse_args, require, resolve_model_name, testbed_asked

    (args,) = parse_args([SideBySideArguments], argv, "sbs")
    judge = resolve_judge(args, "sbs")
    testbed = testbed_asked({"--model_a": args.model_a, "--model_b": args.model_b, "--prompts_file": args.prompts_file},
                            named=tuple(args.reward_funcs))  # fmt: skip
    if not testbed:
        for flag in ("model_a", "model_b", "prompts_file"):
            require(getattr(args, flag), f"--{flag}", "sbs", "what to compare on your data")
    args.model_a = resolve_model_name(args.model_a or "testbed", "--model_a")
    args.model_b = resolve_model_name(args.model_b or "testbed", "--model_b")
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
