"""RewardEnsemble: pinned to RewardTrainer's forward, both layouts, trunk-once LoRA scoring, protocol, bad input."""

import json

import pytest
import torch
from helpers import cpu_config, reward_trainer_margins

from trl_extras.rewards.ensemble import (
    MANIFEST_NAME,
    EnsembleScores,
    RewardEnsemble,
    lora_full_pass_scores,
    lora_tail_start,
    train_reward_ensemble,
)
from trl_extras.testbed import TinyModelSpec, build_sequence_classifier, clean_pairs, hacked_completions, save_tiny


def _args(tmp_path, **kw):
    from trl import RewardConfig

    defaults = {"per_device_train_batch_size": 4, "max_steps": 1, "learning_rate": 1e-3}
    return cpu_config(RewardConfig, tmp_path, **{**defaults, **kw})


@pytest.fixture(scope="module")
def four_layer_reward(tmp_path_factory, tiny_tokenizer):
    """A random 4-layer tiny reward model on disk (LoRA tails need layers to skip)."""
    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4)
    model = build_sequence_classifier(tiny_tokenizer, spec, seed=3)
    return save_tiny(model, tiny_tokenizer, tmp_path_factory.mktemp("rm4") / "base")


def _lora_ensemble_model(base_path, layers=(2, 3), k=3):
    """A PeftModel with k random (non-identity) LoRA adapters and k distinct score heads."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(base_path, num_labels=1)
    names = [f"member_{i}" for i in range(k)]
    torch.manual_seed(0)
    for i, name in enumerate(names):
        cfg = LoraConfig(
            task_type="SEQ_CLS",
            r=4,
            target_modules=["q_proj", "v_proj", "down_proj"],
            layers_to_transform=list(layers) if layers is not None else None,
            init_lora_weights=False,  # random B: adapters change the output, so members differ
        )
        if i == 0:
            model = get_peft_model(base, cfg, adapter_name=name)
        else:
            model.add_adapter(name, cfg)
    with torch.no_grad():
        for name in names:
            model.base_model.model.score.modules_to_save[name].weight.normal_(0, 0.5)
    return model.eval(), names


PROMPTS = ["7 3 9 1 >", "2 2 >", "5 4 3 2 1 0 >", "8 >", "1 9 >"]
COMPLETIONS = [" 1 3 7 9", " 2", " 0 1 2 3 4 5", " 8 8 8", ""]


@pytest.mark.parametrize("conversational", [False, True])
def test_member_margins_match_reward_trainer_forward(tiny_paths, tmp_path, conversational):
    from trl import RewardTrainer

    ds = clean_pairs(12, conversational=conversational, seed=7)
    trainer = RewardTrainer(model=tiny_paths["reward"], args=_args(tmp_path), train_dataset=ds)
    trainer.train()  # a trained model, not only its random init
    expected = reward_trainer_margins(trainer, ds)
    ensemble = RewardEnsemble([trainer.model, tiny_paths["reward"]], processing_class=trainer.processing_class)
    chosen = ensemble.score(ds["prompt"], ds["chosen"])
    rejected = ensemble.score(ds["prompt"], ds["rejected"])
    assert not chosen.standardized and chosen.members.shape == (2, 12)
    torch.testing.assert_close(chosen.members[0] - rejected.members[0], expected.float(), rtol=1e-4, atol=1e-5)


def test_lora_trunk_once_equals_full_passes(four_layer_reward, tiny_tokenizer):
    model, names = _lora_ensemble_model(four_layer_reward)
    assert lora_tail_start(model, names) == 2
    ensemble = RewardEnsemble(model, tiny_tokenizer, batch_size=2)  # several batches, varied lengths
    assert ensemble.uses_fast_path and ensemble.num_members == 3
    fast = ensemble.raw_scores(PROMPTS, COMPLETIONS)
    assert ensemble.uses_fast_path  # the one-time self-check agreed
    ids = [ensemble.processing_class(p + c + "<eos>")["input_ids"] for p, c in zip(PROMPTS, COMPLETIONS)]
    width = max(map(len, ids))
    input_ids = torch.tensor([x + [tiny_tokenizer.pad_token_id] * (width - len(x)) for x in ids])
    mask = (torch.arange(width)[None] < torch.tensor([len(x) for x in ids])[:, None]).long()
    slow = lora_full_pass_scores(model, names, input_ids, mask)
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-5)
    assert float(fast.std(dim=0).mean()) > 1e-3  # members really differ


def test_lora_on_all_layers_falls_back_to_full_passes(four_layer_reward, tiny_tokenizer):
    model, names = _lora_ensemble_model(four_layer_reward, layers=None, k=2)
    ensemble = RewardEnsemble(model, tiny_tokenizer)
    assert lora_tail_start(model, names) is None and not ensemble.uses_fast_path
    assert ensemble.raw_scores(PROMPTS, COMPLETIONS).shape == (2, 5)


def test_save_load_round_trip_both_layouts(tiny_paths, tiny_tokenizer, four_layer_reward, tmp_path):
    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    members = [build_sequence_classifier(tiny_tokenizer, spec, seed=s) for s in (1, 2, 3)]
    lora_model, _ = _lora_ensemble_model(four_layer_reward)
    for name, ensemble in {
        "separate": RewardEnsemble(members, tiny_tokenizer, penalty="std", coef=0.3),
        "lora": RewardEnsemble(lora_model, tiny_tokenizer, penalty="min"),
    }.items():
        calibration = ensemble.calibrate(PROMPTS, COMPLETIONS)
        before = ensemble.score(PROMPTS, COMPLETIONS)
        # standardized on the reference set: each member has mean 0 and std 1 there
        torch.testing.assert_close(before.members.mean(dim=1), torch.zeros(3), atol=1e-5, rtol=0)
        torch.testing.assert_close(before.members.std(dim=1, unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
        directory = ensemble.save_pretrained(tmp_path / name)
        manifest = json.loads((tmp_path / name / MANIFEST_NAME).read_text())
        assert manifest["layout"] == name and len(manifest["members"]) == 3
        loaded = RewardEnsemble.from_pretrained(directory)
        assert loaded.layout == name and loaded.penalty == ensemble.penalty and loaded.coef == ensemble.coef
        assert loaded.calibration["mean"] == pytest.approx(calibration["mean"])
        after = loaded.score(PROMPTS, COMPLETIONS)
        torch.testing.assert_close(after.members, before.members, rtol=1e-4, atol=1e-5)
        assert loaded.uses_fast_path == (name == "lora")


def test_train_reward_ensemble_both_layouts(tiny_paths, tmp_path):
    from peft import LoraConfig

    ds = clean_pairs(16, seed=3)
    separate = train_reward_ensemble(
        tiny_paths["policy"],
        ds,
        _args(tmp_path / "a"),
        k=2,
        bootstrap=True,
        output_dir=tmp_path / "sep",
        progress=False,
    )
    manifest = json.loads((tmp_path / "sep" / MANIFEST_NAME).read_text())
    assert manifest["layout"] == "separate" and manifest["seeds"] == [42, 43] and manifest["bootstrap"] is True
    assert manifest["calibration"]["num_items"] == 32  # chosen + rejected of 16 pairs
    # different seeds -> different random heads on the causal-LM checkpoint
    assert not torch.equal(separate.models[0].score.weight, separate.models[1].score.weight)

    lora = train_reward_ensemble(
        tiny_paths["policy"],
        ds,
        _args(tmp_path / "b"),
        k=2,
        seeds=[5, 9],
        output_dir=tmp_path / "lora",
        peft_config=LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["q_proj", "v_proj"]),
        lora_last_layers=1,
        progress=False,
    )
    assert lora.layout == "lora" and lora.uses_fast_path and lora.tail_start == 1
    assert lora.metadata["seeds"] == [5, 9]
    for ensemble in (separate, lora):
        scores = ensemble.score(ds["prompt"], ds["chosen"])
        assert scores.standardized and scores.members.shape == (2, 16)
        assert float(scores.std.mean()) > 0
    with pytest.raises(ValueError, match="SEQ_CLS"):
        train_reward_ensemble(tiny_paths["policy"], ds, _args(tmp_path), peft_config=LoraConfig(r=4))
    with pytest.raises(ValueError, match="k >= 2"):
        train_reward_ensemble(tiny_paths["policy"], ds, _args(tmp_path), k=1)


def test_callable_protocol_with_log_metric(tiny_tokenizer):
    from trl_extras.testbed import to_conversational_completion, to_conversational_prompt

    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    members = [build_sequence_classifier(tiny_tokenizer, spec, seed=s) for s in (1, 2)]
    ensemble = RewardEnsemble(members, tiny_tokenizer, penalty="variance", coef=0.5)
    assert ensemble.config is members[0].config and ensemble.__name__ == "reward_ensemble_variance"
    with pytest.raises(ValueError, match="not calibrated"):  # an error unless opted in
        ensemble(prompts=PROMPTS, completions=COMPLETIONS)
    ensemble.allow_uncalibrated = True
    with pytest.warns(UserWarning, match="not calibrated"):
        ensemble(prompts=PROMPTS, completions=COMPLETIONS)
    ensemble.calibrate(PROMPTS + hacked_completions(PROMPTS[:0]), COMPLETIONS)
    logged = {}
    out = ensemble(
        prompts=PROMPTS,
        completions=COMPLETIONS,
        completion_ids=[[1]] * 5,
        trainer_state=None,
        gold=[0.0] * 5,
        log_metric=lambda name, value: logged.__setitem__(name, value),
    )
    scores = ensemble.score(PROMPTS, COMPLETIONS)
    assert isinstance(out, list) and len(out) == 5 and all(isinstance(x, float) for x in out)
    torch.testing.assert_close(torch.tensor(out), scores.mean - 0.5 * scores.var)
    assert logged["ensemble/mean"] == pytest.approx(float(scores.mean.mean()))
    assert logged["ensemble/std"] == pytest.approx(float(scores.std.mean()))
    # conversational input scores through the chat template
    conv = ensemble(
        [to_conversational_prompt(p) for p in PROMPTS], [to_conversational_completion(c) for c in COMPLETIONS]
    )
    assert len(conv) == 5
    assert isinstance(EnsembleScores.from_members(scores.members).penalized("min"), torch.Tensor)


def test_ensemble_as_grpo_reward_function(tiny_paths, tiny_tokenizer, tmp_path):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    ensemble = RewardEnsemble(
        [build_sequence_classifier(tiny_tokenizer, spec, seed=s) for s in (1, 2)], tiny_tokenizer, penalty="std"
    )
    ensemble.calibrate(PROMPTS, COMPLETIONS)
    args = GRPOConfig(
        output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to="none", save_strategy="no",
        gradient_checkpointing=False, max_steps=1, per_device_train_batch_size=4, num_generations=2,
        max_completion_length=6, logging_steps=1, disable_tqdm=True,
    )  # fmt: skip
    trainer = GRPOTrainer(
        model=tiny_paths["policy"],
        reward_funcs=ensemble,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": PROMPTS[:4]}),
    )
    trainer.train()
    logged = [h for h in trainer.state.log_history if "ensemble/std" in h]
    assert logged and logged[0]["ensemble/std"] >= 0


def test_bad_inputs(tiny_paths, tiny_tokenizer, tmp_path):
    from trl_extras.testbed import build_tokenizer

    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
    a, b = (build_sequence_classifier(tiny_tokenizer, spec, seed=s) for s in (1, 2))
    with pytest.raises(ValueError, match="at least 2 members"):
        RewardEnsemble([a], tiny_tokenizer)
    with pytest.raises(ValueError, match="at least 2 members"):
        RewardEnsemble(tiny_paths["reward"])
    other = build_tokenizer()
    other.add_tokens(["<extra>"])
    with pytest.raises(ValueError, match="different tokenizer"):
        RewardEnsemble([a, b], processing_class=[tiny_tokenizer, other])
    with pytest.raises(ValueError, match="Unknown penalty"):
        RewardEnsemble([a, b], tiny_tokenizer, penalty="median")
    ensemble = RewardEnsemble([a, b], tiny_tokenizer)
    with pytest.raises(ValueError, match="5 prompts but 4 completions"):
        ensemble.score(PROMPTS, COMPLETIONS[:4])
    with pytest.raises(ValueError, match="same score"):
        ensemble.calibrate(PROMPTS[:1] * 3, COMPLETIONS[:1] * 3)
    with torch.no_grad():
        b.score.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="non-finite score"):
        ensemble.score(PROMPTS, COMPLETIONS)
    with pytest.raises(FileNotFoundError, match=MANIFEST_NAME):
        RewardEnsemble.from_pretrained(tmp_path)


def test_cli_reward_ensemble_recipe(tiny_paths, tmp_path):
    """The recipe with tiny overrides, K LoRA adapters on the last layer (separate checkpoints: tested above)."""
    from pathlib import Path

    from trl_extras.cli import main

    recipe = Path(__file__).parent.parent / "recipes" / "reward_ensemble.yaml"
    argv = ["reward-ensemble", "--config", str(recipe), "--model_name_or_path", tiny_paths["policy"],
            "--output_dir", str(tmp_path / "out"), "--k", "2", "--testbed_dirty_pairs", "16",
            "--testbed_clean_pairs", "8", "--testbed_eval_pairs", "8", "--max_steps", "1",
            "--per_device_train_batch_size", "4", "--calibration_size", "8", "--use_peft", "--lora_task_type",
            "SEQ_CLS", "--lora_r", "4", "--lora_last_layers", "1", "--lora_target_modules", "q_proj", "v_proj"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "out" / "reward_metrics.json").read_text())
    assert len(metrics["eval"]["member_accuracy"]) == 2
    loaded = RewardEnsemble.from_pretrained(tmp_path / "out")
    assert loaded.layout == "lora" and loaded.calibration is not None and loaded.uses_fast_path
