"""synthesize_preference_pairs: best/worst selection, margins, bad input, and that DPOTrainer accepts the result."""

import pytest
import torch

from trl_extras.evaluation.synthetic_pairs import run_two_stage_dpo, select_best_worst, synthesize_preference_pairs
from trl_extras.testbed import gold_reward_fn, prompt_dataset


def test_select_best_worst_brute_force():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (50, 5), generator=g).float()
    best, worst, margin = select_best_worst(scores)
    for i, row in enumerate(scores.tolist()):
        assert row[best[i]] == max(row) and best[i] == row.index(max(row))
        assert row[worst[i]] == min(row) and worst[i] == row.index(min(row))
        assert margin[i] == max(row) - min(row)
    with pytest.raises(ValueError, match="n >= 2"):
        select_best_worst(torch.zeros(3, 1))


def _length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


@pytest.fixture(scope="module")
def tiny_lm(tiny_paths):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]), AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])


def test_pairs_are_best_and_worst(tiny_lm):
    model, tok = tiny_lm
    prompts = prompt_dataset("holdout")["prompt"][:8]
    ds, stats = synthesize_preference_pairs(
        model, _length_reward, prompts, n=4, processing_class=tok, max_new_tokens=8, return_stats=True, seed=1
    )
    assert set(ds.column_names) == {"id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected"}
    assert stats.num_pairs == len(ds) and stats.num_pairs + stats.skipped_no_preference == 8
    assert len(ds) > 0
    for row in ds:
        assert row["score_chosen"] == len(row["chosen"]) > row["score_rejected"] == len(row["rejected"])
        assert row["prompt"] in prompts and row["id"].startswith("synth-")
    # seeded: the same call gives the same pairs
    again = synthesize_preference_pairs(model, _length_reward, prompts, n=4, processing_class=tok, max_new_tokens=8, seed=1)
    assert again["chosen"] == ds["chosen"]
    # a large min_margin drops pairs and counts them
    ds2, stats2 = synthesize_preference_pairs(
        model, _length_reward, prompts, n=4, processing_class=tok, max_new_tokens=8, seed=1, min_margin=1e6,
        return_stats=True,
    )
    assert len(ds2) == 0 and stats2.skipped_low_margin == stats.num_pairs


def test_bad_input(tiny_lm):
    model, tok = tiny_lm
    with pytest.raises(ValueError, match="n must be >= 2"):
        synthesize_preference_pairs(model, gold_reward_fn, ["1 2 >"], n=1, processing_class=tok)
    with pytest.raises(ValueError, match="empty"):
        synthesize_preference_pairs(model, gold_reward_fn, [], processing_class=tok)
    with pytest.raises(ValueError, match="finite"):
        synthesize_preference_pairs(
            model, lambda prompts, completions, **kw: [float("nan")] * len(prompts), ["1 2 >"], n=2,
            processing_class=tok, max_new_tokens=4,
        )


def test_dpo_trainer_accepts_pairs_two_stage(tiny_paths, tmp_path):
    from trl import DPOConfig

    prompts = prompt_dataset("train")["prompt"][:8]
    synthetic = synthesize_preference_pairs(tiny_paths["policy"], _length_reward, prompts, n=3, max_new_tokens=8)
    assert len(synthetic) >= 2
    from trl_extras.testbed import clean_pairs

    real = clean_pairs(4)
    args = DPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False,
        report_to="none", save_strategy="no", gradient_checkpointing=False, logging_steps=1,
    )
    stage1, stage2 = run_two_stage_dpo(tiny_paths["policy"], synthetic, real, args)
    assert stage1.state.global_step == 1 and stage2.state.global_step == 1
    assert any("loss" in h for h in stage2.state.log_history)
    # stage 2 started from (and is anchored to) the saved stage-1 policy
    assert stage2.model.config._name_or_path.endswith("stage1_synthetic")
    with pytest.raises(ValueError, match="real_dataset is empty"):
        run_two_stage_dpo(tiny_paths["policy"], synthetic, real.select([]), args)


def test_cli_synth_pairs(tiny_paths, tmp_path):
    import json

    from trl_extras.cli import main

    argv = ["synth-pairs", "--policy", tiny_paths["policy"], "--judge", "heuristic", "--num_prompts", "6", "--n", "3",
            "--max_new_tokens", "6", "--generation_chunk_size", "4", "--output_dir", str(tmp_path), "--use_cpu", "true",
            "--bf16", "false"]
    assert main(argv) == 0
    stats = json.loads((tmp_path / "synthesis_stats.json").read_text())
    lines = (tmp_path / "pairs.jsonl").read_text().splitlines()
    assert stats["num_prompts"] == 6 and stats["num_pairs"] == len(lines)


@pytest.mark.parametrize("command", ["synth-pairs", "sft-reward-es"])
def test_cli_refuses_the_old_chunk_flag_naming_the_new_one(command, tmp_path, capsys):
    """``--generation_batch_size`` meant the generate() chunk here, but TRL's name means completions per rollout
    batch: the old flag is refused (argparse's exit code 2) with the new name, not silently reinterpreted."""
    from trl_extras.cli import main

    with pytest.raises(SystemExit) as exc:
        main([command, "--generation_batch_size", "8", "--output_dir", str(tmp_path), "--use_cpu", "true", "--bf16", "false"])
    assert exc.value.code == 2
    assert "--generation_batch_size was renamed --generation_chunk_size" in capsys.readouterr().err


def test_two_stage_dpo_with_lora_saves_a_standalone_model(tiny_paths, tmp_path):
    """With LoRA, stage 2 trains a fresh adapter on the merged stage-1 model and the result merges and saves (the
    pipeline's save_model). It used to start from stage 1's directory, where from_pretrained also found the stage-1
    adapter files and applied that adapter again on the merged weights; saving then failed (peft < 0.22)."""
    from peft import LoraConfig, PeftModel
    from transformers import AutoModelForCausalLM
    from trl import DPOConfig

    from trl_extras.pipeline.stages import save_model
    from trl_extras.testbed import clean_pairs

    prompts = prompt_dataset("train")["prompt"][:8]
    synthetic = synthesize_preference_pairs(tiny_paths["policy"], _length_reward, prompts, n=3, max_new_tokens=8)
    args = DPOConfig(
        output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=2, use_cpu=True, bf16=False,
        report_to="none", save_strategy="no", gradient_checkpointing=False, logging_steps=1,
    )
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    _, stage2 = run_two_stage_dpo(tiny_paths["policy"], synthetic, clean_pairs(4), args, peft_config=lora)
    assert isinstance(stage2.model, PeftModel)
    assert list(stage2.model.peft_config) == ["default"]  # one fresh adapter, not stage 1's re-applied
    path = save_model(stage2.model, stage2.processing_class, tmp_path / "final")
    AutoModelForCausalLM.from_pretrained(path)  # a standalone checkpoint
