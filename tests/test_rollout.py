"""The shared rollout path: left padding, EOS masking, conversational prompts, truncation, bad input."""

import logging

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from trl_extras.modeling.generation import (
    completion_mask_after_eos,
    generate_rollouts,
    pad_sequences,
    tokenize_prompts,
)


@pytest.fixture(scope="module")
def policy(tiny_paths):
    return AutoModelForCausalLM.from_pretrained(tiny_paths["policy"]), AutoTokenizer.from_pretrained(tiny_paths["policy"])


def test_completion_mask_after_eos():
    ids = torch.tensor([[5, 2, 7, 7], [5, 6, 7, 8], [2, 9, 9, 9]])
    mask, is_eos = completion_mask_after_eos(ids, eos_token_id=2)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]
    assert is_eos.tolist() == [True, False, True]


def test_pad_sequences_sides():
    assert pad_sequences([[1, 2], [3]], 0, "left").tolist() == [[1, 2], [0, 3]]
    assert pad_sequences([[1, 2], [3]], 0, "right").tolist() == [[1, 2], [3, 0]]


def test_generate_rollouts_shapes_and_masks(policy):
    model, tok = policy
    torch.manual_seed(0)
    prompts = ["3 1 >", "9 8 7 6 5 >"]
    r = generate_rollouts(model, tok, prompts, max_new_tokens=6, num_generations=3, batch_size=4)
    assert len(r) == 6 and r.prompts == ["3 1 >"] * 3 + ["9 8 7 6 5 >"] * 3
    assert r.group_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert r.prompt_ids.shape[0] == 6 and r.completion_ids.shape == r.completion_mask.shape
    # left padding: every prompt ends at the last column
    assert r.prompt_mask[:, -1].all()
    # prompt tokens agree with the tokenizer
    first = r.prompt_ids[0][r.prompt_mask[0].bool()].tolist()
    assert first == tok("3 1 >")["input_ids"]
    # after the first EOS everything is padding and masked
    for ids, m, eos in zip(r.completion_ids, r.completion_mask, r.is_eos):
        n = int(m.sum())
        assert (ids[n:] == tok.pad_token_id).all()
        assert bool(eos) == (n > 0 and ids[n - 1].item() == tok.eos_token_id)
    assert r.input_ids.shape == r.attention_mask.shape


def test_generate_matches_per_prompt_greedy(policy):
    """Batched left-padded greedy generation equals generating each prompt alone."""
    model, tok = policy
    prompts = ["3 1 >", "9 8 7 6 5 4 >"]
    batched = generate_rollouts(model, tok, prompts, max_new_tokens=5, do_sample=False, batch_size=8)
    for i, p in enumerate(prompts):
        alone = generate_rollouts(model, tok, [p], max_new_tokens=5, do_sample=False)
        n = int(alone.completion_mask[0].sum())
        assert batched.completion_ids[i, :n].tolist() == alone.completion_ids[0, :n].tolist()


def test_conversational_prompts_use_chat_template(policy):
    model, tok = policy
    conv = [[{"role": "user", "content": "3 1 >"}]]
    ids = tokenize_prompts(tok, conv)[0]
    assert tok.decode(ids) == "<bos><|user|>3 1 ><eos><|assistant|>"
    r = generate_rollouts(model, tok, conv, max_new_tokens=4)
    assert isinstance(r.completions[0], list) and r.completions[0][0]["role"] == "assistant"


def test_left_truncation_warns_once(policy, caplog):
    import trl_extras.modeling.generation as rollout

    model, tok = policy
    rollout._warned_truncation = False
    with caplog.at_level(logging.WARNING, logger="trl_extras.modeling.generation"):
        ids = tokenize_prompts(tok, ["1 2 3 4 5 6 7 8 >", "9 9 9 9 9 9 >"], max_prompt_length=5)
    assert [len(x) for x in ids] == [5, 5]
    assert tok.decode(ids[0]) == "7 8 >"  # the end of the prompt is kept
    assert sum("truncated" in rec.message for rec in caplog.records) == 1


def test_bad_inputs(policy, tiny_tokenizer):
    model, tok = policy
    with pytest.raises(ValueError, match="empty"):
        generate_rollouts(model, tok, ["3 1 >", "  "], max_new_tokens=2)
    with pytest.raises(ValueError, match="No prompts"):
        generate_rollouts(model, tok, [], max_new_tokens=2)
    no_template = AutoTokenizer.from_pretrained(tok.name_or_path)
    no_template.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        tokenize_prompts(no_template, [[{"role": "user", "content": "1 >"}]])


def test_tokenizer_without_pad_uses_eos(policy):
    model, tok = policy
    tok2 = AutoTokenizer.from_pretrained(tok.name_or_path)
    tok2.pad_token = None
    r = generate_rollouts(model, tok2, ["3 1 >", "1 >"], max_new_tokens=3)
    assert tok2.pad_token_id == tok2.eos_token_id and len(r) == 2


def test_temperature_zero_is_greedy(policy):
    model, tok = policy
    greedy = generate_rollouts(model, tok, ["3 1 >", "7 2 5 >"], max_new_tokens=5, do_sample=False)
    zero = generate_rollouts(model, tok, ["3 1 >", "7 2 5 >"], max_new_tokens=5, temperature=0.0)
    assert zero.completion_ids.tolist() == greedy.completion_ids.tolist()
    with pytest.raises(ValueError, match="temperature"):
        generate_rollouts(model, tok, ["3 1 >"], max_new_tokens=2, temperature=-1.0)
