"""Offline tiny-model kit: a character tokenizer and tiny Llama models saved like hub checkpoints.

Nothing here touches the network. Every artefact is written with ``save_pretrained`` so that it reloads by
path exactly like a hub checkpoint (``AutoTokenizer.from_pretrained(path)``,
``AutoModelForCausalLM.from_pretrained(path)``): TRL reloads reference models by ``config._name_or_path``,
so tiny models must live on disk.
"""

from __future__ import annotations

import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")

# The template emits BOS itself (like Llama 3), closes each turn with EOS (so generation stops at the end of
# an assistant turn) and opens an assistant turn for ``add_generation_prompt``. ``{% generation %}`` marks
# the assistant content so TRL's ``assistant_only_loss`` works.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] + eos_token }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)

# Characters of the vocabulary: enough for the testbed ("7 3 9 1 > 1 3 7 9") and for short English text.
CHARACTERS = string.digits + string.ascii_lowercase + string.ascii_uppercase + " >.,:;!?'\"-+*/=()[]\n"


def build_tokenizer(
    chat_template: str = CHAT_TEMPLATE, extra_characters: Sequence[str] = (), model_max_length: int = 512
):
    """A character-level ``PreTrainedTokenizerFast`` with pad/bos/eos/unk, role tokens and a chat template.

    Plain-text encodes get a BOS from the post-processor (``add_special_tokens=True``), as most causal-LM
    tokenizers do; chat-templated text carries its BOS in the template. ``extra_characters`` get one token each
    after the testbed's own (ids of the testbed's tokens do not change: ``testbed.shapes`` widens the vocabulary
    to a real model's size this way).
    """
    from transformers import PreTrainedTokenizerFast

    specials = [PAD, BOS, EOS, UNK, *ROLE_TOKENS]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in (*CHARACTERS, *extra_characters):
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # Every character is its own token; special tokens are matched before pre-tokenization.
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, vocab[BOS])]
    )
    tok.add_special_tokens(specials)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        pad_token=PAD,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        model_max_length=model_max_length,
    )
    fast.chat_template = chat_template
    return fast


@dataclass
class TinyModelSpec:
    """Size of a tiny Llama. Defaults: ~0.6M parameters, trains the testbed policy in about a minute on CPU."""

    hidden_size: int = 128
    intermediate_size: int = 512
    num_hidden_layers: int = 3
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 256
    tie_word_embeddings: bool = False


def _llama_config(tokenizer, spec: TinyModelSpec, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **extra,
    )


def build_causal_lm(tokenizer, spec: TinyModelSpec | None = None, seed: int = 0):
    """A randomly initialised tiny ``LlamaForCausalLM`` sharing ``tokenizer``'s vocabulary."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(_llama_config(tokenizer, spec or TinyModelSpec()))
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_sequence_classifier(tokenizer, spec: TinyModelSpec | None = None, seed: int = 0):
    """A randomly initialised tiny ``LlamaForSequenceClassification`` with ``num_labels=1`` (reward or value)."""
    import torch
    from transformers import LlamaForSequenceClassification

    torch.manual_seed(seed)
    return LlamaForSequenceClassification(_llama_config(tokenizer, spec or TinyModelSpec(), num_labels=1))


def save_tiny(model, tokenizer, path: str | os.PathLike) -> str:
    """Save ``model`` and ``tokenizer`` like a hub checkpoint and return the path as a string."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def make_tiny_checkpoints(root: str | os.PathLike, spec: TinyModelSpec | None = None, seed: int = 0) -> dict:
    """Write a tokenizer, a causal LM and a reward model under ``root``; return their paths by name."""
    root = Path(root)
    tok = build_tokenizer()
    tok.save_pretrained(root / "tokenizer")
    return {
        "tokenizer": str(root / "tokenizer"),
        "policy": save_tiny(build_causal_lm(tok, spec, seed), tok, root / "policy"),
        "reward": save_tiny(build_sequence_classifier(tok, spec, seed + 1), tok, root / "reward"),
    }
