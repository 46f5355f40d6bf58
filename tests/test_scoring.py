"""The shared reward-scoring path: tokenization pinned to TRL's RewardTrainer, errors naming the function."""

import math

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from trl_extras.rewards.functions import RewardFunctions
from trl_extras.rewards.scoring import RewardModelScorer, reward_model_input_ids, score_with_reward_model


def _trainer_tokenization(path, dataset, tmp_path):
    from trl import RewardConfig, RewardTrainer

    args = RewardConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", save_strategy="no")
    trainer = RewardTrainer(model=path, args=args, train_dataset=dataset)
    return trainer.train_dataset


@pytest.mark.parametrize("form", ["explicit", "conversational"])
def test_input_ids_match_reward_trainer(tiny_paths, tmp_path, form):
    tok = AutoTokenizer.from_pretrained(tiny_paths["reward"])
    prompts, chosen, rejected = ["3 1 >", "9 5 >"], [" 1 3", " 5 9"], [" 3 1", " 9"]
    if form == "conversational":
        prompts = [[{"role": "user", "content": p}] for p in prompts]
        chosen = [[{"role": "assistant", "content": c}] for c in chosen]
        rejected = [[{"role": "assistant", "content": c}] for c in rejected]
    data = Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    prepared = _trainer_tokenization(tiny_paths["reward"], data, tmp_path)
    for i in range(2):
        assert reward_model_input_ids(tok, prompts[i], chosen[i]) == prepared[i]["chosen_ids"]
        assert reward_model_input_ids(tok, prompts[i], rejected[i]) == prepared[i]["rejected_ids"]
    ids = reward_model_input_ids(tok, "3 1 >", " 1 3")
    if form == "explicit":
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id  # BOS kept, EOS appended


def test_score_with_reward_model_batches_and_padding(tiny_paths):
    model = AutoModelForSequenceClassification.from_pretrained(tiny_paths["reward"])
    tok = AutoTokenizer.from_pretrained(tiny_paths["reward"])
    prompts = ["3 1 >", "9 8 7 6 5 4 >", "2 >"]
    comps = [" 1 3", " 4 5 6 7 8 9", " 2"]
    batched = score_with_reward_model(model, tok, prompts, comps, batch_size=3)
    single = torch.cat([score_with_reward_model(model, tok, [p], [c]) for p, c in zip(prompts, comps)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    scorer = RewardModelScorer(tiny_paths["reward"])
    assert scorer(prompts, comps) == pytest.approx(batched.tolist(), abs=1e-5)
    assert scorer.config.num_labels == 1


def test_reward_functions_weights_and_kwargs(tiny_paths):
    seen = {}

    def length(prompts, completions, **kwargs):
        seen.update(kwargs)
        return [float(len(c)) for c in completions]

    def const(prompts, completions, **kwargs):
        return [1.0] * len(prompts)

    fns = RewardFunctions([length, const, tiny_paths["reward"]], reward_weights=[2.0, -1.0, 0.5])
    out = fns(["3 1 >", "2 >"], [" 1 3", " 2"], difficulty=[1, 2])
    assert out.names[:2] == ["length", "const"] and out.per_function.shape == (2, 3)
    expected = 2.0 * out.per_function[:, 0] - out.per_function[:, 1] + 0.5 * out.per_function[:, 2]
    torch.testing.assert_close(out.total, expected)
    assert seen["difficulty"] == [1, 2]
    assert len(fns.modules()) == 1


@pytest.mark.parametrize(
    "bad, message",
    [
        (lambda prompts, completions, **kw: None, "returned None"),
        (lambda prompts, completions, **kw: [1.0], "returned 1 values for 2"),
        (lambda prompts, completions, **kw: [1.0, math.nan], "nan"),
        (lambda prompts, completions, **kw: [1.0, None], "None"),
    ],
)
def test_reward_function_errors_name_the_function(bad, message):
    def broken_reward(prompts, completions, **kwargs):
        return bad(prompts, completions)

    with pytest.raises(ValueError, match="broken_reward") as err:
        RewardFunctions(broken_reward)(["1 >", "2 >"], [" 1", " 2"])
    assert message in str(err.value)


def test_reward_functions_config_errors():
    with pytest.raises(ValueError, match="weights"):
        RewardFunctions([lambda p, c, **k: [0.0] * len(p)], reward_weights=[1.0, 2.0])
    with pytest.raises(TypeError):
        RewardFunctions([42])
