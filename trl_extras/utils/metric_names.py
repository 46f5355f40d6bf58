"""Every metric key the package's trainers and callbacks log: ONE registry, from which README's "Logged metrics"
section is generated and against which a test checks every key the trainers really log (tests/test_metric_names.py).

A :class:`Metric` is a key or a key pattern (``rewards/{name}/mean``: ``{...}`` stands for one path segment, a
reward's or estimator's name; ``{min|mean|max}``: one of the listed words), the trainers that log it, what it measures, its formula or source, when it is
logged and what a healthy run shows. Keys follow the ``transformers.Trainer`` conventions for prefixes:

* ``evaluate()`` prefixes with ``eval_`` (``eval_reward``): a metric with ``eval=True`` is also logged that way;
  CEM's held-out measurements put it after the ``cem/`` prefix (``cem/eval_reward_mean``);
* ``TwoStageRewardTrainer`` prefixes TRL ``RewardTrainer``'s keys with the stage: ``stage1/accuracy``,
  ``eval_stage2/accuracy`` (``stage{n}/`` and ``eval_stage{n}/`` + any key listed for ``RewardTrainer``);
* CEM forwards what reward functions report through ``log_metric`` as ``cem/reward_log/<key>``.

``python -m trl_extras.utils.metric_names`` checks README's generated section (exit 1 when stale); ``--write``
regenerates it. This module imports nothing from the package (a ``utils`` module), so anything can import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: When a metric is logged (the "when" column).
EVERY_STEP = "every logged step"
PER_ROLLOUT = "per rollout batch (repeated on each logged step trained on it)"
PER_UPDATE = "per logged step (mean of the steps since the last log)"
PER_EVAL = "per evaluation"
PER_ROUND = "per CEM round"
PER_REFRESH = "per refresh"
PER_MEASURE = "every `every_n_steps` steps (and at the end)"
END_OF_TRAINING = "once, when `train()` ends"
WHEN_IT_HAPPENS = "only at a step where it happens"


@dataclass(frozen=True)
class Metric:
    """One logged key (or pattern) and what it means. ``section`` groups the README tables."""

    key: str
    section: str
    trainers: str
    measures: str
    source: str
    when: str
    healthy: str = ""
    eval: bool = False  # also logged as eval_<key> by evaluate() (CEM: cem/eval_<key>)


_PPO = "PPOTrainer"
_GRPO = "ExactKLGRPOTrainer (TRL GRPOTrainer's keys too)"
_RM = "RewardTrainer (TRL), TwoStageRewardTrainer as stage{n}/…"

METRICS: tuple[Metric, ...] = (
    # ------------------------------------------------------------------------------------------------- PPO: rollout
    Metric("reward", "PPO", f"{_PPO}; GRPO", "the weighted sum of the optimized rewards, batch mean",
           "Σ_j w_j · r_j(prompt, completion), gathered over processes (before the missing-EOS penalty, "
           "normalization and clipping)", PER_ROLLOUT, "rises; a fast rise with `kl/exact` racing up is reward "
           "hacking: check a tracked gold reward", eval=True),
    Metric("reward_std", "PPO", f"{_PPO}; GRPO", "std of the summed reward over the batch",
           "std of `reward`'s values (PPO: all processes' samples; GRPO: TRL's per-group std, averaged)",
           PER_ROLLOUT, "stays above 0: a zero spread leaves nothing to learn from", eval=True),
    Metric("rewards/{name}/mean", "PPO", f"{_PPO}; GRPO (also `rewards/{{name}}/std`)",
           "each reward function's batch mean; tracked rewards (`log_reward_funcs`) too",
           "the reward's own score, before weights; `name`: the function's name or the reward-model folder",
           PER_ROLLOUT, "the optimized one rises; a tracked gold reward that falls while it rises is "
           "over-optimization", eval=True),
    Metric("score", "PPO", _PPO, "the reward PPO optimizes, batch mean",
           "`reward` minus `missing_eos_penalty` on truncated answers, then normalized / clipped if set",
           PER_ROLLOUT, "tracks `reward` (equal with the defaults)"),
    Metric("penalized_reward", "PPO", _PPO, "score plus the KL penalty, per sequence, batch mean",
           "Σ_t r_t with r_t = −β·KL_t (+ score at the last token)", PER_ROLLOUT,
           "close to `score`; far below it means β·KL dominates the signal"),
    Metric("completions/mean_length", "PPO", f"{_PPO}; GRPO", "mean completion length in tokens",
           "valid (unpadded) completion tokens per sample", PER_ROLLOUT,
           "stable; a steady climb to `max_completion_length` is length hacking", eval=True),
    Metric("completions/eos_rate", "PPO", _PPO, "share of completions that ended with EOS",
           "1 − share cut at `max_completion_length`", PER_ROLLOUT, "near 1; falling means answers get cut",
           eval=True),
    Metric("kl/exact", "PPO", _PPO, "exact KL(π‖π_ref): sum over the completion's tokens, mean over sequences "
           "(the scale of old TRL PPOTrainer's `objective/kl`; grows with the completions' length)",
           "Σ_t Σ_v π(v)(log π(v) − log π_ref(v)) over the completion's tokens, logits ÷ temperature "
           "(`core.kl.token_stats_from_logits`); `evaluate()`: on its completions", PER_ROLLOUT,
           "0 at the first rollout (the policy is the reference), then grows slowly; PPO's `kl_budget` stops on it",
           eval=True),
    Metric("kl/exact_per_token", "PPO", _PPO, "exact KL(π‖π_ref): mean over tokens (the scale of GRPO's `exact_kl`, "
           "CEM's `kl_to_ref` and TRL GRPO's `kl`: compare PPO and GRPO on this one)",
           "the per-token KL of `kl/exact`, averaged over the valid completion tokens of all processes",
           PER_ROLLOUT, "0 at the first rollout, then grows slowly; about `kl/exact` ÷ mean completion length",
           eval=True),
    Metric("kl/{estimator}", "PPO", _PPO, "the sampled-token KL estimate PPO penalizes with (k1, k2, k3): "
           "sum over the completion's tokens, mean over sequences",
           "Σ_t of Schulman's estimator on the sampled tokens (`core.kl.KL_PENALTIES`); logged only when "
           "`kl_estimator` is not `exact`", PER_ROLLOUT, "an unbiased one (k1, k3) follows `kl/exact` with noise",
           eval=True),
    Metric("kl/coef", "PPO", _PPO, "β, the KL penalty coefficient", "`kl_coef`, or the adaptive controller's "
           "value (Ziegler et al.)", PER_ROLLOUT, "constant when fixed; adaptive: settles where KL meets `target_kl`"),
    Metric("kl/budget_stop", "PPO", _PPO, "the KL budget stopped training", "1.0 when `kl/exact` > `kl_budget`",
           WHEN_IT_HAPPENS, "absent, or at the end of a run meant to stop there"),
    Metric("entropy", "PPO", f"{_PPO}; GRPO; SFT", "mean per-token entropy of the policy on its samples",
           "Σ_v −π(v) log π(v) at each completion token, logits ÷ temperature (SFT: on the data; PPO: mean over "
           "each sequence's tokens, then over sequences; `evaluate()`: on its completions)", PER_ROLLOUT,
           "falls slowly; a collapse to 0 means the policy stopped exploring", eval=True),
    Metric("value/explained_variance", "PPO", _PPO, "how well the value model predicts the returns",
           "1 − Var(returns − values) / Var(returns) over valid tokens, all processes; NaN when Var(returns) = 0 "
           "(all returns equal: undefined, CleanRL's convention; a log window averages the defined ones)",
           PER_ROLLOUT, "rises towards 1 over the first rollouts; stuck at or below 0 means the value model does "
           "not learn; NaN means constant returns (e.g. every reward 0)"),
    Metric("advantages/mean", "PPO", _PPO, "mean advantage after normalization",
           "masked mean of GAE advantages after `advantage_normalization`", PER_ROLLOUT,
           "0 with `batch` normalization (unless `advantage_keep_mean`)"),
    Metric("rollout/logprob_gap/{mean|max}", "PPO", _PPO, "gap between the generation engine's log-probs and the "
           "trainer's for the sampled tokens (only when the engine returns log-probs: vLLM, continuous batching)",
           "|log π_engine − log π_trainer| over valid tokens: token mean, and max", PER_ROLLOUT,
           "near 0; a large gap means the engine samples from another distribution (dtype, stale weights)"),
    Metric("rollout/importance_sampling_ratio/mean", "PPO", _PPO, "TRL's truncated importance-sampling ratio "
           "π_trainer/π_engine applied to the advantages (`use_vllm` with `vllm_importance_sampling_correction`)",
           "TRL's GRPO correction (`vllm_importance_sampling_mode`, clipped), mean over valid tokens", PER_ROLLOUT,
           "near 1"),
    # ------------------------------------------------------------------------------------------------- PPO: update
    Metric("loss/policy", "PPO", _PPO, "clipped surrogate loss",
           "−min(ρ·A, clip(ρ, 1−ε, 1+ε)·A), aggregated by `loss_type` (`core.ppo.policy_loss`)", PER_UPDATE,
           "about 0 at a rollout's first update (normalized advantages), then slightly negative"),
    Metric("loss/value", "PPO", _PPO, "value loss (half the clipped squared error)",
           "½·max((V − R)², (clip(V) − R)²), aggregated by `loss_type` (`core.ppo.value_loss`)", PER_UPDATE,
           "falls over the run"),
    Metric("loss/kl", "PPO", _PPO, "the KL in the loss's direct term (the loss adds β × this): mean over tokens",
           "per-token KL_t of the current policy to the reference, mean over valid tokens (only penalties with a "
           "direct gradient: `kl_estimator=\"exact\"`)", PER_UPDATE,
           "0 at the first update, then small (close to `kl/exact` ÷ completion length)"),
    Metric("policy/ratio_mean", "PPO", _PPO, "mean probability ratio π/π_old of the sampled tokens",
           "exp(log π − log π_old) over valid tokens", PER_UPDATE,
           "exactly 1 at a rollout's first update, near 1 after"),
    Metric("policy/ratio_min", "PPO", _PPO, "smallest ratio π/π_old in the window", "min over valid tokens",
           PER_UPDATE, "1 at the first update; far below 1 − ε means updates move too far"),
    Metric("policy/ratio_max", "PPO", _PPO, "largest ratio π/π_old in the window", "max over valid tokens",
           PER_UPDATE, "1 at the first update; far above 1 + ε means updates move too far"),
    Metric("policy/approx_kl", "PPO", _PPO, "KL between the sampling policy and the updated one: mean over tokens",
           "k3 on the rollout's tokens: mean of (ρ − 1) − log ρ, ρ = π/π_old, over each accumulated batch",
           PER_UPDATE,
           "0 at a rollout's first update, small after; `kl_early_stop_target` stops the batch's epochs on it"),
    Metric("policy/clipfrac", "PPO", _PPO, "share of tokens whose ratio was clipped", "share with |ρ − 1| > ε "
           "where clipping binds", PER_UPDATE, "0 at the first update; a large share means lr or epochs too high"),
    Metric("policy/early_stop", "PPO", _PPO, "KL early stopping skipped the rest of the rollout batch's updates",
           "1.0 when `policy/approx_kl` > `kl_early_stop_target`", WHEN_IT_HAPPENS, "rare"),
    Metric("policy/skipped_steps", "PPO", _PPO, "optimizer steps skipped after KL early stopping",
           "1.0 per skipped step", WHEN_IT_HAPPENS, "absent unless `policy/early_stop` fired"),
    Metric("value/clipfrac", "PPO", _PPO, "share of tokens whose value prediction was clipped",
           "share with |V − V_old| > `cliprange_value` where clipping binds", PER_UPDATE,
           "0 at the first update, small after"),
    Metric("value/grad_norm", "PPO", _PPO, "value model's gradient norm before clipping",
           "`clip_grad_norm_` of the value model (DDP/single process; DeepSpeed clips jointly)", PER_UPDATE,
           "finite and roughly stable"),
    # ------------------------------------------------------------------------------------------------- exact-KL GRPO
    Metric("exact_kl", "Exact-KL GRPO", "ExactKLGRPOTrainer", "exact KL(π‖π_ref): mean over tokens (PPO's "
           "`kl/exact_per_token`; PPO's `kl/exact` is the per-sequence sum)",
           "Σ_v π(v)(log π(v) − log π_ref(v)) per completion token, averaged over the global batch's tokens; "
           "the loss adds `exact_kl_coef` × its `loss_type` aggregate", EVERY_STEP,
           "0 at the first step (the policy is the reference), then grows slowly", eval=True),
    Metric("frac_reward_zero_std", "Exact-KL GRPO", "GRPO (TRL)", "share of prompt groups whose rewards are all equal",
           "TRL GRPOTrainer", EVERY_STEP, "well below 1: a group with no spread gives no gradient", eval=True),
    Metric("rewards/{name}/std", "Exact-KL GRPO", "GRPO (TRL)", "each reward function's std over the batch",
           "TRL GRPOTrainer", EVERY_STEP, "above 0", eval=True),
    Metric("completions/{mean|min|max}_length", "Exact-KL GRPO", "GRPO (TRL)", "completion length statistics", "TRL GRPOTrainer", EVERY_STEP, "stable", eval=True),
    Metric("completions/{mean|min|max}_terminated_length", "Exact-KL GRPO", "GRPO (TRL)",
           "length statistics of the completions that ended with EOS", "TRL GRPOTrainer", EVERY_STEP, "", eval=True),
    Metric("completions/clipped_ratio", "Exact-KL GRPO", "GRPO (TRL)", "share of completions cut at the length limit",
           "TRL GRPOTrainer", EVERY_STEP, "near 0", eval=True),
    Metric("clip_ratio/{low_mean|high_mean|region_mean|low_min|high_max}", "Exact-KL GRPO", "GRPO (TRL)", "GRPO's shares of clipped ratios", "TRL GRPOTrainer", EVERY_STEP,
           "0 with one update per generation batch", eval=True),
    Metric("kl", "Exact-KL GRPO", "GRPO (TRL)", "TRL's sampled k3 KL (only with TRL's `beta` > 0): mean over tokens",
           "TRL GRPOTrainer", EVERY_STEP, "keep `beta=0` and read `exact_kl`", eval=True),
    Metric("step_time", "Exact-KL GRPO", "GRPO (TRL)", "seconds per optimizer step", "TRL GRPOTrainer", EVERY_STEP,
           "stable"),
    # ------------------------------------------------------------------------------------------------- CEM
    Metric("cem/round", "CEM", "CEMTrainer", "the round's index (from 0)", "CEMTrainer", PER_ROUND, ""),
    Metric("cem/temperature", "CEM", "CEMTrainer", "sampling temperature of the round",
           "`temperature` scheduled to `temperature_end`", PER_ROUND, ""),
    Metric("cem/elite_quantile", "CEM", "CEMTrainer", "the round's elite quantile (when `elite_quantile` is set)",
           "scheduled from `elite_quantile` to `elite_quantile_end`", PER_ROUND, ""),
    Metric("cem/num_samples", "CEM", "CEMTrainer", "answers sampled this round", "prompts × `num_generations`",
           PER_ROUND, "", eval=True),
    Metric("cem/num_prompts", "CEM", "CEMTrainer", "prompts sampled this round", "distinct prompt groups",
           PER_ROUND, "", eval=True),
    Metric("cem/num_empty", "CEM", "CEMTrainer", "answers with no text (never selected)", "count", PER_ROUND,
           "0", eval=True),
    Metric("cem/num_truncated", "CEM", "CEMTrainer", "answers cut at `max_completion_length`", "count without EOS",
           PER_ROUND, "small", eval=True),
    Metric("cem/reward_mean", "CEM", "CEMTrainer", "mean reward of all samples", "mean over the round's samples",
           PER_ROUND, "rises over rounds (most in the first)", eval=True),
    Metric("cem/reward_std", "CEM", "CEMTrainer", "reward spread of the samples", "population std", PER_ROUND,
           "stays above 0: selection needs spread", eval=True),
    Metric("cem/entropy", "CEM", "CEMTrainer", "token entropy of the samples", "token-weighted mean of the "
           "per-sample mean entropy", PER_ROUND, "falls slowly; `min_entropy` stops the run on it", eval=True),
    Metric("cem/distinct_{order}", "CEM", "CEMTrainer", "distinct n-grams among a prompt's samples",
           "distinct / total n-grams per prompt group, averaged (`core.diversity`)", PER_ROUND,
           "falls slowly; `min_distinct_n` stops the run on `distinct_{distinct_n_order}`", eval=True),
    Metric("cem/unique_fraction", "CEM", "CEMTrainer", "share of distinct answers per prompt",
           "distinct texts / samples per group, averaged", PER_ROUND, "well above 1/N", eval=True),
    Metric("cem/completion_tokens_mean", "CEM", "CEMTrainer", "mean answer length in tokens", "", PER_ROUND,
           "stable", eval=True),
    Metric("cem/best_of_n_reward_mean", "CEM", "CEMTrainer", "mean of each prompt's best reward",
           "what one round of selection can reach", PER_ROUND, "above `cem/reward_mean`", eval=True),
    Metric("cem/gold_mean", "CEM", "CEMTrainer", "mean of `eval_reward_funcs` (e.g. a gold reward) on the samples",
           "only with `eval_reward_funcs`", PER_ROUND, "rises with `cem/reward_mean`; falling alone is "
           "over-optimization", eval=True),
    Metric("cem/best_of_n_gold_mean", "CEM", "CEMTrainer", "gold of each prompt's best-by-reward answer",
           "only with `eval_reward_funcs`", PER_ROUND, "", eval=True),
    Metric("cem/elite_count", "CEM", "CEMTrainer", "answers kept for fine-tuning",
           "after the elite rules and dedupe", PER_ROUND, "above 0"),
    Metric("cem/elite_reward_mean", "CEM", "CEMTrainer", "mean reward of the kept answers", "", PER_ROUND,
           "above `cem/reward_mean`"),
    Metric("cem/elite_gold_mean", "CEM", "CEMTrainer", "gold of the kept answers", "only with `eval_reward_funcs`",
           PER_ROUND, ""),
    Metric("cem/sft_mix_rows", "CEM", "CEMTrainer", "SFT rows replayed in the round's fine-tuning",
           "`sft_mix_ratio` × elites", PER_ROUND, ""),
    Metric("cem/fine_tune_rows", "CEM", "CEMTrainer", "rows fine-tuned on", "elites + replayed SFT rows",
           PER_ROUND, ""),
    Metric("cem/train_loss", "CEM", "CEMTrainer", "the round's fine-tuning loss", "SFTTrainer's training loss",
           PER_ROUND, "falls within and across rounds"),
    Metric("cem/train_steps", "CEM", "CEMTrainer", "optimizer steps of the round's fine-tuning", "", PER_ROUND, ""),
    Metric("cem/kl_to_ref", "CEM", "CEMTrainer", "the round's exact KL to the initial model: mean over tokens",
           "mean of the fine-tuning's `kl_to_ref` (only with `kl_coef`)", PER_ROUND, "small, grows slowly"),
    Metric("cem/entropy_bonus", "CEM", "CEMTrainer", "the round's mean entropy bonus term",
           "mean of the fine-tuning's `entropy_bonus` (only with `entropy_coef`)", PER_ROUND, ""),
    Metric("kl_to_ref", "CEM", "CEMTrainer's fine-tuning (SFTTrainer)", "exact KL to the initial model on the "
           "fine-tuning tokens: mean over tokens", "Σ_v π(v)(log π(v) − log π_ref(v)), mean over label tokens (only with `kl_coef`)",
           EVERY_STEP, "small"),
    Metric("entropy_bonus", "CEM", "CEMTrainer's fine-tuning (SFTTrainer)", "the entropy the bonus rewards",
           "mean token entropy on the fine-tuning tokens (only with `entropy_coef`)", EVERY_STEP, ""),
    # ------------------------------------------------------------------------------------------------- reward models
    Metric("accuracy", "Reward models", _RM, "share of pairs whose chosen answer scores higher",
           "TRL RewardTrainer: mean[r(chosen) > r(rejected)]", EVERY_STEP,
           "rises; `eval_stage1/accuracy` is the dirty stage's held-out accuracy, `eval_stage2/accuracy` should "
           "not be below it", eval=True),
    Metric("margin", "Reward models", _RM, "mean r(chosen) − r(rejected)", "TRL RewardTrainer", EVERY_STEP,
           "rises from 0", eval=True),
    Metric("{min|mean|max}_reward", "Reward models", _RM, "min / mean / max score over the batch",
           "TRL RewardTrainer", EVERY_STEP, "the mean stays near 0 with `center_rewards_coefficient`", eval=True),
    Metric("stage", "Reward models", "TwoStageRewardTrainer", "which stage a log entry belongs to (1: dirty pairs, "
           "2: clean pairs)", "TwoStageRewardTrainer", EVERY_STEP, ""),
    # ------------------------------------------------------------------------------------------------- ensemble
    Metric("ensemble/mean", "Reward ensemble", "any trainer scoring with a RewardEnsemble (GRPO, PPO; CEM as "
           "`cem/reward_log/ensemble/mean`)", "mean over the batch of the members' mean (standardized) score",
           "`EnsembleScores.mean`, reported through the reward function's `log_metric`", PER_ROLLOUT,
           "rises like the reward", eval=True),
    Metric("ensemble/std", "Reward ensemble", "any trainer scoring with a RewardEnsemble (GRPO, PPO; CEM as "
           "`cem/reward_log/ensemble/std`)", "mean over the batch of the members' std (disagreement)",
           "`EnsembleScores.std` (ddof=0) of calibrated members", PER_ROLLOUT,
           "flat or slowly rising; a sharp rise means the policy went where the members disagree "
           "(what the variance penalty punishes)", eval=True),
    # ------------------------------------------------------------------------------------------------- callbacks
    Metric("eval_reward", "Callbacks", "RewardEarlyStoppingCallback (PPOTrainer.evaluate() logs `reward` under "
           "this name too)", "mean reward of the model's answers to the held-out prompts", "`measure_policy`: sample (seeded), score with the callback's reward(s), mean",
           PER_EVAL, "rises, then flattens: the patience counter stops the run there"),
    Metric("eval_reward_{name}", "Callbacks", "RewardEarlyStoppingCallback", "an `extra_reward_funcs` reward of "
           "the same answers (e.g. gold)", "mean of that reward", PER_EVAL, "moves with `eval_reward`"),
    Metric("eval_reward_empty_share", "Callbacks", "RewardEarlyStoppingCallback", "share of empty answers",
           "answers with no text / all answers", PER_EVAL, "0"),
    Metric("eval_reward_best", "Callbacks", "RewardEarlyStoppingCallback", "best `eval_reward` so far",
           "max over evaluations (improvement beyond `threshold`)", PER_EVAL, "rises in steps"),
    Metric("measure/{name}", "Callbacks", "RewardMeasureCallback (prefix `measure`)", "mean reward `name` of the "
           "policy's answers on the fixed prompts", "`measure_policy`", PER_MEASURE,
           "the proxy rises; gold rising with it (falling: Goodhart)"),
    Metric("measure/kl", "Callbacks", "RewardMeasureCallback", "exact KL(π‖ref_model): sum over the completion's tokens, mean over sequences (answers)",
           "Σ_t exact KL over each sampled answer, mean (with `ref_model`)", PER_MEASURE, "0 at step 0, grows"),
    Metric("measure/length", "Callbacks", "RewardMeasureCallback", "mean answer length in tokens", "", PER_MEASURE,
           "stable"),
    Metric("refresh/num_new_pairs", "Callbacks", "RewardRefreshCallback", "labelled pairs used in the refresh",
           "decided comparisons (ties and unlabelled left out)", PER_REFRESH, "near `num_pairs`"),
    Metric("refresh/num_replay_pairs", "Callbacks", "RewardRefreshCallback", "earlier pairs replayed",
           "`replay_ratio` × new pairs", PER_REFRESH, ""),
    Metric("refresh/ties", "Callbacks", "RewardRefreshCallback", "comparisons the labeller called a tie", "count",
           PER_REFRESH, "small"),
    Metric("refresh/policy_win_rate", "Callbacks", "RewardRefreshCallback",
           "how often the labeller preferred the policy's answer to the baseline's", "wins / decided comparisons",
           PER_REFRESH, "above one half when the policy really improves"),
    Metric("refresh/accuracy_before", "Callbacks", "RewardRefreshCallback", "reward model's accuracy on the new "
           "pairs before the refresh", "pairwise accuracy", PER_REFRESH,
           "low means the policy found answers the reward model misjudges (what the refresh fixes)"),
    Metric("refresh/accuracy_after", "Callbacks", "RewardRefreshCallback", "the same after the refresh",
           "pairwise accuracy", PER_REFRESH, "above `refresh/accuracy_before`"),
    Metric("refresh/eval_accuracy_{before|after}", "Callbacks", "RewardRefreshCallback", "accuracy on held-out pairs "
           "before / after (with eval pairs)", "pairwise accuracy", PER_REFRESH, "not falling"),
    Metric("refresh/train_loss", "Callbacks", "RewardRefreshCallback", "loss of the refresh's training",
           "RewardTrainer's training loss", PER_REFRESH, ""),
    Metric("refresh/seconds", "Callbacks", "RewardRefreshCallback", "wall time of the refresh", "", PER_REFRESH, ""),
    # ------------------------------------------------------------------------------------------------- Trainer
    Metric("loss", "Trainer (inherited)", "all (transformers.Trainer)", "the training loss",
           "PPO: policy (+ β·KL) loss + `vf_coef` × value loss; others: their trainer's", EVERY_STEP, "finite"),
    Metric("grad_norm", "Trainer (inherited)", "all (transformers.Trainer)", "policy gradient norm before clipping",
           "Trainer", EVERY_STEP, "finite, roughly stable"),
    Metric("learning_rate", "Trainer (inherited)", "all (transformers.Trainer)", "current learning rate",
           "the scheduler", EVERY_STEP, "follows the schedule"),
    Metric("epoch", "Trainer (inherited)", "all (transformers.Trainer)", "fractional epoch", "Trainer", EVERY_STEP,
           ""),
    Metric("step", "Trainer (inherited)", "all (log_history)", "the global step of a log entry", "Trainer",
           EVERY_STEP, ""),
    Metric("num_tokens", "Trainer (inherited)", "SFT, GRPO, RewardTrainer (TRL)", "tokens seen so far", "TRL",
           EVERY_STEP, "", eval=True),
    Metric("mean_token_accuracy", "Trainer (inherited)", "SFT (TRL), CEM's fine-tuning",
           "share of label tokens predicted (argmax)", "TRL SFTTrainer", EVERY_STEP, "rises", eval=True),
    Metric("eval_loss", "Trainer (inherited)", "all (transformers.Trainer)", "loss on `eval_dataset`", "Trainer",
           PER_EVAL, "falls; for SFT, compare with `eval_reward`"),
    Metric("eval_{runtime|samples_per_second|steps_per_second}", "Trainer (inherited)", "all (transformers.Trainer)", "evaluation speed", "Trainer", PER_EVAL, ""),
    Metric("train_{runtime|samples_per_second|steps_per_second|loss}", "Trainer (inherited)", "all (transformers.Trainer)", "end-of-training summary", "Trainer", END_OF_TRAINING, ""),
    Metric("total_flos", "Trainer (inherited)", "all (transformers.Trainer)", "floating-point operations of the "
           "run", "Trainer", END_OF_TRAINING, ""),
)

#: README sections in order, each with one line saying whose keys they are.
SECTIONS = {
    "PPO": "`PPOTrainer` (also `eval_`-prefixed by `evaluate()` where marked). Global over processes.",
    "Exact-KL GRPO": "`ExactKLGRPOTrainer` adds `exact_kl`; the other keys are TRL `GRPOTrainer`'s, listed because "
                     "they appear beside it (`reward`, `reward_std`, `rewards/{name}/mean`, `entropy` and "
                     "`completions/mean_length` are in the PPO table).",
    "CEM": "`CEMTrainer` logs one entry per round through the round's fine-tuning trainer (`report_to`), also in "
           "`cem_history.json` without the `cem/` prefix; held-out measurements as `cem/eval_<key>`. The x axis "
           "(`global_step`, W&B's `train/global_step`) is the fine-tuning steps of all rounds so far: the rounds' SFT "
           "logs continue each other and round r's `cem/*` entry sits where its fine-tuning ended (also after a "
           "resume); plot against `cem/round` for a per-round axis.",
    "Reward models": "TRL `RewardTrainer`'s keys; `TwoStageRewardTrainer` logs them as `stage{n}/<key>` and "
                     "`eval_stage{n}/<key>` (stage 1: dirty pairs, stage 2: clean pairs).",
    "Reward ensemble": "What a `RewardEnsemble` used as a reward function reports through `log_metric`.",
    "Callbacks": "`RewardEarlyStoppingCallback` (into the evaluation's metrics, `metric_for_best_model="
                 "\"eval_reward\"`), `RewardMeasureCallback`, `RewardRefreshCallback`.",
    "Trainer (inherited)": "`transformers.Trainer` / TRL keys every trainer above logs too.",
}

_PLACEHOLDER = re.compile(r"\{([a-z_|]+)\}")


def _pattern(key: str) -> re.Pattern:
    """``rewards/{name}/mean`` → a regex: ``{name}`` is one non-empty path segment, ``{min|mean|max}`` one of the
    listed words."""
    out, last = "^", 0
    for m in _PLACEHOLDER.finditer(key):
        out += re.escape(key[last : m.start()])
        out += f"(?:{m[1]})" if "|" in m[1] else "[^/]+"
        last = m.end()
    return re.compile(out + re.escape(key[last:]) + "$")


_COMPILED = [(m, _pattern(m.key)) for m in METRICS]


def lookup(key: str) -> Metric | None:
    """The registry entry documenting the logged ``key`` (prefix rules in the module docstring), or None."""
    for metric, pattern in _COMPILED:
        if pattern.match(key):
            return metric
    if key.startswith("eval_"):  # evaluate()'s prefix
        found = lookup(key[len("eval_"):])
        if found is not None and found.eval:
            return found
    if key.startswith("cem/eval_"):  # CEM's held-out measurements
        found = lookup("cem/" + key[len("cem/eval_"):])
        if found is not None and found.eval:
            return found
    if key.startswith("cem/reward_log/"):  # reward functions' log_metric, forwarded by CEM
        return lookup(key[len("cem/reward_log/"):])
    stage = re.match(r"^(eval_)?stage\d+/(.+)$", key)  # TwoStageRewardTrainer: RewardTrainer's keys per stage
    if stage:
        found = lookup(("eval_" if stage[1] else "") + stage[2])
        if found is not None and (found.section in ("Reward models", "Trainer (inherited)")):
            return found
    return None


def undocumented(keys) -> list[str]:
    """The ``keys`` (an iterable of logged metric names) no registry entry documents, sorted."""
    return sorted({k for k in keys if lookup(k) is None})


# ------------------------------------------------------------------------------------------------------- README
BEGIN = "<!-- metrics: generated by `python -m trl_extras.utils.metric_names --write` from trl_extras/utils/metric_names.py -->"
END = "<!-- /metrics -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """README's "Logged metrics" tables, one per section, from :data:`METRICS`."""
    lines = []
    for section, intro in SECTIONS.items():
        lines += [f"**{section}**: {intro}", "", "| key | logged by | what it measures | formula / source | when "
                  "| healthy run |", "|---|---|---|---|---|---|"]  # fmt: skip
        for m in METRICS:
            if m.section == section:
                key = f"`{m.key}`" + (" (+ `eval_`)" if m.eval else "")
                lines.append("| " + " | ".join(_cell(c) for c in (key, m.trainers, m.measures, m.source, m.when,
                                                                    m.healthy)) + " |")  # fmt: skip
        lines.append("")
    return "\n".join(lines)


def fill_readme(text: str) -> str:
    """``text`` with the block between :data:`BEGIN` and :data:`END` replaced by :func:`reference_markdown`."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no metrics block ({BEGIN!r} ... {END!r}).")
    return text[: start + len(BEGIN)] + "\n" + reference_markdown() + text[end:]


def main(argv=None) -> int:
    import argparse
    from pathlib import Path

    parser = argparse.ArgumentParser(description="Check (or --write) README's generated 'Logged metrics' section.")
    parser.add_argument("--readme", default="README.md")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args(argv)
    readme = Path(args.readme)
    text = readme.read_text()
    filled = fill_readme(text)
    if args.write:
        readme.write_text(filled)
        print(f"{readme}: metrics reference written ({len(METRICS)} keys)")
        return 0
    if filled != text:
        print(f"{readme}: the metrics reference is stale; run `python -m trl_extras.utils.metric_names --write`")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
