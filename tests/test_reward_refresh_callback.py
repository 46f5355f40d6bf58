"""RewardRefreshCallback in PPOTrainer: collect → label → save → refresh in place, logs, crash safety, resume."""

import json

import pytest
import torch
from datasets import Dataset
from helpers import cpu_config

from trl_extras.callbacks.reward_refresh import RewardRefreshCallback
from trl_extras.refresh.labeling import RewardJudge
from trl_extras.refresh.refresh import RewardRefreshConfig
from trl_extras.testbed import gold_reward_fn

PROMPTS = [f"{a} {b} {c} >" for a in range(10) for b in range(3) for c in range(2)]


def hash_reward(prompts, completions, **kwargs):
    """A deterministic preference with no ties between different texts (the tiny random policy writes no digits)."""
    import hashlib

    return [int(hashlib.sha1(str(c).encode()).hexdigest()[:6], 16) / 2**24 for c in completions]


class CountingJudge(RewardJudge):
    def __init__(self):
        super().__init__(hash_reward)
        self.calls = 0

    def judge(self, prompts, completions, shuffle_order=True):
        self.calls += 1
        return super().judge(prompts, completions, shuffle_order)


def _trainer(tiny_paths, tmp_path, callback, **overrides):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.rewards.scoring import RewardModelScorer
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    defaults = dict(per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=1, max_steps=5,
                    max_completion_length=6, learning_rate=1e-3, seed=0, logging_steps=1)
    args = cpu_config(PPOConfig, tmp_path / "out", **{**defaults, **overrides})
    trainer = PPOTrainer(tiny_paths["policy"], reward_funcs=RewardModelScorer(rm, tok), args=args,
                         train_dataset=Dataset.from_dict({"prompt": PROMPTS[:20]}), callbacks=[callback])
    callback.set_trainer(trainer)
    return trainer, rm


def _callback(tmp_path, judge=None, **kw):
    refresh_args = cpu_config(RewardRefreshConfig, tmp_path / "unused", per_device_train_batch_size=4,
                              num_train_epochs=1, learning_rate=1e-3, max_length=64, logging_steps=100)
    defaults = dict(every_n_steps=2, num_pairs=4, prompts=PROMPTS[20:], refresh_args=refresh_args,
                    max_new_tokens=6, seed=0)
    return RewardRefreshCallback(judge or CountingJudge(), **{**defaults, **kw})


def test_callback_refreshes_the_scoring_model_in_place_and_saves_labels_first(tiny_paths, tmp_path):
    cb = _callback(tmp_path)
    trainer, rm = _trainer(tiny_paths, tmp_path, cb)
    head = rm.score.weight.detach().clone()
    trainer.train()
    assert trainer.reward_functions.funcs[0].model is rm
    assert not torch.equal(rm.score.weight, head)
    assert [h["step"] for h in cb.history] == [2, 4]  # not at step 0, nor at the last step (5)
    root = tmp_path / "out" / "reward_refresh"
    for step in (2, 4):
        rows = [json.loads(line) for line in (root / f"step_{step:06d}" / "labelled.jsonl").read_text().splitlines()]
        assert rows and {"id", "prompt", "answer_a", "answer_b", "origin_a", "origin_b", "label"} <= set(rows[0])
        assert all(r["id"].startswith(f"s{step}-") for r in rows)
        assert json.loads((root / f"step_{step:06d}" / "report.json").read_text())["step"] == step
    logged = [e for e in trainer.state.log_history if "refresh/accuracy_after" in e]
    assert logged and all("refresh/accuracy_before" in e and "refresh/policy_win_rate" in e for e in logged)
    # fresh prompts: the two refreshes compared answers to different prompts
    p2 = {json.loads(x)["prompt"] for x in (root / "step_000002" / "labelled.jsonl").read_text().splitlines()}
    p4 = {json.loads(x)["prompt"] for x in (root / "step_000004" / "labelled.jsonl").read_text().splitlines()}
    assert not p2 & p4


@pytest.mark.slow  # two PPO runs, three refreshes, checkpoints: 128 s measured on the shared (loaded) 2-core CPU
def test_crash_between_labelling_and_refresh_loses_nothing_and_resume_restores_the_rm(tiny_paths, tmp_path,
                                                                                      monkeypatch):
    from safetensors.torch import load_file

    import trl_extras.refresh.refresh as refresh_module

    judge = CountingJudge()
    cb = _callback(tmp_path, judge=judge)
    trainer, rm = _trainer(tiny_paths, tmp_path, cb, save_strategy="steps", save_steps=2)
    real = refresh_module.refresh_reward_model
    calls = []

    def crash_on_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("simulated crash after labelling, before the refresh")
        return real(*args, **kwargs)

    monkeypatch.setattr(refresh_module, "refresh_reward_model", crash_on_second)
    with pytest.raises(RuntimeError, match="simulated crash"):
        trainer.train()
    root = tmp_path / "out" / "reward_refresh"
    saved = (root / "step_000004" / "labelled.jsonl").read_text().splitlines()
    assert saved and judge.calls == 2  # the step-4 labels are on disk although the refresh never ran
    ckpt = tmp_path / "out" / "checkpoint-2" / "reward_refresh"
    assert (ckpt / "refresh_state.json").is_file()
    refreshed_at_2 = load_file(str(ckpt / "reward_0.safetensors"))

    # resume in a fresh process-like setting: new trainer, new (un-refreshed) reward model, new judge
    monkeypatch.setattr(refresh_module, "refresh_reward_model", real)
    judge2 = CountingJudge()
    cb2 = _callback(tmp_path, judge=judge2)
    trainer2, rm2 = _trainer(tiny_paths, tmp_path, cb2, save_strategy="steps", save_steps=2)
    assert not torch.equal(rm2.score.weight, refreshed_at_2["score.weight"])
    seen = {}
    orig_refresh = cb2.refresh

    def spy(args, step):
        seen[step] = rm2.score.weight.detach().clone()
        return orig_refresh(args, step)

    cb2.refresh = spy
    trainer2.train(resume_from_checkpoint=str(tmp_path / "out" / "checkpoint-2"))
    assert trainer2.state.global_step == 5
    torch.testing.assert_close(seen[4], refreshed_at_2["score.weight"])  # the checkpoint's refreshed RM came back
    assert judge2.calls == 0  # step 4 reused the saved labels: nobody labelled twice
    assert (root / "step_000004" / "labelled.jsonl").read_text().splitlines() == saved
    assert [h["step"] for h in cb2.history] == [2, 4]  # the step-2 refresh's record came back with the checkpoint
    assert 2 in cb2._pairs_by_step  # and its pairs are replayed in the step-4 refresh


def test_callback_bad_inputs(tiny_paths, tmp_path):
    with pytest.raises(ValueError, match="every_n_steps must be >= 1"):
        _callback(tmp_path, every_n_steps=0)
    with pytest.raises(TypeError, match="judge"):
        _callback(tmp_path, judge=object())
    cb = _callback(tmp_path, prompts=PROMPTS[:5])  # 2 refreshes x 4 prompts do not fit in 5
    trainer, _ = _trainer(tiny_paths, tmp_path, cb)
    with pytest.raises(ValueError, match="need 8 fresh prompts; only 5 were given"):
        trainer.train()
    # a trainer whose only reward is a Python function has nothing to refresh
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    cb = _callback(tmp_path)
    args = cpu_config(PPOConfig, tmp_path / "o2", per_device_train_batch_size=4, num_mini_batches=1, num_ppo_epochs=1,
                      max_steps=3, max_completion_length=4)
    ppo = PPOTrainer(tiny_paths["policy"], reward_funcs=gold_reward_fn, args=args, value_model=tiny_paths["reward"],
                     train_dataset=Dataset.from_dict({"prompt": PROMPTS[:8]}), callbacks=[cb])
    cb.set_trainer(ppo)
    with pytest.raises(ValueError, match="no reward model to refresh"):
        ppo.train()


def test_callback_refreshes_the_reward_model_of_trls_grpo_family(tiny_paths, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    head = rm.score.weight.detach().clone()
    cb = _callback(tmp_path, every_n_steps=1, baseline=tiny_paths["policy"])
    args = cpu_config(ExactKLGRPOConfig, tmp_path / "grpo", per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=6, max_steps=2, learning_rate=1e-2, exact_kl_coef=0.1, seed=0)
    trainer = ExactKLGRPOTrainer(model=tiny_paths["policy"], reward_funcs=[rm], reward_processing_classes=[tok],
                                 args=args, train_dataset=Dataset.from_dict({"prompt": PROMPTS[:8]}), callbacks=[cb])
    cb.set_trainer(trainer)
    trainer.train()
    assert [h["step"] for h in cb.history] == [1]
    assert trainer.reward_funcs[0] is rm and not torch.equal(rm.score.weight, head)
    assert any("refresh/accuracy_after" in e for e in trainer.state.log_history)
