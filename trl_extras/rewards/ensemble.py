"""Reward-model ensembles with an uncertainty penalty (Coste et al. 2023; the seed article's "subtract the variance").

Two layouts:

* ``"separate"``: K full reward-model checkpoints (paths or instances).
* ``"lora"``: K LoRA adapters (``task_type="SEQ_CLS"``, each with its own score head) on one frozen base. When the
  adapters only touch the last ``m`` decoder layers, the frozen trunk (embeddings + first ``L − m`` layers) runs
  once per batch and only the K adapted tails run K times — scoring costs about ``(L − m + K·m) / L`` of one
  member instead of ``K``. Layouts that do not allow it fall back to K full passes (same numbers, slower).

Scores go through :mod:`trl_extras.rewards.scoring`, i.e. tokenized exactly as TRL's ``RewardTrainer`` trained the
members (BOS kept, EOS appended for text, chat template for conversational data).

Common scale: Bradley–Terry rewards are shift-invariant (only differences r(chosen) − r(rejected) are trained), so
two members may agree on every ranking yet differ by a constant; the raw variance would then measure offsets, not
disagreement. :meth:`RewardEnsemble.calibrate` stores each member's mean/std on a reference set of completions;
afterwards every member's score is standardized before mean/var/std/min are taken. Uncalibrated ensembles work
(e.g. to compare with RewardTrainer margins) but warn when a variance/std penalty is used.
"""

from __future__ import annotations

import copy
import dataclasses
import gc
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..core.ensemble import PENALTY_MODES, ensemble_stats, penalize, standardize_members
from ..core.quantization import keep_4bit_layers_differentiable
from ..core.rollout import is_conversational_prompt
from ..modeling.peft import is_peft_model
from .pairs import check_pad_pooling
from .scoring import reward_model_batches, score_with_reward_model

logger = logging.getLogger(__name__)
MANIFEST_NAME = "ensemble_manifest.json"
MEMBER_MARKER = "member_complete.json"  # written after a member is saved (train_reward_ensemble reuses it)
MANIFEST_FORMAT = "trl_extras.reward_ensemble"


@dataclass
class EnsembleScores:
    """Scores of K members on N items.

    Attributes:
        members: ``(K, N)`` float32 member scores (standardized when the ensemble is calibrated).
        mean, var, std: ``(N,)`` reductions over members; ``var`` is the population variance (ddof=0).
        standardized: whether ``members`` are on the calibrated common scale.
    """

    members: torch.Tensor
    mean: torch.Tensor
    var: torch.Tensor
    std: torch.Tensor
    standardized: bool = False

    @classmethod
    def from_members(cls, members: torch.Tensor, standardized: bool = False) -> EnsembleScores:
        stats = ensemble_stats(members)
        return cls(members=members, mean=stats.mean, var=stats.var, std=stats.std, standardized=standardized)

    def penalized(self, mode: str = "variance", coef: float = 1.0) -> torch.Tensor:
        """``(N,)`` conservative reward: ``"variance"`` mean − coef·var (UWO; Coste et al. use coef 0.5 for
        best-of-n, 0.1 for PPO), ``"std"`` mean − coef·std, ``"min"`` worst member (WCO, coef unused), ``"mean"``."""
        return penalize(self.members, mode=mode, coef=coef)


# --------------------------------------------------------------------------------------------------------------
# Tokenization and pooling shared by both layouts
# --------------------------------------------------------------------------------------------------------------


def last_non_pad_index(input_ids: torch.Tensor, pad_token_id: int | None) -> torch.Tensor:
    """``(B,)`` index of the rightmost non-pad token of ``input_ids`` ``(B, T)`` — the position
    transformers' ``*ForSequenceClassification`` pools at (``-1`` → ``T − 1`` when there is no pad id)."""
    if pad_token_id is None:
        return torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, dtype=torch.long, device=input_ids.device)
    non_pad = (input_ids != pad_token_id).to(torch.long)
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    return (positions * non_pad).argmax(-1)


def _pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _check_same_vocab(tokenizers: list, names: list[str]) -> None:
    reference = tokenizers[0].get_vocab()
    for tok, name in zip(tokenizers[1:], names[1:]):
        vocab = tok.get_vocab()
        if vocab != reference:
            diff = sorted(set(vocab.items()) ^ set(reference.items()))[:3]
            raise ValueError(
                f"Ensemble member {name!r} uses a different tokenizer than member {names[0]!r} "
                f"(vocabularies differ: {len(vocab)} vs {len(reference)} tokens, e.g. {diff}). All members must "
                "share one tokenizer so that they score the same token ids."
            )


# --------------------------------------------------------------------------------------------------------------
# K LoRA adapters on one base: fast "trunk once, K tails" scoring
# --------------------------------------------------------------------------------------------------------------


def _decoder_and_head(peft_model):
    """The inner decoder (module with ``.layers``) and score head of a PEFT sequence-classification model."""
    base = peft_model.get_base_model()
    inner = getattr(base, getattr(base, "base_model_prefix", "model"), None)
    layers = getattr(inner, "layers", None)
    head = getattr(base, "score", None)
    if not isinstance(layers, torch.nn.ModuleList) or head is None:
        return None, None, None
    return inner, layers, head


def lora_tail_start(peft_model, adapter_names: list[str]) -> int | None:
    """First decoder layer any adapter touches, when every LoRA module sits in ``layers[start:]`` (plus the score
    head); ``None`` when the layout does not allow running the trunk once (adapters on embeddings or early
    layers, non-LoRA tuners, mixed attention layer types, unknown architecture)."""
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper

    if any(str(getattr(peft_model.peft_config[n], "peft_type", "")).split(".")[-1] != "LORA" for n in adapter_names):
        return None
    inner, layers, head = _decoder_and_head(peft_model)
    if inner is None:
        return None
    # Models mixing sliding-window and full attention index per-layer mask types by position: not safe to split.
    layer_types = getattr(peft_model.get_base_model().config.get_text_config(), "layer_types", None)
    if layer_types and len(set(layer_types)) > 1:
        return None
    layer_of = {id(m): i for i, layer in enumerate(layers) for m in layer.modules()}
    head_modules = {id(m) for m in head.modules()}
    start = len(layers)
    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            if id(module) not in layer_of:
                return None
            start = min(start, layer_of[id(module)])
        elif isinstance(module, ModulesToSaveWrapper) and id(module) not in head_modules:
            return None
    return start if 0 < start < len(layers) else None


@torch.no_grad()
def lora_tail_scores(
    peft_model, adapter_names, input_ids, attention_mask, tail_start: int, pad_token_id
) -> torch.Tensor:
    """``(K, B)`` scores of K adapters: the frozen layers ``[0, tail_start)`` run once, each adapter's layers
    ``[tail_start, L)`` + final norm + its score head run once per adapter.

    Relies on the decoder accepting ``inputs_embeds`` and iterating ``self.layers`` (true of Llama-family models);
    positions default to ``arange(T)`` in both halves, as in the single full pass on right-padded input.
    """
    inner, layers, head = _decoder_and_head(peft_model)
    all_layers = list(layers)
    captured = {}

    def keep_output(module, args, output):
        captured["hidden"] = output[0] if isinstance(output, tuple) else output

    hook = all_layers[tail_start - 1].register_forward_hook(keep_output)
    previous = peft_model.active_adapter
    try:
        inner.layers = torch.nn.ModuleList(all_layers[:tail_start])
        inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
        hook.remove()
        hidden = captured["hidden"]
        rows = torch.arange(input_ids.shape[0], device=input_ids.device)
        pooled_at = last_non_pad_index(input_ids, pad_token_id)
        inner.layers = torch.nn.ModuleList(all_layers[tail_start:])
        scores = []
        for name in adapter_names:
            peft_model.set_adapter(name)
            out = inner(inputs_embeds=hidden, attention_mask=attention_mask, use_cache=False).last_hidden_state
            scores.append(head(out[rows, pooled_at])[:, 0].float())
    finally:
        hook.remove()
        inner.layers = layers
        peft_model.set_adapter(previous)
    return torch.stack(scores)


@torch.no_grad()
def lora_full_pass_scores(peft_model, adapter_names, input_ids, attention_mask) -> torch.Tensor:
    """``(K, B)`` scores of K adapters by K complete forward passes (the reference the fast path must match)."""
    previous = peft_model.active_adapter
    try:
        scores = []
        for name in adapter_names:
            peft_model.set_adapter(name)
            scores.append(peft_model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float())
    finally:
        peft_model.set_adapter(previous)
    return torch.stack(scores)


# --------------------------------------------------------------------------------------------------------------
# The ensemble
# --------------------------------------------------------------------------------------------------------------


class RewardEnsemble:
    """K Bradley–Terry reward models scored together; a TRL GRPO/RLOO reward function as is.

    Args:
        models: a list of >= 2 reward models — paths or sequence-classification instances (``num_labels=1``),
            the ``"separate"`` layout — or one ``PeftModel`` holding >= 2 LoRA adapters (``"lora"`` layout; all its
            adapters are members, in ``peft_config`` order).
        processing_class: the shared tokenizer (or one per member). When omitted each member's tokenizer is
            loaded from its path (or ``config._name_or_path``); all must have the same vocabulary.
        penalty: what ``__call__`` returns: ``"variance"`` (mean − coef·var, UWO), ``"std"``, ``"min"`` (WCO) or
            ``"mean"``.
        coef: λ of the penalty. Coste et al. 2023: 0.5 for best-of-n, 0.1 for PPO (with standardized members).
        batch_size: sequences per forward pass.
        calibration: ``{"mean": [K floats], "std": [K floats]}`` from an earlier :meth:`calibrate`.
        model_init_kwargs: extra ``from_pretrained`` kwargs for members given as paths (dtype, quantization).
        allow_uncalibrated: use the ensemble as a reward (``__call__``) with the ``variance``/``std`` penalty before
            it is calibrated. Off by default: uncalibrated Bradley–Terry members differ by arbitrary offsets, so the
            penalty would measure those instead of disagreement (an error, not a warning).

    Scores are on CPU as float32. Members stay on the device they are on.
    """

    def __init__(
        self,
        models,
        processing_class=None,
        penalty: str = "variance",
        coef: float = 0.1,
        batch_size: int = 64,
        calibration: dict | None = None,
        model_init_kwargs: dict | None = None,
        allow_uncalibrated: bool = False,
    ):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if penalty not in PENALTY_MODES:
            raise ValueError(f"Unknown penalty {penalty!r}; choose one of {PENALTY_MODES}.")
        if float(coef) < 0:
            raise ValueError(f"coef must be >= 0, got {coef}.")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.penalty, self.coef, self.batch_size = penalty, float(coef), int(batch_size)
        self.allow_uncalibrated = bool(allow_uncalibrated)
        self.metadata: dict = {}

        if is_peft_model(models):
            self.layout = "lora"
            self.peft_model = models
            self.adapter_names = list(models.peft_config)
            self.models = []
            if len(self.adapter_names) < 2:
                raise ValueError(
                    f"A LoRA ensemble needs >= 2 adapters on the base model, found {self.adapter_names}; a one-member "
                    "ensemble has no disagreement to measure."
                )
            self.member_names = list(self.adapter_names)
            config = models.get_base_model().config
            if processing_class is None:
                name = getattr(config, "_name_or_path", None)
                if not name:
                    raise ValueError(
                        "Pass `processing_class` for a LoRA ensemble whose base was not loaded from a path."
                    )
                processing_class = AutoTokenizer.from_pretrained(name)
            check_pad_pooling(models.get_base_model(), processing_class)
            self.processing_class = processing_class
            self.peft_model.eval()
            self.tail_start = lora_tail_start(models, self.adapter_names)
            self._fast_path_verified = False
        else:
            if isinstance(models, (str, os.PathLike)) or not isinstance(models, (list, tuple)):
                models = [models]
            if len(models) < 2:
                raise ValueError(
                    f"A reward ensemble needs at least 2 members, got {len(models)}: with one member the variance is "
                    "0 for every input and the penalty silently does nothing. Use RewardModelScorer for one model."
                )
            self.layout = "separate"
            self.peft_model, self.adapter_names, self.tail_start = None, [], None
            procs = processing_class if isinstance(processing_class, (list, tuple)) else None
            if procs is not None and len(procs) != len(models):
                raise ValueError(f"{len(procs)} processing classes for {len(models)} ensemble members.")
            loaded, tokenizers, names = [], [], []
            for i, model in enumerate(models):
                proc = procs[i] if procs is not None else processing_class
                if isinstance(model, (str, os.PathLike)):
                    path = str(model)
                    model = AutoModelForSequenceClassification.from_pretrained(
                        path, num_labels=1, **(model_init_kwargs or {})
                    )
                    if proc is None:
                        proc = AutoTokenizer.from_pretrained(path)
                if getattr(model.config, "num_labels", 1) != 1:
                    raise ValueError(
                        f"Ensemble member {i} has num_labels={model.config.num_labels}; reward models need 1."
                    )
                if proc is None:
                    name = getattr(model.config, "_name_or_path", None)
                    if not name:
                        raise ValueError(
                            f"Ensemble member {i} is an in-memory model without a path: pass `processing_class`."
                        )
                    proc = AutoTokenizer.from_pretrained(name)
                check_pad_pooling(model, proc)
                model.eval()
                loaded.append(model)
                tokenizers.append(proc)
                names.append(getattr(model.config, "_name_or_path", None) or f"member_{i}")
            _check_same_vocab(tokenizers, [f"{i}:{n}" for i, n in enumerate(names)])
            self.models = loaded
            self.member_names = names
            self.processing_class = tokenizers[0]
        self.calibration = None
        if calibration is not None:
            self.set_calibration(calibration["mean"], calibration["std"])
        self._warned_uncalibrated = False
        # TRL utilities (telemetry, reward-model detection) read `.config`; GRPO names metrics by `__name__`.
        self.config = self.peft_model.get_base_model().config if self.layout == "lora" else self.models[0].config
        self.__name__ = f"reward_ensemble_{self.penalty}"

    # ----------------------------------------------------------------------------------------------------------
    @property
    def num_members(self) -> int:
        return len(self.member_names)

    def __len__(self) -> int:
        return self.num_members

    @property
    def uses_fast_path(self) -> bool:
        """True when a LoRA ensemble runs the frozen trunk once and K adapted tails."""
        return self.layout == "lora" and self.tail_start is not None

    @staticmethod
    def _check_inputs(prompts, completions) -> tuple[list, list]:
        if isinstance(prompts, (str, dict)) or isinstance(completions, (str, dict)):
            raise TypeError("prompts and completions must be sequences (one entry per item), not a single item.")
        prompts, completions = list(prompts), list(completions)  # also datasets' lazy Column objects
        if len(prompts) != len(completions):
            raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions.")
        return prompts, completions

    @torch.no_grad()
    def raw_scores(self, prompts: list, completions: list) -> torch.Tensor:
        """``(K, N)`` float32 member scores before calibration (each member's own Bradley–Terry scale)."""
        prompts, completions = self._check_inputs(prompts, completions)
        if self.layout == "separate":
            rows = [
                score_with_reward_model(m, self.processing_class, prompts, completions, self.batch_size)
                for m in self.models
            ]
            members = torch.stack(rows) if rows else torch.zeros(0, len(prompts))
        else:
            pad_id = _pad_id(self.processing_class)
            pool_pad = self.config.get_text_config().pad_token_id
            device = next(self.peft_model.parameters()).device
            chunks = []
            for input_ids, attention_mask in reward_model_batches(
                self.processing_class, prompts, completions, self.batch_size, pad_id
            ):
                input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
                if self.uses_fast_path:
                    scores = lora_tail_scores(
                        self.peft_model, self.adapter_names, input_ids, attention_mask, self.tail_start, pool_pad
                    )
                    if not self._fast_path_verified:
                        self._verify_fast_path(scores, input_ids, attention_mask)
                else:
                    scores = lora_full_pass_scores(self.peft_model, self.adapter_names, input_ids, attention_mask)
                chunks.append(scores.cpu())
            members = torch.cat(chunks, dim=1) if chunks else torch.zeros(self.num_members, 0)
        bad = ~torch.isfinite(members)
        if bad.any():
            k, n = bad.nonzero()[0].tolist()
            raise ValueError(
                f"Ensemble member {self.member_names[k]!r} returned a non-finite score ({members[k, n].item()}) for "
                f"item {n}; check the model's weights and dtype."
            )
        return members

    def _verify_fast_path(self, fast: torch.Tensor, input_ids, attention_mask) -> None:
        """Once per ensemble: the trunk-once path must match K full passes on a few rows, else fall back."""
        rows = slice(0, min(4, input_ids.shape[0]))
        slow = lora_full_pass_scores(self.peft_model, self.adapter_names, input_ids[rows], attention_mask[rows])
        if not torch.allclose(fast[:, rows], slow, rtol=1e-3, atol=1e-3):
            warnings.warn(
                "The LoRA ensemble's trunk-once scoring disagrees with full passes for this architecture; falling "
                "back to K full forward passes.",
                stacklevel=3,
            )
            self.tail_start = None
            fast.copy_(lora_full_pass_scores(self.peft_model, self.adapter_names, input_ids, attention_mask))
        self._fast_path_verified = True

    def score(self, prompts: list, completions: list) -> EnsembleScores:
        """Score N (prompt, completion) pairs (text, or conversational message lists) with every member."""
        members = self.raw_scores(prompts, completions)
        calibrated = self.calibration is not None
        if calibrated:
            members = standardize_members(
                members, torch.tensor(self.calibration["mean"]), torch.tensor(self.calibration["std"])
            )
        return EnsembleScores.from_members(members, standardized=calibrated)

    def set_calibration(self, mean, std) -> None:
        mean, std = [float(x) for x in mean], [float(x) for x in std]
        if len(mean) != self.num_members or len(std) != self.num_members:
            raise ValueError(f"Calibration for {len(mean)} members, ensemble has {self.num_members}.")
        if not all(s > 0 and s == s for s in std):
            raise ValueError(f"Calibration std must be > 0 for every member, got {std}.")
        self.calibration = {"mean": mean, "std": std}

    def calibrate(self, prompts: list, completions: list) -> dict:
        """Measure each member's mean and (population) std on a reference set of completions — typically samples
        of the policy being optimised or the reward-model training completions — and standardize by them from now
        on. Returns (and stores) ``{"mean": [K], "std": [K], "num_items": N}``."""
        if len(prompts) < 2:
            raise ValueError(f"Calibration needs at least 2 completions, got {len(prompts)}.")
        raw = self.raw_scores(prompts, completions)
        std = raw.std(dim=1, unbiased=False)
        # Near-zero spread (float noise on identical inputs) would blow standardized scores up: refuse it.
        degenerate = std <= 1e-6 * raw.abs().mean(dim=1).clamp(min=1.0)
        if degenerate.any():
            k = int(degenerate.nonzero()[0])
            raise ValueError(
                f"Member {self.member_names[k]!r} gives the same score to all {len(prompts)} calibration completions; "
                "use a more varied reference set."
            )
        self.set_calibration(raw.mean(dim=1).tolist(), std.tolist())
        self.calibration["num_items"] = len(prompts)
        return dict(self.calibration)

    def __call__(self, prompts: list, completions: list, **kwargs) -> list[float]:
        """GRPO/RLOO reward-function protocol: the penalized reward per completion. Extra kwargs (dataset columns,
        ``completion_ids``, ``trainer_state``) are ignored; ``log_metric(name, value)`` when given receives the
        batch's mean ensemble reward and mean member std."""
        if self.calibration is None and self.penalty in ("variance", "std") and not self.allow_uncalibrated:
            raise ValueError(
                f"RewardEnsemble (penalty={self.penalty!r}) is not calibrated: Bradley–Terry rewards are "
                "shift-invariant, so the penalty would measure the members' offsets, not their disagreement. Call "
                "`calibrate()` on reference completions (train_reward_ensemble does, unless its calibration was "
                "interrupted or calibration_size=None), or pass allow_uncalibrated=True to use it anyway."
            )
        if self.calibration is None and self.penalty in ("variance", "std") and not self._warned_uncalibrated:
            warnings.warn(
                "RewardEnsemble is not calibrated: Bradley–Terry rewards are shift-invariant, so the variance "
                "penalty measures the members' offsets as well as their disagreement. Call `calibrate()` on "
                "reference completions first.",
                stacklevel=2,
            )
            self._warned_uncalibrated = True
        scores = self.score(list(prompts), list(completions))
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            log_metric("ensemble/mean", float(scores.mean.mean()))
            log_metric("ensemble/std", float(scores.std.mean()))
        return scores.penalized(self.penalty, self.coef).tolist()

    def to(self, device):
        """Move every member (or the shared base with its adapters) to ``device``."""
        for m in self.models:
            m.to(device)
        if self.peft_model is not None:
            self.peft_model.to(device)
        return self

    # ----------------------------------------------------------------------------------------------------------
    # Persistence
    # ----------------------------------------------------------------------------------------------------------
    def _manifest(self, members: list[str], base_model: str | None) -> dict:
        return {
            "format": MANIFEST_FORMAT,
            "version": 1,
            "layout": self.layout,
            "members": members,
            "adapter_names": list(self.adapter_names),
            "base_model": base_model,
            "pad_token_id": self.config.get_text_config().pad_token_id,
            "tail_start": self.tail_start,
            "calibration": self.calibration,
            "penalty": self.penalty,
            "coef": self.coef,
            **{
                k: v
                for k, v in self.metadata.items()
                if k not in ("format", "version", "layout", "members", "directory", "base_model")
            },
        }

    def save_pretrained(self, directory: str | os.PathLike, base_model_path: str | None = None) -> str:
        """Write the members (separate checkpoints, or the K adapters plus the tokenizer), the calibration and a
        ``ensemble_manifest.json``. A LoRA ensemble references its base by path (``base_model_path`` or the
        base's ``config._name_or_path``, which must exist on disk)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.layout == "separate":
            members = []
            for i, model in enumerate(self.models):
                model.save_pretrained(directory / f"member_{i}")
                self.processing_class.save_pretrained(directory / f"member_{i}")
                members.append(f"member_{i}")
            base = None
        else:
            base = base_model_path or self.metadata.get("base_model") or self.config._name_or_path
            if not base or not Path(base).exists():
                raise ValueError(
                    f"The LoRA ensemble's base model {base!r} is not on disk; save it and pass `base_model_path`."
                )
            base = str(Path(base).resolve())
            members = []
            for name in self.adapter_names:
                # PEFT writes a non-default adapter into <dir>/<name>/.
                self.peft_model.save_pretrained(directory / "adapters", selected_adapters=[name])
                members.append(f"adapters/{name}")
            self.processing_class.save_pretrained(directory / "tokenizer")
        manifest = self._manifest(members, base)
        from ..utils.atomic import atomic_write_json, fsync_tree

        fsync_tree(directory)
        atomic_write_json(directory / MANIFEST_NAME, manifest)  # last: a directory with a manifest is complete
        return str(directory)

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike,
        penalty: str | None = None,
        coef: float | None = None,
        batch_size: int = 64,
        model_init_kwargs: dict | None = None,
        device: str | torch.device | None = None,
        allow_uncalibrated: bool = False,
    ) -> RewardEnsemble:
        """Load an ensemble written by :meth:`save_pretrained` or :func:`train_reward_ensemble`."""

        from ..utils.atomic import read_json

        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if not path.exists():
            raise FileNotFoundError(
                f"No {MANIFEST_NAME} in {directory}: not a saved RewardEnsemble (an ensemble whose training or "
                "calibration was interrupted has none: rerun it, finished members are reused)."
            )
        manifest = read_json(path, what="Reward-ensemble manifest")
        allow_uncalibrated = allow_uncalibrated or bool(manifest.get("allow_uncalibrated", False))
        return cls._from_manifest(directory, manifest, penalty, coef, batch_size, model_init_kwargs, device,
                                  allow_uncalibrated)  # fmt: skip

    @classmethod
    def _from_manifest(cls, directory, manifest, penalty, coef, batch_size, model_init_kwargs, device,
                       allow_uncalibrated=False) -> RewardEnsemble:  # fmt: skip
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = Path(directory)
        path = directory / MANIFEST_NAME
        if manifest.get("format") != MANIFEST_FORMAT:
            raise ValueError(f"{path} is not a RewardEnsemble manifest (format={manifest.get('format')!r}).")
        penalty = penalty or manifest.get("penalty", "variance")
        coef = manifest.get("coef", 0.1) if coef is None else coef
        kwargs = dict(model_init_kwargs or {})
        if manifest["layout"] == "separate":
            models = []
            for rel in manifest["members"]:
                m = AutoModelForSequenceClassification.from_pretrained(directory / rel, num_labels=1, **kwargs)
                models.append(m.to(device) if device is not None else m)
            procs = [AutoTokenizer.from_pretrained(directory / rel) for rel in manifest["members"]]
            ensemble = cls(
                models,
                procs,
                penalty=penalty,
                coef=coef,
                batch_size=batch_size,
                calibration=manifest.get("calibration"),
                allow_uncalibrated=allow_uncalibrated,
            )
        elif manifest["layout"] == "lora":
            from peft import PeftModel

            base = AutoModelForSequenceClassification.from_pretrained(manifest["base_model"], num_labels=1, **kwargs)
            if manifest.get("pad_token_id") is not None:
                base.config.get_text_config().pad_token_id = manifest["pad_token_id"]
            names = manifest["adapter_names"] or [Path(rel).name for rel in manifest["members"]]
            peft_model = PeftModel.from_pretrained(base, directory / manifest["members"][0], adapter_name=names[0])
            for name, rel in zip(names[1:], manifest["members"][1:]):
                peft_model.load_adapter(directory / rel, adapter_name=name)
            if device is not None:
                peft_model.to(device)
            tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
            ensemble = cls(
                peft_model,
                tokenizer,
                penalty=penalty,
                coef=coef,
                batch_size=batch_size,
                calibration=manifest.get("calibration"),
                allow_uncalibrated=allow_uncalibrated,
            )
        else:
            raise ValueError(f"Unknown ensemble layout {manifest['layout']!r} in {path}.")
        ensemble.metadata = {
            k: v
            for k, v in manifest.items()
            if k not in ("calibration", "penalty", "coef", "adapter_names", "pad_token_id", "tail_start", "members")
        }
        ensemble.metadata["directory"] = str(directory)
        return ensemble

    def __repr__(self) -> str:
        fast = f", trunk once + tails from layer {self.tail_start}" if self.uses_fast_path else ""
        return (
            f"RewardEnsemble(K={self.num_members}, layout={self.layout!r}{fast}, penalty={self.penalty!r}, "
            f"coef={self.coef}, calibrated={self.calibration is not None})"
        )


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


def _reference_completions(dataset, limit: int):
    """(prompts, completions) of the chosen and rejected answers of up to ``limit`` preference pairs."""
    n = min(limit, len(dataset))
    rows = dataset.select(range(n))
    completions = list(rows["chosen"]) + list(rows["rejected"])
    if "prompt" in rows.column_names:
        prompts = list(rows["prompt"]) * 2
    else:  # implicit prompt: the prompt is part of chosen/rejected
        empty = [] if is_conversational_prompt(completions[0]) else ""
        prompts = [empty] * len(completions)
    return prompts, completions


def train_reward_ensemble(
    model,
    train_dataset,
    args=None,
    k: int = 4,
    processing_class=None,
    peft_config=None,
    bootstrap: bool = False,
    seeds: list[int] | None = None,
    output_dir: str | os.PathLike | None = None,
    lora_last_layers: int | None = None,
    eval_dataset=None,
    calibration_size: int | None = 512,
    penalty: str = "variance",
    coef: float = 0.1,
    callbacks=None,
    quantization_config=None,
    progress: bool = True,
) -> RewardEnsemble:
    """Train K reward models with TRL's ``RewardTrainer`` and save them as a :class:`RewardEnsemble`.

    Members differ by seed: ``RewardTrainer`` seeds the random score head it adds to a causal-LM checkpoint (the
    seed article's recipe: RM = SFT model + new head) and the data order; with ``bootstrap=True`` each member also
    trains on its own resample (with replacement) of ``train_dataset`` (Coste et al. found plain seeds better: a
    bootstrap sample holds ~63% distinct pairs).

    Args:
        model: path of the base model (causal LM or sequence classifier), or an instance (saved to
            ``output_dir/base`` first, since every member starts from the same weights).
        train_dataset: preference pairs in any form ``RewardTrainer`` accepts.
        args: a ``trl.RewardConfig``; each member gets a copy with its own ``seed``/``data_seed``/``output_dir``.
        k: number of members (>= 2).
        peft_config: a ``LoraConfig(task_type="SEQ_CLS")`` → the ``"lora"`` layout: K adapters (each with its own
            score head) on one frozen base; otherwise K full checkpoints.
        seeds: one seed per member (default ``args.seed + i``).
        output_dir: where the ensemble is written (default ``args.output_dir``).
        lora_last_layers: put the adapters on the last ``m`` decoder layers only (sets ``layers_to_transform``),
            which enables trunk-once scoring.
        calibration_size: calibrate on the chosen and rejected completions of this many training pairs (None: skip).
        penalty, coef: the ensemble's default penalty for ``__call__``.
        quantization_config: e.g. ``trl.get_quantization_config(model_args)`` for QLoRA members (passed to
            ``RewardTrainer``; the returned ensemble reloads the base with it).

    Returns:
        The saved ensemble, reloaded from ``output_dir`` (manifest: members, layout, seeds, calibration).
    """
    import numpy as np
    from transformers import AutoConfig, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from ..utils.progress import progress_bar

    if k < 2:
        raise ValueError(f"An ensemble needs k >= 2 members, got k={k}.")
    if args is None:
        args = RewardConfig(output_dir=str(output_dir or "reward_ensemble"))
    output_dir = Path(output_dir or args.output_dir)
    seeds = [args.seed + i for i in range(k)] if seeds is None else [int(s) for s in seeds]
    if len(seeds) != k or len(set(seeds)) != k:
        raise ValueError(f"Need {k} distinct seeds, got {seeds}.")
    if lora_last_layers is not None and peft_config is None:
        raise ValueError("`lora_last_layers` needs a `peft_config` (LoraConfig with task_type='SEQ_CLS').")
    if peft_config is not None and str(getattr(peft_config, "task_type", "")).split(".")[-1] != "SEQ_CLS":
        raise ValueError(
            "The LoRA ensemble needs `task_type='SEQ_CLS'` in the peft config, so each adapter trains and saves its "
            f"own score head; got task_type={getattr(peft_config, 'task_type', None)!r}."
        )
    if len(train_dataset) == 0:
        raise ValueError("train_dataset is empty.")
    from .pairs import validate_preference_dataset

    validate_preference_dataset(train_dataset, "train_dataset")
    validate_preference_dataset(eval_dataset, "eval_dataset")
    output_dir.mkdir(parents=True, exist_ok=True)

    if not isinstance(model, (str, os.PathLike)):
        if processing_class is None:
            raise ValueError("Pass `processing_class` when `model` is an instance.")
        model.save_pretrained(output_dir / "base")
        processing_class.save_pretrained(output_dir / "base")
        model = output_dir / "base"
    model_path = str(Path(model).resolve()) if Path(model).exists() else str(model)
    if processing_class is None:
        processing_class = AutoTokenizer.from_pretrained(model_path)

    layout = "separate" if peft_config is None else "lora"
    if lora_last_layers is not None:
        num_layers = AutoConfig.from_pretrained(model_path).get_text_config().num_hidden_layers
        if not 1 <= lora_last_layers <= num_layers:
            raise ValueError(f"lora_last_layers must be in [1, {num_layers}], got {lora_last_layers}.")
        peft_config = copy.deepcopy(peft_config)
        peft_config.layers_to_transform = list(range(num_layers - lora_last_layers, num_layers))

    from ..utils.atomic import atomic_write_json, fsync_tree, kill_point
    from ..utils.fingerprint import settings_fingerprint

    # The manifest is written last (after calibration): remove a stale one first, so an interrupted rerun never
    # leaves a directory that loads as a finished ensemble.
    (output_dir / MANIFEST_NAME).unlink(missing_ok=True)
    shared_settings = settings_fingerprint(
        model=model_path, layout=layout, data=train_dataset, bootstrap=bootstrap, peft=peft_config,
        learning_rate=args.learning_rate, num_train_epochs=args.num_train_epochs, max_steps=args.max_steps,
        per_device_train_batch_size=args.per_device_train_batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps, max_length=getattr(args, "max_length", None),
    )
    pad_token_id = None
    members, histories = [], []
    for i, seed in enumerate(progress_bar(seeds, desc="reward ensemble members", enabled=progress)):
        rel = f"member_{i}" if layout == "separate" else f"adapters/member_{i}"
        marker = output_dir / rel / MEMBER_MARKER
        settings = {**shared_settings, "seed": seed}
        if marker.exists():  # a member finished by an earlier (interrupted) run with the same settings: reuse it
            try:
                done = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                done = {}
            if done.get("settings") == settings:
                logger.info("Reward ensemble member %d: reusing the finished member in %s", i, output_dir / rel)
                histories.append(done.get("metrics", {}))
                members.append(rel)
                pad_token_id = done.get("pad_token_id", pad_token_id)
                continue
            marker.unlink()
        member_args = dataclasses.replace(
            args, seed=seed, data_seed=seed, output_dir=str(output_dir / "runs" / f"member_{i}")
        )
        data = train_dataset
        if bootstrap:
            rng = np.random.default_rng(seed)
            data = train_dataset.select(rng.integers(0, len(train_dataset), size=len(train_dataset)).tolist())
        trainer = RewardTrainer(
            model=model_path,
            args=member_args,
            train_dataset=data,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            peft_config=copy.deepcopy(peft_config),
            callbacks=callbacks,
            quantization_config=quantization_config,
        )
        keep_4bit_layers_differentiable(trainer.model)  # evaluations run no-grad forwards between training steps
        trainer.train()
        if layout == "separate":
            trainer.save_model(str(output_dir / rel))
        else:
            trainer.model.save_pretrained(str(output_dir / rel))
            # The base's config must carry the pad id the member pooled with.
            pad_token_id = trainer.model.config.get_text_config().pad_token_id
        metrics = {key: v for key, v in trainer.state.log_history[-1].items() if isinstance(v, (int, float))}
        fsync_tree(output_dir / rel)
        atomic_write_json(marker, {"settings": settings, "metrics": metrics, "pad_token_id": pad_token_id})
        kill_point(f"ensemble_member_saved:{i}")
        histories.append(metrics)
        members.append(rel)
        del trainer
        gc.collect()

    if layout == "lora":
        processing_class.save_pretrained(output_dir / "tokenizer")
    else:
        pad_token_id = None
    manifest = {
        "format": MANIFEST_FORMAT,
        "version": 1,
        "layout": layout,
        "members": members,
        "adapter_names": [Path(m).name for m in members] if layout == "lora" else [],
        "base_model": model_path,
        "pad_token_id": pad_token_id,
        "calibration": None,
        "penalty": penalty,
        "coef": coef,
        "seeds": seeds,
        "bootstrap": bootstrap,
        "lora_last_layers": lora_last_layers,
        "train_metrics": histories,
        # calibration_size=None is the user's explicit opt-out: later loads may use the ensemble uncalibrated
        "allow_uncalibrated": not calibration_size,
    }
    load_kwargs = _load_kwargs(args)
    if quantization_config is not None:
        load_kwargs["quantization_config"] = quantization_config
    ensemble = RewardEnsemble._from_manifest(output_dir, manifest, None, None, 64, load_kwargs, None,
                                             allow_uncalibrated=not calibration_size)  # fmt: skip
    if calibration_size:
        prompts, completions = _reference_completions(train_dataset, calibration_size)
        kill_point("ensemble_calibration")
        manifest["calibration"] = ensemble.calibrate(prompts, completions)
    fsync_tree(output_dir)
    atomic_write_json(output_dir / MANIFEST_NAME, manifest)  # last: the directory is now a complete ensemble
    return ensemble


def _load_kwargs(args) -> dict:
    """``from_pretrained`` kwargs to reload members as they were trained (dtype / quantization)."""
    kwargs = dict(getattr(args, "model_init_kwargs", None) or {})
    kwargs.pop("num_labels", None)
    return kwargs


def interrupted_ensemble_dir(path: str | os.PathLike) -> bool:
    """True for a directory with ensemble members but no manifest (training or calibration was interrupted)."""
    path = Path(path)
    if not path.is_dir() or (path / MANIFEST_NAME).exists():
        return False
    return any(path.glob(f"member_*/{MEMBER_MARKER}")) or any(path.glob(f"adapters/member_*/{MEMBER_MARKER}"))
