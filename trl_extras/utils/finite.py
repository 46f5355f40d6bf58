"""Never train on, nor save, a non-finite state: one guard shared by every trainer of the package.

A NaN or inf that reaches the weights spreads silently: the Trainer's ``logging_nan_inf_filter`` hides it in the
logged loss, the next sampling crashes ("probability tensor contains either inf, nan"), and a checkpoint written in
between is complete, resumable and useless. So every trainer (PPO, CEM's fine-tuning, the reward-model trainers,
exact-KL GRPO) mixes in :class:`NonFiniteGuardMixin`, which checks, at every optimizer step:

- the loss of each micro-batch (and, where the trainer names them with :meth:`NonFiniteGuardMixin.note_loss_terms`,
  each loss term: ``policy`` / ``value`` / ``kl`` / ``entropy`` / ``nll`` ...), so the error names the source;
- the gradients of every parameter the optimizer holds, after accumulation, before ``optimizer.step()``;
- the parameters themselves (a sum per tensor: one cheap reduction, no copy), before the step as well, so weights
  broken by the previous step (finite gradients, a huge learning rate) are caught one step later at the latest;

and before every checkpoint :func:`check_finite_state` (parameters and buffers of every saved model) refuses to
write one. Checkpoints are rotated (``save_total_limit``) only after the new one is written, so the last
checkpoint that passed the check is never deleted in favour of a bad one.

What happens on a non-finite loss or gradient is the config field ``nonfinite_action`` (:data:`NONFINITE_ACTIONS`):

- ``"error"`` (default): the run stops with :class:`NonFiniteError` naming the optimizer step and the source,
  before the optimizer applies anything (the last checkpoint is the last good state: resume from it);
- ``"skip"``: that optimizer step is skipped (every gradient is dropped, so the optimizer leaves the weights and
  its moments alone; the learning-rate schedule still advances), a warning names the step and the source, and the
  metric ``nonfinite/skipped_steps`` counts it. After :data:`MAX_CONSECUTIVE_SKIPS` skipped steps in a row the run
  stops with the error anyway (a run that skips every step trains nothing). Non-finite *parameters* always stop
  the run: a skip cannot undo an update that was already applied.

Under ``accelerate launch`` the decision is taken on all processes together (one scalar all-reduce per optimizer
step), so no process steps while another stops. Under DeepSpeed the engine owns the gradients and applies its step
inside ``backward``: the guard then sees the step afterwards, ``"skip"`` acts as ``"error"`` and the run stops one
step late (the checkpoint check still keeps the broken weights off disk).
"""

from __future__ import annotations

import logging
import math

import torch

__all__ = [
    "MAX_CONSECUTIVE_SKIPS",
    "NONFINITE_ACTIONS",
    "NONFINITE_ACTION_HELP",
    "NonFiniteError",
    "NonFiniteGuardMixin",
    "check_finite_state",
    "check_nonfinite_action",
    "nonfinite_tensors",
]

logger = logging.getLogger(__name__)

NONFINITE_ACTIONS = ("error", "skip")
MAX_CONSECUTIVE_SKIPS = 10
NONFINITE_ACTION_HELP = (
    "What to do when a loss or gradient is NaN/inf at an optimizer step: 'error' (stop with an error naming the step "
    "and the loss term, before the weights change; resume from the last checkpoint) or 'skip' (drop that step's "
    f"gradients, warn, count it in `nonfinite/skipped_steps`; {MAX_CONSECUTIVE_SKIPS} skipped steps in a row stop the "
    "run). Non-finite weights always stop the run, and a checkpoint is never written with them."
)


class NonFiniteError(FloatingPointError):
    """A NaN/inf loss, gradient or weight was found; the message names the step and the source."""


def check_nonfinite_action(value) -> None:
    """Raise ``ValueError`` unless ``value`` is one of :data:`NONFINITE_ACTIONS`."""
    if value not in NONFINITE_ACTIONS:
        raise ValueError(f"nonfinite_action must be one of {NONFINITE_ACTIONS}, got {value!r}.")


def _is_finite_sum(tensors: list[torch.Tensor]) -> bool:
    """One reduction per tensor, one host sync: False when any element is NaN/±inf (an inf, or a NaN, in a tensor
    makes its float32 sum non-finite; a finite tensor whose sum overflows float32 is as unusable)."""
    tensors = [t for t in tensors if t is not None and t.numel() and (t.is_floating_point() or t.is_complex())]
    if not tensors:
        return True
    by_device: dict = {}
    for t in tensors:
        by_device.setdefault(t.device, []).append(t.detach().sum(dtype=torch.float32))
    return all(bool(torch.isfinite(torch.stack(sums).sum())) for sums in by_device.values())


def nonfinite_tensors(named: dict[str, torch.Tensor] | list[tuple[str, torch.Tensor]], limit: int = 5) -> list[str]:
    """Names of the (at most ``limit``) tensors of ``named`` holding a NaN or inf (exact, per element)."""
    items = named.items() if isinstance(named, dict) else named
    bad = []
    for name, t in items:
        if t is None or not t.numel() or not (t.is_floating_point() or t.is_complex()):
            continue
        if not bool(torch.isfinite(t.detach()).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def _named_models(models) -> list[tuple[str, torch.nn.Module]]:
    if isinstance(models, torch.nn.Module):
        return [("model", models)]
    if isinstance(models, dict):
        return [(k, m) for k, m in models.items() if m is not None]
    return [(f"model_{i}", m) for i, m in enumerate(models) if m is not None]


def check_finite_state(models) -> list[str]:
    """``"<model>.<tensor>"`` for each parameter or buffer holding a NaN/inf in ``models`` (a module, a list, or a
    dict name -> module); empty when all are finite. Cheap when they are (one sum per tensor); exact names when not.

    Trainers call it at the top of ``_save_checkpoint`` (through :meth:`NonFiniteGuardMixin.check_finite_before_save`)
    so that a checkpoint is never written -- hence never marked complete, never rotated in -- with broken weights.
    """
    bad = []
    for model_name, model in _named_models(models):
        tensors = list(model.named_parameters()) + list(model.named_buffers())
        if _is_finite_sum([t for _, t in tensors]):
            continue
        bad += [f"{model_name}.{n}" for n in nonfinite_tensors(tensors)]
    return bad


def _finite_value(value) -> bool:
    if isinstance(value, torch.Tensor):
        return bool(torch.isfinite(value.detach().float().sum()))
    return math.isfinite(float(value))


class NonFiniteGuardMixin:
    """Mix into a ``transformers.Trainer`` subclass (first base) to guard every optimizer step (module docstring).

    Hooks: ``training_step`` (the micro-batch loss), ``_get_grad_norm`` (called by the Trainer at every optimizer
    step, right before ``optimizer.step()``: gradients, parameters, the decision) and ``_save_checkpoint``. A trainer
    with more than ``self.model`` to guard (PPO's value model) overrides :meth:`nonfinite_models`; one that wants the
    source named calls :meth:`note_loss_terms` from ``compute_loss``. The action is ``args.nonfinite_action``
    (``"error"`` when the config has no such field, e.g. a plain ``trl.RewardConfig``).
    """

    # ---- what is guarded
    def nonfinite_models(self) -> dict[str, torch.nn.Module]:
        """Models whose parameters are checked and saved (default: the trained model, unwrapped)."""
        return {"model": self.accelerator.unwrap_model(self.model)}

    def note_loss_terms(self, **terms) -> None:
        """Record this micro-batch's loss terms (tensors or floats) so that a non-finite loss names its source.
        Kept as they are (no host sync on the hot path): they are only looked at when the loss is not finite."""
        pending = self._nonfinite_state()["pending"]
        pending.extend((name, value) for name, value in terms.items() if value is not None)

    # ---- state
    def _nonfinite_state(self) -> dict:
        state = self.__dict__.get("_nonfinite")
        if state is None:
            state = {"terms": [], "pending": [], "loss": None, "skips_in_row": 0, "skipped": 0, "saved_check": None}
            self.__dict__["_nonfinite"] = state
        return state

    @property
    def nonfinite_action(self) -> str:
        return getattr(self.args, "nonfinite_action", "error")

    # ---- hooks
    def training_step(self, model, inputs, num_items_in_batch=None):
        state = self._nonfinite_state()
        state["pending"] = []
        loss = super().training_step(model, inputs, num_items_in_batch)
        if state["loss"] is None and isinstance(loss, torch.Tensor) and not bool(torch.isfinite(loss.detach()).all()):
            named = [name for name, v in state["pending"] if not _finite_value(v)]  # the terms, only now
            state["terms"] += [n for n in named if n not in state["terms"]]
            source = f"loss term(s) {', '.join(named)}" if named else "the loss"
            state["loss"] = f"{source} = {float(loss.detach().float().sum())}"
        state["pending"] = []
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        grad_norm = super()._get_grad_norm(model, grad_norm=grad_norm)
        self._nonfinite_check_step(grad_norm)
        return grad_norm

    def _optimizer_params(self) -> list[torch.Tensor]:
        return [p for group in self.optimizer.param_groups for p in group["params"]]

    def _nonfinite_check_step(self, grad_norm) -> None:
        """At an optimizer step (before ``optimizer.step()``): decide error / skip / go on, the same on every process."""
        state = self._nonfinite_state()
        step = self.state.global_step + 1  # the optimizer step about to be applied (1-based, as logged)
        params = self._optimizer_params()
        problems = []
        if state["loss"] is not None:
            problems.append(state["loss"])
        grads = [p.grad for p in params if p.grad is not None]
        grads_ok = _is_finite_sum(grads)
        if isinstance(grad_norm, (float, int)) and not math.isfinite(grad_norm):
            grads_ok = False
        if not grads_ok:
            names = self._names_of(lambda p: p.grad is not None and not bool(torch.isfinite(p.grad).all()))
            problems.append(f"gradient norm {grad_norm} (non-finite gradients of {names or 'some parameters'})")
        params_ok = _is_finite_sum(params)
        local = torch.tensor([float(bool(problems)), float(not params_ok)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            local = self.accelerator.reduce(local, reduction="sum")
        any_problem, any_bad_params = bool(local[0] > 0), bool(local[1] > 0)
        state["terms"], state["loss"] = [], None
        if any_bad_params:
            names = self._names_of(lambda p: not bool(torch.isfinite(p.detach()).all()))
            raise NonFiniteError(
                f"Non-finite weights before optimizer step {step}: {names or 'on another process'} hold NaN/inf (the "
                "previous update broke them, e.g. a too large learning rate). Training stopped; no checkpoint is "
                "written with them. Resume from the last checkpoint (resume_from_checkpoint=True) with a lower "
                "learning rate or max_grad_norm."
            )
        if not any_problem:
            state["skips_in_row"] = 0
            return
        where = "; ".join(problems) or "non-finite values on another process"
        skip = self.nonfinite_action == "skip" and not getattr(self, "is_deepspeed_enabled", False)
        if skip and state["skips_in_row"] + 1 < MAX_CONSECUTIVE_SKIPS:
            for p in params:
                p.grad = None  # optimizers skip parameters without a gradient: weights and moments stay as they were
            state["skips_in_row"] += 1
            state["skipped"] += 1
            metrics = getattr(self, "_metrics", None)
            if isinstance(metrics, dict) and isinstance(metrics.get("train"), dict):  # logged with the step's metrics
                metrics["train"].setdefault("nonfinite/skipped_steps", []).append(1.0)
            logger.warning("Optimizer step %d skipped (nonfinite_action='skip'): %s.", step, where)
            return
        reason = (
            f" ({MAX_CONSECUTIVE_SKIPS} steps in a row; nonfinite_action='skip' gives up)"
            if skip
            else " (nonfinite_action='skip' is not available under DeepSpeed)"
            if self.nonfinite_action == "skip"
            else ""
        )
        raise NonFiniteError(
            f"Non-finite values at optimizer step {step}: {where}{reason}. The step was not applied and no checkpoint "
            "is written with them. Resume from the last checkpoint (resume_from_checkpoint=True); check the rewards "
            "and learning rates, or set nonfinite_action='skip' to drop such steps."
        )

    def _names_of(self, predicate, limit: int = 5) -> list[str]:
        names = []
        for model_name, model in self.nonfinite_models().items():
            for n, p in model.named_parameters():
                if predicate(p):
                    names.append(f"{model_name}.{n}")
                    if len(names) >= limit:
                        return names
        return names

    def check_finite_before_save(self) -> None:
        """Refuse to write a checkpoint of non-finite weights (call at the top of ``_save_checkpoint``)."""
        state = self._nonfinite_state()
        if state["saved_check"] == self.state.global_step:
            return  # already checked at this step (a subclass's _save_checkpoint calls this one)
        bad = check_finite_state(self.nonfinite_models())
        if bad:
            raise NonFiniteError(
                f"Not saving the checkpoint of step {self.state.global_step}: {', '.join(bad)} hold NaN/inf. The "
                "previous checkpoint is kept (never rotated out for a broken one); resume from it "
                "(resume_from_checkpoint=True)."
            )
        state["saved_check"] = self.state.global_step

    def _save_checkpoint(self, model, trial):
        self.check_finite_before_save()
        return super()._save_checkpoint(model, trial)
