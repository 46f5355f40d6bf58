"""Keeping bitsandbytes 4-bit models trainable.

bitsandbytes (0.50) has a CPU fast path for inference: the first time a ``Linear4bit`` runs in eval mode on a CPU
input that does not require grad (a ``generate`` call, a no-grad scoring pass) and the CPU supports AVX512-BF16, it
repacks its weight in place into a CPU-only layout (``quant_state.packing_format_for_cpu``) and from then on
multiplies through a kernel that does not propagate gradients to its input. The packing is permanent, so in an RL
loop -- sample under ``no_grad``, then train -- every later training forward is cut at each 4-bit layer: the LoRA
adapters before them get no gradient, the optimizer sees ``grad_norm`` 0 and nothing learns, without an error.
(Measured here: a 4-bit LoRA policy's adapter gradients are non-zero before one ``no_grad`` forward and ``None``
after it.) CUDA is not affected: its inference path is chosen per call.
"""

from __future__ import annotations

from torch import nn

__all__ = ["keep_4bit_layers_differentiable", "kbit_device_map"]


def keep_4bit_layers_differentiable(model: nn.Module) -> int:
    """Turn off bitsandbytes' CPU weight repacking in every 4-bit layer of ``model`` that will be trained through.

    Args:
        model: any module (a PEFT model, a Trainer's wrapped model); layers that are not bitsandbytes ``Linear4bit``
            are left alone, so calling it on a full-precision model is a no-op.

    Returns:
        The number of layers changed (0 when there is no 4-bit layer with the CPU fast path).
    """
    changed = 0
    for module in model.modules():
        if not hasattr(module, "support_avx512bf16_for_cpu"):
            continue
        quant_state = getattr(getattr(module, "weight", None), "quant_state", None)
        packed = getattr(quant_state, "packing_format_for_cpu", False)
        if packed:  # already repacked by an earlier inference call: restore the trainable layout
            from bitsandbytes.nn.modules import _convert_weight_packed_for_cpu_inverse

            module.weight.data, module.weight.quant_state = _convert_weight_packed_for_cpu_inverse(
                module.weight.data, quant_state
            )
        if module.support_avx512bf16_for_cpu or packed:
            module.support_avx512bf16_for_cpu = False
            changed += 1
    return changed


def kbit_device_map(use_cpu: bool = False) -> dict[str, int] | None:
    """``device_map`` for loading a bitsandbytes-quantized model in this process.

    TRL < 1.x exported this as ``trl.get_kbit_device_map``; TRL 1.16 no longer has it. On CUDA every module goes to
    this process's GPU (``{"": local_process_index}``: one full copy per DDP rank, never "auto", which shards across
    GPUs and fails under DDP). On a CPU run (``use_cpu`` or no CUDA) it is ``None``: bitsandbytes' CPU backend
    quantizes in place.
    """
    import torch

    if use_cpu or not torch.cuda.is_available():
        return None
    from accelerate import PartialState

    return {"": PartialState().local_process_index}
