"""``trl-extras iterate``: rounds of RL → compare with the baseline → label (judge or people) → refresh the reward
model, the article's drill as an outer loop that survives labellers who answer days later (re-run the same command to
continue; every finished step is skipped). ``--reward_funcs`` names the ONE reward model that PPO optimizes and each
round refreshes (a reward-model path: it is trained further, so not a function); ``--judge`` labels the comparisons
with labeler 'judge' and takes the same vocabulary as ``--reward_funcs`` elsewhere (the testbed's ``gold`` /
``heuristic``, a reward-model path, ``module:function``). On the testbed's prompts (the default) a missing policy,
reward model and judge are the testbed's; with your own ``prompt_dataset`` all three are required.

examples:
  trl-extras iterate --config recipes/iterate_testbed.yaml
  trl-extras iterate --prompt_dataset prompts.jsonl --policy_model out/sft --reward_funcs out/rm \
      --labeler people --export_format csv --output_dir out/iterate

Deprecated: ``--reward_model`` (use ``--reward_funcs``). The loop itself is :mod:`trl_extras.refresh.iterate`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class IterateRewardArguments:
    reward_funcs: list[str] | None = field(
        default=None,
        metadata={"help": "The reward model to optimize and refresh each round: one reward-model path (full model or "
                  "LoRA adapter folder). Unset on the testbed: a proxy trained on the testbed's dirty pairs."},
    )


def main(argv=None) -> int:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    import warnings

    from ..refresh.iterate import IterateConfig, run_iterate
    from .utils import parse_args, resolve_model_name

    config, rewards = parse_args([IterateConfig, IterateRewardArguments], argv, "iterate")
    if config.reward_model and not rewards.reward_funcs:
        warnings.warn("trl-extras iterate: --reward_model is deprecated; use --reward_funcs "
                      f"{config.reward_model}.", FutureWarning, stacklevel=2)  # fmt: skip
    if rewards.reward_funcs:
        from ..testbed.names import TESTBED_REWARDS
        from ..utils.imports import is_import_path

        spec = rewards.reward_funcs[0]
        if len(rewards.reward_funcs) != 1 or spec in TESTBED_REWARDS or is_import_path(spec):
            raise ValueError(f"--reward_funcs {rewards.reward_funcs}: iterate refreshes ONE reward model each round; "
                             "give one reward-model path (a function cannot be retrained; use it as --judge).")  # fmt: skip
        config.reward_model = rewards.reward_funcs[0]
    config.policy_model = resolve_model_name(config.policy_model, "--policy_model")
    run_iterate(config)
    return 0
