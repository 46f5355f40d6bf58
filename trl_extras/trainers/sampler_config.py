"""Generation-backend fields shared by :class:`~trl_extras.PPOConfig` and :class:`~trl_extras.CEMConfig`.

Defined once here, with TRL ``GRPOConfig``'s names, defaults and help texts (TRL 1.16), so that a TRL user moving from
GRPO keeps their generation engine: ``use_vllm`` (colocate / server, weight sync after each policy update),
``use_transformers_continuous_batching``, and vLLM's truncated importance-sampling correction. The backend itself is
built by :func:`trl_extras.modeling.generation.make_sampler`. Left at their defaults, rollouts use HF ``generate``
exactly as before.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

VLLM_MODES = ("colocate", "server")
VLLM_IMPORTANCE_SAMPLING_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask")
# dict-valued fields given as JSON strings on the command line (TrainingArguments parses those it lists)
GENERATION_BACKEND_DICT_FIELDS = ["transformers_continuous_batching_config"]


@dataclass
class GenerationBackendConfig:
    """Mixin of generation-backend fields (TRL GRPOConfig's names). Put it FIRST in the bases of a config class so its
    fields come after the base config's (positional arguments keep their order) and its ``__post_init__`` runs
    before the base's (it calls ``super().__post_init__()``)."""

    # Parameters that control generation acceleration powered by vLLM
    use_vllm: bool = field(
        default=False,
        metadata={
            "help": "Whether to use vLLM for generating completions (TRL's `VLLMGeneration`). If set to `True`, the "
            "trainer will use vLLM for generation instead of the default `generate`, and push the policy's "
            "weights to it after each update (PEFT adapters merged for the push). Requires `vllm` to be installed: "
            "`pip install trl-extras[vllm]`."
        },
    )
    vllm_mode: str = field(
        default="colocate",
        metadata={
            "help": "Mode to use for vLLM integration when `use_vllm` is set to `True`. Must be one of `'server'` or "
            "`'colocate'`. `'server'`: The trainer will send generation requests to a separate vLLM server. Make sure "
            "a vLLM server is running (start with `trl vllm-serve --model <model>` or `vllm serve` with the "
            "weight-transfer flags). `'colocate'`: vLLM will run in the same process and share the training GPUs. This "
            "avoids the need for a separate server but may cause resource contention with training."
        },
    )
    vllm_model_impl: str = field(
        default="vllm",
        metadata={
            "help": "Model implementation to use for vLLM. Must be one of `transformers` or `vllm`. `transformers`: "
            "Use the `transformers` backend for model implementation. `vllm`: Use the `vllm` library for "
            "model implementation."
        },
    )
    vllm_enable_sleep_mode: bool = field(
        default=False,
        metadata={
            "help": "Enable vLLM sleep mode to offload weights/cache during the optimizer step. Keeps GPU memory "
            "usage low, but waking the engine adds host–device transfer latency."
        },
    )
    # Parameters that control the vLLM server (only used when `vllm_mode` is `"server"`)
    vllm_server_base_url: str | None = field(
        default=None,
        metadata={
            "help": "Base URL for the vLLM server (e.g., 'http://localhost:8000'). If provided, `vllm_server_host` "
            "and `vllm_server_port` are ignored."
        },
    )
    vllm_server_host: str = field(
        default="0.0.0.0",
        metadata={"help": "Host of the vLLM server to connect to. Ignored if vllm_server_base_url is provided."},
    )
    vllm_server_port: int = field(
        default=8000,
        metadata={"help": "Port of the vLLM server to connect to. Ignored if vllm_server_base_url is provided."},
    )
    vllm_server_timeout: float = field(
        default=240.0,
        metadata={
            "help": "Total timeout duration in seconds to wait for the vLLM server to be up. If the server is not up "
            "after the timeout, a `ConnectionError` is raised."
        },
    )
    vllm_group_port: int = field(
        default=51216,
        metadata={
            "help": "Port number for the weight update group. This is used to communicate with the vLLM server. "
            "Unless the port is occupied, there is no need to change it."
        },
    )
    # Parameters that control colocated vLLM execution (only used when `vllm_mode` is `"colocate"`)
    vllm_gpu_memory_utilization: float = field(
        default=0.3,
        metadata={
            "help": "Control the GPU memory utilization for vLLM. This setting only applies when `vllm_mode` is set "
            "to `'colocate'`. If you are using `vllm_mode='server'`, this parameter must be passed separately when "
            "launching the vLLM server via the `--vllm_gpu_memory_utilization` flag."
        },
    )
    vllm_max_model_length: int | None = field(
        default=None,
        metadata={
            "help": "Context window for vLLM. Set it to at least the maximum prompt length in the dataset plus "
            "`max_completion_length`; if omitted, it is inferred from the model config."
        },
    )
    vllm_tensor_parallel_size: int = field(
        default=1,
        metadata={
            "help": "Control the tensor parallel size for vLLM. This setting only applies when `vllm_mode` is set "
            "to `'colocate'`. If you are using `vllm_mode='server'`, this parameter must be passed separately when "
            "launching the vLLM server via the `--vllm_tensor_parallel_size` flag."
        },
    )
    # Correcting the mismatch between the engine's and the trainer's log-probs (PPO; CEM uses no log-probs)
    vllm_importance_sampling_correction: bool = field(
        default=True,
        metadata={
            "help": "Whether to apply Importance Sampling (IS) to correct for the mismatch between vLLM "
            "completion logprobs and recomputed training logprobs (PPO only, and only with `use_vllm`). If set to "
            "`False`, no IS is applied regardless of `vllm_importance_sampling_mode`. When `True`, the selected mode "
            "determines how IS ratios are computed and constrained; PPO multiplies each token's policy-gradient term "
            "by the ratio. The gap itself is logged as `rollout/logprob_gap/mean|max` whenever the engine returns "
            "log-probs."
        },
    )
    vllm_importance_sampling_mode: str = field(
        default="sequence_mask",
        metadata={
            "help": "Specifies how Importance Sampling (IS) is performed when "
            "vllm_importance_sampling_correction=True. Modes are defined along two orthogonal "
            "dimensions: (1) constraint, which determines how to handle ratios outside the bounds "
            "[C_min, C_max]—either truncation (clip to range, ρ ← clamp(ρ, C_min, C_max)) or "
            "masking (set ratios above C_max or below C_min to zero); and (2) granularity, which determines whether "
            "ratios are computed per token or as a single sequence-level ratio applied to all tokens. "
            "Supported options are: 'token_truncate', 'token_mask', 'sequence_truncate', and "
            "'sequence_mask'."
        },
    )
    vllm_importance_sampling_clip_max: float | None = field(
        default=3.0,
        metadata={
            "help": "Importance sampling upper bound C_max used by `vllm_importance_sampling_mode`. For '*_truncate' "
            "modes, ratios are clipped from above at C_max. For '*_mask' modes, ratios larger than C_max are set to "
            "zero."
        },
    )
    vllm_importance_sampling_clip_min: float | None = field(
        default=None,
        metadata={
            "help": "Importance sampling lower bound C_min used by `vllm_importance_sampling_mode`. For `*_truncate` "
            "modes, ratios are clipped from below at C_min. For `*_mask` modes, ratios below C_min are set to "
            "zero. To strictly mask ratios below C_min without upper bound, set `vllm_importance_sampling_clip_max=None`."
        },
    )
    # Parameters that control generation acceleration powered by transformers continuous batching
    use_transformers_continuous_batching: bool = field(
        default=False,
        metadata={
            "help": "Whether to use transformers' continuous batching engine (`generate_batch`, paged KV cache) for "
            "generating completions. Requires transformers>=5.8.0. A GPU feature: on CPU it samples the same "
            "distribution but more slowly than the default `generate`."
        },
    )
    transformers_continuous_batching_config: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for `transformers.generation.ContinuousBatchingConfig` (a dict, or a JSON string "
            "on the command line). Defaults added here: `max_memory_percent=0.5` on CUDA (as TRL's GRPO), a cache "
            "sized to the batch on CPU, `return_logprobs=True` and a seed drawn from torch's generator."
        },
    )

    def __post_init__(self):
        check_generation_backend_fields(self)
        super().__post_init__()
        cb = self.transformers_continuous_batching_config
        if isinstance(cb, str):  # not every base config lists the field among its JSON-parsed dict fields
            try:
                self.transformers_continuous_batching_config = json.loads(cb)
            except json.JSONDecodeError as err:
                raise ValueError(
                    f"transformers_continuous_batching_config={cb!r} is not a JSON object: {err}"
                ) from err
        if self.transformers_continuous_batching_config is not None:
            check_continuous_batching_config(self.transformers_continuous_batching_config)


def check_generation_backend_fields(config) -> None:
    """Clear errors for the backend fields, at config time (a vLLM run must not fail after the model is loaded)."""
    if config.use_vllm and config.use_transformers_continuous_batching:
        raise ValueError(
            "use_vllm=True and use_transformers_continuous_batching=True: pick one generation backend (vLLM for "
            "throughput with a separate engine, continuous batching to stay in transformers)."
        )
    if config.vllm_mode not in VLLM_MODES:
        raise ValueError(f"vllm_mode must be one of {VLLM_MODES}, got {config.vllm_mode!r}.")
    if config.vllm_importance_sampling_mode not in VLLM_IMPORTANCE_SAMPLING_MODES:
        raise ValueError(
            f"vllm_importance_sampling_mode must be one of {VLLM_IMPORTANCE_SAMPLING_MODES}, got "
            f"{config.vllm_importance_sampling_mode!r}."
        )
    lo, hi = config.vllm_importance_sampling_clip_min, config.vllm_importance_sampling_clip_max
    if lo is not None and hi is not None and lo >= hi:
        raise ValueError(
            f"vllm_importance_sampling_clip_min ({lo}) must be less than vllm_importance_sampling_clip_max ({hi})."
        )
    if (
        config.vllm_importance_sampling_correction
        and config.vllm_importance_sampling_mode.endswith("_truncate")
        and lo is None
        and hi is None
    ):
        raise ValueError(
            "At least one of `vllm_importance_sampling_clip_min` or `vllm_importance_sampling_clip_max` must be set "
            "when `vllm_importance_sampling_mode` is a `*_truncate` mode."
        )
    if not 0 < config.vllm_gpu_memory_utilization <= 1:
        raise ValueError(
            f"vllm_gpu_memory_utilization must be in (0, 1], got {config.vllm_gpu_memory_utilization}."
        )
    if config.vllm_tensor_parallel_size < 1:
        raise ValueError(f"vllm_tensor_parallel_size must be >= 1, got {config.vllm_tensor_parallel_size}.")
    if config.use_vllm:
        from ..modeling.generation import check_vllm_installed

        check_vllm_installed()
    if config.use_transformers_continuous_batching:
        import transformers

        if not hasattr(transformers.generation, "ContinuousBatchingConfig"):  # added with generate_batch's config
            raise ImportError(
                "use_transformers_continuous_batching=True requires transformers>=5.8.0 (installed: "
                f"{transformers.__version__}): `pip install --upgrade transformers`."
            )


def check_continuous_batching_config(cb_kwargs) -> None:
    """Every key must be a ``ContinuousBatchingConfig`` field (a typo would otherwise fail at the first rollout)."""
    from dataclasses import fields

    from transformers.generation import ContinuousBatchingConfig

    if not isinstance(cb_kwargs, dict):
        raise ValueError(
            f"transformers_continuous_batching_config must be a dict, got {type(cb_kwargs).__name__}."
        )
    known = {f.name for f in fields(ContinuousBatchingConfig)}
    unknown = sorted(set(cb_kwargs) - known)
    if unknown:
        raise ValueError(
            f"transformers_continuous_batching_config has unknown keys {unknown}: expected "
            "`transformers.generation.ContinuousBatchingConfig` fields (e.g. max_memory_percent, num_blocks)."
        )
