"""``RegularizedSFTTrainer``: the SFT step of a CEM round, with optional exact KL-to-initial-model and entropy terms.

Imported only when a round fine-tunes (it imports TRL's ``SFTTrainer``), so ``import trl_extras.trainers.cem`` stays light."""

from __future__ import annotations

import torch
from trl import SFTTrainer

from ...core.kl import entropy_from_logits, exact_kl
from ...modeling.reference import reference_context
from ...utils.even_batches import EvenBatchPaddingMixin
from ...utils.finite import NonFiniteGuardMixin
from ...utils.offline import NoTelemetryMixin
from .log_steps import StepOffsetLogMixin


class RegularizedSFTTrainer(StepOffsetLogMixin, NoTelemetryMixin, NonFiniteGuardMixin, EvenBatchPaddingMixin, SFTTrainer):
    """``SFTTrainer`` whose loss adds ``kl_coef·KL(π‖π_ref) − entropy_coef·H(π)`` on completion tokens.

    Both terms are exact over the vocabulary (``trl_extras.core.kl``) and are normalised like SFT's own NLL
    (summed over label tokens, divided by ``num_items_in_batch`` or the batch's label-token count), so they
    scale with gradient accumulation exactly as the NLL does. Costs one extra forward with full logits (plus
    a no-grad reference forward when ``kl_coef > 0``). ``ref_model=None`` with a PEFT model means "the same
    model under ``trl_extras.modeling.reference_context``" (its ``"ref"`` adapter, else the adapter disabled).
    """

    def __init__(self, *args, ref_model=None, kl_coef: float = 0.0, entropy_coef: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.ref_model = ref_model
        self.kl_coef = kl_coef
        self.entropy_coef = entropy_coef
        self._pad_train_dataset_for_even_batches()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        self.note_loss_terms(nll=loss)  # a non-finite loss names its term (utils.finite)
        if not (self.kl_coef or self.entropy_coef):
            return result
        mode = "train" if self.model.training else "eval"
        fwd = {k: inputs[k] for k in ("input_ids", "attention_mask", "position_ids") if k in inputs}
        mask = inputs["labels"][:, 1:] != -100  # logits at t predict label t + 1
        logits = model(**fwd, use_cache=False).logits[:, :-1]
        reg = torch.zeros_like(mask, dtype=torch.float32)
        if self.kl_coef:
            with torch.no_grad():
                ref_logits = self._ref_logits(model, fwd)[:, :-1]
            kl = exact_kl(logits, ref_logits, mask=mask)
            self.note_loss_terms(kl=(kl.detach() * mask).sum())
            reg = reg + self.kl_coef * kl
            self._metrics[mode]["kl_to_ref"].append(
                self._mean_over_processes((kl.detach() * mask).sum(), mask.sum())
            )
        if self.entropy_coef:
            entropy = entropy_from_logits(logits)
            self.note_loss_terms(entropy=(entropy.detach() * mask).sum())
            reg = reg - self.entropy_coef * entropy
            self._metrics[mode]["entropy_bonus"].append(
                self._mean_over_processes((entropy.detach() * mask).sum(), mask.sum())
            )
        num_tokens = mask.sum() if num_items_in_batch is None else num_items_in_batch
        reg_loss = (reg * mask).sum() / torch.as_tensor(num_tokens).clamp(min=1)
        if logits.requires_grad and not reg_loss.requires_grad:
            # A micro-batch with no trained token (the masked padding rows of utils/even_batches.py) makes exact_kl
            # skip every position and return a constant: the backward would then skip this second forward here but
            # not on a process with real rows, and ZeRO-3, which gathers each submodule's parameters in its
            # backward, deadlocks (one process waits in an all-gather the other never joins). A zero that depends on
            # the logits keeps every process's backward over the same modules.
            reg_loss = reg_loss + 0.0 * logits[..., :1].sum()
        # Same cross-device convention as SFTTrainer's NLL (num_items_in_batch counts every rank's tokens).
        if self.args.average_tokens_across_devices and num_items_in_batch is not None:
            reg_loss = reg_loss * self.accelerator.num_processes
        loss = loss + reg_loss.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def _mean_over_processes(self, local_sum: torch.Tensor, local_count: torch.Tensor) -> float:
        """The mean over processes of each one's micro-batch mean ``local_sum / local_count`` (scalar tensors; every
        process calls this), over the processes whose micro-batch has a trained token.

        Under DDP/DeepSpeed each process sees only its share of the global batch; logging the local mean made the
        round's ``kl_to_ref``/``entropy_bonus`` rank 0's share alone. The mean of the per-process means is what one
        process logs when it accumulates the same micro-batches (TRL averages the micro-batch values at logging).
        A process whose micro-batch is only masked padding rows (see ``EvenBatchPaddingMixin``) has no such
        micro-batch in the one-process run, so it is left out rather than counted as a mean of 0."""
        local = torch.stack([local_sum.detach().float() / local_count.clamp(min=1), (local_count > 0).float()])
        means, has_tokens = self.accelerator.gather(local.reshape(1, 2)).reshape(-1, 2).unbind(-1)
        return float((means * has_tokens).sum() / has_tokens.sum().clamp(min=1))

    def _ref_logits(self, model, fwd):
        if self.ref_model is not None:
            return self.ref_model(**fwd, use_cache=False).logits
        unwrapped = self.accelerator.unwrap_model(model)
        with reference_context(unwrapped):
            return unwrapped(**fwd, use_cache=False).logits
