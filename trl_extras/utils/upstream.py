"""Every private (underscore) TRL / transformers API this package relies on, in one list.

trl_extras subclasses TRL's and transformers' trainers and overrides or calls some of their private methods (TRL has
no public base class for a new trainer; the Trainer's checkpoint, clipping and dataloader hooks are private). A minor
release of either library may rename or re-sign any of them. Listing them here, with the parameters we pass or
accept, lets one test (``tests/test_upstream_apis.py``) import and signature-check each, so an upgrade fails in one
obvious place instead of deep inside a training run. ``pyproject.toml`` declares the ranges this list was checked
against (:data:`TESTED_RANGES`).

When you override or call a new private upstream API, add it here.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass

__all__ = [
    "PRIVATE_UPSTREAM_APIS",
    "TESTED_RANGES",
    "UpstreamAPI",
    "check_upstream_apis",
    "resolve",
    "trl_chunked_divergence",
]

#: The versions the list below was checked against; pyproject.toml declares the same bounds.
TESTED_RANGES = {"trl": ">=1.16,<1.17", "transformers": ">=5.0,<6"}


@dataclass(frozen=True)
class UpstreamAPI:
    """One private upstream symbol.

    Attributes:
        module: the module to import, e.g. ``"transformers.trainer"``.
        qualname: the attribute path inside it, e.g. ``"Trainer._save_checkpoint"``.
        how: ``"override"`` (we define a method of that name in a subclass and usually call ``super()``),
            ``"call"`` (we call it), ``"subclass"`` (a base class), or ``"attribute"`` (a module or class attribute
            we read or set).
        parameters: for callables, the parameter names (after ``self``) our overrides accept or our calls pass by
            keyword, in order; the check requires them as a prefix of the upstream signature.
        used_in: where trl_extras uses it.
    """

    module: str
    qualname: str
    how: str
    used_in: str
    parameters: tuple[str, ...] | None = None


PRIVATE_UPSTREAM_APIS: tuple[UpstreamAPI, ...] = (
    # -- TRL: base classes of PPOConfig / PPOTrainer (TRL's own trainers derive from them)
    UpstreamAPI("trl.trainer.base_config", "_BaseConfig", "subclass", "trainers/ppo/config.py"),
    UpstreamAPI("trl.trainer.base_config", "_BaseConfig._VALID_DICT_FIELDS", "attribute", "trainers/ppo/config.py"),
    UpstreamAPI("trl.trainer.base_trainer", "_BaseTrainer", "subclass", "trainers/ppo/trainer.py"),
    # -- TRL: the usage ping every TRL trainer sends at construction (our trainers skip it: utils/offline.py)
    UpstreamAPI("trl.trainer.base_trainer", "_BaseTrainer._send_telemetry", "override",
                "utils/offline.py (NoTelemetryMixin)", ()),  # fmt: skip
    # -- TRL: GRPO's generation step, wrapped by ExactKLGRPOTrainer
    UpstreamAPI("trl", "GRPOTrainer._generate", "override", "trainers/exact_kl_grpo.py", ("prompts",)),
    # -- transformers: Trainer hooks overridden by PPOTrainer / TwoStageRewardTrainer
    UpstreamAPI("transformers", "Trainer._save_checkpoint", "override", "trainers/ppo/trainer.py, rewards/two_stage.py",
                ("model", "trial")),  # fmt: skip
    UpstreamAPI("transformers", "Trainer._save", "override", "trainers/ppo/trainer.py, trainers/exact_kl_grpo.py",
                ("output_dir", "state_dict")),  # fmt: skip
    UpstreamAPI("transformers", "Trainer._load_from_checkpoint", "override",
                "trainers/ppo/trainer.py, rewards/two_stage.py", ("resume_from_checkpoint", "model")),  # fmt: skip
    UpstreamAPI("transformers", "Trainer._load_optimizer_and_scheduler", "override", "trainers/ppo/trainer.py",
                ("checkpoint",)),  # fmt: skip
    UpstreamAPI("transformers", "Trainer._clip_grad_norm", "override", "trainers/ppo/trainer.py", ("model",)),
    UpstreamAPI("transformers", "Trainer._get_train_sampler", "override", "trainers/ppo/trainer.py",
                ("train_dataset",)),  # fmt: skip
    UpstreamAPI("transformers", "Trainer._prepare_inputs", "override", "trainers/ppo/trainer.py", ("inputs",)),
    UpstreamAPI("transformers", "Trainer._set_signature_columns_if_needed", "override", "trainers/ppo/trainer.py", ()),
    UpstreamAPI("transformers", "Trainer._get_output_dir", "call", "trainers/ppo/trainer.py, rewards/two_stage.py",
                ("trial",)),  # fmt: skip
    UpstreamAPI("transformers", "Trainer._get_dataloader", "call", "trainers/ppo/trainer.py",
                ("dataset", "description", "batch_size", "sampler_fn", "is_training")),  # fmt: skip
    # -- TRL: the vLLM engine behind use_vllm (not exported at the top level; its attributes are set per call)
    UpstreamAPI("trl.generation.vllm_generation", "VLLMGeneration", "call", "modeling/generation.py (make_sampler)",
                ("model", "accelerator", "processing_class", "mode", "structured_outputs_regex", "server_base_url",
                 "server_host", "server_port", "server_timeout", "group_port", "tensor_parallel_size",
                 "gpu_memory_utilization", "max_model_length")),  # fmt: skip
    UpstreamAPI("trl.generation.vllm_generation", "VLLMGeneration.generate", "call",
                "modeling/generation.py (VLLMSampler)", ("prompts", "images", "num_generations")),  # fmt: skip
    UpstreamAPI("trl.generation.vllm_generation", "VLLMGeneration.sync_weights", "call",
                "modeling/generation.py (VLLMSampler)", ()),  # fmt: skip
    # -- TRL: the ZeRO-3 gather of a head read directly by a fused kernel (modeling/head_kernel.py), and TRL's chunked
    #    reverse-KL kernel that tests/test_exact_kl_fused.py and benchmarks/exact_kl_memory.py compare ours with
    UpstreamAPI("trl.trainer.utils", "maybe_gather_lm_head_ctx", "call", "modeling/head_kernel.py"),
    UpstreamAPI("trl.kernels.chunked_divergence", "ChunkedDivergenceFunction.forward", "call",
                "tests/test_exact_kl_fused.py, benchmarks/exact_kl_memory.py (comparison only)",
                ("ctx", "student_hidden", "student_weight", "student_bias", "teacher_hidden", "teacher_weight",
                 "teacher_bias", "beta", "temperature")),  # fmt: skip
    # -- transformers: the DeepSpeed config a nested Trainer would otherwise inherit (CEM's inner SFT rounds)
    UpstreamAPI("transformers.integrations.deepspeed", "_hf_deepspeed_config_weak_ref", "attribute",
                "trainers/cem/trainer.py"),  # fmt: skip
)


def resolve(api: UpstreamAPI):
    """Import ``api.module`` and follow ``api.qualname``; raises ``ImportError`` / ``AttributeError`` if gone."""
    obj = importlib.import_module(api.module)
    for part in api.qualname.split("."):
        obj = getattr(obj, part)
    return obj


def _signature_problem(api: UpstreamAPI, obj) -> str | None:
    if api.parameters is None:
        return None
    if not callable(obj):
        return f"{api.module}.{api.qualname} is no longer callable"
    names = [p for p in inspect.signature(obj).parameters if p != "self"]
    if tuple(names[: len(api.parameters)]) != api.parameters:
        return (
            f"{api.module}.{api.qualname} now takes ({', '.join(names)}); trl_extras ({api.used_in}) expects "
            f"({', '.join(api.parameters)}) first"
        )
    return None


def check_upstream_apis(apis=PRIVATE_UPSTREAM_APIS) -> list[str]:
    """One line per API that is missing or whose signature changed (empty when every one checks out)."""
    problems = []
    for api in apis:
        try:
            obj = resolve(api)
        except (ImportError, AttributeError) as err:
            problems.append(f"{api.module}.{api.qualname} ({api.how}, used in {api.used_in}) is gone: {err}")
            continue
        problem = _signature_problem(api, obj)
        if problem:
            problems.append(problem)
    return problems


def trl_chunked_divergence():
    """``ChunkedDivergenceFunction.apply`` of TRL 1.16 (private: ``trl.kernels.chunked_divergence``), or ``None``
    when it moved or changed its signature (the comparison that uses it is then skipped, nothing else depends on it).

    Called as ``fn(student_hidden (N, H), student_weight (V, H), student_bias, teacher_hidden, teacher_weight,
    teacher_bias, beta, temperature) -> (divergence (N,), entropy (N,))``; ``beta=1.0`` is the reverse
    KL(student‖teacher) = our exact KL with the student as the policy.
    """
    api = next(a for a in PRIVATE_UPSTREAM_APIS if a.qualname == "ChunkedDivergenceFunction.forward")
    try:
        obj = resolve(api)
    except (ImportError, AttributeError):
        return None
    if _signature_problem(api, obj) is not None:
        return None
    return resolve(UpstreamAPI(api.module, "ChunkedDivergenceFunction.apply", "call", api.used_in))
