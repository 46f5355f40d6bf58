"""Randomly initialised models shaped like real checkpoints (SmolLM2-135M, Qwen2.5-0.5B), built offline.

Where real weights cannot travel (a GPU machine without a hub or a registry), timing and memory at real scale need
only the real *shape*: the same layers, widths, heads, vocabulary and tied embeddings, with random weights. The
tokenizer has exactly ``vocab_size`` tokens, each ONE character (the testbed's characters and special tokens first,
then filler characters), so any sampled id decodes, and decode → encode keeps the token count: a reward model that
re-tokenizes a 512-token completion sees 512 tokens, not several thousand.

    paths = make_shaped_checkpoints("/tmp/qwen-shaped", QWEN25_05B)     # {"tokenizer", "policy", "reward"}
    spec = QWEN25_05B.scaled(hidden_size=64, num_hidden_layers=2, vocab_size=1024)   # a CPU-sized stand-in
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .models import BOS, CHARACTERS, EOS, PAD, ROLE_TOKENS, UNK, build_tokenizer

__all__ = ["QWEN25_05B", "SMOLLM2_135M", "ModelShape", "build_shaped_model", "build_wide_tokenizer",
           "make_shaped_checkpoints"]


@dataclass(frozen=True)
class ModelShape:
    """Architecture of a decoder-only checkpoint (what ``config.json`` says), without its weights.

    ``model_type``: ``"llama"`` (``LlamaConfig``) or ``"qwen2"`` (``Qwen2Config``: q/k/v biases).
    """

    name: str
    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    tie_word_embeddings: bool = True
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5

    def scaled(self, **changes) -> ModelShape:
        """The same architecture with some sizes changed (e.g. a CPU-sized stand-in); the name says so."""
        return replace(self, name=f"{self.name}-scaled", **changes)

    def config(self, tokenizer, **extra):
        """A ``transformers`` config of this shape whose special-token ids are ``tokenizer``'s."""
        if len(tokenizer) != self.vocab_size:
            raise ValueError(f"The tokenizer has {len(tokenizer)} tokens; shape {self.name} needs {self.vocab_size}.")
        if self.model_type == "llama":
            from transformers import LlamaConfig as Config
        elif self.model_type == "qwen2":
            from transformers import Qwen2Config as Config
        else:
            raise ValueError(f"model_type must be 'llama' or 'qwen2', got {self.model_type!r}.")
        kwargs = {k: v for k, v in asdict(self).items() if k not in ("name", "model_type", "rope_theta")}
        config = Config(
            **kwargs,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **extra,
        )
        # transformers 5 keeps RoPE settings in `rope_parameters` (older: `rope_theta`); set whichever exists
        if isinstance(getattr(config, "rope_parameters", None), dict):
            config.rope_parameters["rope_theta"] = self.rope_theta
        else:
            config.rope_theta = self.rope_theta
        return config


#: SmolLM2-135M(-Instruct): Llama, 30 layers, hidden 576, 9 heads / 3 KV heads, vocabulary 49152, tied embeddings.
SMOLLM2_135M = ModelShape(
    name="smollm2-135m-shaped", model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
    num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
    max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
)
#: Qwen2.5-0.5B(-Instruct): Qwen2, 24 layers, hidden 896, 14 heads / 2 KV heads, vocabulary 151936, tied embeddings.
QWEN25_05B = ModelShape(
    name="qwen2.5-0.5b-shaped", model_type="qwen2", hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
    num_attention_heads=14, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
    max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
)


def _filler_characters(count: int, taken: set[str]):
    """``count`` distinct single characters outside ``taken``: code points from U+3400 on, skipping surrogates and
    non-characters (both are unsafe in JSON and in the tokenizer's Rust strings)."""
    code = 0x3400
    out = []
    while len(out) < count:
        if code > 0x10FFFF:
            raise ValueError(f"Cannot make {count} single-character tokens.")
        ch = chr(code)
        code += 1
        if 0xD800 <= ord(ch) <= 0xDFFF or 0xFDD0 <= ord(ch) <= 0xFDEF or (ord(ch) & 0xFFFE) == 0xFFFE or ch in taken:
            continue
        out.append(ch)
    return out


def build_wide_tokenizer(vocab_size: int):
    """The testbed's character tokenizer (same special tokens, chat template and ids for its characters) widened
    to exactly ``vocab_size`` single-character tokens, so that a model with a real vocabulary size can sample any
    id and reward models re-tokenize completions to the same length."""
    base = len([PAD, BOS, EOS, UNK, *ROLE_TOKENS]) + len(set(CHARACTERS))
    if vocab_size < base:
        raise ValueError(f"vocab_size must be >= {base} (the testbed's tokens), got {vocab_size}.")
    taken = {PAD, BOS, EOS, UNK, *ROLE_TOKENS, *CHARACTERS}
    tokenizer = build_tokenizer(extra_characters=_filler_characters(vocab_size - base, taken), model_max_length=8192)
    assert len(tokenizer) == vocab_size, (len(tokenizer), vocab_size)
    return tokenizer


def build_shaped_model(shape: ModelShape, tokenizer, kind: str = "causal", seed: int = 0, device=None, dtype=None):
    """A randomly initialised model of ``shape``: ``kind="causal"`` (``*ForCausalLM``) or ``"reward"``
    (``*ForSequenceClassification``, ``num_labels=1``). ``device="cuda"`` initialises on the GPU (seconds instead
    of a minute for 0.5B parameters)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if kind not in ("causal", "reward"):
        raise ValueError(f"kind must be 'causal' or 'reward', got {kind!r}.")
    config = shape.config(tokenizer, **({"num_labels": 1} if kind == "reward" else {}))
    auto = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = auto.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    if kind == "causal":
        gen = model.generation_config
        gen.pad_token_id, gen.bos_token_id, gen.eos_token_id = (
            tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id
        )
    return model


def make_shaped_checkpoints(
    root: str | os.PathLike, shape: ModelShape, *, reward: bool = True, seed: int = 0, device=None, dtype="bfloat16"
) -> dict:
    """Write a tokenizer, a causal LM and (``reward=True``) a reward model of ``shape`` under ``root`` (saved like
    hub checkpoints, weights in ``dtype``); return their paths by name. Reuses ``root`` when it already holds the
    same shape, seed and dtype (a ``build_info.json`` written last, after an atomic rename of each model)."""
    import torch

    root = Path(root)
    info = {"shape": asdict(shape), "seed": seed, "dtype": str(dtype), "reward": reward}
    paths = {"tokenizer": str(root / "tokenizer"), "policy": str(root / "policy")}
    if reward:
        paths["reward"] = str(root / "reward")
    info_file = root / "build_info.json"
    if info_file.is_file() and json.loads(info_file.read_text()) == info and all(Path(p).is_dir() for p in paths.values()):
        return paths
    root.mkdir(parents=True, exist_ok=True)
    tok = build_wide_tokenizer(shape.vocab_size)
    torch_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    kinds = [("tokenizer", None), ("policy", "causal")] + ([("reward", "reward")] if reward else [])
    for name, kind in kinds:
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        if kind is None:
            tok.save_pretrained(tmp)
        else:
            model = build_shaped_model(shape, tok, kind, seed=seed + (kind == "reward"), device=device, dtype=torch_dtype)
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            del model
        target = root / name
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    info_file.write_text(json.dumps(info))
    return paths
