"""The reward-two-stage and reward-filter subcommands run their recipes (shrunk to tiny models and data)."""

import json
from pathlib import Path

from trl_extras.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--testbed_clean_pairs", "12", "--testbed_eval_pairs", "8", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip


def test_two_stage_cli_recipe_with_lora(tiny_paths, tmp_path):
    out = tmp_path / "two_stage"
    argv = ["reward-two-stage", "--config", str(ROOT / "recipes/reward_two_stage.yaml"),
            "--model_name_or_path", tiny_paths["reward"], "--output_dir", str(out), *TINY,
            "--testbed_dirty_pairs", "16", "--pretrain_max_steps", "2",
            "--use_peft", "--lora_task_type", "SEQ_CLS", "--lora_r", "4", "--lora_target_modules", "q_proj", "v_proj"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "reward_metrics.json").read_text())
    assert set(metrics["stage_metrics"]) == {"stage1", "stage2"}
    assert 0.0 <= metrics["final_eval"]["eval_accuracy"] <= 1.0
    assert (out / "adapter_config.json").exists() and (out / "stage1" / "two_stage.json").exists()
    assert "trl" in (out / "README.md").read_text()  # the model card, as TRL's scripts write it


def test_filter_cli_recipe_with_data_files(tiny_paths, tmp_path):
    from trl_extras.testbed import clean_pairs

    clean_pairs(20, seed=11).to_json(tmp_path / "train.jsonl")
    clean_pairs(8, seed=12, flip_rate=0.0).to_json(tmp_path / "test.jsonl")
    out = tmp_path / "filtered"
    argv = ["reward-filter", "--config", str(ROOT / "recipes/reward_filtering.yaml"),
            "--model_name_or_path", tiny_paths["reward"], "--output_dir", str(out), *TINY,
            "--dataset_name", str(tmp_path / "train.jsonl"), "--dataset_test_split", "",
            "--drop_easiest", "0.25", "--drop_suspect", "0.1", "--min_keep", "5"]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "filter_report.json").read_text())
    assert report["num_total"] == 20 and report["num_kept"] == 13
    assert len(report["dropped_easy_ids"]) == 5 and len(report["dropped_suspect_ids"]) == 2
    kept = [json.loads(line)["id"] for line in (out / "filtered_pairs.jsonl").read_text().splitlines()]
    assert len(kept) == 13 and not set(kept) & set(report["dropped_easy_ids"])
    assert (out / "scoring").is_dir() and (out / "model.safetensors").exists()
    assert "huggingface.co/datasets" not in (out / "README.md").read_text()  # a local file is no Hub dataset
