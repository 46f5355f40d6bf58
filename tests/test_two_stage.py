"""TwoStageRewardTrainer: stage schedule, head carry-over, per-stage optimizer/metrics, stage-1 checkpoint, resume."""

import json
import os

import pytest
import torch
from helpers import cpu_config
from transformers import TrainerCallback

from trl_extras.rewards.two_stage import TwoStageRewardConfig, TwoStageRewardTrainer, stage_prefixed
from trl_extras.testbed import clean_pairs, dirty_pairs


def _config(tmp_path, **kw):
    defaults = dict(
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        learning_rate=1e-3,
        pretrain_max_steps=3,
        pretrain_learning_rate=5e-3,
    )
    return cpu_config(TwoStageRewardConfig, tmp_path / "out", **{**defaults, **kw})


def _head(model):
    """The trainable score-head weight (plain model or PEFT modules_to_save copy)."""
    for name, p in model.named_parameters():
        if "score" in name and p.requires_grad:
            return p
    raise AssertionError("no trainable score head")


class Recorder(TrainerCallback):
    def __init__(self):
        self.begin, self.end, self.lrs, self.optimizers = [], [], [], []

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kw):
        self.begin.append(_head(model).detach().clone())
        self.lrs.append([])
        self.optimizers.append(id(optimizer))

    def on_step_end(self, args, state, control, lr_scheduler=None, **kw):
        self.lrs[-1].append(lr_scheduler.get_last_lr()[0])

    def on_train_end(self, args, state, control, model=None, **kw):
        self.end.append(_head(model).detach().clone())


def test_stage_prefixed():
    out = stage_prefixed({"loss": 1.0, "eval_accuracy": 0.5, "epoch": 0.3}, 2)
    assert out == {"stage2/loss": 1.0, "eval_stage2/accuracy": 0.5, "epoch": 0.3, "stage": 2}


@pytest.mark.parametrize("lora", [False, True])
def test_two_stages_carry_head_and_reset_optimizer(tiny_paths, tmp_path, lora):
    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    rec = Recorder()
    trainer = TwoStageRewardTrainer(
        model=tiny_paths["reward"],
        args=_config(tmp_path),
        pretrain_dataset=dirty_pairs(24, seed=1),
        train_dataset=clean_pairs(16, seed=2),
        eval_dataset=clean_pairs(8, seed=3),
        callbacks=[rec],
        peft_config=peft_config,
    )
    trainer.train()
    assert len(rec.begin) == 2
    # The head is never re-initialised: stage 2 starts from exactly where stage 1 ended, and both stages train it.
    torch.testing.assert_close(rec.begin[1], rec.end[0], rtol=0, atol=0)
    assert not torch.equal(rec.begin[0], rec.end[0]) and not torch.equal(rec.begin[1], rec.end[1])
    # Per-stage schedule: stage-local step counts, own peak LR, scheduler restarted (linear decay to 0 each stage).
    assert [len(x) for x in rec.lrs] == [3, 2]
    assert rec.lrs[0][0] == pytest.approx(5e-3 * 2 / 3) and rec.lrs[1][0] == pytest.approx(1e-3 / 2)
    assert trainer.state.global_step == 2
    # Stage-prefixed logs of both stages, evaluation after each stage.
    keys = set().union(*(h.keys() for h in trainer.state.log_history))
    assert {"stage1/loss", "stage2/loss", "stage1/accuracy", "eval_stage1/loss", "eval_stage2/accuracy"} <= keys
    assert "loss" not in keys
    assert set(trainer.stage_metrics) == {"stage1", "stage2"}
    assert "eval_accuracy" in trainer.stage_metrics["stage2"]
    # Stage-1 model saved between stages, with its marker; args restored.
    stage1 = tmp_path / "out" / "stage1"
    marker = json.loads((stage1 / "two_stage.json").read_text())
    assert marker["completed"] and marker["global_step"] == 3
    assert (stage1 / ("adapter_config.json" if lora else "config.json")).exists()
    assert trainer.args.output_dir == str(tmp_path / "out") and trainer.args.learning_rate == 1e-3

    if lora:  # a new LoRA run starts stage 2 from the saved stage-1 adapter + head
        rec2 = Recorder()
        other = _config(tmp_path, output_dir=str(tmp_path / "other"))
        again = TwoStageRewardTrainer(
            model=tiny_paths["reward"],
            args=other,
            pretrain_dataset=dirty_pairs(24, seed=1),
            train_dataset=clean_pairs(16, seed=2),
            callbacks=[rec2],
            peft_config=LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        )
        again.train(resume_from_checkpoint=str(stage1))
        assert len(rec2.begin) == 1
        torch.testing.assert_close(rec2.begin[0], rec.end[0], rtol=0, atol=0)


def test_resume_each_stage(tiny_paths, tmp_path):
    kw = dict(save_strategy="steps", save_steps=1, seed=0)
    data = dict(pretrain_dataset=dirty_pairs(24, seed=1), train_dataset=clean_pairs(16, seed=2))
    full = TwoStageRewardTrainer(model=tiny_paths["reward"], args=_config(tmp_path, **kw), **data)
    full.train()
    out = tmp_path / "out"
    final = _head(full.model).detach().clone()
    assert sorted(os.listdir(out / "stage1")).count("checkpoint-3") == 1
    assert json.loads((out / "stage1" / "checkpoint-2" / "two_stage.json").read_text())["stage"] == 1
    assert json.loads((out / "checkpoint-1" / "two_stage.json").read_text())["stage"] == 2

    # Resume inside stage 1: runs the rest of stage 1, then all of stage 2 -> same weights as the full run.
    rec = Recorder()
    t1 = TwoStageRewardTrainer(model=tiny_paths["reward"], args=_config(tmp_path, **kw), callbacks=[rec], **data)
    t1.train(resume_from_checkpoint=str(out / "stage1" / "checkpoint-2"))
    assert [len(x) for x in rec.lrs] == [1, 2]
    torch.testing.assert_close(_head(t1.model), final)

    # Resume inside stage 2 (path or True = latest on disk): stage 1 is skipped.
    rec = Recorder()
    t2 = TwoStageRewardTrainer(model=tiny_paths["reward"], args=_config(tmp_path, **kw), callbacks=[rec], **data)
    t2.train(resume_from_checkpoint=str(out / "checkpoint-1"))
    assert [len(x) for x in rec.lrs] == [1]
    torch.testing.assert_close(_head(t2.model), final)
    assert any("stage1/loss" in h for h in t2.state.log_history)  # stage-1 history restored from the marker

    # Only the finished stage 1 on disk: stage 2 starts from the stage-1 weights.
    for name in os.listdir(out):
        if name.startswith("checkpoint-"):
            import shutil

            shutil.rmtree(out / name)
    rec = Recorder()
    t3 = TwoStageRewardTrainer(model=tiny_paths["reward"], args=_config(tmp_path, **kw), callbacks=[rec], **data)
    t3.train(resume_from_checkpoint=True)
    assert [len(x) for x in rec.lrs] == [2]
    torch.testing.assert_close(_head(t3.model), final)

    # Another run (other output_dir) can start its stage 2 from this run's finished stage 1.
    rec = Recorder()
    other = _config(tmp_path, **kw)
    other.output_dir = str(tmp_path / "other")
    t4 = TwoStageRewardTrainer(model=tiny_paths["reward"], args=other, callbacks=[rec], **data)
    t4.train(resume_from_checkpoint=str(out / "stage1"))
    assert [len(x) for x in rec.lrs] == [2]
    torch.testing.assert_close(_head(t4.model), final)


def test_bad_arguments(tiny_paths, tmp_path):
    from trl import RewardConfig

    ds = clean_pairs(8, seed=2)
    with pytest.raises(ValueError, match="pretrain_dataset"):
        TwoStageRewardTrainer(model=tiny_paths["reward"], args=_config(tmp_path), train_dataset=ds)
    with pytest.raises(TypeError, match="TwoStageRewardConfig"):
        TwoStageRewardTrainer(
            model=tiny_paths["reward"],
            args=RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none"),
            train_dataset=ds,
            pretrain_dataset=ds,
        )
    with pytest.raises(ValueError, match="pretrain_max_steps"):
        _config(tmp_path, pretrain_max_steps=-1, pretrain_num_train_epochs=0)
    t = TwoStageRewardTrainer(
        model=tiny_paths["reward"], args=_config(tmp_path), train_dataset=ds, pretrain_dataset=ds
    )
    with pytest.raises(ValueError, match="No checkpoint"):
        t.train(resume_from_checkpoint=True)


@pytest.mark.slow
def test_two_stage_qlora_4bit(tmp_path):
    """4-bit (bitsandbytes nf4) base + LoRA through TRL's ModelConfig helpers, both stages, margins afterwards."""
    from trl import ModelConfig, get_peft_config, get_quantization_config

    from trl_extras.rewards.pairs import pair_margins
    from trl_extras.testbed import TinyModelSpec, make_tiny_checkpoints

    # bitsandbytes' 4-bit kernels need widths that are multiples of 64.
    spec = TinyModelSpec(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    reward_path = make_tiny_checkpoints(tmp_path / "tiny64", spec=spec)["reward"]
    model_args = ModelConfig(
        model_name_or_path=reward_path,
        load_in_4bit=True,
        use_peft=True,
        lora_task_type="SEQ_CLS",
        lora_r=4,
        lora_target_modules=["q_proj", "v_proj"],
    )
    # QLoRA adapters are bf16 (TRL casts them), so the compute dtype must be bf16 as well.
    args = _config(tmp_path, model_init_kwargs={"dtype": torch.bfloat16})
    rec = Recorder()
    trainer = TwoStageRewardTrainer(
        model=reward_path,
        args=args,
        pretrain_dataset=dirty_pairs(16, seed=1),
        train_dataset=clean_pairs(12, seed=2),
        callbacks=[rec],
        quantization_config=get_quantization_config(model_args),
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    torch.testing.assert_close(rec.begin[1], rec.end[0], rtol=0, atol=0)
    assert torch.isfinite(pair_margins(trainer.model, trainer.processing_class, clean_pairs(4, seed=3))).all()
