"""CEMTrainer's model card, push_to_hub (upload monkeypatched: never the network), the renamed chunk knob, FSDP refusal."""

import pytest
from helpers import cpu_config

from trl_extras.testbed import TestbedConfig, gold_reward_fn, prompt_dataset


def length_reward(prompts, completions, **kwargs):
    return [-abs(len(c) - 6) / 6 for c in completions]


def _args(tmp_path, **overrides):
    from trl_extras.trainers.cem import CEMConfig

    defaults = dict(num_rounds=2, num_generations=4, max_completion_length=6, generation_chunk_size=16,
                    per_device_train_batch_size=8, num_train_epochs=1, learning_rate=1e-3, seed=0, plot=False)
    return cpu_config(CEMConfig, tmp_path / "cem", **{**defaults, **overrides})


def _data(n=4):
    config = TestbedConfig(num_train_prompts=n, num_holdout_prompts=2)
    return prompt_dataset("train", config), prompt_dataset("holdout", config)


@pytest.fixture(scope="module")
def trained(tiny_paths, tmp_path_factory):
    from trl_extras import CEMTrainer

    tmp_path = tmp_path_factory.mktemp("cem_card")
    train, holdout = _data()
    trainer = CEMTrainer(tiny_paths["policy"], length_reward, _args(tmp_path, hub_model_id="me/cem-tiny"),
                         train_dataset=train, eval_dataset=holdout, eval_reward_funcs=gold_reward_fn)
    trainer.train()
    return trainer


def test_train_writes_model_card_with_rounds_summary(trained):
    from huggingface_hub import ModelCard

    card = ModelCard.load(str(trained.output_dir / "README.md"))
    assert {"trl", "trl-extras", "cem", "generated_from_trainer"} <= set(card.data.tags)
    assert card.data.model_name == "cem-tiny"
    text = card.text
    assert "rubinstein1999cross" in text and "Temirchev" in text  # the method's and the article's citations
    assert "This model was trained with CEM" in text
    # one table row per round, with the numbers of the history
    table = [line for line in text.splitlines() if line.startswith("| ")]
    header, rows = table[0], table[1:]
    assert "mean reward" in header and "elite reward" in header and "entropy" in header and "eval gold" in header
    assert len(rows) == 2
    for row, h in zip(rows, trained.history):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0] == str(h["round"])
        assert f"{h['reward_mean']:.4f}" in cells and f"{h['elite_reward_mean']:.4f}" in cells
        assert f"{h['entropy']:.4f}" in cells
    assert "Before the first round" in text


def test_model_card_dataset_name_and_tags(trained):
    from huggingface_hub import ModelCard

    trained.create_model_card(dataset_name="me/prompts", tags=["mine"])
    card = ModelCard.load(str(trained.output_dir / "README.md"))
    assert card.data.datasets in ("me/prompts", ["me/prompts"]) and "mine" in card.data.tags
    assert "[me/prompts](https://huggingface.co/datasets/me/prompts)" in card.text


def test_push_to_hub_uploads_output_dir(trained, monkeypatch):
    """Like Trainer.push_to_hub: repo created (exist_ok), final model + card saved, the folder uploaded; the
    upload functions are replaced (no network)."""
    import huggingface_hub

    calls = {}

    class Repo:
        repo_id = "me/cem-tiny"

    def create_repo(repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)
        return Repo()

    def upload_folder(**kwargs):
        calls["upload"] = kwargs
        from pathlib import Path

        calls["files"] = sorted(str(p.relative_to(kwargs["folder_path"])) for p in Path(kwargs["folder_path"]).rglob("*"))
        return "commit-info"

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    assert trained.push_to_hub(dataset_name="me/prompts", commit_message="done") == "commit-info"
    assert calls["create"][0] == "me/cem-tiny" and calls["create"][1]["exist_ok"] is True
    up = calls["upload"]
    assert up["repo_id"] == "me/cem-tiny" and up["commit_message"] == "done" and up["folder_path"] == str(
        trained.output_dir)
    assert "round_*/sft/**" in up["ignore_patterns"]
    # what is uploaded: the final model, its tokenizer and the card, written before the upload
    assert {"README.md", "config.json", "model.safetensors", "tokenizer_config.json"} <= set(calls["files"])
    assert "me/prompts" in (trained.output_dir / "README.md").read_text()


def test_round_trainers_never_push(tiny_paths, tmp_path, monkeypatch):
    """push_to_hub=True in CEMConfig does not make each round's SFTTrainer create a repo or push (network)."""
    import huggingface_hub
    import transformers.trainer

    from trl_extras import CEMTrainer

    def no_network(*args, **kwargs):
        raise AssertionError("network call")

    monkeypatch.setattr(huggingface_hub, "create_repo", no_network)
    monkeypatch.setattr(transformers.trainer, "create_repo", no_network, raising=False)
    monkeypatch.setattr(transformers.trainer, "upload_folder", no_network, raising=False)
    train, _ = _data(2)
    trainer = CEMTrainer(tiny_paths["policy"], length_reward,
                         _args(tmp_path, num_rounds=1, push_to_hub=True, hub_model_id="me/x"), train_dataset=train)
    assert len(trainer.train()) == 1


def test_generation_batch_size_renamed(tmp_path):
    from trl_extras.trainers.cem import CEMConfig

    with pytest.raises(ValueError, match="generation_chunk_size") as err:
        cpu_config(CEMConfig, tmp_path, generation_batch_size=64)
    assert "prompts_per_round" in str(err.value)
    assert cpu_config(CEMConfig, tmp_path, generation_chunk_size=32).generation_chunk_size == 32
    with pytest.raises(ValueError, match="generation_chunk_size"):
        cpu_config(CEMConfig, tmp_path, generation_chunk_size=0)


def test_cem_refuses_fsdp(tiny_paths, tmp_path, monkeypatch):
    """FSDP is not supported (sampling uses the whole model between rounds): a clear error, not a hang."""
    from trl_extras import CEMTrainer

    args = _args(tmp_path)
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` exports for an FSDP config
    with pytest.raises(NotImplementedError, match="FSDP.*DeepSpeed ZeRO-2/3"):
        CEMTrainer(tiny_paths["policy"], length_reward, args, train_dataset=_data()[0])
