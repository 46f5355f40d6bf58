"""Easy-pair filtering: selection against brute force, report, min_keep, LoRA scoring, the one-call pipeline."""

import pytest
import torch
from datasets import Dataset

from trl_extras.rewards.filtering import filter_easy_pairs, select_pairs, train_with_easy_pair_filtering
from trl_extras.testbed import clean_pairs


def test_select_pairs_brute_force():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(53, generator=gen)
    sel = select_pairs(m, drop_easiest=0.2, drop_suspect=0.1)
    ranked = sorted(range(53), key=lambda i: m[i].item())
    assert sel["easy"].tolist() == sorted(ranked[-10:])  # floor(0.2 * 53) = 10
    assert sel["suspect"].tolist() == sorted(ranked[:5])  # floor(0.1 * 53) = 5
    assert sel["keep"].tolist() == sorted(ranked[5:-10])
    assert select_pairs(m, 0.0)["keep"].numel() == 53
    for bad in [(-0.1, 0.0), (1.0, 0.0), (0.6, 0.5)]:
        with pytest.raises(ValueError):
            select_pairs(m, *bad)


def _pairs(n):
    return Dataset.from_dict(
        {"prompt": ["1 2 >"] * n, "chosen": [" 1 2"] * n, "rejected": [" 2 1" + " 1" * i for i in range(n)]}
    )


def test_filter_with_given_margins_report_and_min_keep():
    ds = _pairs(10)
    margins = torch.arange(10, dtype=torch.float) - 3.0  # -3 .. 6
    filtered, report = filter_easy_pairs(None, ds, None, drop_easiest=0.2, drop_suspect=0.1, margins=margins)
    assert report.num_total == 10 and report.num_kept == 7
    assert report.dropped_easy_ids == ["pair-8", "pair-9"] and report.dropped_suspect_ids == ["pair-0"]
    assert filtered["id"] == [f"pair-{i}" for i in range(1, 8)]
    assert filtered["margin_before_filtering"] == [float(i) - 3 for i in range(1, 8)]
    assert report.margin_quantiles_before["q100"] == 6.0 and report.margin_quantiles_after["q100"] == 4.0
    assert report.easy_threshold == 5.0 and report.suspect_threshold == -3.0
    assert set(report.to_dict()) >= {"num_kept", "dropped_easy_ids", "margin_quantiles_after"}
    with pytest.raises(ValueError, match="min_keep"):
        filter_easy_pairs(None, ds, None, drop_easiest=0.5, margins=margins, min_keep=6)
    with pytest.raises(ValueError, match="duplicate ids"):
        filter_easy_pairs(None, ds.add_column("id", ["x"] * 10), None, margins=margins)
    with pytest.raises(ValueError, match="shape"):
        filter_easy_pairs(None, ds, None, margins=margins[:3])


def test_filter_scores_with_lora_model_and_keeps_ids(tiny_paths, tmp_path):
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    from trl_extras.rewards.pairs import pair_margins

    ds = clean_pairs(20, seed=4)
    args = RewardConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        gradient_checkpointing=False, max_steps=2, per_device_train_batch_size=4, disable_tqdm=True,
    )  # fmt: skip
    peft = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = RewardTrainer(model=tiny_paths["reward"], args=args, train_dataset=ds, peft_config=peft)
    trainer.train()
    filtered, report = filter_easy_pairs(trainer.model, ds, trainer.processing_class, drop_easiest=0.25, batch_size=7)
    margins = pair_margins(trainer.model, trainer.processing_class, ds)
    easiest = {ds["id"][i] for i in torch.topk(margins, 5).indices.tolist()}
    assert set(report.dropped_easy_ids) == easiest
    assert len(filtered) == 15 and not easiest & set(filtered["id"])
    assert max(filtered["margin_before_filtering"]) <= report.easy_threshold


def test_train_with_filtering_trains_a_fresh_model(tiny_paths, tmp_path):
    from transformers import AutoModelForSequenceClassification
    from trl import RewardConfig

    model = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    init = model.score.weight.detach().clone()
    args = RewardConfig(
        output_dir=str(tmp_path / "final"), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        gradient_checkpointing=False, max_steps=2, per_device_train_batch_size=4, disable_tqdm=True,
        learning_rate=1e-2,
    )  # fmt: skip
    from transformers import TrainerCallback

    starts = []

    class StartWeights(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            starts.append(model.score.weight.detach().clone())

    result = train_with_easy_pair_filtering(
        model, clean_pairs(16, seed=7), args=args, drop_easiest=0.25, callbacks=[StartWeights()]
    )
    # Both runs start from the same untrained weights: the second model is fresh, not the scoring model.
    assert len(starts) == 2 and torch.equal(starts[0], init) and torch.equal(starts[1], init)
    assert result.report.num_kept == 12 and len(result.filtered_dataset) == 12
    assert result.scoring_trainer.model is not result.model
    assert result.scoring_trainer.args.output_dir == str(tmp_path / "final" / "scoring")
    assert not torch.equal(result.model.score.weight, init)  # and it was trained
    assert set(result.filtered_dataset["id"]).isdisjoint(result.report.dropped_easy_ids)
