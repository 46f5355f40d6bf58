"""The CLIs end as TRL's scripts do: a model card naming the training dataset, or push_to_hub(dataset_name=...)."""

from types import SimpleNamespace

from trl_extras.scripts.model_card import card_dataset_name, write_model_card


def test_card_dataset_name_only_names_hub_datasets(tmp_path):
    (tmp_path / "train.jsonl").write_text("{}\n")
    assert card_dataset_name("trl-lib/Capybara") == "trl-lib/Capybara"
    assert card_dataset_name("testbed") is None and card_dataset_name(None) is None and card_dataset_name("") is None
    assert card_dataset_name(str(tmp_path / "train.jsonl")) is None and card_dataset_name(str(tmp_path)) is None


def _trainer(tiny_paths, out):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from trl_extras.testbed import sft_dataset

    args = SFTConfig(output_dir=str(out), max_steps=1, report_to="none", use_cpu=True, bf16=False,
                     save_strategy="no", disable_tqdm=True)
    tok = AutoTokenizer.from_pretrained(tiny_paths["tokenizer"])
    data = sft_dataset(4).select_columns(["prompt", "completion"])
    return SFTTrainer(model=tiny_paths["policy"], args=args, train_dataset=data, processing_class=tok), args


def test_write_model_card_names_the_dataset_or_pushes(tiny_paths, tmp_path):
    trainer, args = _trainer(tiny_paths, tmp_path / "my-model")
    write_model_card(trainer, args, "trl-lib/Capybara")
    card = (tmp_path / "my-model" / "README.md").read_text()
    assert "https://huggingface.co/datasets/trl-lib/Capybara" in card and "datasets: trl-lib/Capybara" in card
    assert "model_name: my-model" in card

    write_model_card(trainer, args, "testbed")  # the built-in testbed is no Hub dataset: no link
    assert "huggingface.co/datasets" not in (tmp_path / "my-model" / "README.md").read_text()

    pushed = []
    trainer.push_to_hub = lambda **kwargs: pushed.append(kwargs)  # never the network
    write_model_card(trainer, SimpleNamespace(push_to_hub=True, output_dir=args.output_dir), "trl-lib/Capybara")
    assert pushed == [{"dataset_name": "trl-lib/Capybara"}]
