"""The reward contract: what every reward source gives every consumer (trainers, evaluators, callbacks).

A *reward source* is one of: a Python reward function (GRPO's ``f(prompts, completions, **kwargs)``), a judge or any
other callable with that signature, a reward-model path (a full checkpoint, a LoRA adapter folder as
``TwoStageRewardTrainer.save_model`` writes it, or a ``RewardEnsemble`` directory with its manifest), a loaded
``PreTrainedModel`` / ``PeftModel``, or a ``RewardEnsemble``. :func:`load_reward` turns any of them into a
:class:`RewardSource`, which gives:

* ``name``: the display name (metrics ``rewards/<name>/mean``, completion tables, parquet columns). A reward given
  as a path is named after the path's last folder, never after the base model named in an adapter's config (two
  LoRA reward models on one base would collide);
* ``source(prompts, completions, **kwargs) -> list[float]``: GRPO's calling convention;
* ``modules()``: the ``torch.nn.Module`` objects it scores with, and ``place(device, wrap=None)`` which moves them
  to ``device`` (or, for sources that score through any module, replaces each by ``wrap(module)``, e.g. a DeepSpeed
  inference engine);
* ``needs_calibration``: True while the source cannot score yet without a calibration (an uncalibrated ensemble
  with a variance/std penalty);
* ``value_init_model()``: what a PPO value model may be initialised from: ``(model, tokenizer)`` with ``model`` a
  plain, trainable ``*ForSequenceClassification`` copy with any adapter merged into it (head kept), or ``None``.

Consumers use these and nothing else: no probing of ``.model`` / ``.models`` / ``.peft_model``.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from pathlib import Path

import torch

from ..modeling.loading import quiet_loading_report

logger = logging.getLogger(__name__)

ADAPTER_CONFIG_NAME = "adapter_config.json"


class RewardSource:
    """The protocol (and a base class) every reward source implements; see the module docstring."""

    name: str = "reward"
    needs_calibration: bool = False

    def __call__(self, prompts, completions, **kwargs) -> list[float]:
        raise NotImplementedError

    def modules(self) -> list[torch.nn.Module]:
        """The modules this source scores with (empty for Python rewards)."""
        return []

    def place(self, device, wrap=None) -> None:
        """Move :meth:`modules` to ``device``. ``wrap`` (``module -> module``, e.g. a DeepSpeed inference engine)
        is applied by sources whose scoring goes only through the module's forward; others ignore it."""
        for module in self.modules():
            module.to(device)

    def value_init_model(self):
        """``(model, tokenizer)`` a value model may start from (an independent, trainable, merged copy), or None."""
        return None

    def content_identity(self):
        """What this source scores with, by content (settings fingerprints, ``utils.fingerprint.reward_identity``):
        the identity of the wrapped function, path, model or ensemble, not of this wrapper."""
        from ..utils.fingerprint import reward_identity

        return reward_identity(self._identity_target())

    def _identity_target(self):
        raise NotImplementedError(f"{type(self).__name__} does not say what it wraps (_identity_target).")

    # GRPO and TRL utilities read `__name__`
    @property
    def __name__(self) -> str:  # noqa: A003
        return self.name


def name_from_path(path) -> str:
    """A reward's display name from its path: the last folder (``"out/rm/final/"`` -> ``"final"``)."""
    text = str(path).rstrip("/\\")
    return os.path.basename(text) or text


def _model_name(model) -> str | None:
    """The last folder of a loaded model's ``config._name_or_path`` (None when it was not loaded from a path)."""
    path = getattr(getattr(model, "config", None), "_name_or_path", None)
    return name_from_path(path) if path else None


# ----------------------------------------------------------------------------------------------------------------
# Python functions and judges
# ----------------------------------------------------------------------------------------------------------------
class FunctionReward(RewardSource):
    """A Python reward function or judge ``f(prompts, completions, **kwargs) -> list[float]``.

    A callable that is itself a ``torch.nn.Module`` is placed like a model (its ``modules()`` is ``[fn]``).
    """

    def __init__(self, fn, name: str | None = None):
        if not callable(fn):
            raise TypeError(f"Unsupported reward function of type {type(fn).__name__}: not callable.")
        from trl.trainer.utils import get_callable_name

        self.fn = fn
        self.name = name or get_callable_name(fn)
        # like functools.wraps: settings fingerprints (utils.fingerprint.describe) and reprs see the function itself
        self.__wrapped__ = fn
        for attr in ("__module__", "__qualname__", "__doc__"):
            if hasattr(fn, attr):
                setattr(self, attr, getattr(fn, attr))

    def __call__(self, prompts, completions, **kwargs):
        return self.fn(prompts=prompts, completions=completions, **kwargs)

    def _identity_target(self):
        return self.fn

    def modules(self):
        return [self.fn] if isinstance(self.fn, torch.nn.Module) else []

    def __repr__(self) -> str:
        return f"FunctionReward({self.name!r})"


# ----------------------------------------------------------------------------------------------------------------
# Ensembles
# ----------------------------------------------------------------------------------------------------------------
class EnsembleReward(RewardSource):
    """A :class:`~trl_extras.rewards.ensemble.RewardEnsemble` behind the contract (scores its penalized reward)."""

    def _identity_target(self):
        return self.ensemble

    def __init__(self, ensemble, name: str | None = None):
        self.ensemble = ensemble
        directory = ensemble.metadata.get("directory")
        self.name = name or (name_from_path(directory) if directory else ensemble.__name__)
        self.processing_class = ensemble.processing_class

    def __call__(self, prompts, completions, **kwargs):
        return self.ensemble(prompts, completions, **kwargs)

    @property
    def needs_calibration(self) -> bool:
        return self.ensemble.needs_calibration

    def modules(self):
        return self.ensemble.modules()

    def place(self, device, wrap=None) -> None:
        # The LoRA layout switches adapters and runs the trunk and tails separately: no engine wrapping, and
        # partitioned (ZeRO-3) members cannot run outside one.
        if any(hasattr(p, "ds_id") for m in self.modules() for p in m.parameters()):
            raise NotImplementedError(
                "A RewardEnsemble whose members were loaded under DeepSpeed ZeRO-3 is partitioned and cannot score: "
                "use ZeRO-2 (recipes/accelerate/zero2.yaml) or DDP for ensemble rewards."
            )
        self.ensemble.to(device)

    def value_init_model(self):
        return self.ensemble.member_copy(0), self.processing_class

    def __repr__(self) -> str:
        return f"EnsembleReward({self.name!r}, {self.ensemble!r})"


# ----------------------------------------------------------------------------------------------------------------
# Reward models on disk
# ----------------------------------------------------------------------------------------------------------------
def is_adapter_dir(path) -> bool:
    """True for a PEFT adapter folder (``adapter_config.json``), e.g. a LoRA reward model's ``save_model``."""
    return (Path(path) / ADAPTER_CONFIG_NAME).is_file()


def is_ensemble_dir(path) -> bool:
    """True for a saved ``RewardEnsemble`` (a directory with its manifest)."""
    from .ensemble.io import MANIFEST_NAME

    return (Path(path) / MANIFEST_NAME).is_file()


def _adapter_state_keys(path) -> set[str]:
    """Parameter names stored in an adapter folder, without PEFT's ``base_model.model.`` prefix."""
    path = Path(path)
    keys: set[str] = set()
    if (path / "adapter_model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as f:
            keys = set(f.keys())
    elif (path / "adapter_model.bin").is_file():
        keys = set(torch.load(path / "adapter_model.bin", map_location="cpu", weights_only=True))
    return {k.removeprefix("base_model.model.") for k in keys}


def restored_by_adapter(missing_keys, adapter_keys) -> list[str]:
    """The base model's ``missing_keys`` that an adapter does NOT bring back (pure; names as ``state_dict`` keys).

    PEFT saves ``modules_to_save`` (a SEQ_CLS adapter's ``score`` head) under the module's own name, so a missing
    ``score.weight`` is restored when the adapter holds ``score.weight``.
    """
    return sorted(k for k in missing_keys if k not in adapter_keys)


def load_adapter_reward_model(path, model_init_kwargs: dict | None = None):
    """``(PeftModel, tokenizer)`` from a LoRA reward-model folder (``adapter_config.json`` + weights + tokenizer).

    The base named in the adapter config is loaded as ``AutoModelForSequenceClassification(num_labels=1)`` without
    transformers' load report: a causal-LM base has no ``score`` head, which the report calls "MISSING … newly
    initialized" although the adapter restores it. The keys are checked here instead: a head the adapter does not
    hold is reported as a warning (it really is random). Loading the folder with transformers' own PEFT integration
    (``from_pretrained(adapter_dir)``) would give a ``PreTrainedModel`` with adapter layers that PEFT does not see
    as a ``PeftModel`` (copies of it cannot be merged, and a second ``get_peft_model`` double-wraps it).
    """
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..utils.validation import check_model_path

    path = Path(path)
    adapter_config = json.loads((path / ADAPTER_CONFIG_NAME).read_text())
    base_path = adapter_config.get("base_model_name_or_path")
    if not base_path:
        raise ValueError(f"{path / ADAPTER_CONFIG_NAME} names no `base_model_name_or_path`; cannot load its base model.")
    check_model_path(base_path, f"base model of the reward adapter {path}")
    with quiet_loading_report():
        base, info = AutoModelForSequenceClassification.from_pretrained(
            base_path, num_labels=1, output_loading_info=True, **(model_init_kwargs or {})
        )
    model = PeftModel.from_pretrained(base, str(path))
    model.eval()
    not_restored = restored_by_adapter(info.get("missing_keys", []), _adapter_state_keys(path))
    if not_restored:
        logger.warning(
            "Reward adapter %s: %s of its base %s MISSING and not in the adapter: newly initialized (random). Was the "
            "adapter trained with task_type='SEQ_CLS' (which saves the score head)?",
            path, ", ".join(not_restored[:5]), base_path,
        )
    tok_dir = path if (path / "tokenizer_config.json").is_file() else base_path
    tokenizer = AutoTokenizer.from_pretrained(tok_dir)
    text_config = model.get_base_model().config.get_text_config()
    if text_config.pad_token_id is None:  # the adapter folder holds no model config: pool at the tokenizer's pad
        text_config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return model, tokenizer


def load_reward_model(path, model_init_kwargs: dict | None = None):
    """``(model, tokenizer)`` from a reward-model path: a full checkpoint or a LoRA adapter folder (a PeftModel)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..utils.validation import check_model_path

    check_model_path(str(path), "reward model path")
    if is_adapter_dir(path):
        return load_adapter_reward_model(path, model_init_kwargs)
    from ..modeling.checks import check_reward_checkpoint

    check_reward_checkpoint(path, "reward model path")  # a causal LM would get a random score head
    model = AutoModelForSequenceClassification.from_pretrained(str(path), num_labels=1, **(model_init_kwargs or {}))
    return model, AutoTokenizer.from_pretrained(str(path))


class ValueInitUnavailable(ValueError):
    """A reward model that cannot be turned into a value model exactly (quantized or partitioned with an adapter)."""


def value_init_copy(model, path: str | None = None, model_init_kwargs: dict | None = None):
    """A plain, trainable ``*ForSequenceClassification`` copy of a reward model (adapter merged, head kept).

    Quantized (4/8-bit) or DeepSpeed ZeRO-3-partitioned models cannot be copied/merged exactly: a full checkpoint
    is reloaded from ``path`` (with ``model_init_kwargs``); an adapter reward model in that state is an error.
    """
    from ..modeling.peft import is_peft_model, merged_copy

    if getattr(model, "_hf_peft_config_loaded", False) and not is_peft_model(model):
        raise ValueError(
            "This reward model carries adapters loaded by transformers' PEFT integration (from_pretrained of an "
            "adapter folder), which cannot be merged into a value model: pass the adapter folder's path as the "
            "reward (trl_extras loads it as a PeftModel) or a peft.PeftModel."
        )
    partitioned = any(hasattr(p, "ds_id") for p in model.parameters())
    base = model.get_base_model() if is_peft_model(model) else model
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False) or partitioned:
        if is_peft_model(model) or path is None:
            raise ValueInitUnavailable(
                "The reward model is quantized or partitioned (DeepSpeed ZeRO-3) and its adapter cannot be merged "
                "exactly into a value model: pass `value_model`, or set value_model_init='policy'."
            )
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, **(model_init_kwargs or {}))
    adapter = list(model.peft_config)[0] if is_peft_model(model) else None  # a K-LoRA model: its first adapter
    copied = merged_copy(model, adapter_name=adapter)
    copied.requires_grad_(True)
    copied.train()
    return copied


# ----------------------------------------------------------------------------------------------------------------
# The one entry point
# ----------------------------------------------------------------------------------------------------------------
def load_reward(spec, name: str | None = None, processing_class=None, model_init_kwargs: dict | None = None,
                batch_size: int = 64) -> RewardSource:  # fmt: skip
    """Any reward specification as a :class:`RewardSource`.

    Args:
        spec: a path (full reward model, LoRA adapter folder, or ``RewardEnsemble`` directory), a
            ``PreTrainedModel`` / ``PeftModel`` (sequence classification, ``num_labels=1``), a ``RewardEnsemble``,
            a callable with GRPO's signature (a reward function or judge), or a ``RewardSource`` (returned as is,
            renamed when ``name`` is given).
        name: display name; default the path's last folder, the model's ``_name_or_path`` last folder, the
            ensemble's directory, or the function's ``__name__``.
        processing_class: the reward model's tokenizer (default: loaded from the path or ``config._name_or_path``).
        model_init_kwargs: ``from_pretrained`` kwargs for models loaded from a path (dtype, quantization).
        batch_size: sequences per reward-model forward pass.
    """
    from transformers import PreTrainedModel

    from ..modeling.peft import is_peft_model
    from .ensemble import RewardEnsemble
    from .scoring import RewardModelScorer

    if isinstance(spec, RewardSource):
        if name is not None and name != spec.name:  # a renamed shallow copy (same models): the caller's object keeps its name
            spec = copy.copy(spec)
            spec.name = name
        return spec
    if isinstance(spec, os.PathLike):
        spec = str(spec)
    if isinstance(spec, str):
        if is_ensemble_dir(spec):
            return EnsembleReward(
                RewardEnsemble.from_pretrained(spec, batch_size=batch_size, model_init_kwargs=model_init_kwargs),
                name=name or name_from_path(spec),
            )
        return RewardModelScorer(spec, processing_class=processing_class, batch_size=batch_size,
                                 model_init_kwargs=model_init_kwargs, name=name)  # fmt: skip
    if isinstance(spec, PreTrainedModel) or is_peft_model(spec):
        return RewardModelScorer(spec, processing_class=processing_class, batch_size=batch_size, name=name)
    if isinstance(spec, RewardEnsemble):
        return EnsembleReward(spec, name=name)
    if callable(spec):
        return FunctionReward(spec, name=name)
    raise TypeError(
        f"Unsupported reward function of type {type(spec).__name__}: pass a reward-model path, a model, a RewardEnsemble or "
        "a callable f(prompts, completions, **kwargs) -> list[float]."
    )


def place_rewards(sources, device, wrap=None) -> None:
    """:meth:`RewardSource.place` for each of ``sources`` (an iterable; None entries skipped)."""
    for source in sources:
        if source is not None:
            source.place(device, wrap)


def as_grpo_reward_funcs(reward_funcs, reward_processing_classes=None, model_init_kwargs: dict | None = None):
    """``(reward_funcs, reward_processing_classes)`` for TRL's ``GRPOTrainer`` with every reward it cannot use as
    given turned into a :class:`RewardSource` (a callable it names by ``__name__`` and calls with GRPO's convention):
    paths (full, adapter folder, ensemble directory), ``PeftModel`` s, ``RewardEnsemble`` s. ``PreTrainedModel`` s and
    plain callables stay as TRL takes them. The sources' models are not placed: the trainer does that
    (:func:`place_rewards`) once its accelerator exists."""
    from ..modeling.peft import is_peft_model
    from .ensemble import RewardEnsemble

    if reward_funcs is None:
        return None, reward_processing_classes
    funcs = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
    procs = reward_processing_classes
    procs = list(procs) if isinstance(procs, (list, tuple)) else [procs] * len(funcs)
    if len(procs) != len(funcs):
        raise ValueError(f"{len(procs)} reward processing classes for {len(funcs)} reward functions.")
    out_funcs, out_procs = [], []
    for fn, proc in zip(funcs, procs):
        if isinstance(fn, (str, os.PathLike, RewardEnsemble, RewardSource)) or is_peft_model(fn):
            fn, proc = load_reward(fn, processing_class=proc, model_init_kwargs=model_init_kwargs), None
        out_funcs.append(fn)
        out_procs.append(proc)
    if reward_processing_classes is None or not isinstance(reward_processing_classes, (list, tuple)):
        out_procs = None if all(p is None for p in out_procs) else out_procs
    return out_funcs, out_procs
