"""PPOTrainer.evaluate() logs the policy-vs-reference KL and the entropy of its completions (``eval_kl/exact``,
``eval_kl/exact_per_token``, ``eval_kl/<kl_estimator>``, ``eval_entropy``), from the rollout's own chunked pass: with
a separate reference, a PEFT reference (adapter disabled) and the single-pass update."""

import math

import pytest
import torch
from test_ppo import _data, _history, _trainer

EVAL_KL_KEYS = ("eval_kl/exact", "eval_kl/exact_per_token", "eval_entropy")


def _eval(trainer):
    metrics = trainer.evaluate()
    for key in EVAL_KL_KEYS:  # old code: evaluate() logged rewards and lengths only
        assert key in metrics and math.isfinite(metrics[key]), (key, metrics)
    return metrics


@pytest.mark.parametrize("setup", ["separate_reference", "peft_reference", "single_pass"])
def test_eval_kl_is_zero_at_step_0_and_grows_with_training(setup, tiny_paths, tmp_path):
    kw = dict(eval_dataset=_data(8, split="holdout"), per_device_eval_batch_size=8, learning_rate=5e-2, max_steps=3,
              num_ppo_epochs=1, num_mini_batches=1 if setup == "single_pass" else 2, kl_estimator="k3")
    if setup == "peft_reference":
        from peft import LoraConfig

        kw["peft_config"] = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    trainer = _trainer(tiny_paths, tmp_path, **kw)
    assert (trainer.ref_model is None) == (setup == "peft_reference")
    if setup == "single_pass":
        assert trainer._single_pass_update()  # the train rollout skips step 5: eval must still compute it
    before = _eval(trainer)
    assert before["eval_kl/exact"] == pytest.approx(0.0, abs=1e-6)  # the policy is the reference
    assert before["eval_kl/k3"] == pytest.approx(0.0, abs=1e-6)
    assert before["eval_entropy"] > 0
    trainer.train()
    after = _eval(trainer)
    assert after["eval_kl/exact"] > 1e-4 and after["eval_kl/exact_per_token"] > 0
    # per-sequence sum vs per-token mean: their ratio is a mean completion length
    assert 1 <= after["eval_kl/exact"] / after["eval_kl/exact_per_token"] <= trainer.args.max_completion_length
    assert math.isfinite(after["eval_kl/k3"])
    # training rollouts log the per-token key too, on the same scale as its sum (the PPO-vs-GRPO axis)
    assert _history(trainer, "kl/exact_per_token")[0] == pytest.approx(0.0, abs=1e-6)


def test_eval_kl_matches_a_direct_computation(tiny_paths, tmp_path):
    """The eval KL is the exact KL of the eval completions, summed per sequence: recomputed here from full logits."""
    from trl_extras.modeling.lm import position_ids_from_mask
    from trl_extras.trainers.ppo.trainer import PPOTrainer

    trainer = _trainer(tiny_paths, tmp_path, eval_dataset=_data(8, split="holdout"), per_device_eval_batch_size=8,
                       max_steps=2, learning_rate=5e-2, num_ppo_epochs=1, num_mini_batches=2)
    trainer.train()
    captured = []  # one entry per eval batch
    original = PPOTrainer._log_eval_token_stats

    def spy(self, input_ids, attention_mask, mask, T):
        captured.append((input_ids, attention_mask, mask.float(), T))
        return original(self, input_ids, attention_mask, mask, T)

    PPOTrainer._log_eval_token_stats = spy
    try:
        metrics = trainer.evaluate()
    finally:
        PPOTrainer._log_eval_token_stats = original
    t = trainer.args.temperature
    sums, token_means = [], []
    for ids, am, mask, T in captured:
        pos = position_ids_from_mask(am)  # as generation counts them (left-padded prompts)
        with torch.no_grad():
            logits = trainer.policy(input_ids=ids, attention_mask=am, position_ids=pos).logits[:, -T - 1 : -1]
            ref_logits = trainer.ref_model(input_ids=ids, attention_mask=am, position_ids=pos).logits[:, -T - 1 : -1]
        logp, ref_logp = torch.log_softmax(logits.float() / t, -1), torch.log_softmax(ref_logits.float() / t, -1)
        kl = (logp.exp() * (logp - ref_logp)).sum(-1)
        sums.append((kl * mask).sum(1).mean().item())
        token_means.append(((kl * mask).sum() / mask.sum()).item())
    assert len(captured) >= 1
    # the logged value is the mean over the evaluation's batches (equal sizes here)
    assert metrics["eval_kl/exact"] == pytest.approx(sum(sums) / len(sums), rel=1e-4, abs=1e-6)
    assert metrics["eval_kl/exact_per_token"] == pytest.approx(sum(token_means) / len(token_means), rel=1e-4)
