"""TRL's GRPO with an exact full-vocabulary KL penalty to the reference policy.

``loss = GRPO loss (beta=0) + β · aggregate_t( Σ_v π(v|·) (log π(v|·) − log π_ref(v|·)) )``

The exact per-position KL replaces GRPO's k3 estimate on the sampled token (Amini et al. 2025, "Better Estimation
of the KL Divergence Between Language Models": it is the Rao–Blackwellized estimator — unbiased with no more
variance). Which gradient it gives, precisely: only the DIRECT term Σ_t ∇θ KL(π(·|s_t)‖π_ref(·|s_t)), the
gradient of each visited state's KL with the states held fixed (GRPO style: the KL is in the loss, not in the
reward). The score-function term — how the sampled tokens change which states, hence which KLs, come later — is
not included: the KL is not in the reward, so the advantages do not see it (Tang & Munos 2025, arXiv 2506.09477,
on such partial KL gradients). ``PPOTrainer(kl_estimator="exact")`` has both terms (state term in the reward,
direct term in the loss). Logits are divided by the sampling
temperature; the computation is chunked over positions (``trl_extras.modeling.lm.exact_kl_to_reference``) so the
``(B, T, V)`` logits of the policy and the reference never coexist in full. The per-token KL is aggregated
exactly as GRPO aggregates its own ``beta`` term for the configured ``loss_type``, so ``exact_kl_coef`` means what
``beta`` means in GRPO, with the exact KL instead of k3. Cost: no extra policy pass -- GRPO's log-probs and the
exact KL come from ONE chunked pass (``_get_per_token_logps_and_entropies`` is overridden inside ``compute_loss``:
the policy trunk once, the fused head kernel of ``modeling.head_kernel`` per chunk) -- plus one reference forward per
micro-batch. Positions are counted as GRPO's forward counts them (``0 … L−1``), for the reference too.

GRPO's internals are private and change between releases: this subclass overrides only ``compute_loss`` (calling
``super()``), reads ``prompt_ids/prompt_mask/completion_ids/completion_mask`` (+ ``tool_mask``,
``num_items_in_batch``) from the inputs GRPO prepares, and its tests fail loudly when those change.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from ..core.ppo import GRPO_LOSS_AGGREGATION, aggregate_loss
from ..modeling.generation import checkpoint_generation_config_hidden
from ..modeling.lm import exact_kl_to_reference, policy_logprobs, split_lm
from ..modeling.quantization import keep_4bit_layers_differentiable
from ..modeling.reference import reference_adapter_hidden, resolve_reference
from ..rewards.functions import check_unique_names
from ..rewards.source import RewardSource, as_grpo_reward_funcs, place_rewards
from ..utils.finite import NONFINITE_ACTION_HELP, NonFiniteGuardMixin
from ..utils.offline import NoTelemetryMixin

__all__ = ["ExactKLGRPOConfig", "ExactKLGRPOTrainer"]

logger = logging.getLogger(__name__)

# loss types whose aggregation of a per-token term we mirror (GRPOTrainer._compute_loss, TRL 1.16)
_SUPPORTED_LOSS_TYPES = tuple(GRPO_LOSS_AGGREGATION)


@dataclass
class ExactKLGRPOConfig(GRPOConfig):
    """``GRPOConfig`` plus the exact-KL penalty. GRPO's own ``beta`` must stay 0.0 (no double KL)."""

    exact_kl_coef: float = field(
        default=0.04,
        metadata={
            "help": "Coefficient β of the exact full-vocabulary KL(π‖π_ref) added to the GRPO loss, aggregated over "
            "tokens like GRPO's own `beta` term. 0 disables the term (no reference model is loaded)."
        },
    )
    exact_kl_chunk_size: int = field(
        default=64,
        metadata={
            "help": "Completion positions per chunk in the exact-KL computation: peak extra memory is about "
            "B × chunk × V floats per model instead of B × T × V."
        },
    )

    nonfinite_action: str = field(default="error", metadata={"help": NONFINITE_ACTION_HELP})

    def __post_init__(self):
        from ..utils.finite import check_nonfinite_action
        from ..utils.validation import check_finite_fields

        check_finite_fields(self)  # every float, GRPO's and the Trainer's own (beta, epsilon, max_grad_norm...)
        check_nonfinite_action(self.nonfinite_action)
        super().__post_init__()
        if self.exact_kl_coef < 0:
            raise ValueError(f"exact_kl_coef must be >= 0, got {self.exact_kl_coef}.")
        if self.exact_kl_chunk_size is None or self.exact_kl_chunk_size <= 0:
            raise ValueError(f"exact_kl_chunk_size must be a positive integer, got {self.exact_kl_chunk_size}.")


class ExactKLGRPOTrainer(NoTelemetryMixin, NonFiniteGuardMixin, GRPOTrainer):
    """``GRPOTrainer`` whose KL penalty is the exact per-position KL to the reference (see module docstring).

    Takes the same arguments as ``trl.GRPOTrainer``; ``args`` must be an :class:`ExactKLGRPOConfig` with
    ``beta=0.0``. The reference is the initial policy, resolved like PPO's (``trl_extras.modeling.resolve_reference``):
    a frozen copy loaded from the policy's path (as GRPO loads its own); with ``peft_config`` the same model with its
    fresh adapter disabled; for a ``PeftModel`` with a trained adapter, a frozen copy of that adapter kept as a second
    adapter ``"ref"`` (not trained, not saved). Logs ``exact_kl`` (mean per-token KL over the global batch).
    """

    _tag_names = ["trl", "grpo", "exact-kl", "trl-extras"]
    _name = "GRPO with exact KL"

    def __init__(self, model, reward_funcs=None, args: ExactKLGRPOConfig | None = None, *pos, **kwargs):
        if args is None:
            name = model if isinstance(model, str) else model.config._name_or_path
            args = ExactKLGRPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-ExactKL-GRPO")
        if not isinstance(args, ExactKLGRPOConfig):
            raise TypeError(f"ExactKLGRPOTrainer needs an ExactKLGRPOConfig, got {type(args).__name__}.")
        if args.beta != 0.0:
            raise ValueError(
                f"ExactKLGRPOTrainer adds its own exact KL term (exact_kl_coef={args.exact_kl_coef}); set GRPO's "
                f"`beta=0.0` (got {args.beta}) so the KL is not applied twice."
            )
        if args.loss_type not in _SUPPORTED_LOSS_TYPES:
            raise ValueError(
                f"ExactKLGRPOTrainer does not know how GRPO aggregates loss_type={args.loss_type!r}; supported: "
                f"{_SUPPORTED_LOSS_TYPES}."
            )
        # The reward contract: paths (full, LoRA adapter folder, ensemble directory), PeftModels and ensembles become
        # reward sources (named after their folder, scored as RewardTrainer tokenized them) and are placed below.
        if pos:  # GRPOTrainer's later arguments given by position: by name, to reach reward_processing_classes
            import inspect

            kwargs.update(zip(list(inspect.signature(GRPOTrainer.__init__).parameters)[4:], pos))
        reward_funcs, kwargs["reward_processing_classes"] = as_grpo_reward_funcs(
            reward_funcs, kwargs.get("reward_processing_classes"), model_init_kwargs=args.model_init_kwargs
        )
        from ..utils.progress import quiet_replica_logs

        quiet_replica_logs()  # under accelerate launch each warning is printed once, by the main process
        super().__init__(model, reward_funcs, args, **kwargs)
        check_unique_names(self.reward_func_names)
        wrap = None
        if self.is_deepspeed_enabled:
            from trl.models import prepare_deepspeed

            wrap = lambda module: prepare_deepspeed(module, self.accelerator)  # noqa: E731
        place_rewards([f for f in self.reward_funcs if isinstance(f, RewardSource)], self.accelerator.device, wrap)
        self._check_inputs_fit(args)
        self._warn_plain_prompts_to_chat_model()
        # evaluate() runs no-grad eval-mode forwards between training steps (see keep_4bit_layers_differentiable)
        keep_4bit_layers_differentiable(self.model)
        self.exact_kl_coef = args.exact_kl_coef
        self._exact_kl_ref = None
        # set by compute_loss for the one call of GRPO's log-prob pass that also computes the exact KL
        self._exact_kl_pending: dict | None = None
        if self.exact_kl_coef > 0:
            # the shared resolver: a frozen copy, or inside the PEFT policy (adapter disabled while it is the
            # identity, else a frozen "ref" copy of the starting adapter). GRPO itself adds no "ref" adapter here
            # because its own beta is 0. Done before any optimizer exists, so the copy is never in one.
            self._exact_kl_ref = resolve_reference(
                self.accelerator.unwrap_model(self.model),
                make_copy=lambda: self._load_reference(kwargs.get("quantization_config")),
            )

    def _check_inputs_fit(self, args) -> None:
        """Prompts that are not text/chat, a dataset smaller than one generation batch (GRPO's sampler drops it:
        0 steps) or prompts + completions past the model's positions: refused before training."""
        from ..modeling.checks import check_enough_prompts, check_fits_positions, check_prompt_column

        data = self.train_dataset
        if data is None or not hasattr(data, "__len__") or "prompt" not in getattr(data, "column_names", []):
            return
        check_prompt_column(data["prompt"], "train")
        check_enough_prompts(data, args.generation_batch_size // args.num_generations,
                             f"generation_batch_size {args.generation_batch_size} / num_generations "
                             f"{args.num_generations}")  # fmt: skip
        model = self.accelerator.unwrap_model(self.model)
        tokenizer = getattr(self.processing_class, "tokenizer", self.processing_class)
        check_fits_positions(model.config, tokenizer, data["prompt"], None, args.max_completion_length,
                             "ExactKLGRPOTrainer")  # fmt: skip

    def _warn_plain_prompts_to_chat_model(self) -> None:
        """Warn (main process) when plain-text prompts meet a chat template and the policy answers them with EOS
        (see ``trl_extras.modeling.prompt_checks``). The policy is probed with one small forward where that is
        cheap and local (one process, no FSDP sharding); otherwise the template alone decides."""
        from ..modeling.prompt_checks import NUM_PROBE_PROMPTS, plain_prompts_to_chat_model_message

        dataset = self.train_dataset
        if not self.accelerator.is_main_process or not hasattr(dataset, "select") or len(dataset) == 0:
            return
        prompts = list(dataset.select(range(min(NUM_PROBE_PROMPTS, len(dataset))))["prompt"])
        model = None if self.is_fsdp_enabled else self.accelerator.unwrap_model(self.model)
        message = plain_prompts_to_chat_model_message(model, self.processing_class, prompts, "ExactKLGRPOTrainer")
        if message:
            logger.warning(message)

    # ---- reference ------------------------------------------------------------------------------------------

    def _load_reference(self, quantization_config):
        """A frozen copy of the initial policy, loaded from its path like GRPO loads its own reference."""
        from trl.models import prepare_deepspeed, prepare_fsdp
        from trl.trainer.utils import create_model_from_path, disable_dropout_in_model, get_config_model_id

        args = self.args
        unwrapped = self.accelerator.unwrap_model(self.model)
        init_kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            init_kwargs["quantization_config"] = quantization_config
        if args.distributed_state.distributed_type in ["MULTI_GPU", "DEEPSPEED"]:
            init_kwargs["device_map"] = None
        init_kwargs.setdefault("trust_remote_code", args.trust_remote_code)
        init_kwargs.setdefault("dtype", unwrapped.dtype)
        init_kwargs.setdefault("attn_implementation", unwrapped.config._attn_implementation)
        ref = create_model_from_path(get_config_model_id(unwrapped.config), **init_kwargs)
        if args.disable_dropout:
            disable_dropout_in_model(ref)
        ref.eval().requires_grad_(False)
        if self.is_deepspeed_enabled:
            return prepare_deepspeed(ref, self.accelerator)
        if self.is_fsdp_enabled:
            return prepare_fsdp(ref, self.accelerator)
        return self.accelerator.prepare_model(ref, evaluation_mode=True)

    # ---- sampling ---------------------------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """Checkpoints and ``save_model`` write the user's adapter, without the frozen ``"ref"`` adapter."""
        with reference_adapter_hidden(self.accelerator.unwrap_model(self.model)):
            super()._save(output_dir, state_dict)

    def _generate(self, *args, **kwargs):
        """GRPO's generation with the checkpoint's ``generation_config`` hidden (as in ``modeling.generation``): GRPO sets
        temperature/top_k/top_p/min_p/repetition_penalty itself, but transformers fills every other field it leaves
        unset (``typical_p``, ``no_repeat_ngram_size``, ``suppress_tokens``...) from the checkpoint, so the samples
        would not follow the softmax(logits / T) the loss and the exact KL assume."""
        with checkpoint_generation_config_hidden(self.accelerator.unwrap_model(self.model)):
            return super()._generate(*args, **kwargs)

    # ---- loss -----------------------------------------------------------------------------------------------
    def _aggregate_like_grpo(self, per_token: torch.Tensor, mask: torch.Tensor, inputs, mode: str) -> torch.Tensor:
        """Aggregate a per-token term as GRPO 1.16 aggregates ``per_token_loss`` (incl. its accumulation scaling),
        through the one registry of aggregations (``core.ppo.GRPO_LOSS_AGGREGATION``)."""
        ga = self.current_gradient_accumulation_steps if mode == "train" else 1
        # GRPO's num_items_in_batch counts the tokens of the whole generation batch (steps_per_generation
        # micro-batches); the tokens of one optimizer step are its ga / steps_per_generation share
        tokens = inputs["num_items_in_batch"]
        if mode == "train":
            tokens = tokens * self.current_gradient_accumulation_steps / self.args.steps_per_generation
        return aggregate_loss(
            per_token, mask, GRPO_LOSS_AGGREGATION[self.loss_type], gradient_accumulation_steps=ga,
            num_items_in_batch=tokens, num_processes=self.accelerator.num_processes,
            max_completion_length=self.max_completion_length,
        )

    def _one_pass_possible(self, model) -> bool:
        """Whether GRPO's log-probs and the exact KL can come from ONE chunked policy pass (``policy_logprobs``):
        a separable head, GRPO's own fused head not asked to run in fp32 (``cast_lm_head_to_fp32``)."""
        return not self.args.cast_lm_head_to_fp32 and split_lm(self.accelerator.unwrap_model(model)) is not None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **multimodal):  # fmt: skip
        """GRPO's log-probs; inside :meth:`compute_loss` (exact KL on) the same chunked pass also returns the exact
        KL to the reference (stashed for ``compute_loss``), so the policy runs once per micro-batch, not twice.

        Positions are counted ``0 … L−1`` as GRPO's own forward does (so GRPO's loss is unchanged), for the
        reference too. Padded completion positions get 0 like GRPO's fused head (which labels them -100).
        Multimodal inputs, MoE auxiliary losses and GRPO's own calls outside ``compute_loss`` (old/reference
        log-probs at generation) go to GRPO's implementation."""
        holder, self._exact_kl_pending = self._exact_kl_pending, None
        if holder is None or compute_aux_loss or any(v is not None for v in multimodal.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal,
            )
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device).expand(B, L)  # GRPO's forward: no position_ids
        with self.accelerator.autocast():
            out = policy_logprobs(
                model, input_ids, attention_mask, logits_to_keep, temperature=self.temperature,
                chunk_size=self.args.exact_kl_chunk_size, with_entropy=compute_entropy, ref_model=self._exact_kl_ref,
                with_exact_kl=True, position_ids=positions,
            )
        padded = attention_mask[:, -logits_to_keep:] == 0
        holder["exact_kl"] = out["exact_kl"]
        entropies = out["entropy"].masked_fill(padded, 0.0) if compute_entropy else None
        return out["logprobs"].masked_fill(padded, 0.0), entropies, None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        holder = {}
        if self.exact_kl_coef != 0 and self._one_pass_possible(model):
            self._exact_kl_pending = holder  # GRPO's forward below also computes the exact KL (one policy pass)
        try:
            loss = super().compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        finally:
            self._exact_kl_pending = None
        self.note_loss_terms(grpo=loss)  # a non-finite loss names its term (utils.finite)
        if self.exact_kl_coef == 0:
            return loss
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([inputs["prompt_ids"], completion_ids], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        mask = mask.float()
        per_token_kl = holder.get("exact_kl")
        if per_token_kl is None:  # GRPO took another path (Liger, multimodal, MoE aux loss): a second policy pass
            B, L = input_ids.shape
            per_token_kl = exact_kl_to_reference(
                model,
                self._exact_kl_ref,
                input_ids,
                attention_mask,
                completion_ids.size(1),
                temperature=self.temperature,
                chunk_size=self.args.exact_kl_chunk_size,
                position_ids=torch.arange(L, device=input_ids.device).expand(B, L),
            )
        mode = "train" if self.model.training else "eval"
        kl_term = self._aggregate_like_grpo(per_token_kl, mask, inputs, mode)
        self.note_loss_terms(kl=kl_term.detach())
        # metric: mean per-token exact KL over the global batch
        stats = torch.stack([(per_token_kl.detach() * mask).sum(), mask.sum()])
        stats = self.accelerator.gather(stats.unsqueeze(0)).sum(0)
        self._metrics[mode]["exact_kl"].append((stats[0] / stats[1].clamp(min=1.0)).item())
        return loss + self.exact_kl_coef * kl_term
