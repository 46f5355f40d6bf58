"""trl_extras: alignment techniques for Hugging Face TRL that TRL itself does not ship.

Public names are imported lazily so that ``import trl_extras`` is cheap and starts no network thread (TRL and
transformers load only when a trainer is first used).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# bitsandbytes (imported by peft) and DeepSpeed's CPU notice only when used: one-shot import hooks, nothing imported
from .utils.optional_backends import quiet_optional_backends  # noqa: E402

quiet_optional_backends()

# public name -> module that defines it. Each issue's work registers its names here.
_LAZY = {
    # core math
    "exact_kl": "trl_extras.core.kl",
    "kl_from_logprobs": "trl_extras.core.kl",
    "compute_gae": "trl_extras.core.advantages",
    "normalize_advantages": "trl_extras.core.advantages",
    "masked_mean": "trl_extras.core.masked",
    "masked_var": "trl_extras.core.masked",
    "masked_whiten": "trl_extras.core.masked",
    "completion_token_stats": "trl_extras.modeling.lm",
    "exact_kl_to_reference": "trl_extras.modeling.lm",
    "generate_rollouts": "trl_extras.modeling.generation",
    "Rollout": "trl_extras.modeling.generation",
    # rewards
    "RewardFunctions": "trl_extras.rewards.functions",
    "RewardModelScorer": "trl_extras.rewards.scoring",
    "RewardSource": "trl_extras.rewards.source",
    "load_reward": "trl_extras.rewards.source",
    "score_with_reward_model": "trl_extras.rewards.scoring",
    "TwoStageRewardConfig": "trl_extras.rewards.two_stage",
    "TwoStageRewardTrainer": "trl_extras.rewards.two_stage",
    "filter_easy_pairs": "trl_extras.rewards.filtering",
    "train_with_easy_pair_filtering": "trl_extras.rewards.filtering",
    "RewardEnsemble": "trl_extras.rewards.ensemble",
    "EnsembleScores": "trl_extras.rewards.ensemble",
    "train_reward_ensemble": "trl_extras.rewards.ensemble",
    "FilterReport": "trl_extras.rewards.filtering",
    "pair_margins": "trl_extras.rewards.pairs",
    "evaluate_reward_model": "trl_extras.rewards.metrics",
    "pairwise_accuracy": "trl_extras.rewards.metrics",
    "hard_quartile_accuracy": "trl_extras.rewards.metrics",
    "calibration_error": "trl_extras.rewards.metrics",
    # trainers
    "PPOConfig": "trl_extras.trainers.ppo.config",
    "PPOTrainer": "trl_extras.trainers.ppo.trainer",
    "ExactKLGRPOTrainer": "trl_extras.trainers.exact_kl_grpo",
    "ExactKLGRPOConfig": "trl_extras.trainers.exact_kl_grpo",
    "CEMConfig": "trl_extras.trainers.cem.config",
    "CEMTrainer": "trl_extras.trainers.cem.trainer",
    # callbacks and evaluation
    "RewardEarlyStoppingCallback": "trl_extras.callbacks.reward_early_stopping",
    "RewardMeasureCallback": "trl_extras.callbacks.reward_measure",
    "measure_policy": "trl_extras.evaluation.measure",
    "side_by_side": "trl_extras.evaluation.side_by_side",
    "SideBySideResult": "trl_extras.evaluation.side_by_side",
    "synthesize_preference_pairs": "trl_extras.evaluation.synthetic_pairs",
    "run_two_stage_dpo": "trl_extras.evaluation.synthetic_pairs",
    "binomial_test": "trl_extras.core.stats",
    "win_rate_interval": "trl_extras.core.stats",
    "mean_ci": "trl_extras.core.stats",
    # refreshing the reward model on the policy's answers (issue 14)
    "collect_comparisons": "trl_extras.refresh.comparisons",
    "RewardJudge": "trl_extras.refresh.labeling",
    "label_comparisons": "trl_extras.refresh.labeling",
    "export_for_labeling": "trl_extras.refresh.labeling",
    "import_labels": "trl_extras.refresh.labeling",
    "to_preference_pairs": "trl_extras.refresh.labeling",
    "TIE": "trl_extras.refresh.labeling",
    "RewardRefreshConfig": "trl_extras.refresh.refresh",
    "RefreshReport": "trl_extras.refresh.refresh",
    "refresh_reward_model": "trl_extras.refresh.refresh",
    "RewardRefreshCallback": "trl_extras.callbacks.reward_refresh",
    "IterateConfig": "trl_extras.refresh.iterate",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'trl_extras' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)


if TYPE_CHECKING:  # pragma: no cover
    from .modeling.generation import Rollout, generate_rollouts  # noqa: F401
