"""CEMTrainer: rounds, persistence and resume, bad input, diversity controls (tiny random models, CPU)."""

import json
import math

import pytest
import torch
from helpers import cpu_config

from trl_extras.testbed import TestbedConfig, gold_reward_fn, prompt_dataset, sft_dataset


def length_reward(prompts, completions, **kwargs):
    """Prefers answers of about 6 characters: informative even for a random model."""
    return [-abs(len(c) - 6) / 6 for c in completions]


def _args(tmp_path, **overrides):
    from trl_extras.trainers.cem import CEMConfig

    defaults = dict(
        num_rounds=2, num_generations=4, max_completion_length=8, generation_chunk_size=16,
        per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-3, seed=0,
    )
    return cpu_config(CEMConfig, tmp_path / "cem", **{**defaults, **overrides})


def _prompts(n=4):
    return prompt_dataset("train", TestbedConfig(num_train_prompts=n, num_holdout_prompts=2))


def test_two_rounds_save_everything(tiny_paths, tmp_path):
    from datasets import load_from_disk

    from trl_extras import CEMTrainer

    trainer = CEMTrainer(tiny_paths["policy"], length_reward, _args(tmp_path), train_dataset=_prompts(),
                         eval_reward_funcs=gold_reward_fn)
    history = trainer.train()
    assert [h["round"] for h in history] == [0, 1]
    out = tmp_path / "cem"
    for r in range(2):
        gen = load_from_disk(str(out / f"round_{r}" / "generations"))
        assert len(gen) == 16 and {"prompt", "completion", "reward", "gold", "elite", "token_entropy"} <= set(
            gen.column_names)
        # top-1 per prompt among distinct non-empty answers: at most one elite per prompt, and it is the best one
        for g in set(gen["group"]):
            rows = [i for i in range(len(gen)) if gen["group"][i] == g]
            elites = [i for i in rows if gen["elite"][i]]
            assert len(elites) <= 1
            if elites:
                assert gen["reward"][elites[0]] == max(gen["reward"][i] for i in rows if not gen["empty"][i])
        assert (out / f"round_{r}" / "model" / "config.json").exists()
        assert history[r]["elite_reward_mean"] >= history[r]["reward_mean"]
        assert 0 < history[r]["entropy"] and 0 <= history[r]["distinct_2"] <= 1
        assert "gold_mean" in history[r] and history[r]["train_steps"] >= 1
    saved = json.loads((out / "cem_history.json").read_text())
    assert len(saved["rounds"]) == 2 and (out / "cem_history.png").stat().st_size > 0
    # the model really changed in fine-tuning
    from transformers import AutoModelForCausalLM

    before = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]).state_dict()
    after = trainer.model.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)


def test_resume_reuses_saved_generations(tiny_paths, tmp_path, monkeypatch):
    import trl_extras.trainers.cem.trainer as cem
    from trl_extras import CEMTrainer

    calls = {"n": 0}

    def reward(prompts, completions, **kw):  # crashes once; the rerun uses a fixed function of the same name
        calls["n"] += 1
        if calls["n"] == 2:  # round 1's scoring: the process "dies" after sampling
            raise RuntimeError("simulated crash")
        return length_reward(prompts, completions)

    args = _args(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        CEMTrainer(tiny_paths["policy"], reward, args, train_dataset=_prompts()).train()
    out = tmp_path / "cem"
    assert (out / "round_0" / "metrics.json").exists() and (out / "round_1" / "generations").exists()
    assert not (out / "round_1" / "metrics.json").exists()
    first = json.loads((out / "round_0" / "metrics.json").read_text())

    from datasets import load_from_disk

    saved = load_from_disk(str(out / "round_1" / "generations"))
    assert "reward" not in saved.column_names  # saved before scoring

    def no_generation(*a, **kw):
        raise AssertionError("resume must reuse the saved generations, not sample again")

    monkeypatch.setattr(cem, "generate_rollouts", no_generation)
    scored = {"n": 0}

    def reward(prompts, completions, **kw):  # noqa: F811 (the "fixed" reward)
        scored["n"] += 1
        return length_reward(prompts, completions)

    # rewards are fingerprinted by content: the fixed reward is another function, accepted knowingly
    args = _args(tmp_path)
    args.resume_allow_changes = ["reward_funcs"]
    trainer = CEMTrainer(tiny_paths["policy"], reward, args, train_dataset=_prompts())
    history = trainer.train()
    assert [h["round"] for h in history] == [0, 1]
    assert history[0] == first
    assert scored["n"] == 1  # only round 1 scored again
    resumed = load_from_disk(str(out / "round_1" / "generations"))
    assert resumed["completion"] == saved["completion"]


def test_nan_reward_clear_error_keeps_generations(tiny_paths, tmp_path):
    from datasets import load_from_disk

    from trl_extras import CEMTrainer

    def nan_reward(prompts, completions, **kw):
        return [float("nan")] * len(completions)

    trainer = CEMTrainer(tiny_paths["policy"], nan_reward, _args(tmp_path), train_dataset=_prompts())
    with pytest.raises(ValueError, match=r"round 0.*nan.*saved"):
        trainer.train()
    gen = load_from_disk(str(tmp_path / "cem" / "round_0" / "generations"))
    assert len(gen) == 16


def test_bad_input(tiny_paths, tmp_path):
    from datasets import Dataset

    from trl_extras import CEMTrainer

    with pytest.raises(ValueError, match="num_generations=1"):
        _args(tmp_path, num_generations=1)
    with pytest.raises(ValueError, match="'prompt' column"):
        CEMTrainer(tiny_paths["policy"], length_reward, _args(tmp_path),
                   train_dataset=Dataset.from_dict({"text": ["1 2 >"]}))
    with pytest.raises(ValueError, match="'prompt' column"):
        CEMTrainer(tiny_paths["policy"], length_reward, _args(tmp_path), train_dataset=_prompts(),
                   eval_dataset=Dataset.from_dict({"question": ["1 2 >"]}))
    with pytest.raises(ValueError, match="sft_dataset"):
        CEMTrainer(tiny_paths["policy"], length_reward, _args(tmp_path, sft_mix_ratio=0.5), train_dataset=_prompts())


def test_empty_answers_counted_never_selected(tiny_paths, tmp_path, monkeypatch):
    import trl_extras.trainers.cem.trainer as cem
    from trl_extras import CEMTrainer

    real = cem.generate_rollouts

    def with_empties(*a, **kw):
        rollout = real(*a, **kw)
        rollout.completions = ["" if i % 2 == 0 else c for i, c in enumerate(rollout.completions)]
        return rollout

    monkeypatch.setattr(cem, "generate_rollouts", with_empties)
    # the empty answer gets the best reward, yet must not be selected
    trainer = CEMTrainer(tiny_paths["policy"], lambda prompts, completions, **kw: [float(c == "") for c in completions],
                         _args(tmp_path, num_rounds=1), train_dataset=_prompts())
    history = trainer.train()
    assert history[0]["num_empty"] == 8
    assert history[0]["elite_count"] == 4 and history[0]["elite_reward_mean"] == 0.0


def test_diversity_controls(tiny_paths, tmp_path):
    from trl_extras import CEMTrainer

    args = _args(tmp_path, num_rounds=1, sft_mix_ratio=1.0, kl_coef=0.5, entropy_coef=0.1,
                 elite_quantile=0.5, elite_top_k=None, temperature=1.0, temperature_end=2.0)
    trainer = CEMTrainer(tiny_paths["policy"], length_reward, args, train_dataset=_prompts(),
                         sft_dataset=sft_dataset(20))
    h = trainer.train()[0]
    assert h["sft_mix_rows"] == h["elite_count"] and h["fine_tune_rows"] == 2 * h["elite_count"]
    assert "kl_to_ref" in h and "entropy_bonus" in h and h["entropy_bonus"] > 0
    assert h["elite_quantile"] == 0.5


def test_entropy_bonus_changes_the_fine_tuning(tiny_paths, tmp_path):
    """entropy_coef > 0 trains other weights than plain CEM on the same elites (it once only shifted the loss by a
    constant: the entropy carried no gradient, and CEM with the bonus was bit-identical to CEM without)."""
    from trl_extras import CEMTrainer

    weights = {}
    for coef in (0.0, 0.5):
        args = _args(tmp_path / str(coef), num_rounds=1, entropy_coef=coef)
        trainer = CEMTrainer(tiny_paths["policy"], length_reward, args, train_dataset=_prompts())
        trainer.train()
        weights[coef] = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    assert max((weights[0.0][k] - weights[0.5][k]).abs().max().item() for k in weights[0.0]) > 1e-6


def test_temperature_schedule_and_floor(tiny_paths, tmp_path):
    from trl_extras import CEMTrainer

    args = _args(tmp_path, num_rounds=3, temperature=0.5, temperature_end=1.5, min_entropy=100.0)
    trainer = CEMTrainer(tiny_paths["policy"], length_reward, args, train_dataset=_prompts())
    history = trainer.train()
    assert len(history) == 1 and "min_entropy" in history[0]["stopped"]
    assert not (tmp_path / "cem" / "round_0" / "model").exists()  # stopped before fine-tuning
    assert [cem_t(r) for r in range(3)] == [0.5, 1.0, 1.5]


def cem_t(r):
    from trl_extras.trainers.cem.trainer import _linear

    return _linear(0.5, 1.5, r, 3)


def test_kl_term_adds_exact_kl(tiny_paths, tmp_path):
    """The regularized SFT loss minus the plain one equals kl_coef x the exact KL to the reference."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.core.kl import exact_kl
    from trl_extras.trainers.cem.sft import RegularizedSFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_paths["policy"])
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    ref = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.05 * torch.randn_like(p))
    data = Dataset.from_dict({"prompt": ["1 2 >", "3 1 2 >"], "completion": [" 1 2", " 1 2 3"]})
    args = _args(tmp_path, num_rounds=1)
    trainer = RegularizedSFTTrainer(model=model, args=args, train_dataset=data, processing_class=tok,
                                    ref_model=ref, kl_coef=0.7)
    batch = next(iter(trainer.get_train_dataloader()))
    model.eval()
    with torch.no_grad():
        reg = trainer.compute_loss(model, dict(batch))
        trainer.kl_coef = 0.0
        plain = trainer.compute_loss(model, dict(batch))
        fwd = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        mask = batch["labels"][:, 1:] != -100
        kl = exact_kl(model(**fwd).logits[:, :-1], ref(**fwd).logits[:, :-1], mask=mask)
    expected = 0.7 * (kl * mask).sum() / mask.sum()
    assert expected > 0
    assert float(reg - plain) == pytest.approx(float(expected), rel=1e-4)


def test_lora_round(tiny_paths, tmp_path):
    from peft import LoraConfig

    from trl_extras import CEMTrainer

    lora = LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    args = _args(tmp_path, num_rounds=1, kl_coef=0.1)
    trainer = CEMTrainer(tiny_paths["policy"], length_reward, args, train_dataset=_prompts(), peft_config=lora)
    h = trainer.train()[0]
    adapter = tmp_path / "cem" / "round_0" / "model" / "adapter_model.safetensors"
    assert adapter.exists()
    assert "kl_to_ref" in h and math.isfinite(h["kl_to_ref"])
    # resume with one more round: the saved adapter is loaded into a fresh LoRA model before round 1
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    resumed = CEMTrainer(tiny_paths["policy"], length_reward, _args(tmp_path, num_rounds=2, kl_coef=0.1),
                         train_dataset=_prompts(), peft_config=lora)
    resumed._load_round_model(0)
    saved = load_file(str(adapter))
    live = get_peft_model_state_dict(resumed.model)
    assert set(saved) == set(live) and all(torch.equal(saved[k], live[k]) for k in saved)
    assert [x["round"] for x in resumed.train()] == [0, 1]


def test_cli_recipe_runs_and_resumes(sft_policy_path, tmp_path, capsys):
    from pathlib import Path

    from trl_extras.cli import main

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "cem_testbed.yaml"
    argv = ["cem", "--config", str(recipe), "--output_dir", str(tmp_path / "cli"), "--num_rounds", "1",
            "--prompts_per_round", "4", "--num_eval_prompts", "2", "--num_generations", "2",
            "--eval_num_generations", "1", "--max_completion_length", "12", "--disable_tqdm", "true",
            "--model_name_or_path", sft_policy_path]
    assert main(argv) == 0
    history = json.loads((tmp_path / "cli" / "cem_history.json").read_text())
    assert len(history["rounds"]) == 1 and "gold_mean" in history["rounds"][0]
    assert history["rounds"][0]["sft_mix_rows"] > 0 and "kl_to_ref" in history["rounds"][0]
    assert (tmp_path / "cli" / "model.safetensors").exists()
    # a second run finds the round finished and trains nothing new
    assert main(argv) == 0
    assert json.loads((tmp_path / "cli" / "cem_history.json").read_text())["rounds"] == history["rounds"]
