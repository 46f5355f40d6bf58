"""A micro-batch of masked padding rows (utils/even_batches.py) has the same backward as a real one.

Under ZeRO-3 each submodule's parameters are gathered again in its backward, so every process must run its backward
over the same modules the same number of times. ``RegularizedSFTTrainer`` runs two forwards (SFT's NLL, then the
logits for the exact KL); on a micro-batch with no trained token ``exact_kl`` computes nothing and returned a
constant, so that process's backward skipped the second forward: a CEM round padded to whole global batches
deadlocked under ZeRO-3 (process 1 in the gradients' reduce-scatter, process 0 in a pre-backward all-gather). Shown
here in one process by counting the backward passes through a decoder layer, no DeepSpeed needed."""

import pytest
import torch
from helpers import cpu_config


def _args(tmp_path):
    from trl_extras.trainers.cem import CEMConfig

    return cpu_config(CEMConfig, tmp_path / "cem", num_rounds=1, per_device_train_batch_size=2, seed=0)


@pytest.mark.parametrize("kl_coef, entropy_coef", [(0.5, 0.0), (0.5, 0.1), (0.0, 0.1)])
def test_all_masked_micro_batch_backward_visits_both_forwards(tiny_paths, tmp_path, kl_coef, entropy_coef):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trl_extras.trainers.cem.sft import RegularizedSFTTrainer

    tok = AutoTokenizer.from_pretrained(tiny_paths["policy"])
    model = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    ref = AutoModelForCausalLM.from_pretrained(tiny_paths["policy"])
    data = Dataset.from_dict({"prompt": ["1 2 >", "3 1 2 >"], "completion": [" 1 2", " 1 2 3"]})
    trainer = RegularizedSFTTrainer(model=model, args=_args(tmp_path), train_dataset=data,
                                    processing_class=tok, ref_model=ref, kl_coef=kl_coef, entropy_coef=entropy_coef)
    batch = dict(next(iter(trainer.get_train_dataloader())))
    layer = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")][0]
    backward_passes = []
    layer.register_full_backward_pre_hook(lambda module, grad_output: backward_passes.append(1))
    model.train()

    def passes(inputs, num_items):
        backward_passes.clear()
        model.zero_grad()
        trainer.compute_loss(model, inputs, num_items_in_batch=torch.tensor(num_items)).backward()
        return len(backward_passes)

    real = passes(batch, int((batch["labels"] != -100).sum()))
    padding = {**batch, "labels": torch.full_like(batch["labels"], -100)}  # what pad_with_masked_rows adds
    assert real == 2  # the NLL forward and the regularizer's forward
    assert passes(padding, 5) == real  # num_items_in_batch: the other processes' tokens
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters() if p.grad is not None)  # still no loss
