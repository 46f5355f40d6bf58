"""Builds the testbed's "pretrained SFT" policy: a tiny Llama fine-tuned on the graded SFT corpus, cached on disk.

A plain PyTorch loop (completion-only cross-entropy) rather than ``SFTTrainer``: the build is part of the kit, not
a technique under test, and a bare loop keeps it to about a minute on two CPU cores. The result is saved with
``save_pretrained`` and reused while its ``build_info.json`` matches the requested settings; a missing or
mismatched cache is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..utils.progress import log_line, progress_bar
from .data import TestbedConfig, sft_dataset
from .models import TinyModelSpec, build_causal_lm, build_sequence_classifier, build_tokenizer, save_tiny

logger = logging.getLogger(__name__)


@dataclass
class SFTBuildConfig:
    """Settings of the SFT policy build (they key the cache)."""

    num_examples: int = field(default=8000, metadata={"help": "SFT corpus size."})
    steps: int = field(default=500, metadata={"help": "Optimizer steps."})
    batch_size: int = field(default=64, metadata={"help": "Sequences per step."})
    learning_rate: float = field(default=2e-3, metadata={"help": "AdamW learning rate (cosine decay)."})
    seed: int = field(default=0, metadata={"help": "Seed of the model init and data order."})
    conversational_share: float = field(
        default=0.25, metadata={"help": "Share of SFT examples rendered with the chat template (so chat prompts work)."}
    )
    spec: TinyModelSpec = field(default_factory=TinyModelSpec, metadata={"help": "Model size."})
    testbed: TestbedConfig = field(default_factory=TestbedConfig, metadata={"help": "Task settings."})


def default_cache_dir() -> Path:
    return Path(os.environ.get("TRL_EXTRAS_CACHE", Path.home() / ".cache" / "trl_extras")) / "testbed"


#: TestbedConfig fields added after caches existed: left out of the key at their default (the plain task's caches
#: keep their keys).
_NEW_TASK_FIELDS = ("mode_share", "mode_max_digits", "mix")


def _key(config: SFTBuildConfig) -> str:
    settings = asdict(config)
    plain = TestbedConfig()
    for name in _NEW_TASK_FIELDS:
        if settings["testbed"][name] == getattr(plain, name):
            del settings["testbed"][name]
    blob = json.dumps(settings, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _encode(tokenizer, prompt: str, completion: str, conversational: bool = False) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` with the loss on the completion and its EOS only."""
    if conversational:
        messages = [{"role": "user", "content": prompt}]
        prompt_ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=True)
        prompt_ids = list(prompt_ids["input_ids"])
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
    completion_ids = tokenizer(completion, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return prompt_ids + completion_ids, [-100] * len(prompt_ids) + completion_ids


def train_sft_policy(config: SFTBuildConfig, output_dir: str | os.PathLike, progress: bool = True) -> str:
    """Train the tiny SFT policy from scratch and save it (model + tokenizer) to ``output_dir``."""
    import torch
    from trl.trainer.utils import pad

    torch.manual_seed(config.seed)
    rng = random.Random(config.seed)
    tokenizer = build_tokenizer()
    model = build_causal_lm(tokenizer, config.spec, seed=config.seed)
    data = sft_dataset(config.num_examples, config.testbed, seed=config.seed + 11)
    encoded = [
        _encode(tokenizer, p, c, conversational=rng.random() < config.conversational_share)
        for p, c in zip(data["prompt"], data["completion"])
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.learning_rate, total_steps=config.steps, pct_start=0.05
    )
    model.train()
    start = time.perf_counter()
    iterator = progress_bar(range(config.steps), desc="Building testbed SFT policy", enabled=progress)
    for _ in iterator:
        batch = rng.sample(encoded, config.batch_size)
        input_ids = pad([torch.tensor(b[0]) for b in batch], tokenizer.pad_token_id)
        labels = pad([torch.tensor(b[1]) for b in batch], -100)
        attention_mask = pad([torch.ones(len(b[0]), dtype=torch.long) for b in batch], 0)
        loss = model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        iterator.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    if progress:
        log_line("testbed", f"SFT policy built: {config.steps} steps, final loss {loss.item():.3f} "
                            f"({time.perf_counter() - start:.0f} s)")
    return save_tiny(model, tokenizer, output_dir)


def build_sft_policy(
    config: SFTBuildConfig | None = None, cache_dir: str | os.PathLike | None = None, progress: bool = True
) -> str:
    """Path of the cached SFT policy for ``config``; trains and caches it when missing (about 1 min on CPU)."""
    config = config or SFTBuildConfig()
    path = Path(cache_dir or default_cache_dir()) / f"sft-{_key(config)}"
    info = path / "build_info.json"
    if info.exists() and (path / "config.json").exists():
        return str(path)
    start = time.perf_counter()
    if progress:  # a start line too: in a log file the build is otherwise silent for minutes on a loaded machine
        log_line("testbed", f"building the SFT starting policy ({config.steps} steps, about 1 min on an idle CPU; "
                            f"cached in {path}) ...")
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    train_sft_policy(config, tmp, progress=progress)
    from ..utils.atomic import atomic_write_json, publish_dir

    # build_info.json last: the cache entry is complete once it exists (checked above)
    atomic_write_json(tmp / "build_info.json", {"config": asdict(config), "build_seconds": time.perf_counter() - start})
    if info.exists() and (path / "config.json").exists():  # another process won the race; keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    else:  # absent, or left incomplete by a killed build: replace it whole
        publish_dir(tmp, path)
    logger.info("Built testbed SFT policy at %s in %.1fs", path, time.perf_counter() - start)
    return str(path)


def build_reward_base(output_dir: str | os.PathLike, spec: TinyModelSpec | None = None, seed: int = 0) -> str:
    """A randomly initialised tiny reward/value model (``num_labels=1``) with the testbed tokenizer, on disk."""
    tokenizer = build_tokenizer()
    return save_tiny(build_sequence_classifier(tokenizer, spec, seed), tokenizer, output_dir)
