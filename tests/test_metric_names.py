"""One registry of logged metric names (trl_extras/utils/metric_names.py, issue 27 item 3): every key each trainer
and callback really logs is documented there, and README's "Logged metrics" section is generated from it.

Each trainer runs for a step or two on the testbed's tiny random models with the options that log the rarer keys
(a tracked reward, a sampled-KL estimator, KL early stopping, evaluation, a reward ensemble, CEM's KL/entropy
controls and gold tracking, two stages with evaluation, the three callbacks); a callback records every key that
reaches ``on_log`` (what ``report_to`` integrations see) and the log history adds what callbacks append there.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import cpu_config
from transformers import TrainerCallback

from trl_extras.utils.metric_names import METRICS, fill_readme, lookup, undocumented

ROOT = Path(__file__).parents[1]


class KeyCollector(TrainerCallback):
    def __init__(self):
        self.keys: set[str] = set()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.keys.update(logs or {})


def _logged(trainer, collector) -> set[str]:
    return collector.keys | {k for h in trainer.state.log_history for k in h}


def _prompts(n=8, split="train"):
    from trl_extras.testbed import TestbedConfig, prompt_dataset

    return prompt_dataset(split, TestbedConfig(num_train_prompts=max(n, 8), num_holdout_prompts=max(n, 8))).select(range(n))


def _spread_reward(prompts, completions, **kwargs):
    """A reward with spread on a random tiny policy (the gold reward is mostly 0 there)."""
    return [sum(map(ord, c)) % 7 / 7 for c in completions]


def _ensemble(tiny_paths):
    from trl_extras import RewardEnsemble
    from trl_extras.testbed import TinyModelSpec, build_sequence_classifier, build_tokenizer

    tok = build_tokenizer()
    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ensemble = RewardEnsemble([build_sequence_classifier(tok, spec, seed=s) for s in (1, 2)], tok, penalty="std")
    data = list(_prompts(4)["prompt"])
    ensemble.calibrate(data * 2, [" 1 2", " 3", " 4 5 6", " 7"] * 2)
    return ensemble


@pytest.fixture(scope="module")
def logged_keys(tiny_paths, tmp_path_factory):
    """``{trainer: set of logged keys}``, each trainer run once (a few seconds each on the tiny models)."""
    from trl import SFTConfig, SFTTrainer

    from trl_extras import (
        CEMConfig,
        CEMTrainer,
        ExactKLGRPOConfig,
        ExactKLGRPOTrainer,
        PPOConfig,
        PPOTrainer,
        RewardEarlyStoppingCallback,
        RewardJudge,
        RewardMeasureCallback,
        RewardRefreshCallback,
        TwoStageRewardConfig,
        TwoStageRewardTrainer,
    )
    from trl_extras.refresh.refresh import default_refresh_config
    from trl_extras.testbed import clean_pairs, dirty_pairs, gold_reward_fn, heuristic_reward_fn

    tmp = tmp_path_factory.mktemp("metric_names")
    out: dict[str, set[str]] = {}
    ppo_common = dict(per_device_train_batch_size=4, max_completion_length=6, learning_rate=1e-3, seed=0)

    # PPO, exact KL: a reward model (its refresh by a judge) + a tracked reward; evaluate(); the measure callback
    collector = KeyCollector()
    refresh = RewardRefreshCallback(RewardJudge(_spread_reward), every_n_steps=1, num_pairs=2,
                                    prompts=list(_prompts(8, "holdout")["prompt"]), baseline=tiny_paths["policy"],
                                    refresh_args=default_refresh_config(str(tmp / "refresh"), num_train_epochs=1),
                                    max_new_tokens=6)  # fmt: skip
    from transformers import AutoModelForCausalLM

    measure = RewardMeasureCallback({"spread": _spread_reward}, list(_prompts(2, "holdout")["prompt"]), every_n_steps=1,
                                    ref_model=AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]), max_new_tokens=6, num_samples=1)  # fmt: skip
    trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=tiny_paths["reward"], log_reward_funcs=[gold_reward_fn],
                         args=cpu_config(PPOConfig, tmp / "ppo", max_steps=2, kl_estimator="exact", kl_coef=0.1,
                                         **ppo_common),
                         train_dataset=_prompts(8), eval_dataset=_prompts(4, "holdout"),
                         callbacks=[collector, refresh, measure])  # fmt: skip
    refresh.set_trainer(trainer)
    measure.set_trainer(trainer)
    trainer.train()
    trainer.evaluate()
    out["PPOTrainer (exact KL, reward model, refresh + measure callbacks)"] = _logged(trainer, collector)

    # PPO, a sampled estimator, KL early stopping, a Python reward and an ensemble (ensemble/* via log_metric); the
    # second rollout (step 5: 4 optimizer steps per rollout) passes the KL budget
    collector = KeyCollector()
    trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=[_spread_reward, _ensemble(tiny_paths)],
                         args=cpu_config(PPOConfig, tmp / "ppo_k3", max_steps=5, kl_estimator="k3", kl_coef=0.1,
                                         num_mini_batches=2, num_ppo_epochs=2, kl_early_stop_target=1e-9,
                                         kl_budget=1e-9, **ppo_common),
                         train_dataset=_prompts(8), callbacks=[collector])  # fmt: skip
    trainer.train()
    out["PPOTrainer (k3, early stop, ensemble)"] = _logged(trainer, collector)

    # exact-KL GRPO with an ensemble reward
    collector = KeyCollector()
    trainer = ExactKLGRPOTrainer(
        tiny_paths["policy"], reward_funcs=[_spread_reward, _ensemble(tiny_paths)], train_dataset=_prompts(4),
        args=cpu_config(ExactKLGRPOConfig, tmp / "grpo", max_steps=1, per_device_train_batch_size=4,
                        num_generations=2, max_completion_length=6, exact_kl_coef=0.1),
        callbacks=[collector],
    )
    trainer.train()
    out["ExactKLGRPOTrainer"] = _logged(trainer, collector)

    # CEM: a quantile rule, KL and entropy controls, gold tracked, held-out measurement, an ensemble's log_metric
    collector = KeyCollector()
    trainer = CEMTrainer(
        tiny_paths["policy"], [_spread_reward, _ensemble(tiny_paths)],
        cpu_config(CEMConfig, tmp / "cem", num_rounds=1, num_generations=2, prompts_per_round=4, elite_top_k=None,
                   elite_quantile=0.5, max_completion_length=6, kl_coef=0.1, entropy_coef=0.01,
                   eval_num_generations=1, per_device_train_batch_size=4, plot=False),
        train_dataset=_prompts(8), eval_dataset=_prompts(2, "holdout"), eval_reward_funcs=gold_reward_fn,
        callbacks=[collector],
    )
    trainer.train()
    out["CEMTrainer"] = collector.keys

    # the two-stage reward model, evaluated after each stage
    collector = KeyCollector()
    trainer = TwoStageRewardTrainer(
        tiny_paths["reward"], pretrain_dataset=dirty_pairs(8, seed=1), train_dataset=clean_pairs(8, seed=2),
        eval_dataset=clean_pairs(4, flip_rate=0.0, seed=3), callbacks=[collector],
        args=cpu_config(TwoStageRewardConfig, tmp / "rm", pretrain_max_steps=1, max_steps=1,
                        per_device_train_batch_size=4, per_device_eval_batch_size=4),
    )
    trainer.train()
    out["TwoStageRewardTrainer"] = _logged(trainer, collector)

    # SFT with reward early stopping (an extra reward logged beside it)
    collector = KeyCollector()
    callback = RewardEarlyStoppingCallback(_spread_reward, list(_prompts(2, "holdout")["prompt"]), max_new_tokens=6,
                                           extra_reward_funcs={"gold": gold_reward_fn, "proxy": heuristic_reward_fn})
    from trl_extras.testbed import sft_dataset

    data = sft_dataset(8).select_columns(["prompt", "completion"])
    trainer = SFTTrainer(tiny_paths["policy"], train_dataset=data, eval_dataset=data.select(range(4)),
                         callbacks=[collector, callback],
                         args=cpu_config(SFTConfig, tmp / "sft", max_steps=1, eval_strategy="steps", eval_steps=1,
                                         per_device_train_batch_size=4, per_device_eval_batch_size=4))  # fmt: skip
    callback.set_trainer(trainer)
    trainer.train()
    out["SFTTrainer + RewardEarlyStoppingCallback"] = _logged(trainer, collector)
    return out


def test_registry_entries_are_distinct_and_complete():
    keys = [m.key for m in METRICS]
    assert len(keys) == len(set(keys))
    for m in METRICS:
        assert m.measures and m.source is not None and m.when, m.key


def test_lookup_follows_the_prefix_rules():
    assert lookup("rewards/my_rm/mean").key == "rewards/{name}/mean"
    assert lookup("eval_reward").key == "eval_reward"  # the callback's own key
    assert lookup("eval_kl/exact").key == "kl/exact"  # evaluate() logs the KL of its completions
    assert lookup("eval_policy/clipfrac") is None  # evaluate() trains nothing
    assert lookup("eval_rewards/gold/mean").key == "rewards/{name}/mean"
    assert lookup("stage1/accuracy").key == "accuracy" and lookup("eval_stage2/accuracy").key == "accuracy"
    assert lookup("stage1/kl/exact") is None  # stage prefixes are for the reward trainer's keys only
    assert lookup("cem/eval_reward_mean").key == "cem/reward_mean"
    assert lookup("cem/eval_elite_count") is None  # elites are not measured on held-out prompts
    assert lookup("cem/reward_log/ensemble/std").key == "ensemble/std"
    assert undocumented(["reward", "policy/made_up", "rewards/a/b/mean"]) == ["policy/made_up", "rewards/a/b/mean"]


@pytest.mark.parametrize("name", [
    "PPOTrainer (exact KL, reward model, refresh + measure callbacks)", "PPOTrainer (k3, early stop, ensemble)",
    "ExactKLGRPOTrainer", "CEMTrainer", "TwoStageRewardTrainer", "SFTTrainer + RewardEarlyStoppingCallback",
])  # fmt: skip
def test_every_logged_key_is_documented(name, logged_keys):
    keys = logged_keys[name]
    assert keys, f"{name} logged nothing"
    missing = undocumented(keys)
    assert missing == [], (f"{name} logs keys trl_extras/utils/metric_names.py does not document: {missing} (add "
                           "them to METRICS, then `python -m trl_extras.utils.metric_names --write`)")


def test_the_runs_reach_the_rarer_keys(logged_keys):
    """The runs above exercise what they claim (otherwise a key could be undocumented and never checked)."""
    every = set().union(*logged_keys.values())
    print(f"\n{len(every)} logged keys: " + " ".join(sorted(every)))  # -s shows them
    for key in ("kl/exact", "kl/k3", "loss/kl", "policy/early_stop", "kl/budget_stop", "eval_reward",
                "rewards/gold_reward/mean", "ensemble/std", "exact_kl", "cem/kl_to_ref", "cem/eval_reward_mean",
                "cem/gold_mean", "cem/reward_log/ensemble/std", "cem/elite_quantile", "eval_stage1/accuracy",
                "stage2/accuracy", "refresh/accuracy_after", "measure/spread", "measure/kl", "eval_reward_gold",
                "eval_reward_best", "value/explained_variance", "policy/approx_kl", "kl/exact_per_token",
                "eval_kl/exact", "eval_kl/exact_per_token", "eval_entropy"):  # fmt: skip
        assert key in every, key


def test_readme_metrics_section_is_generated_from_the_registry():
    """README's "Logged metrics" tables are the registry's rendering: regenerate with
    `python -m trl_extras.utils.metric_names --write`."""
    text = (ROOT / "README.md").read_text()
    assert fill_readme(text) == text
    for m in METRICS:
        assert f"`{m.key}`".replace("|", "\\|") in text  # table cells escape the pipe
