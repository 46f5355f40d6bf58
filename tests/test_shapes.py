"""Random models of real shapes (``trl_extras.testbed.shapes``): the real parameter counts, a tokenizer whose every
id decodes to one character, and the on-disk cache."""

import pytest
import torch

from trl_extras.testbed.shapes import QWEN25_05B, SMOLLM2_135M, build_wide_tokenizer, make_shaped_checkpoints


@pytest.mark.parametrize(
    ("shape", "params"),
    [(QWEN25_05B, 494_032_768), (SMOLLM2_135M, 134_515_008)],  # Qwen2.5-0.5B and SmolLM2-135M as published
)
def test_real_shapes_have_the_real_parameter_counts(shape, params):
    from transformers import AutoModelForCausalLM

    class FakeTokenizer:  # only the vocabulary size and special ids are read
        pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

        def __len__(self):
            return shape.vocab_size

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape.config(FakeTokenizer()))
    assert model.config.tie_word_embeddings
    assert sum(p.numel() for p in model.parameters()) == params


def test_wide_tokenizer_round_trips_every_id():
    from trl_extras.testbed import build_tokenizer

    tok = build_wide_tokenizer(3000)
    assert len(tok) == 3000
    base = build_tokenizer()
    assert tok("7 3 9 1 >")["input_ids"] == base("7 3 9 1 >")["input_ids"]  # the testbed's ids are kept
    ids = torch.randint(len(base), 3000, (500,), generator=torch.Generator().manual_seed(0)).tolist()
    text = tok.decode(ids)
    assert len(text) == 500  # one character per token
    assert tok(text, add_special_tokens=False)["input_ids"] == ids
    with pytest.raises(ValueError, match="vocab_size must be >="):
        build_wide_tokenizer(10)


def test_shaped_checkpoints_load_and_are_cached(tmp_path):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    small = QWEN25_05B.scaled(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                              num_key_value_heads=2, vocab_size=500)
    paths = make_shaped_checkpoints(tmp_path / "m", small)
    policy = AutoModelForCausalLM.from_pretrained(paths["policy"])
    reward = AutoModelForSequenceClassification.from_pretrained(paths["reward"], num_labels=1)
    tok = AutoTokenizer.from_pretrained(paths["policy"])
    assert type(policy).__name__ == "Qwen2ForCausalLM" and policy.dtype == torch.bfloat16
    assert policy.config.vocab_size == len(tok) == 500 and reward.config.num_labels == 1
    assert policy.config.eos_token_id == tok.eos_token_id == policy.generation_config.eos_token_id
    stamp = (tmp_path / "m" / "policy" / "model.safetensors").stat().st_mtime_ns
    assert make_shaped_checkpoints(tmp_path / "m", small) == paths
    assert (tmp_path / "m" / "policy" / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    with pytest.raises(ValueError, match="needs 500"):
        small.config(build_wide_tokenizer(600))
