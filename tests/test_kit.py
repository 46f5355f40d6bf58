"""The offline tiny-model kit: tokenizer behaviour and save/reload round trips like hub checkpoints."""

import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from trl_extras.testbed import build_causal_lm, build_sequence_classifier, save_tiny


def test_tokenizer_specials_and_char_level(tiny_tokenizer):
    tok = tiny_tokenizer
    ids = tok("7 3 >")["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == 1 + len("7 3 >")
    assert tok.decode(ids, skip_special_tokens=True) == "7 3 >"
    assert len({tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id}) == 4


def test_chat_template_generation_prompt_and_assistant_mask(tiny_tokenizer):
    tok = tiny_tokenizer
    msgs = [{"role": "user", "content": "3 1 >"}, {"role": "assistant", "content": " 1 3"}]
    text = tok.apply_chat_template(msgs, tokenize=False)
    assert text == "<bos><|user|>3 1 ><eos><|assistant|> 1 3<eos>"
    prompt = tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<|assistant|>") and text.startswith(prompt)
    out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    masked = [i for i, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert tok.decode(masked) == " 1 3<eos>"


def test_save_reload_round_trip(tmp_path, tiny_tokenizer):
    from trl_extras.testbed import TinyModelSpec

    spec = TinyModelSpec(hidden_size=32, intermediate_size=64, num_hidden_layers=2)
    lm = build_causal_lm(tiny_tokenizer, spec, seed=1)
    rm = build_sequence_classifier(tiny_tokenizer, spec, seed=2)
    lm_path = save_tiny(lm, tiny_tokenizer, tmp_path / "lm")
    rm_path = save_tiny(rm, tiny_tokenizer, tmp_path / "rm")
    tok2 = AutoTokenizer.from_pretrained(lm_path)
    assert tok2.chat_template == tiny_tokenizer.chat_template
    assert tok2("5 4 >")["input_ids"] == tiny_tokenizer("5 4 >")["input_ids"]
    lm2 = AutoModelForCausalLM.from_pretrained(lm_path)
    rm2 = AutoModelForSequenceClassification.from_pretrained(rm_path)
    assert rm2.config.num_labels == 1 and lm2.config._name_or_path == lm_path
    x = torch.tensor([tiny_tokenizer("5 4 >")["input_ids"]])
    torch.testing.assert_close(lm(x).logits, lm2(x).logits)
    torch.testing.assert_close(rm(x).logits, rm2(x).logits)
    # a reward model can be initialised from the causal LM checkpoint (the article's recipe: new head on SFT)
    rm3 = AutoModelForSequenceClassification.from_pretrained(lm_path, num_labels=1)
    assert rm3(x).logits.shape == (1, 1)


def test_sft_policy_is_cached_and_sorts(sft_policy_path):
    import json
    from pathlib import Path

    from trl_extras.testbed import build_sft_policy

    assert build_sft_policy(progress=False) == sft_policy_path  # cache hit, no rebuild
    info = json.loads((Path(sft_policy_path) / "build_info.json").read_text())
    assert info["build_seconds"] < 300
    model = AutoModelForCausalLM.from_pretrained(sft_policy_path)
    tok = AutoTokenizer.from_pretrained(sft_policy_path)
    ids = torch.tensor([tok("9 2 7 4 >")["input_ids"]])
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    assert tok.decode(out[0, ids.size(1):], skip_special_tokens=True) == " 2 4 7 9"
