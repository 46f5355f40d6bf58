"""Reward-based evaluation and early stopping for any transformers / TRL ``Trainer`` (SFT above all).

The article: "during the validation process, you need to use the model that is being trained to generate answers to
the queries from the validation dataset and calculate the average reward for these answers. It often turns out
that early stopping on the reward occurs at a different iteration compared to the early stopping on the loss."
InstructGPT (Ouyang et al. 2022, §C) likewise picked its SFT model by reward-model score, not validation loss.

At every evaluation :class:`RewardEarlyStoppingCallback` samples answers to held-out prompts with the model being
trained (the shared :func:`~trl_extras.modeling.generation.generate_rollouts` path), scores them with
:class:`~trl_extras.rewards.functions.RewardFunctions`, writes the mean into the evaluation ``metrics`` dict under
``metric_name`` — the same dict the Trainer then reads, so ``metric_for_best_model="eval_reward"`` with
``load_best_model_at_end=True`` keeps the best checkpoint by reward — logs it (``Trainer.evaluate`` has already
logged its metrics when ``on_evaluate`` runs), and asks training to stop after ``patience`` evaluations in a row
without an improvement larger than ``threshold``.
"""

from __future__ import annotations

import logging
import math

from transformers import TrainerCallback

from ..evaluation._common import prompts_from
from ..modeling.generation import check_chat_template
from ..utils.progress import log_line

logger = logging.getLogger(__name__)


class RewardEarlyStoppingCallback(TrainerCallback):
    """Generate on held-out prompts at each evaluation, add the mean reward to the metrics, stop on a plateau.

    Args:
        reward_funcs: what to maximise: a reward-model path or instance, a reward callable
            ``f(prompts, completions, **kw) -> list[float]``, a ``RewardEnsemble``, or a list (summed, see
            ``reward_weights``).
        eval_prompts: list of prompts (text or conversational) or a dataset with a ``prompt`` column.
        processing_class: tokenizer for generation; defaults to the trainer's ``processing_class``.
        patience: evaluations in a row without improvement before training stops (``None`` or 0: never stop,
            only report).
        threshold: an evaluation improves only if it beats the best so far by more than this.
        max_new_tokens, temperature, top_k, top_p: sampling settings (``temperature=0``: greedy decoding).
        num_generations: answers per prompt (the metric averages all of them).
        batch_size: sequences per generate call and per reward-model forward.
        metric_name: key written into the evaluation metrics (use it as ``metric_for_best_model``).
        reward_processing_classes, reward_weights: for reward models given as instances / for several functions.
        extra_reward_funcs: ``{name: reward function}`` scored and logged as ``<metric_name>_<name>`` but not used
            for stopping (e.g. the testbed's gold reward next to a proxy reward model).
        seed: seeds sampling at every evaluation (the same noise each time, so evaluations compare checkpoints,
            not draws); the global RNG state is restored afterwards so training randomness is unaffected.
        trainer: the trainer, for its accelerator (DeepSpeed/FSDP-aware unwrapping) and ``log`` (so integrations
            such as TensorBoard see the metric). Set it later with :meth:`set_trainer` when the trainer is built
            with this callback. Without it the callback uses ``accelerate.PartialState`` (DDP splitting/gathering)
            and appends the metric to ``state.log_history`` directly.
    """

    def __init__(
        self,
        reward_funcs,
        eval_prompts,
        processing_class=None,
        patience: int | None = 3,
        threshold: float = 0.0,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_k: int | None = None,
        top_p: float = 1.0,
        num_generations: int = 1,
        batch_size: int = 64,
        metric_name: str = "eval_reward",
        reward_processing_classes=None,
        reward_weights=None,
        extra_reward_funcs: dict | None = None,
        seed: int = 0,
        trainer=None,
    ):
        from ..rewards.functions import RewardFunctions

        self.eval_prompts = prompts_from(eval_prompts, what="evaluation prompts")
        self._answers: list | None = None  # the last evaluation's completions (the "identical answers" note)
        if patience is not None and patience < 0:
            raise ValueError(f"patience must be >= 0 or None, got {patience}")
        if threshold < 0:
            raise ValueError(f"threshold must be >= 0, got {threshold}")
        if num_generations < 1:
            raise ValueError(f"num_generations must be >= 1, got {num_generations}")
        if not metric_name or not metric_name.startswith("eval_"):
            # Trainer looks metric_for_best_model up as "eval_<name>"; another prefix would never be found
            raise ValueError(f"metric_name must start with 'eval_' (e.g. 'eval_reward'), got {metric_name!r}")
        if processing_class is not None:
            check_chat_template(processing_class, self.eval_prompts)
        self.rewards = RewardFunctions(reward_funcs, reward_processing_classes, reward_weights, batch_size=batch_size)
        self.extra_rewards = {
            name: RewardFunctions(fn, batch_size=batch_size) for name, fn in (extra_reward_funcs or {}).items()
        }
        self.processing_class = processing_class
        self.patience = patience
        self.threshold = threshold
        self.generation_kwargs = dict(
            max_new_tokens=max_new_tokens,
            temperature=temperature,  # 0 = greedy (handled by the rollout path)
            top_k=top_k,
            top_p=top_p,
            num_generations=num_generations,
            batch_size=batch_size,
        )
        self.metric_name = metric_name
        self.seed = seed
        self.trainer = trainer
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0
        self.history: list[dict] = []  # {"step", metric_name, extras...} per evaluation

    def set_trainer(self, trainer) -> RewardEarlyStoppingCallback:
        self.trainer = trainer
        return self

    # ------------------------------------------------------------------------------------------ helpers
    def _accelerator(self):
        return getattr(self.trainer, "accelerator", None)

    def _evaluate(self, model, tokenizer) -> dict:
        """Mean rewards over all processes' answers: ``{metric_name: mean, metric_name + "_<extra>": mean, ...}``."""
        from accelerate import PartialState

        from ..evaluation.measure import measure_policy

        scored = {self.metric_name: self.rewards, **{f"{self.metric_name}_{k}": v for k, v in self.extra_rewards.items()}}
        m = measure_policy(
            model, tokenizer, self.eval_prompts, scored, seed=self.seed, accelerator=self._accelerator(),
            desc="Reward evaluation", progress=PartialState().is_main_process, **self.generation_kwargs,
        )
        self._answers = list(m.completions)  # for the "identical answers" note of on_evaluate
        return {**{key: m.mean(key) for key in scored}, f"{self.metric_name}_empty_share": m.empty_share}

    def _log(self, args, state, metrics: dict) -> None:
        if self.trainer is not None:
            self.trainer.log(dict(metrics))
        else:
            entry = {**metrics, "step": state.global_step}
            if state.epoch is not None:
                entry["epoch"] = state.epoch
            state.log_history.append(entry)
            logger.info("%s", entry)

    # ------------------------------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, **kwargs):
        # Resuming from a checkpoint: rebuild best/wait from the logged history instead of starting afresh.
        self.best, self.best_step, self.wait = None, None, 0
        for entry in state.log_history:
            if self.metric_name in entry:
                self._update(entry[self.metric_name], entry.get("step", 0))

    def _update(self, value: float, step: int) -> bool:
        improved = self.best is None or value > self.best + self.threshold
        if improved:
            self.best, self.best_step, self.wait = value, step, 0
        else:
            self.wait += 1
        return improved

    def on_evaluate(self, args, state, control, metrics=None, model=None, processing_class=None, **kwargs):
        if metrics is None:
            return
        tokenizer = self.processing_class or processing_class
        if tokenizer is None:
            raise ValueError("RewardEarlyStoppingCallback needs a tokenizer: pass processing_class.")
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap their tokenizer
        check_chat_template(tokenizer, self.eval_prompts)
        previous = self._answers
        new = self._evaluate(model, tokenizer)
        if previous is not None and previous == self._answers:
            # Sampling reuses the same random numbers at every evaluation (`seed`), so a policy that moved a little
            # draws exactly the same answers and the reward repeats to the last bit: say so, it looks like a bug.
            log_line("reward-eval", f"step {state.global_step}: the answers are identical to the previous "
                     f"evaluation's (sampled with the same seed={self.seed}: the model's change did not flip any "
                     "sampled token), so the reward repeats exactly")
        value = new[self.metric_name]
        if not math.isfinite(value):
            raise ValueError(f"{self.metric_name} is {value}: the reward returned non-finite values.")
        metrics.update(new)  # the SAME dict the Trainer uses for metric_for_best_model
        # Several eval datasets (or a re-evaluation after load_best_model_at_end) call on_evaluate again at the
        # same step: report the numbers, but count one patience step per training step only.
        repeated = bool(self.history) and self.history[-1]["step"] == state.global_step
        improved = False if repeated else self._update(value, state.global_step)
        new_log = {**new, f"{self.metric_name}_best": self.best}
        self._log(args, state, new_log)
        log_line("reward-eval", f"step {state.global_step}: " + ", ".join(f"{k} {v:.3f}" for k, v in new_log.items()))
        self.history.append({"step": state.global_step, **new})
        if self.patience and self.wait >= self.patience and state.global_step > 0:
            logger.info(
                "Stopping: %s did not improve by more than %s for %d evaluations (best %.4f at step %s).",
                self.metric_name, self.threshold, self.wait, self.best, self.best_step,
            )
            control.should_training_stop = True
        elif improved:
            logger.info("%s improved to %.4f at step %d", self.metric_name, value, state.global_step)
        return control
