"""RewardMeasureCallback: the numbers it records on a known (greedy) policy, its KL against brute force, the keys it
logs inside a Trainer, and that measuring leaves the training's random stream alone."""

import math

import pytest
import torch
from transformers import TrainerCallback

from trl_extras.callbacks.reward_measure import RewardMeasureCallback
from trl_extras.testbed import gold_reward_fn, prompt_dataset, sft_dataset


def _chars(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def _greedy_reference(model, tok, prompts, max_new_tokens):
    """Each prompt alone (no padding) through HF ``generate``: completions, token counts, and Σ_t KL(π‖ref)."""
    completions, lengths = [], []
    for prompt in prompts:
        ids = torch.tensor([tok(prompt)["input_ids"]])
        out = model.generate(ids, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
        new = out[0, ids.size(1):].tolist()
        if tok.eos_token_id in new:
            new = new[: new.index(tok.eos_token_id) + 1]
        completions.append(tok.decode(new, skip_special_tokens=True))
        lengths.append(len(new))
    return completions, lengths


def _brute_kl(model, ref, tok, prompt, completion_len, completion_ids):
    ids = torch.tensor([tok(prompt)["input_ids"] + completion_ids])
    with torch.no_grad():
        lp = model(ids).logits[0, -completion_len - 1 : -1].log_softmax(-1)
        lq = ref(ids).logits[0, -completion_len - 1 : -1].log_softmax(-1)
    return float((lp.exp() * (lp - lq)).sum())


def test_measures_a_known_greedy_policy(sft_policy_path, tiny_paths):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(sft_policy_path)
    policy = AutoModelForCausalLM.from_pretrained(sft_policy_path).eval()
    prompts = list(prompt_dataset("holdout")["prompt"][:6])
    cb = RewardMeasureCallback({"gold": gold_reward_fn, "chars": _chars}, prompts, every_n_steps=2,
                               ref_model=policy, processing_class=tok, max_new_tokens=12, temperature=0.0)
    point = cb.measure(policy, tok, step=0)
    completions, lengths = _greedy_reference(policy, tok, prompts, 12)
    assert point["gold"] == pytest.approx(sum(gold_reward_fn(prompts, completions)) / 6)
    assert point["chars"] == pytest.approx(sum(len(c) for c in completions) / 6)
    assert point["length"] == pytest.approx(sum(lengths) / 6)
    assert point["samples"] == completions[:3]
    assert abs(point["kl"]) < 1e-5  # against itself
    assert cb.points == [point]

    # KL against another model: Σ_t Σ_v π(v)(log π(v) − log π_ref(v)) over each answer, brute force
    other = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]).eval()
    assert other.config.vocab_size == policy.config.vocab_size
    cb_other = RewardMeasureCallback({"gold": gold_reward_fn}, prompts, every_n_steps=1, ref_model=other,
                                     processing_class=tok, max_new_tokens=12, temperature=0.0)
    got = cb_other.measure(policy, tok, step=3)
    expected = []
    for prompt, completion_len in zip(prompts, lengths):
        ids = torch.tensor([tok(prompt)["input_ids"]])
        new = policy.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)[0, ids.size(1):].tolist()[:completion_len]
        expected.append(_brute_kl(policy, other, tok, prompt, completion_len, new))
    assert got["kl"] == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    assert got["kl"] > 0.1 and got["step"] == 3


def test_bad_arguments_name_the_field(tiny_paths):
    prompts = ["1 2 >"]
    with pytest.raises(ValueError, match="every_n_steps"):
        RewardMeasureCallback({"gold": gold_reward_fn}, prompts, every_n_steps=0)
    with pytest.raises(ValueError, match="reward_funcs"):
        RewardMeasureCallback(gold_reward_fn, prompts, every_n_steps=1)
    with pytest.raises(ValueError, match="reserved"):
        RewardMeasureCallback({"kl": gold_reward_fn}, prompts, every_n_steps=1)
    with pytest.raises(ValueError, match="prompt"):
        RewardMeasureCallback({"gold": gold_reward_fn}, [], every_n_steps=1)


class _RandomProbe(TrainerCallback):
    """Draws from the global torch RNG at every step end, as training code (dropout, sampling) would."""

    def __init__(self):
        self.draws = []

    def set_trainer(self, trainer):
        pass

    def on_step_end(self, args, state, control, **kwargs):
        self.draws.append(float(torch.rand(())))


def _sft_run(tiny_paths, tmp_path, callbacks):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    data = sft_dataset(16).select_columns(["prompt", "completion"])  # 4 steps per epoch: step 4 starts epoch 2
    args = SFTConfig(
        output_dir=str(tmp_path), max_steps=8, per_device_train_batch_size=4, logging_steps=1, save_strategy="no",
        use_cpu=True, bf16=False, report_to="none", gradient_checkpointing=False, learning_rate=1e-3,
        disable_tqdm=True, seed=0,
    )
    trainer = SFTTrainer(model=tiny_paths["policy"], args=args, train_dataset=data, processing_class=tok,
                         callbacks=callbacks)
    for cb in callbacks:
        cb.set_trainer(trainer)
    trainer.train()
    return trainer


def test_logs_keys_in_a_trainer_and_leaves_training_randomness_alone(tiny_paths, tmp_path):
    prompts = list(prompt_dataset("holdout")["prompt"][:4])
    cb = RewardMeasureCallback({"gold": gold_reward_fn, "chars": _chars}, prompts, every_n_steps=4,
                               max_new_tokens=6, temperature=1.0, seed=7)
    probe = _RandomProbe()
    trainer = _sft_run(tiny_paths, tmp_path / "a", [cb, probe])
    assert [p["step"] for p in cb.points] == [0, 4, 8]
    logged = [h for h in trainer.state.log_history if "measure/gold" in h]
    assert [h["step"] for h in logged] == [0, 4, 8]
    for entry, point in zip(logged, cb.points):
        assert {"measure/gold", "measure/chars", "measure/length"} <= set(entry) and "measure/kl" not in entry
        assert entry["measure/gold"] == point["gold"] and entry["measure/chars"] == point["chars"]
        assert all(math.isfinite(entry[k]) for k in ("measure/gold", "measure/chars", "measure/length"))
    assert [h["step"] for h in trainer.state.log_history if "loss" in h] == list(range(1, 9))  # no log swallowed
    # the same run without the callback: the global RNG draws after each step are identical (measuring seeds its
    # own sampling with seed + step and restores the RNG state afterwards)
    plain_probe = _RandomProbe()
    plain = _sft_run(tiny_paths, tmp_path / "b", [plain_probe])
    assert probe.draws == plain_probe.draws and len(probe.draws) == 8
    assert [h["loss"] for h in trainer.state.log_history if "loss" in h] == [
        h["loss"] for h in plain.state.log_history if "loss" in h
    ]
