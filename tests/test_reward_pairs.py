"""pair_margins: pinned to RewardTrainer's own forward; formats, LoRA, bad inputs."""

import pytest
import torch
from datasets import Dataset
from helpers import cpu_config, reward_trainer_margins

from trl_extras.rewards.pairs import pair_margins
from trl_extras.testbed import clean_pairs


def _args(tmp_path, **kw):
    from trl import RewardConfig

    return cpu_config(RewardConfig, tmp_path, **{"per_device_train_batch_size": 4, "max_steps": 1, **kw})


def _to_implicit(ds):
    return ds.map(
        lambda r: {"chosen": r["prompt"] + r["chosen"], "rejected": r["prompt"] + r["rejected"]},
        remove_columns=["prompt"],
    )


@pytest.mark.parametrize("form", ["explicit", "implicit", "conversational", "conversational_implicit"])
def test_margins_match_reward_trainer_forward(tiny_paths, tmp_path, form):
    from trl import RewardTrainer

    conv = form.startswith("conversational")
    ds = clean_pairs(12, conversational=conv, seed=5)
    if form.endswith("implicit"):
        ds = _to_implicit(ds)  # text or message lists: both concatenate
    trainer = RewardTrainer(model=tiny_paths["reward"], args=_args(tmp_path), train_dataset=ds)
    trainer.train()  # margins of a trained (not only random) model
    expected = reward_trainer_margins(trainer, ds)
    got = pair_margins(trainer.model, trainer.processing_class, ds, batch_size=5)
    assert got.shape == (12,)
    torch.testing.assert_close(got, expected.float(), atol=1e-5, rtol=1e-4)
    assert got.abs().max() > 0  # not trivially zero


def test_lora_reward_model_margins(tiny_paths, tmp_path):
    from peft import LoraConfig
    from trl import RewardTrainer

    ds = clean_pairs(8, seed=6)
    peft_config = LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    trainer = RewardTrainer(
        model=tiny_paths["reward"], args=_args(tmp_path, learning_rate=1e-2), train_dataset=ds, peft_config=peft_config
    )
    trainer.train()
    got = pair_margins(trainer.model, trainer.processing_class, ds)
    torch.testing.assert_close(got, reward_trainer_margins(trainer, ds).float(), atol=1e-5, rtol=1e-4)


def test_bad_inputs_raise(tiny_paths):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"], num_labels=1)
    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    good = {"id": ["a", "b"], "prompt": ["1 2 >", "3 1 >"], "chosen": [" 1 2", " 1 3"], "rejected": [" 2 1", " 3"]}
    assert pair_margins(model, tok, Dataset.from_dict(good)).shape == (2,)
    with pytest.raises(ValueError, match="lacks column"):
        pair_margins(model, tok, Dataset.from_dict({k: v for k, v in good.items() if k != "rejected"}))
    with pytest.raises(ValueError, match="id 'b'.* empty 'chosen'"):
        pair_margins(model, tok, Dataset.from_dict({**good, "chosen": [" 1 2", "  "]}))
    with pytest.raises(ValueError, match="identical"):
        pair_margins(model, tok, Dataset.from_dict({**good, "rejected": [" 1 2", " 3"]}))
    same = pair_margins(model, tok, Dataset.from_dict({**good, "rejected": [" 1 2", " 3"]}), allow_identical=True)
    assert same[0].abs() < 1e-5
    with pytest.raises(ValueError, match="empty"):
        pair_margins(model, tok, Dataset.from_dict({"chosen": [], "rejected": []}))
    # A model that pools at another pad id would read rewards at the wrong token.
    model.config.pad_token_id = tok.pad_token_id + 1
    with pytest.raises(ValueError, match="pools at pad_token_id"):
        pair_margins(model, tok, Dataset.from_dict(good))
    model.config.pad_token_id = tok.pad_token_id
    # NaN weights -> NaN margins -> error, not silently wrong numbers.
    with torch.no_grad():
        model.score.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        pair_margins(model, tok, Dataset.from_dict(good))
