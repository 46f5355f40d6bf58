"""``RewardEnsemble``: reward-model ensembles with an uncertainty penalty (Coste et al. 2023; the article's "subtract the variance").

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

import os
import warnings

import torch

from ...core.ensemble import ENSEMBLE_PENALTIES, PENALTY_MODES, standardize_members
from ...modeling.peft import is_peft_model
from ..pairs import check_pad_pooling
from ..scoring import reward_model_batches, score_with_reward_model
from .io import ensemble_from_manifest, read_manifest, save_ensemble
from .lora_tail import lora_full_pass_scores, lora_tail_scores, lora_tail_start
from .scores import EnsembleScores


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
        # a penalty that measures disagreement needs calibrated members (core.ensemble.ENSEMBLE_PENALTIES)
        uncalibrated = self.needs_calibration
        if uncalibrated and not self.allow_uncalibrated:
            raise ValueError(
                f"RewardEnsemble (penalty={self.penalty!r}) is not calibrated: Bradley–Terry rewards are "
                "shift-invariant, so the penalty would measure the members' offsets, not their disagreement. Call "
                "`calibrate()` on reference completions (train_reward_ensemble does, unless its calibration was "
                "interrupted or calibration_size=None), or pass allow_uncalibrated=True to use it anyway."
            )
        if uncalibrated and not self._warned_uncalibrated:
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

    @property
    def needs_calibration(self) -> bool:
        """True while a penalty that declares ``needs_calibration`` (``core.ensemble.ENSEMBLE_PENALTIES``: variance,
        std) has no calibration (``__call__`` refuses to score, or with ``allow_uncalibrated`` scores the members'
        offsets): call :meth:`calibrate` first."""
        return self.calibration is None and ENSEMBLE_PENALTIES.get(self.penalty).needs_calibration

    def modules(self) -> list[torch.nn.Module]:
        """The modules the ensemble scores with: its K member models, or the one PeftModel holding the K adapters."""
        return list(self.models) + ([self.peft_model] if self.peft_model is not None else [])

    def member_copy(self, k: int = 0):
        """An independent, trainable, plain copy of member ``k`` (its LoRA adapter merged into the copied base,
        score head included), e.g. to initialise a PPO value model."""
        from ..source import value_init_copy

        if self.layout == "separate":
            model = self.models[k]
            return value_init_copy(model, getattr(model.config, "_name_or_path", None) or None)
        from ...modeling.peft import merged_copy
        from ..source import ValueInitUnavailable

        base = self.peft_model.get_base_model()
        if (any(hasattr(p, "ds_id") for p in self.peft_model.parameters()) or getattr(base, "is_loaded_in_4bit", False)
                or getattr(base, "is_loaded_in_8bit", False)):  # fmt: skip
            raise ValueInitUnavailable(
                "A quantized or partitioned (DeepSpeed ZeRO-3) LoRA ensemble's adapter cannot be merged exactly into "
                "a value model: pass `value_model`, or set value_model_init='policy'."
            )
        copied = merged_copy(self.peft_model, adapter_name=self.adapter_names[k])
        copied.requires_grad_(True)
        copied.train()
        return copied

    def to(self, device):
        """Move every member (or the shared base with its adapters) to ``device``."""
        for m in self.models:
            m.to(device)
        if self.peft_model is not None:
            self.peft_model.to(device)
        return self

    # ----------------------------------------------------------------------------------------------------------
    # Persistence (trl_extras.rewards.ensemble.io)
    # ----------------------------------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, base_model_path: str | None = None) -> str:
        """Write the members (separate checkpoints, or the K adapters plus the tokenizer), the calibration and a
        ``ensemble_manifest.json`` (:func:`trl_extras.rewards.ensemble.io.save_ensemble`)."""
        return save_ensemble(self, directory, base_model_path)

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
        manifest = read_manifest(directory)
        allow_uncalibrated = allow_uncalibrated or bool(manifest.get("allow_uncalibrated", False))
        return cls._from_manifest(directory, manifest, penalty, coef, batch_size, model_init_kwargs, device,
                                  allow_uncalibrated)  # fmt: skip

    @classmethod
    def _from_manifest(cls, directory, manifest, penalty, coef, batch_size, model_init_kwargs, device,
                       allow_uncalibrated=False) -> RewardEnsemble:  # fmt: skip
        return ensemble_from_manifest(cls, directory, manifest, penalty, coef, batch_size, model_init_kwargs, device,
                                      allow_uncalibrated)  # fmt: skip

    def __repr__(self) -> str:
        fast = f", trunk once + tails from layer {self.tail_start}" if self.uses_fast_path else ""
        return (
            f"RewardEnsemble(K={self.num_members}, layout={self.layout!r}{fast}, penalty={self.penalty!r}, "
            f"coef={self.coef}, calibrated={self.calibration is not None})"
        )

