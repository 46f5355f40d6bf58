"""Measure reward functions on fixed prompts during training: the data of a Goodhart curve (Gao et al. 2022).

:class:`RewardMeasureCallback` samples one answer per fixed prompt from the model being trained every
``every_n_steps`` optimizer steps (and before the first step), scores the answers with named reward functions
(e.g. the gold reward next to the proxy the policy optimizes) and measures their exact KL to a reference model —
through the shared :func:`~trl_extras.evaluation.measure.measure_policy`. Each measurement is appended to
:attr:`RewardMeasureCallback.points`, to ``state.log_history`` and to every ``report_to`` integration (keys
``<prefix>/<name>``, ``<prefix>/kl``, ``<prefix>/length``), and printed as one line
(:func:`~trl_extras.utils.progress.log_line`).
Works with any ``Trainer`` whose callbacks receive ``model`` and ``processing_class`` (``PPOTrainer``, TRL's
``GRPOTrainer``, ``SFTTrainer``...).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from transformers import TrainerCallback

from ..core.stats import mean_ci
from ..evaluation._common import prompts_from


class RewardMeasureCallback(TrainerCallback):
    """Every ``every_n_steps`` steps, sample answers to fixed prompts and record each reward's mean (and KL to ``ref_model``).

    Args:
        reward_funcs: ``{name: reward}``, each anything :class:`~trl_extras.rewards.functions.RewardFunctions`
            takes (a reward-model path or instance, a GRPO-style callable, a ``RewardEnsemble``).
        prompts: list of prompts or a dataset with a ``prompt`` column (the same prompts at every measurement).
        every_n_steps: measure when ``state.global_step`` is a multiple of it; also once before training
            (``measure_on_train_begin``).
        ref_model: reference model (e.g. the SFT model) for the per-answer exact KL(π‖π_ref); ``None``: no KL.
        processing_class: tokenizer for generation; defaults to the trainer's ``processing_class``.
        max_new_tokens, temperature, batch_size: sampling settings (``temperature=0``: greedy).
        seed: the measurement at step ``s`` samples with seed ``seed + s`` (runs compared at the same step see the
            same sampling noise); the training's random stream is left untouched.
        prefix: logged keys are ``<prefix>/<name>``, ``<prefix>/kl`` and ``<prefix>/length``.
        num_samples: answers kept per point (``point["samples"]``) to read what the policy writes.
        trainer: the trainer, for its ``report_to`` integrations and its accelerator; or call :meth:`set_trainer`.
            Without one, points still go to ``state.log_history`` and one log line each.

    Each point: ``{"step", <name>: mean, <name>_ci: [low, high] (95 % t-interval), "kl", "length", "samples",
    "seconds"}``.
    """

    def __init__(
        self,
        reward_funcs: Mapping,
        prompts,
        every_n_steps: int,
        ref_model=None,
        processing_class=None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        batch_size: int = 128,
        seed: int = 0,
        prefix: str = "measure",
        measure_on_train_begin: bool = True,
        num_samples: int = 3,
        trainer=None,
    ):
        from ..evaluation.measure import as_reward_functions

        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ValueError(f"every_n_steps must be a positive integer, got {every_n_steps!r}")
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        if not prefix or "/" in prefix:
            raise ValueError(f"prefix must be a non-empty name without '/', got {prefix!r}")
        self.reward_funcs = as_reward_functions(reward_funcs, batch_size=batch_size)
        for name in self.reward_funcs:
            if name in ("step", "kl", "length", "samples", "seconds") or name.endswith("_ci"):
                raise ValueError(f"reward name {name!r} is reserved for the measurement's own fields")
        self.prompts = prompts_from(prompts, what="measurement prompts")
        if not self.prompts:
            raise ValueError("RewardMeasureCallback needs at least one prompt.")
        self.every_n_steps = every_n_steps
        self.ref_model = ref_model
        self.processing_class = processing_class
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.batch_size = batch_size
        self.seed = seed
        self.prefix = prefix
        self.measure_on_train_begin = measure_on_train_begin
        self.num_samples = num_samples
        self.trainer = trainer
        self.points: list[dict] = []
        self._state = None

    def set_trainer(self, trainer) -> RewardMeasureCallback:
        self.trainer = trainer
        return self

    def measure(self, model, tokenizer, step: int) -> dict:
        """Measure ``model`` now, append the point to :attr:`points`, log it, and return it."""
        from ..evaluation.measure import measure_policy

        if tokenizer is None:
            raise ValueError("RewardMeasureCallback needs a tokenizer: pass processing_class.")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap their tokenizer
        t0 = time.perf_counter()
        m = measure_policy(
            model, tokenizer, self.prompts, self.reward_funcs, self.ref_model, max_new_tokens=self.max_new_tokens,
            temperature=self.temperature, batch_size=self.batch_size, seed=self.seed + step,
            accelerator=getattr(self.trainer, "accelerator", None),
        )
        point = {"step": step}
        for name, values in m.rewards.items():
            point[name] = m.mean(name)
            point[f"{name}_ci"] = list(mean_ci(values)[1:]) if len(values) > 1 else None
        point.update({k: v for k, v in m.summary().items() if k in ("kl", "length")})
        point["samples"] = m.completions[: self.num_samples]
        point["seconds"] = round(time.perf_counter() - t0, 2)
        self.points.append(point)
        self._log(step, {f"{self.prefix}/{k}": v for k, v in m.summary().items()})
        return point

    def _log(self, step: int, metrics: dict) -> None:
        """Report ``metrics`` to every ``report_to`` integration (and ``state.log_history``), plus one log line."""
        from ..utils.progress import log_line

        state = self._state
        if state is not None:
            entry = dict(metrics)
            if state.epoch is not None:
                entry["epoch"] = state.epoch
            state.log_history.append({**entry, "step": step})
            if self.trainer is not None:
                # the integrations' on_log, not trainer.log(): a trainer's log() may fold its pending training
                # metrics into this entry (TRL's trainers do), and CallbackHandler.on_log clears should_log, which
                # would drop the step's own loss log when we measure at a logging step
                control = self.trainer.control
                should_log = control.should_log
                self.trainer.callback_handler.on_log(self.trainer.args, state, control, entry)
                control.should_log = should_log
        log_line(self.prefix, f"step {step}: " + ", ".join(f"{k.split('/', 1)[1]} {v:.3f}" for k, v in metrics.items()))

    def on_train_begin(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._state = state
        if self.measure_on_train_begin and not any(p["step"] == state.global_step for p in self.points):
            self.measure(model, self.processing_class or processing_class, state.global_step)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self._state = state
        if state.global_step % self.every_n_steps == 0:
            self.measure(model, self.processing_class or processing_class, state.global_step)
