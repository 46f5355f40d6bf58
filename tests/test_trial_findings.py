"""Findings of a new user's trial (issue 21, items 3 and 4): plain-text prompts to a chat model and empty completions
are warned about, runs print no false alarms from optional backends, PPO logs the importance ratio and global
(all-process) update metrics with the rollout's metrics at every logged step, and the consistency fixes."""

import json
import logging

import pytest
import torch
from helpers import cpu_config, launch_two_processes

from trl_extras.testbed import TestbedConfig, prompt_dataset


def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) / 10.0 for c in completions]


def _ppo(policy, tmp_path, dataset=None, processing_class=None, **overrides):
    from trl_extras.trainers.ppo import PPOConfig, PPOTrainer

    defaults = dict(per_device_train_batch_size=4, num_mini_batches=2, num_ppo_epochs=2, max_steps=4,
                    max_completion_length=6, learning_rate=1e-3, seed=0)
    args = cpu_config(PPOConfig, tmp_path / "ppo", **{**defaults, **overrides})
    if dataset is None:
        dataset = prompt_dataset("train", TestbedConfig(num_train_prompts=16, num_holdout_prompts=8, seed=0))
    return PPOTrainer(policy, reward_funcs=_length_reward, args=args, train_dataset=dataset,
                      processing_class=processing_class)


# ---------------------------------------------------------------------------------------------------------------
# PPO metrics: the ratio, rollout metrics at every step of their rollout
# ---------------------------------------------------------------------------------------------------------------
def test_ppo_logs_ratio_and_rollout_metrics_at_every_optimizer_step(tiny_paths, tmp_path):
    trainer = _ppo(tiny_paths["policy"], tmp_path)  # 2 epochs x 2 minibatches: 4 optimizer steps per rollout
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in steps] == [1, 2, 3, 4]
    for h in steps:
        for key in ("policy/ratio_mean", "policy/ratio_min", "policy/ratio_max", "reward", "kl/exact", "entropy",
                    "completions/mean_length", "advantages/mean", "value/explained_variance"):
            assert key in h, (h["step"], key)
        assert h["policy/ratio_min"] <= h["policy/ratio_mean"] <= h["policy/ratio_max"]
    # the first update of a rollout batch samples from the policy it updates: the ratio is exactly 1
    first = steps[0]
    assert first["policy/ratio_min"] == first["policy/ratio_max"] == 1.0
    # later updates of the same rollout (lr 1e-3) move it, and all four steps report that one rollout's reward
    assert steps[-1]["policy/ratio_min"] < 1.0 < steps[-1]["policy/ratio_max"]
    assert len({h["reward"] for h in steps}) == 1


def test_window_reduce_takes_min_and_max_of_extremes():
    from trl_extras.trainers.ppo.trainer import _window_reduce

    assert _window_reduce("policy/ratio_min", [0.9, 0.8, 1.0]) == 0.8
    assert _window_reduce("policy/ratio_max", [1.1, 1.3, 1.0]) == 1.3
    assert _window_reduce("reward", [1.0, 2.0]) == 1.5


def test_max_steps_help_says_optimizer_steps():
    from dataclasses import fields

    from trl_extras.trainers.ppo import PPOConfig

    help_text = {f.name: f.metadata.get("help", "") for f in fields(PPOConfig)}["max_steps"]
    assert "optimizer" in help_text.lower() and "num_ppo_epochs" in help_text and "num_mini_batches" in help_text


# ---------------------------------------------------------------------------------------------------------------
# DDP: update and advantage metrics are global, not rank 0's share
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.distributed
def test_ddp_logs_global_advantage_and_update_metrics(tiny_paths, tmp_path):
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "ppo_ddp_metrics.py"
    prefix = tmp_path / "metrics"
    proc = launch_two_processes(script, "ddp", tmp_path, tiny_paths["policy"], str(prefix), timeout=600)
    assert proc.stderr.count("Sampling with top_k=50") == 1  # a warning printed once, not once per process
    ranks = [json.loads(Path(f"{prefix}.rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["num_processes"] == 2
    logs = [[h for h in r["log_history"] if "loss" in h] for r in ranks]
    assert len(logs[0]) == 2
    for a, b in zip(*logs):
        for key in ("advantages/mean", "value/explained_variance", "loss/policy", "loss/value", "policy/clipfrac",
                    "policy/ratio_mean", "policy/ratio_min", "policy/ratio_max"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key  # every process logs the same global value
        # batch normalization over the global batch (keep_mean=False): the global mean is 0, a shard's is not
        assert abs(a["advantages/mean"]) < 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Plain-text prompts to a chat model; completions that end at once
# ---------------------------------------------------------------------------------------------------------------
PLAIN_TO_CHAT = "plain text but the tokenizer has a chat template"
SHORT = "mean completion length"


def _eos_at_once_policy(policy_path):
    """The tiny policy turned into a "chat model" that answers a bare string with EOS at once (its head's bias puts
    all mass on EOS), as SmolLM2-Instruct did on plain prompts in the trial."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(policy_path)
    tokenizer = AutoTokenizer.from_pretrained(policy_path, padding_side="left")
    head = torch.nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.fill_(-20.0)
        head.bias[tokenizer.eos_token_id] = 20.0
    model.lm_head = head
    model.config.tie_word_embeddings = False
    return model, tokenizer


def _messages(caplog, text):
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def test_ppo_warns_at_construction_for_plain_prompts_to_a_chat_model_and_once_for_empty_rollouts(
    tiny_paths, tmp_path, caplog
):
    model, tokenizer = _eos_at_once_policy(tiny_paths["policy"])
    assert tokenizer.chat_template  # the testbed tokenizer has a template (for its conversational variant)
    with caplog.at_level(logging.WARNING):
        trainer = _ppo(model, tmp_path, processing_class=tokenizer, num_ppo_epochs=1, num_mini_batches=1, max_steps=3)
    assert len(_messages(caplog, PLAIN_TO_CHAT)) == 1
    assert "PPOTrainer" in _messages(caplog, PLAIN_TO_CHAT)[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        trainer.train()  # three rollouts of EOS-only answers: warned once
    warned = _messages(caplog, SHORT)
    assert len(warned) == 1 and "conversational" in warned[0]
    assert all(h["completions/mean_length"] == 1.0 for h in trainer.state.log_history if "loss" in h)


def test_no_warning_for_conversational_prompts_or_a_model_that_continues_plain_text(tiny_paths, tmp_path, caplog):
    from datasets import Dataset

    model, tokenizer = _eos_at_once_policy(tiny_paths["policy"])
    chat = Dataset.from_dict({"prompt": [[{"role": "user", "content": f"{i} 3 1 >"}] for i in range(8)]})
    with caplog.at_level(logging.WARNING):
        _ppo(model, tmp_path / "a", dataset=chat, processing_class=tokenizer)
        _ppo(tiny_paths["policy"], tmp_path / "b")  # plain prompts, template present, but no EOS at once
    assert not _messages(caplog, PLAIN_TO_CHAT)


def test_cem_warns_for_plain_prompts_to_a_chat_model_and_for_empty_rollouts(tiny_paths, tmp_path, caplog):
    from trl_extras.trainers.cem import CEMConfig, CEMTrainer

    model, tokenizer = _eos_at_once_policy(tiny_paths["policy"])
    args = cpu_config(CEMConfig, tmp_path / "cem", num_rounds=2, num_generations=2, max_completion_length=4,
                      generation_chunk_size=8, per_device_train_batch_size=4, num_train_epochs=1, seed=0,
                      prompts_per_round=4)
    dataset = prompt_dataset("train", TestbedConfig(num_train_prompts=4, num_holdout_prompts=2))
    with caplog.at_level(logging.WARNING):
        trainer = CEMTrainer(model, _length_reward, args=args, train_dataset=dataset, processing_class=tokenizer)
        assert len(_messages(caplog, PLAIN_TO_CHAT)) == 1
        trainer.train()
    assert len(_messages(caplog, SHORT)) == 1  # two rounds of empty answers: warned once


def test_exact_kl_grpo_warns_for_plain_prompts_to_a_chat_model(tiny_paths, tmp_path, caplog):
    from trl_extras.trainers.exact_kl_grpo import ExactKLGRPOConfig, ExactKLGRPOTrainer

    model, tokenizer = _eos_at_once_policy(tiny_paths["policy"])
    args = cpu_config(ExactKLGRPOConfig, tmp_path / "grpo", per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=4, max_steps=1, exact_kl_coef=0.0)
    dataset = prompt_dataset("train", TestbedConfig(num_train_prompts=8, num_holdout_prompts=2))
    with caplog.at_level(logging.WARNING):
        ExactKLGRPOTrainer(model, reward_funcs=_length_reward, args=args, train_dataset=dataset,
                           processing_class=tokenizer)
    assert len(_messages(caplog, PLAIN_TO_CHAT)) == 1


# ---------------------------------------------------------------------------------------------------------------
# No false alarms: optional backends stay unimported/quiet, no load report for heads we initialise ourselves
# ---------------------------------------------------------------------------------------------------------------
NOISE = (
    "gemm_4bit_forward",  # bitsandbytes' CPU kernel fetch at import (and its DNS lookups)
    "kernels-community",
    "Setting accelerator to CPU",  # DeepSpeed's auto-detection on a CPU machine
    "`gradient_checkpointing` is deprecated",  # transformers 5, for a config field PPOConfig set by default
)
DOUBLE_WRAP = ("modify a model with PEFT for a second time", "multiple adapters")
LOAD_REPORT = ("MISSING", "newly initialized")


def _quiet_run(tmp_path, mode: str) -> tuple[str, list[str]]:
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "scripts" / "quiet_ppo_run.py"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    env.pop("DS_ACCELERATOR", None)
    proc = subprocess.run([sys.executable, str(script), str(tmp_path), mode], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    stderr = proc.stderr.split("=== run starts", 1)[-1]
    imported = json.loads(proc.stderr.strip().splitlines()[-1].removeprefix("IMPORTED "))
    return stderr, imported


def test_plain_ppo_run_prints_no_false_alarms_and_imports_no_bitsandbytes(tmp_path):
    stderr, imported = _quiet_run(tmp_path, "plain")
    for text in NOISE + DOUBLE_WRAP + LOAD_REPORT:  # the value model's new head is no "MISSING" weight
        assert text not in stderr, (text, stderr[-3000:])
    assert "bitsandbytes" not in imported  # nothing is quantized: peft's eager import is skipped


def test_lora_run_with_a_lora_reward_model_imports_no_bitsandbytes(tmp_path):
    stderr, imported = _quiet_run(tmp_path, "lora_rm")
    for text in NOISE:
        assert text not in stderr, (text, stderr[-3000:])
    assert "bitsandbytes" not in imported  # LoRA on an unquantized model needs no bitsandbytes
    leftover = [text for text in DOUBLE_WRAP + LOAD_REPORT if text in stderr]
    assert not leftover, f"{leftover} in the stderr of a LoRA run with a LoRA reward model:\n{stderr[-3000:]}"


def test_quantization_still_finds_bitsandbytes_after_the_quiet_peft_import():
    import subprocess
    import sys

    code = (
        "import sys, trl_extras, peft, peft.helpers\n"
        "assert 'bitsandbytes' not in sys.modules\n"
        "from transformers.utils.import_utils import is_bitsandbytes_available\n"
        "from peft.import_utils import is_bnb_4bit_available\n"
        "print(is_bitsandbytes_available(), is_bnb_4bit_available(), hasattr(peft.helpers.bnb, 'functional'))\n"
    )
    pytest.importorskip("bitsandbytes")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["True", "True", "True"]


# ---------------------------------------------------------------------------------------------------------------
# RewardEarlyStoppingCallback samples from the adapter as it is at each evaluation
# ---------------------------------------------------------------------------------------------------------------
def test_reward_early_stopping_evaluates_the_current_lora_adapter(tiny_paths, tmp_path, capsys):
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerControl
    from trl import SFTConfig, SFTTrainer

    from trl_extras.callbacks.reward_early_stopping import RewardEarlyStoppingCallback
    from trl_extras.testbed import sft_dataset

    seen = []  # the completions of every scoring call

    def char_reward(prompts, completions, **kwargs):  # distinct texts -> (almost surely) distinct means
        seen.append(list(completions))
        return [sum(map(ord, c)) / 100.0 for c in completions]

    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    tok.padding_side = "right"
    data = sft_dataset(32).select_columns(["prompt", "completion"])
    callback = RewardEarlyStoppingCallback(char_reward, prompt_dataset("holdout").select(range(6)), patience=None,
                                           max_new_tokens=6, num_generations=2, seed=0)
    args = SFTConfig(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=4, eval_strategy="steps",
                     eval_steps=2, logging_steps=2, save_strategy="no", use_cpu=True, bf16=False, report_to="none",
                     learning_rate=5e-2, disable_tqdm=True)
    trainer = SFTTrainer(model=tiny_paths["policy"], args=args, train_dataset=data, eval_dataset=data.select(range(4)),
                         processing_class=tok, callbacks=[callback],
                         peft_config=LoraConfig(r=8, target_modules=["q_proj", "v_proj", "o_proj"]))
    callback.set_trainer(trainer)
    trainer.train()
    assert [h["step"] for h in callback.history] == [2, 4] and len(seen) == 2
    # The trial's symptom, reproduced: eval_loss moved, eval_reward repeated to the last bit -- because the seeded
    # sampling drew the very same answers from a policy that moved a little; the callback now says so.
    assert seen[0] == seen[1] and callback.history[0]["eval_reward"] == callback.history[1]["eval_reward"]
    assert "identical to the previous evaluation" in capsys.readouterr().out
    model = trainer.model
    # It sampled from the adapter as trained: re-evaluating the trained adapter reproduces it exactly, the model
    # without the adapter (= the initial LoRA model, whose B matrices are zero) answers differently
    callback._evaluate(model, tok)
    with model.disable_adapter():
        callback._evaluate(model, tok)
    assert seen[2] == seen[1] and seen[3] != seen[1]
    # A changed adapter changes the sampled answers and the score at the next evaluation
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)  # another adapter (a rescaled one would be normalized away by RMSNorm)
    metrics = {}
    trainer.state.global_step = 5
    callback.on_evaluate(trainer.args, trainer.state, TrainerControl(), metrics=metrics, model=model,
                         processing_class=tok)
    assert seen[-1] != seen[1] and metrics["eval_reward"] != callback.history[1]["eval_reward"]


# ---------------------------------------------------------------------------------------------------------------
# Consistency: one naming scheme for rounds, stages, compared models; metrics that say what they measure
# ---------------------------------------------------------------------------------------------------------------
def test_cem_round_line_uses_the_folder_numbering():
    from trl_extras.trainers.cem.trainer import _round_line

    line = _round_line({"round": 0, "reward_mean": 0.5}, num_rounds=2)
    assert line.startswith("round 0 of 0..1")  # the folder is round_0 and cem_history.json says round 0
    assert "1/2" not in line


def test_cem_fine_tunes_one_epoch_per_round_by_default_and_says_so():
    from dataclasses import fields

    from trl_extras.trainers.cem import CEMConfig

    assert CEMConfig(output_dir="x", use_cpu=True, bf16=False).num_train_epochs == 1.0
    help_text = {f.name: f.metadata.get("help", "") for f in fields(CEMConfig)}["num_train_epochs"]
    assert "round" in help_text and "SFTConfig" in help_text


def test_side_by_side_summary_names_the_models():
    from trl_extras.evaluation.side_by_side import side_by_side
    from trl_extras.testbed import gold_reward_fn

    prompts = ["3 1 2 >", "9 8 7 >"]
    result = side_by_side([" 1 2 3", " 7 8 9"], [" 3 2 1", " 9 8"], prompts, gold_reward_fn,
                          name_a="ppo-final", name_b="sft")
    summary = result.summary()
    assert summary.startswith("ppo-final vs sft on 2 prompts") and "ppo-final has 2 wins, 0 losses" in summary
    assert result.to_dict()["name_a"] == "ppo-final"
    # paths are named after their last folder; equal names are told apart
    from trl_extras.evaluation.side_by_side import model_names

    assert model_names("out/run1/ppo/model", "out/sft/model/") == ("model (A)", "model (B)")
    assert model_names("out/ppo", "out/sft") == ("ppo", "sft")
    assert model_names([" 1"], [" 2"]) == ("A", "B")


def test_two_stage_evaluate_returns_the_logged_names(tiny_paths, tmp_path):
    from trl_extras.rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer
    from trl_extras.testbed import clean_pairs, dirty_pairs

    args = cpu_config(TwoStageRewardConfig, tmp_path / "rm", per_device_train_batch_size=4,
                      per_device_eval_batch_size=8, max_steps=1, pretrain_max_steps=1, learning_rate=1e-3)
    trainer = TwoStageRewardTrainer(tiny_paths["reward"], args=args, pretrain_dataset=dirty_pairs(8),
                                    train_dataset=clean_pairs(8), eval_dataset=clean_pairs(8))
    trainer.train()
    for stage in ("stage1", "stage2"):
        logged = {k for h in trainer.state.log_history if h.get("stage") == int(stage[-1]) for k in h
                  if k.startswith("eval_")}
        assert logged and logged <= set(trainer.stage_metrics[stage])  # every logged eval key is in evaluate()'s dict
        assert f"eval_{stage}/accuracy" in trainer.stage_metrics[stage]
        assert "eval_accuracy" in trainer.stage_metrics[stage]  # metric_for_best_model="accuracy" keeps working


def test_reward_model_ece_says_what_it_is_calibrated_against():
    from trl_extras.rewards.metrics import METRIC_HELP, calibration_error

    assert "dataset" in METRIC_HELP["ece"].lower() and "gold" in METRIC_HELP["gold_ece"].lower()
    margins = torch.tensor([2.0, -1.0, 0.5, 3.0])  # against y = 1 for every pair, ECE is 1 - mean sigma(margin)
    assert calibration_error(margins, torch.ones(4)) == pytest.approx(1 - torch.sigmoid(margins).mean().item())


# ---------------------------------------------------------------------------------------------------------------
# Progress in a log file: long steps announce their start; the reward-vs-KL plot stays readable
# ---------------------------------------------------------------------------------------------------------------
def test_building_the_testbed_policy_prints_a_line_when_it_starts(tmp_path, capsys, monkeypatch):
    from trl_extras.testbed import TinyModelSpec
    from trl_extras.testbed.policy import SFTBuildConfig, build_sft_policy

    monkeypatch.delenv("TRL_EXTRAS_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    spec = TinyModelSpec(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    build_sft_policy(SFTBuildConfig(num_examples=16, steps=2, batch_size=4, spec=spec), cache_dir=tmp_path)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[testbed]")]
    assert len(lines) == 2 and "building the SFT starting policy" in lines[0] and "built" in lines[1]


def test_reward_vs_kl_plot_names_close_methods_in_a_legend(tmp_path, monkeypatch):
    import matplotlib.figure

    from trl_extras.pipeline.report import make_plots

    figures = []
    original = matplotlib.figure.Figure.savefig
    monkeypatch.setattr(matplotlib.figure.Figure, "savefig",
                        lambda self, *a, **k: (figures.append(self), original(self, *a, **k))[1])
    # three methods within 0.05 nats and 0.01 reward of each other (text beside each point would overlap)
    table = [dict(method=m, gold=0.78 + 0.004 * i, proxy=0.9 + 0.01 * i, kl_to_sft=2.8 + 0.02 * i)
             for i, m in enumerate(["PPO (refreshed RM)", "PPO (ensemble variance)", "DPO (synthetic pairs)"])]
    assert make_plots({"evaluate": {"table": table}}, tmp_path) == ["reward_vs_kl.png"]
    (fig,) = figures
    assert not any(ax.texts for ax in fig.axes)  # no labels drawn on top of each other
    legend = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert {row["method"] for row in table} <= legend


def test_replicas_print_and_warn_nothing_the_main_process_prints(monkeypatch, capsys):
    from trl_extras.utils.progress import print_main, quiet_replica_logs

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    name = "trl_extras.test_replica_probe"
    logging.getLogger(name).setLevel(logging.NOTSET)
    monkeypatch.setenv("RANK", "0")
    print_main("final history")
    quiet_replica_logs(name)
    assert capsys.readouterr().out == "final history\n" and logging.getLogger(name).level == logging.NOTSET
    monkeypatch.setenv("RANK", "1")
    print_main("final history")
    quiet_replica_logs(name)
    assert capsys.readouterr().out == "" and logging.getLogger(name).level == logging.ERROR
