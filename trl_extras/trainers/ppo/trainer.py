"""PPO for current TRL, inside the ``transformers.Trainer`` loop.

TRL removed its ``PPOTrainer`` in 1.13. This one is built like TRL's ``GRPOTrainer``/``RLOOTrainer``: the train
dataloader yields a *rollout batch* of prompts (repeated ``num_generations`` times by TRL's ``RepeatSampler``, and
the whole batch repeated for every update step that reuses it); ``_prepare_inputs`` samples, scores and computes
advantages once per rollout batch (``_rollout``, steps 1-10, a :class:`~.rollout.RolloutBatch`) and hands out one
shuffled micro-batch per ``training_step``, as the :class:`~.schedule.PPOSchedule` says (when to roll out, which
rows, the approx-KL early stop); ``compute_loss`` is the clipped PPO surrogate plus the clipped value loss. So
callbacks, ``evaluate``, ``should_training_stop``, ``report_to``, checkpoint/resume and ``accelerate launch`` are the
Trainer's own. When each rollout batch is one on-policy optimizer step of one micro-batch per process
(``num_ppo_epochs=1``, one minibatch, no gradient accumulation), the rollout skips its policy/value pass and the
update's forward supplies those statistics (``_single_pass_update``), as TRL's GRPO does at ``num_iterations=1``.

The value model is a separate sequence-classification model (not a second head on the policy: the article
found two-headed models hard to train) whose ``score`` head is applied at every position. Its parameters are a
separate param group of the one optimizer (own learning rate); the policy and value losses are summed, which is
harmless because their parameters are disjoint (``vf_coef`` only rescales the value gradient).

Under DeepSpeed the Trainer's model is :class:`PolicyAndValueModel` (``trl_extras.modeling.value``), one module holding both,
so that DeepSpeed builds one engine (one ZeRO-partitioned optimizer, one checkpoint) over the policy and the value
model -- the layout of TRL's old ``PolicyAndValueWrapper``. Under DDP and in one process they stay two modules (the
value model is DDP-wrapped on its own), which lets the value warm-up skip the policy's forward entirely.

The math lives in ``trl_extras.core`` as pure functions (``core.kl`` exact KL / log-probs, ``core.ppo`` token
rewards/surrogate/value loss/aggregation/KL controllers, ``core.advantages`` GAE and normalization); the model
plumbing in ``trl_extras.modeling`` (``modeling.lm`` chunked log-probs/exact KL, ``modeling.generation`` rollouts,
``modeling.value`` the value model); this file orchestrates: rollout → score → KL → GAE → normalize → update.

KL gradient (``kl_estimator``; see ``trl_extras.core.kl``): with ``k1``/``k2``/``k3`` the penalty is in the reward
only, so the policy gradient carries the KL's score-function term through the advantage; with ``exact`` the
state term ``−β·KL_t`` is in the reward AND ``β·KL_t`` of the current policy (against the reference, recomputed at
each update micro-batch under no_grad) is added to the per-token policy loss, whose gradient is the direct term:
together the full Rao–Blackwellized gradient (Amini et al. 2025; Tang & Munos 2025, arXiv 2506.09477).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback
from trl.trainer.base_trainer import _BaseTrainer

from ...core.advantages import compute_gae, normalize_advantages
from ...core.kl import KL_PENALTIES
from ...core.masked import masked_mean
from ...core.ppo import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    aggregate_loss,
    aggregation_weights,  # [issue 23]
    approx_kl,
    explained_variance,
    policy_loss,
    scores_to_token_rewards,
    surrogate_grad_hint,  # [issue 23]
    value_loss,
)
from ...modeling.generation import (
    check_chat_template,
    ensure_pad_token,
    generate_rollouts,
    is_conversational_prompt,
    make_sampler,
    off_policy_sampling_settings,
    sampling_generation_config,
)
from ...modeling.lm import completion_token_stats
from ...modeling.peft import add_adapter, is_peft_model, merged_copy
from ...modeling.prompt_checks import (
    NUM_PROBE_PROMPTS,
    ShortCompletionWarning,
    has_chat_template,
    plain_prompts_to_chat_model_message,
)
from ...modeling.quantization import keep_4bit_layers_differentiable
from ...modeling.reference import reference_adapter_hidden, resolve_reference
from ...modeling.value import (
    PolicyAndValueModel,
    TokenValueModel,
    classifier_with_new_head,
    gathered_for_update,
    policy_and_values,
)
from ...rewards.functions import RewardFunctions, check_unique_names
from ...rewards.source import (
    ValueInitUnavailable,
    is_adapter_dir,
    load_adapter_reward_model,
    value_init_copy,
)
from ...utils.completions import CompletionLog
from ...utils.finite import NonFiniteGuardMixin
from ...utils.offline import NoTelemetryMixin
from ...utils.progress import quiet_replica_logs
from .checkpoint import (
    CHECKPOINT_KIND,
    FIXED_ON_RESUME,
    PPO_STATE_FILE,
    VALUE_STATE_FILE,
    checkpoint_problem,
    latest_complete_checkpoint,
    ppo_fingerprint,
    ppo_inputs_identity,
    rollout_buffer_file,
)
from .config import PPOConfig
from .rollout import RolloutBatch
from .schedule import PPOSchedule

logger = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------------------------


def _model_path(model) -> str | None:
    return getattr(getattr(model, "config", None), "_name_or_path", None) or None


def _first_prompts(dataset, n: int = NUM_PROBE_PROMPTS) -> list:
    """The first ``n`` prompts of a map-style dataset (none for an iterable one: it is not read ahead)."""
    if not hasattr(dataset, "__len__") or len(dataset) == 0:
        return []
    return list(dataset.select(range(min(n, len(dataset))))["prompt"]) if hasattr(dataset, "select") else [
        dataset[i]["prompt"] for i in range(min(n, len(dataset)))
    ]


# Metrics whose NaN means "undefined for that rollout" (not a failure): explained variance with constant returns
# (core.ppo.explained_variance). A window averages their defined entries and logs NaN (as TRL logs NaN: as is)
# only when none is defined. Every other metric keeps NaN visible; losses have their own guard (utils.finite).
_NAN_WHEN_UNDEFINED = frozenset({"value/explained_variance"})


def _window_reduce(key: str, values: list[float]) -> float:
    """One logged value from a logging window's entries: min for ``*_min``, max for ``*_max``, else the mean
    (over the defined entries for the keys of ``_NAN_WHEN_UNDEFINED``)."""
    if key in _NAN_WHEN_UNDEFINED:
        values = [v for v in values if not math.isnan(v)] or [float("nan")]
    if key.endswith("_min"):
        return min(values)
    if key.endswith("_max"):
        return max(values)
    return sum(values) / len(values)


def _same_vocab(tok_a, tok_b) -> bool:
    return tok_a is tok_b or (tok_a is not None and tok_b is not None and tok_a.get_vocab() == tok_b.get_vocab())


# ----------------------------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------------------------
class PPOTrainer(NoTelemetryMixin, NonFiniteGuardMixin, _BaseTrainer):
    """Proximal Policy Optimization (Schulman et al. 2017) for language models, in the Trainer loop.

    Args:
        model: policy, a path or a ``PreTrainedModel`` (causal LM).
        reward_funcs: what :class:`~trl_extras.rewards.functions.RewardFunctions` accepts (the reward contract,
            :func:`trl_extras.rewards.source.load_reward`): reward-model paths (a full checkpoint, a LoRA adapter
            folder, a saved ``RewardEnsemble`` directory) or instances, callables with GRPO's signature
            ``f(prompts, completions, **kwargs) -> list[float]``, a ``RewardEnsemble``; several are summed with
            ``args.reward_weights`` and named by ``args.reward_names``.
        args: :class:`PPOConfig`.
        train_dataset, eval_dataset: datasets with a ``prompt`` column (text or conversational); other columns
            are passed to the reward functions as keyword arguments (lists).
        processing_class: the policy's tokenizer (loaded from the policy path when omitted). A tokenizer without
            pad token gets ``pad_token = eos_token``.
        value_model: path or ``*ForSequenceClassification`` instance (``num_labels=1``). Default: see
            ``args.value_model_init``.
        ref_model: the frozen reference. Default: the initial policy (``trl_extras.modeling.resolve_reference``):
            a frozen copy of a plain policy; with ``peft_config`` the same model with its fresh adapter disabled;
            for a ``PeftModel`` whose adapter is already trained, a frozen copy of that adapter kept as a second
            adapter ``"ref"`` (never trained, never saved), so the KL starts at 0 from the policy as given.
        reward_processing_classes: tokenizers for reward models given as instances.
        log_reward_funcs: reward functions that are only *tracked* (logged as ``rewards/<name>/mean``, never
            optimized), e.g. a gold reward while optimizing a proxy reward model.
        callbacks, optimizers: as in ``transformers.Trainer``. A custom optimizer must include the value
            model's trainable parameters.
        quantization_config: e.g. ``BitsAndBytesConfig(load_in_4bit=True)``, used when loading models from paths.
        peft_config: LoRA for the policy. value_peft_config: LoRA for the value model (default with
            ``peft_config``: the same config with ``task_type="SEQ_CLS"``, head trained in full).

    Distributed: DDP and DeepSpeed ZeRO-2/3 through ``accelerate launch`` (FSDP raises ``NotImplementedError``).
    Under DeepSpeed ``self.model`` is a :class:`PolicyAndValueModel` (use ``trainer.policy`` for the policy);
    gradient clipping is then joint over policy and value, and ``save_model`` still writes the policy alone.
    """

    _tag_names = ["trl", "ppo", "trl-extras"]
    _name = "PPO"
    _paper = {
        "title": "Proximal Policy Optimization Algorithms",
        "id": "1707.06347",
        "citation": (
            "@article{schulman2017proximal,\n"
            "    title        = {{Proximal Policy Optimization Algorithms}},\n"
            "    author       = {John Schulman and Filip Wolski and Prafulla Dhariwal and Alec Radford and Oleg Klimov},\n"
            "    year         = 2017,\n"
            "    eprint       = {arXiv:1707.06347}\n"
            "}"
        ),
    }
    # compute_loss normalises for gradient accumulation itself (core.ppo.aggregate_loss, `loss_type`)
    loss_is_scaled_for_ga = True

    def __init__(
        self,
        model,
        reward_funcs,
        args: PPOConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        value_model=None,
        ref_model=None,
        reward_processing_classes=None,
        log_reward_funcs=None,
        callbacks=None,
        optimizers=(None, None),
        quantization_config=None,
        peft_config=None,
        value_peft_config=None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed

        if args is None:
            name = model if isinstance(model, str) else (_model_path(model) or type(model).__name__)
            args = PPOConfig(f"{str(name).rstrip('/').split('/')[-1]}-PPO")
        if not isinstance(args, PPOConfig):
            raise TypeError(f"`args` must be a PPOConfig, got {type(args).__name__}.")
        set_seed(args.seed)  # PEFT and fresh value heads initialise randomly
        quiet_replica_logs()  # under accelerate launch each warning is printed once, by the main process
        # What the run is built from, by content, before anything is loaded or moved: stored in every checkpoint, and
        # a resume from other inputs (another reward, initial policy or reference) is refused (see `train`)
        self._resume_inputs = ppo_inputs_identity(
            model, reward_funcs, ref_model, value_model, peft_config, value_peft_config, train_dataset,
            args.reward_weights,
        )

        # Model kwargs shared by everything loaded from a path
        model_init_kwargs = dict(args.model_init_kwargs or {})
        if quantization_config is not None:
            if "quantization_config" in model_init_kwargs:
                raise ValueError("Set `quantization_config` either as a trainer argument or in model_init_kwargs, not both.")
            model_init_kwargs["quantization_config"] = quantization_config
        if args.distributed_state.distributed_type in ("MULTI_GPU", "DEEPSPEED"):
            model_init_kwargs["device_map"] = None  # "auto" fails under DDP
        self._model_init_kwargs = model_init_kwargs

        # Policy
        policy_path = model if isinstance(model, str) else None
        if isinstance(model, str):
            model = AutoModelForCausalLM.from_pretrained(model, **model_init_kwargs)
        if processing_class is None:
            path = policy_path or _model_path(model)
            if path is None:
                raise ValueError("Pass `processing_class` for a policy instance that was not loaded from a path.")
            processing_class = AutoTokenizer.from_pretrained(path, padding_side="left")
        tokenizer = getattr(processing_class, "tokenizer", processing_class)
        ensure_pad_token(tokenizer)  # documented: no pad token -> EOS
        model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model, "generation_config", None) is not None:
            model.generation_config.pad_token_id = tokenizer.pad_token_id

        self._check_sampling(args, tokenizer)

        # Data: fail at construction, not mid-training
        if train_dataset is None:
            raise ValueError("`train_dataset` with a `prompt` column is required.")
        for split, ds in (("train", train_dataset), ("eval", eval_dataset)):
            for d in (ds.values() if isinstance(ds, dict) else [ds]) if ds is not None else []:
                self._check_dataset(d, tokenizer, split)
        self._check_inputs_fit(args, model, tokenizer, train_dataset)
        message = plain_prompts_to_chat_model_message(model, tokenizer, _first_prompts(train_dataset), "PPOTrainer")
        if message and args.process_index == 0:  # once, not once per process
            logger.warning(message)

        if peft_config is not None:
            if is_peft_model(model):
                raise ValueError("Pass either a PeftModel or `peft_config`, not both.")
            model = add_adapter(model, peft_config)
        is_peft = is_peft_model(model)
        keep_4bit_layers_differentiable(model)  # rollouts run under no_grad, then we train through the same layers
        if not is_peft and (getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False)):
            raise ValueError("A quantized (4/8-bit) policy can only be trained with adapters: pass `peft_config`.")

        # Rewards: one path for paths, models, callables and ensembles
        self.reward_functions = RewardFunctions(
            reward_funcs, reward_processing_classes=reward_processing_classes, reward_weights=args.reward_weights,
            reward_names=args.reward_names,
        )
        self.log_reward_functions = RewardFunctions(log_reward_funcs) if log_reward_funcs else None
        if self.log_reward_functions is not None:
            self._check_tracked_names(self.reward_functions, self.log_reward_functions)

        # Value model
        value_model = self._build_value_model(
            value_model, args, model, policy_path, tokenizer, value_peft_config, peft_config
        )

        # Reference model = the initial policy: a frozen copy; for PEFT the same model, with its adapter disabled
        # when that adapter is still the identity, else with a frozen "ref" copy of the starting adapter
        if isinstance(ref_model, str):
            ref_model = AutoModelForCausalLM.from_pretrained(ref_model, **model_init_kwargs)
        ref_model = resolve_reference(
            model,
            ref_model,
            make_copy=lambda: (
                AutoModelForCausalLM.from_pretrained(policy_path, **model_init_kwargs)
                if policy_path is not None
                else copy.deepcopy(model)
            ),
        )

        if args.disable_dropout:
            from trl.trainer.utils import disable_dropout_in_model

            for m in (model, value_model, ref_model):
                if m is not None:
                    disable_dropout_in_model(m)

        self.value_model = value_model
        # Under DeepSpeed one engine must own both models (see PolicyAndValueModel); decided before the Trainer
        # builds the accelerator, from the same setting it reads (`--deepspeed` or `accelerate launch`'s env).
        self._joint_model = args.deepspeed_plugin is not None
        trainer_model = PolicyAndValueModel(model, value_model) if self._joint_model else model
        super().__init__(
            model=trainer_model,
            args=args,
            data_collator=lambda features: features,  # rows go as they are: prompts are tokenized at rollout
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            callbacks=callbacks,
            optimizers=optimizers,
        )
        if args.n_gpu > 1:
            raise ValueError("PPOTrainer does not support nn.DataParallel: launch with `accelerate launch`/torchrun.")
        if self.is_fsdp_enabled:
            raise NotImplementedError(
                "PPOTrainer does not support FSDP: its rollout statistics call the policy and value model outside "
                "the root module's forward, which FSDP's sharded parameters do not allow, and it is untested "
                "(accelerate 1.16 runs FSDP only on GPUs; see README, Limits). Use DeepSpeed ZeRO-2/3 "
                "(recipes/accelerate/zero2.yaml, zero3.yaml: shards parameters like FSDP) or DDP "
                "(recipes/accelerate/ddp.yaml)."
            )
        if self._joint_model != self.is_deepspeed_enabled:
            raise RuntimeError("PPOTrainer: DeepSpeed was enabled differently from what `args.deepspeed_plugin` said.")
        self._tokenizer = tokenizer
        if not self._joint_model:  # under DeepSpeed the value model is inside the engine already
            self.value_model = self.accelerator.prepare_model(value_model)
        if ref_model is None:
            self.ref_model = None
        elif self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            # ZeRO-3: sharded like the policy; ZeRO-1/2: a full inference copy per process (stage 0)
            self.ref_model = prepare_deepspeed(ref_model, self.accelerator)
        else:
            self.ref_model = self.accelerator.prepare_model(ref_model, evaluation_mode=True)
        self._place_reward_models()

        self.kl_ctl = (
            AdaptiveKLController(args.kl_coef, args.target_kl, args.kl_horizon)
            if args.adaptive_kl
            else FixedKLController(args.kl_coef)
        )
        self.reward_moments = RunningMoments()
        self._metrics = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._last_rollout_metrics: dict[str, float] = {}  # see `log`
        self._short_completions = ShortCompletionWarning("PPOTrainer")
        # `log_completions`: the rollouts' (prompt, completion, rewards) rows since the last log, as GRPO logs them
        self._completion_log = CompletionLog.from_args(
            args, maxlen=args.generation_batch_size, parquet_dir=Path(args.output_dir) / "completions"
        )
        # when to roll out, which rows each micro-step trains on, the approx-KL early stop; and the current
        # rollout batch (this process's rows; None until the first rollout and after a resume at a batch boundary)
        self._schedule = PPOSchedule.from_args(args)
        self._rollout_batch: RolloutBatch | None = None
        # on-policy single update: one policy/value pass in the update instead of one more at rollout (see
        # `_single_pass_update`); tests turn it off to compare with the two-pass path
        self._single_pass_enabled = True
        # set by `train` for one call (resume settings accepted, run lineage, stop signals, what stopped the run)
        self._accepted_changes: dict = {}
        self._lineage = None
        self._stop_signals = None
        self._stopped_by: str | None = None
        if hasattr(self.policy, "add_model_tags"):
            self.policy.add_model_tags(self._tag_names)
        # the generation backend (generate / continuous batching / vLLM: args.use_vllm, ...), see _sync_sampler_if_changed
        self.sampler = make_sampler(args, self.policy, tokenizer, self.accelerator)
        self._sampler_synced_step = None  # global_step of the weights the sampler holds (None: never pushed)

    def _place_reward_models(self) -> None:
        """Reward models to the device through the reward contract; under DeepSpeed a reward model becomes an
        inference engine, as in TRL's GRPO (ZeRO-3 shards it like the policy -- a model loaded under ZeRO-3 is
        partitioned and has no forward without one)."""
        wrap = None
        if self.is_deepspeed_enabled:
            from trl.models.utils import prepare_deepspeed

            wrap = lambda module: prepare_deepspeed(module, self.accelerator)  # noqa: E731
        for functions in (self.reward_functions, self.log_reward_functions):
            if functions is not None:
                functions.place(self.accelerator.device, wrap)

    @staticmethod
    def _check_tracked_names(optimized: RewardFunctions, tracked: RewardFunctions) -> None:
        """Optimized and tracked rewards both log as ``rewards/<name>/mean``: a name they share must be the same
        reward (``gold`` optimized and tracked, as the testbed recipe does), never two rewards mixed in one curve."""
        check_unique_names(tracked.names, "tracked reward")
        mine = dict(zip(optimized.names, optimized.funcs))
        for name, fn in zip(tracked.names, tracked.funcs):
            if name in mine and mine[name].content_identity() != fn.content_identity():
                raise ValueError(
                    f"An optimized and a tracked reward are both named {name!r} but are different rewards: their "
                    f"metrics (rewards/{name}/mean) would mix. Give them distinct names (reward_names=[...], or a "
                    "function's __name__ / a reward model folder's last name)."
                )

    def nonfinite_models(self) -> dict[str, nn.Module]:
        """What the non-finite guard checks and what a checkpoint holds: the policy and the value model."""
        return {"policy": self.policy, "value_model": self.accelerator.unwrap_model(self.value_model)}

    @property
    def policy(self) -> nn.Module:
        """The policy module (unwrapped from DDP/DeepSpeed and from :class:`PolicyAndValueModel`)."""
        model = self.accelerator.unwrap_model(self.model)
        return model.policy if isinstance(model, PolicyAndValueModel) else model

    # ------------------------------------------------------------------------------------------------------------
    # Construction helpers
    # ------------------------------------------------------------------------------------------------------------
    @staticmethod
    def _check_dataset(dataset, tokenizer, split: str) -> None:
        names = getattr(dataset, "column_names", None)
        if names is not None and "prompt" not in names:
            raise ValueError(f"The {split} dataset needs a `prompt` column; it has {names}.")
        if not hasattr(dataset, "__len__"):
            return  # an IterableDataset: prompts are checked when they are tokenized
        if len(dataset) == 0:
            raise ValueError(f"The {split} dataset is empty.")
        prompts = dataset["prompt"]
        check_chat_template(tokenizer, prompts[:1])
        for i, p in enumerate(prompts):
            if p is None or (not is_conversational_prompt(p) and not str(p).strip()) or (isinstance(p, list) and not p):
                raise ValueError(f"The {split} dataset has an empty prompt at row {i}.")
        from ...modeling.checks import check_prompt_column

        check_prompt_column(prompts, split)  # ints, messages without a (known) role

    @staticmethod
    def _check_inputs_fit(args, model, tokenizer, train_dataset) -> None:
        """Settings that would train nothing or past the model's positions, silently: refused at construction."""
        from ...modeling.checks import check_enough_prompts, check_fits_positions

        layout = (
            f"generation_batch_size {args.generation_batch_size} = per_device_train_batch_size "
            f"{args.per_device_train_batch_size} x {args.world_size} process(es) x steps_per_generation "
            f"{args.steps_per_generation} (gradient_accumulation_steps {args.gradient_accumulation_steps} x "
            f"num_mini_batches {args.num_mini_batches}), / num_generations {args.num_generations}"
        )
        check_enough_prompts(train_dataset, args.generation_batch_size // args.num_generations, layout)
        prompts = train_dataset["prompt"] if hasattr(train_dataset, "__len__") else None
        check_fits_positions(model.config, tokenizer, prompts, args.max_prompt_length, args.max_completion_length,
                             "PPOTrainer")  # fmt: skip

    @staticmethod
    def _sampling_kwargs(args) -> dict:
        """``generate_rollouts`` settings from the config: temperature, explicit truncations, other overrides."""
        overrides = {}
        if args.min_p is not None:
            overrides["min_p"] = args.min_p
        if args.repetition_penalty != 1.0:
            overrides["repetition_penalty"] = args.repetition_penalty
        overrides.update(args.generation_kwargs or {})
        return dict(
            temperature=args.temperature, top_k=args.top_k or None, top_p=args.top_p, generation_kwargs=overrides
        )

    def _check_sampling(self, args, tokenizer) -> None:
        """Build the rollout ``GenerationConfig`` once (bad settings fail here) and warn when the user's own
        truncation or penalty makes samples differ from softmax(logits / temperature), which the update assumes."""
        if args.generation_kwargs is not None and not isinstance(args.generation_kwargs, dict):
            raise ValueError(f"generation_kwargs must be a dict, got {type(args.generation_kwargs).__name__}.")
        owned = {"temperature", "do_sample", "max_new_tokens", "num_return_sequences"} & set(args.generation_kwargs or {})
        if owned:
            raise ValueError(
                f"generation_kwargs sets {sorted(owned)}: PPO owns these (log-probs divide by PPOConfig.temperature; "
                "use temperature / max_completion_length / num_generations)."
            )
        settings = self._sampling_kwargs(args)
        overrides = settings.pop("generation_kwargs")
        config = sampling_generation_config(
            **{
                "max_new_tokens": args.max_completion_length,
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                **settings,
                **overrides,
            }
        )
        changed = off_policy_sampling_settings(config)
        if changed:
            logger.warning(
                "Sampling with %s: completions are not drawn from softmax(logits / temperature), which the PPO update "
                "assumes (old log-probs, ratio, KL and entropy use the untruncated distribution), so every update is "
                "off-policy. Leave these unset for on-policy PPO.",
                ", ".join(f"{k}={v!r}" for k, v in changed.items()),
            )

    def _build_value_model(self, value_model, args, policy, policy_path, tokenizer, value_peft_config, peft_config):
        from transformers import AutoModelForSequenceClassification

        if isinstance(value_model, str) and is_adapter_dir(value_model):  # a LoRA reward model's folder
            value_model = value_init_copy(load_adapter_reward_model(value_model, self._model_init_kwargs)[0])
        elif isinstance(value_model, str):
            value_model = AutoModelForSequenceClassification.from_pretrained(
                value_model, num_labels=1, **self._model_init_kwargs
            )
        elif value_model is None:
            value_model = self._value_from_reward(args, tokenizer)
            if value_model is None:
                value_model = self._value_from_policy(policy, policy_path)
        if getattr(value_model.config, "num_labels", 1) != 1:
            raise ValueError(f"The value model must have num_labels == 1, got {value_model.config.num_labels}.")
        if value_peft_config is None and peft_config is not None and not is_peft_model(value_model):
            value_peft_config = copy.deepcopy(peft_config)
            value_peft_config.task_type = "SEQ_CLS"
            value_peft_config.base_model_name_or_path = None  # the value model may start from another model
        if value_peft_config is not None:
            value_model = add_adapter(value_model, value_peft_config)
        value_model.config.pad_token_id = tokenizer.pad_token_id
        keep_4bit_layers_differentiable(value_model)
        if args.gradient_checkpointing and hasattr(value_model, "gradient_checkpointing_enable"):
            value_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return TokenValueModel(value_model)

    def _value_from_reward(self, args, tokenizer):
        """The value model per ``args.value_model_init`` from the reward contract
        (``RewardFunctions.value_init_model``: the first reward model, adapter merged, head kept), or None for
        "start from the policy"."""
        if args.value_model_init == "policy":
            return None
        try:
            rm, rm_tok = self.reward_functions.value_init_model()
        except ValueInitUnavailable as err:  # e.g. a 4-bit LoRA reward model: its adapter cannot be merged exactly
            if args.value_model_init == "reward":
                raise
            logger.warning("%s Value model initialised from the policy.", err)
            return None
        if rm is None:
            if args.value_model_init == "reward":
                raise ValueError("value_model_init='reward' but no reward model is among the reward functions.")
            return None
        if not _same_vocab(rm_tok, tokenizer):
            if args.value_model_init == "reward":
                raise ValueError(
                    "value_model_init='reward': the reward model's tokenizer differs from the policy's; the "
                    "value model reads policy tokens. Pass `value_model` or use value_model_init='policy'."
                )
            logger.warning("Reward model tokenizer differs from the policy's: value model initialised from the policy.")
            return None
        return rm

    def _value_from_policy(self, policy, policy_path):
        """The policy's backbone, as given, with a fresh zero-initialised scalar head (values start at 0).

        A ``PeftModel`` policy contributes its base weights with its active adapter merged into them
        (:func:`~trl_extras.modeling.peft.merged_copy`), not the bare base: the critic should start from the features
        of the policy it evaluates (an SFT'd LoRA's effect included), which is why it is initialised from the policy
        at all; PEFT's ``...base_layer.weight`` names disappear with the merge. A quantized PEFT policy cannot be
        merged exactly: its base is reloaded from its path (warned). A policy loaded from a path with a fresh
        ``peft_config`` adapter equals its checkpoint, which is loaded directly.
        """
        from transformers import AutoModelForSequenceClassification

        base = policy.get_base_model() if is_peft_model(policy) else policy
        quantized = getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
        if policy_path is None and quantized and _model_path(base):
            if is_peft_model(policy):
                logger.warning(
                    "Value model initialised from the quantized policy's base checkpoint %s: the adapter's effect is "
                    "not merged into it (merging into 4/8-bit weights is not exact).", _model_path(base),
                )
            policy_path = _model_path(base)
        if policy_path is not None:  # the head is zeroed below: no "MISSING ... newly initialized" report for it
            value = classifier_with_new_head(policy_path, **self._model_init_kwargs)
        else:
            base = merged_copy(policy) if is_peft_model(policy) else policy
            config = copy.deepcopy(base.config)
            config.num_labels = 1
            value = AutoModelForSequenceClassification.from_config(config, dtype=base.dtype)
            missing, _ = value.load_state_dict(base.state_dict(), strict=False)
            del base
            head_names = ("score", "classifier")
            if any(k.split(".")[0] not in head_names for k in missing):
                raise ValueError(f"Could not initialise the value model from the policy: missing {missing[:5]}.")
        head = TokenValueModel._head(value)
        with torch.no_grad(), gathered_for_update(list(head.parameters())):
            for p in head.parameters():
                p.zero_()
        return value

    # ------------------------------------------------------------------------------------------------------------
    # Data: GRPO's RepeatSampler layout
    # ------------------------------------------------------------------------------------------------------------
    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["prompt"]

    def get_train_dataloader(self):
        # One dataloader batch = one local rollout batch (per_device_train_batch_size * steps_per_generation rows)
        return self._get_dataloader(
            dataset=self.train_dataset,
            description="Training",
            batch_size=self._train_batch_size * self.args.steps_per_generation,
            sampler_fn=self._get_train_sampler,
            is_training=True,
        )

    def _get_train_sampler(self, dataset=None):
        from trl.trainer.utils import RepeatSampler

        # Each prompt appears num_generations times in a row (a group stays on one process); the whole rollout
        # batch is repeated for every optimizer step that reuses it (num_ppo_epochs * num_mini_batches * GA).
        return RepeatSampler(
            data_source=self.train_dataset if dataset is None else dataset,
            mini_repeat_count=self.args.num_generations,
            batch_size=self.args.rollout_batch_size // self.args.num_generations,
            repeat_count=self.args.num_ppo_epochs * self.args.steps_per_generation,
            shuffle=self.args.shuffle_dataset,
            seed=self.args.seed,
        )

    # ------------------------------------------------------------------------------------------------------------
    # Optimizer: the value model is a second param group with its own learning rate
    # ------------------------------------------------------------------------------------------------------------
    def create_optimizer(self, model=None):
        if self.optimizer is not None:  # the user's own optimizer (documented: it must hold the value parameters)
            return super().create_optimizer(model)
        optimizer = super().create_optimizer(model)
        # Under DeepSpeed the Trainer's model holds the value model too, so the Trainer put its parameters in the
        # policy's groups: move them out, into one group with the value learning rate.
        value_params = [p for p in self.value_model.parameters() if p.requires_grad]
        value_ids = {id(p) for p in value_params}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in value_ids]
        optimizer.param_groups[:] = [group for group in optimizer.param_groups if group["params"]]
        if value_params:
            optimizer.add_param_group(
                {"params": value_params, "lr": self.args.value_learning_rate, "weight_decay": self.args.weight_decay}
            )
        return optimizer

    def _clip_grad_norm(self, model):
        # Trainer clips the policy only; clip the value model on its own (its gradient scale is unrelated). Under
        # DeepSpeed the engine clips both together (one `gradient_clipping` over the one module).
        if self.args.max_grad_norm and self.args.max_grad_norm > 0 and not self._joint_model:
            params = [p for p in self.value_model.parameters() if p.grad is not None]
            if params:
                norm = torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
                self._metrics["train"]["value/grad_norm"].append(float(norm))
        return super()._clip_grad_norm(model)

    # ------------------------------------------------------------------------------------------------------------
    # Rollout -> score -> KL -> GAE -> normalize
    # ------------------------------------------------------------------------------------------------------------
    def _log_metric_fn(self, mode):
        def log_metric(name: str, value: float):
            self._metrics[mode][name].append(float(value))

        return log_metric

    @staticmethod
    def _metric_name(name: str) -> str:
        # reward models are named by their path; keep the last component for readable metric keys
        return str(name).rstrip("/").split("/")[-1] or str(name)

    def _gather_mean(self, t: torch.Tensor) -> float:
        return self.accelerator.gather(t.detach().float().reshape(-1).to(self.accelerator.device)).mean().item()

    def _global_masked_mean(self, x: torch.Tensor, mask: torch.Tensor) -> float:
        """Mean of ``x`` ``(B, T)`` over the valid tokens of every process (one all-reduce of sum and count)."""
        return float(masked_mean(x.detach().float(), mask, accelerator=self.accelerator))

    def _log_update_metrics(self, metrics, mask: torch.Tensor, tensors: dict, ratio: torch.Tensor | None = None):
        """Append each ``(B, T)`` tensor's mean over the valid tokens of ALL processes to ``metrics``, and with
        ``ratio`` the importance ratio's global ``policy/ratio_min|max`` (TRL's GRPO logs its clip-ratio statistics
        the same way; at the first update of a rollout batch the ratio is exactly 1; ``log`` reports the min of the
        ``_min`` and the max of the ``_max`` entries of its window). One gather and one host sync per micro-batch
        for all of them, not one collective per metric."""
        valid = mask.bool()
        zero = torch.zeros((), dtype=torch.float32, device=mask.device)
        row = [torch.where(valid, t.detach().float(), zero).sum() for t in tensors.values()] + [valid.sum().float()]
        if ratio is not None:
            r = ratio[valid].float()
            inf = torch.tensor(float("inf"), device=mask.device)
            row += [r.min(), -r.max()] if r.numel() else [inf, inf]  # no valid token here: neutral for min/max
        local = torch.stack(row).reshape(1, -1).to(self.accelerator.device)
        table = (self.accelerator.gather(local) if self.accelerator.num_processes > 1 else local).double().cpu()
        n = len(tensors)
        totals = table[:, : n + 1].sum(0)
        count = max(float(totals[n]), 1.0)
        for i, key in enumerate(tensors):
            metrics[key].append(float(totals[i]) / count)
        if ratio is not None:
            metrics["policy/ratio_min"].append(float(table[:, n + 1].min()))
            metrics["policy/ratio_max"].append(-float(table[:, n + 2].min()))

    def _score(self, rollout, extra: dict, mode: str) -> torch.Tensor:
        """Step 2 of the rollout: the reward functions' weighted sum ``(B,)`` of each completion, as given (raw).
        Logs each reward (``rewards/<name>/mean``, the tracked ones too), ``reward``/``reward_std`` and the
        completions' mean length and EOS rate (all processes), and records the completions when asked to."""
        args = self.args
        mask, is_eos = rollout.completion_mask, rollout.is_eos
        kwargs = dict(extra, trainer_state=self.state, log_metric=self._log_metric_fn(mode))
        completion_ids_list = [ids[m.bool()].tolist() for ids, m in zip(rollout.completion_ids, mask)]
        reward_out = self.reward_functions(
            prompts=rollout.prompts, completions=rollout.completions, completion_ids=completion_ids_list, **kwargs
        )
        raw_scores = reward_out.total.to(self.accelerator.device)
        metrics = self._metrics[mode]
        for j, name in enumerate(reward_out.names):
            metrics[f"rewards/{self._metric_name(name)}/mean"].append(self._gather_mean(reward_out.per_function[:, j]))
        tracked = None
        if self.log_reward_functions is not None:  # tracked, never optimized (e.g. the gold reward)
            tracked = self.log_reward_functions(
                prompts=rollout.prompts, completions=rollout.completions, completion_ids=completion_ids_list, **kwargs
            )
            for j, name in enumerate(tracked.names):
                metrics[f"rewards/{self._metric_name(name)}/mean"].append(self._gather_mean(tracked.per_function[:, j]))
        all_raw = self.accelerator.gather(raw_scores)
        metrics["reward"].append(all_raw.mean().item())
        metrics["reward_std"].append(all_raw.std().item() if all_raw.numel() > 1 else 0.0)
        mean_length = self._gather_mean(mask.sum(1).float())
        metrics["completions/mean_length"].append(mean_length)
        if mode == "train" and self.accelerator.is_main_process:  # the mean is global: warned by one process
            self._short_completions.check(mean_length, has_chat_template(self._tokenizer))
        metrics["completions/eos_rate"].append(self._gather_mean(is_eos.float()))
        if args.log_completions and mode == "train":
            self._record_completions(rollout, reward_out, tracked)
        return raw_scores

    def _shaped_scores(self, raw_scores: torch.Tensor, is_eos: torch.Tensor) -> torch.Tensor:
        """Steps 3-4 of the rollout: the ``(B,)`` scores the policy is trained on."""
        args = self.args
        # 3. Missing-EOS penalty (off by default): subtract `missing_eos_penalty` from the score of a completion cut at
        #    max_completion_length (Huang et al.'s TL;DR setting replaces such scores by -1 instead).
        scores = raw_scores.clone()
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~is_eos).float()
        # 4. Optional reward normalization (running statistics over all processes) and clipping.
        if args.reward_normalization:
            self.reward_moments.update(self.accelerator.gather(scores))
            scores = (scores - self.reward_moments.mean) / self.reward_moments.std
        if args.reward_clip is not None:
            scores = scores.clamp(-args.reward_clip, args.reward_clip)
        return scores

    def _kl_bookkeeping(self, exact_kl: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, beta: float) -> None:
        """Step 10 of the rollout, from the ``(B, T)`` exact KL and the penalty's KL (0 on padding): log their
        per-sequence sums (and the exact KL's token mean) and β, move the adaptive β, and stop training past
        ``kl_budget``."""
        args = self.args
        metrics = self._metrics["train"]
        mean_exact_kl = self._gather_mean((exact_kl * mask).sum(1))
        metrics["kl/exact"].append(mean_exact_kl)
        # the same KL per token (GRPO's `exact_kl` scale): `kl/exact` grows with the completions' length
        metrics["kl/exact_per_token"].append(self._global_masked_mean(exact_kl, mask))
        mean_kl = self._gather_mean(kl.sum(1))
        if not KL_PENALTIES.get(args.kl_estimator).needs_full_vocabulary:  # a sampled estimate, beside the exact KL
            metrics[f"kl/{args.kl_estimator}"].append(mean_kl)
        metrics["kl/coef"].append(beta)
        self.kl_ctl.update(mean_kl, args.rollout_batch_size)
        if args.kl_budget is not None and mean_exact_kl > args.kl_budget:
            logger.info("KL to the reference %.3f passed kl_budget=%.3f: stopping training.", mean_exact_kl, args.kl_budget)
            metrics["kl/budget_stop"].append(1.0)
            self.control.should_training_stop = True

    def _sync_sampler_if_changed(self) -> None:
        """Push the policy's weights to a generation engine that holds its own copy (vLLM) when the policy changed
        since the last push: once per rollout after the updates, never twice for the same weights (e.g. evaluation
        between updates, or eval-only runs after the first push). The first rollout pushes, as TRL's GRPO does: the
        engine loaded the checkpoint from disk, which an in-memory model or an adapter may not match. ``generate``
        and continuous batching read the live model: nothing to do."""
        if not self.sampler.needs_weight_sync or self._sampler_synced_step == self.state.global_step:
            return
        self.sampler.sync_weights(self.policy)  # PEFT merge -> push -> unmerge, ZeRO-3 gathered (TRL's sync_weights)
        self._sampler_synced_step = self.state.global_step

    def _sampler_correction(self, sampler_logprobs, logprobs, mask, advantages, metrics) -> torch.Tensor:
        """Engine vs trainer log-probs: log ``rollout/logprob_gap/mean|max`` when the engine returned log-probs and,
        with ``use_vllm`` and ``vllm_importance_sampling_correction``, scale the advantages by TRL's truncated / masked
        importance-sampling ratio (``rho >= 0`` times the clipped surrogate's advantage equals ``rho`` times its loss,
        as TRL multiplies the per-token loss). The old log-probs stay the trainer's own (ratio 1 at the first update)."""
        if sampler_logprobs is None:
            return advantages
        from ...core.sampler_correction import importance_sampling_ratio, logprob_gap

        sampler_logps = sampler_logprobs.to(logprobs.device)
        gap = logprob_gap(logprobs, sampler_logps, mask)
        zero = torch.zeros((), device=logprobs.device)
        row = torch.stack([gap.sum() if gap.numel() else zero, torch.tensor(float(gap.numel()), device=zero.device),
                           gap.max() if gap.numel() else zero]).reshape(1, -1)  # fmt: skip
        table = self.accelerator.gather(row) if self.accelerator.num_processes > 1 else row
        metrics["rollout/logprob_gap/mean"].append(float(table[:, 0].sum() / table[:, 1].sum().clamp(min=1)))
        metrics["rollout/logprob_gap/max"].append(float(table[:, 2].max()))
        args = self.args
        if not (args.use_vllm and args.vllm_importance_sampling_correction):
            return advantages
        ratio = importance_sampling_ratio(
            logprobs, sampler_logps, mask, args.vllm_importance_sampling_mode,
            args.vllm_importance_sampling_clip_min, args.vllm_importance_sampling_clip_max,
        )  # fmt: skip
        metrics["rollout/importance_sampling_ratio/mean"].append(self._global_masked_mean(ratio, mask))
        return advantages * ratio

    @torch.no_grad()
    def _rollout(self, rows: list[dict], mode: str) -> RolloutBatch:
        """Sample, score, and (in training) compute KL-penalized rewards, values, GAE advantages and returns.
        Evaluation stops after scoring and logging the completions' KL to the reference and entropy: its batch has the
        sampled and scored fields only."""
        args = self.args
        device = self.accelerator.device
        prompts = [row["prompt"] for row in rows]
        extra = {k: [row[k] for row in rows] for k in rows[0] if k != "prompt"}

        # 1. Rollout: sample at `temperature`; the mask keeps tokens through the first EOS, the rest is padding.
        self._sync_sampler_if_changed()
        rollout = generate_rollouts(
            self.model_wrapped,
            self._tokenizer,
            prompts,
            max_new_tokens=args.max_completion_length,
            **self._sampling_kwargs(args),
            num_generations=1,  # prompts are already repeated by the sampler
            batch_size=args.generation_chunk_size or len(prompts),
            max_prompt_length=args.max_prompt_length,
            accelerator=self.accelerator,
            sampler=self.sampler,
        )
        prompt_ids, completion_ids = rollout.prompt_ids.to(device), rollout.completion_ids.to(device)
        input_ids = torch.cat([prompt_ids, completion_ids], 1)
        attention_mask = torch.cat([rollout.prompt_mask, rollout.completion_mask], 1).to(device)
        mask = rollout.completion_mask.to(device)
        is_eos = rollout.is_eos.to(device)
        T = completion_ids.size(1)

        # 2. Score the whole completion once (the reward sits on its last token, step 7); log the rewards and the
        #    completions' lengths and EOS rate.
        raw_scores = self._score(rollout, extra, mode).to(device)
        batch = RolloutBatch(
            prompt_ids=prompt_ids, prompt_mask=rollout.prompt_mask.to(device), completion_ids=completion_ids,
            completion_mask=mask, scores=raw_scores,
        )
        if mode == "eval":
            # 5 (eval). The policy-vs-reference KL and entropy of the eval completions, logged as `eval_kl/*` and
            #    `eval_entropy` beside the eval reward (nothing is trained on them: no values, no advantages).
            self._log_eval_token_stats(input_ids, attention_mask, mask, T)
            return batch

        # 3.-4. The score the policy is trained on: missing-EOS penalty, normalization, clipping.
        batch = dataclasses.replace(
            batch, train_scores=self._shaped_scores(raw_scores, is_eos),
            group_index=torch.arange(len(rows), device=device) // args.num_generations,  # the prompt groups
            sampler_logprobs=None if rollout.sampler_logprobs is None else rollout.sampler_logprobs.to(device),
        )
        if self._single_pass_update():
            # 5.-10. deferred to the update (compute_loss, step 11a): its one forward, from the sampling policy, gives
            #        the statistics and values this rollout would compute (no second policy/value pass).
            return batch

        # 5. Log-probs of the sampled tokens under the sampling policy and the reference, the exact KL and the
        #    entropy, all from logits / temperature, chunk by chunk (the two models' (B,T,V) never coexist). Same
        #    autocast, chunks and kernel as the update's forward (step 11), so the first update's ratio is exactly 1.
        stats = self._sampling_policy_token_stats(
            input_ids, attention_mask, T,
            # keep the reference trunk's (B, T, H) output for the update's exact KL (RolloutBatch.ref_hidden): the
            # update then runs only the reference's head, never its trunk
            return_ref_hidden=args.cache_reference_states and KL_PENALTIES.get(args.kl_estimator).needs_full_vocabulary,
        )
        with self.accelerator.autocast():
            # 6. Values V(s_t) at the positions that predict each completion token.
            values = self.value_model(input_ids, attention_mask)[:, -T - 1 : -1].float()

        batch = dataclasses.replace(batch, ref_hidden=stats.get("ref_hidden"))
        return self._rewards_and_advantages(batch, stats, values)

    @torch.no_grad()
    def _sampling_policy_token_stats(self, input_ids, attention_mask, T: int, return_ref_hidden: bool = False) -> dict:
        """Step 5's one chunked pass (``completion_token_stats``) with the policy in eval mode (as it sampled): the
        ``(B, T)`` log-probs, reference log-probs, exact KL and entropy, under the trainer's autocast, temperature
        and chunk size; the rollout and ``evaluate()`` both read their statistics from it."""
        args = self.args
        policy = self.policy
        was_training = policy.training
        policy.eval()
        ref = None if self.ref_model is None else self.accelerator.unwrap_model(self.ref_model)
        try:
            with self.accelerator.autocast():
                return completion_token_stats(
                    policy, ref, input_ids, attention_mask, logits_to_keep=T, temperature=args.temperature,
                    chunk_size=args.exact_kl_chunk_size, with_exact_kl=True, with_entropy=True,
                    return_ref_hidden=return_ref_hidden,
                )
        finally:
            policy.train(was_training)

    @torch.no_grad()
    def _log_eval_token_stats(self, input_ids, attention_mask, mask: torch.Tensor, T: int) -> None:
        """``evaluate()``'s KL and entropy of its ``(B, T)``-masked completions, under the names and scales the train
        rollout logs (``kl/exact`` and ``kl/<kl_estimator>``: per-sequence sums, batch mean; ``entropy``: per-sequence
        token mean, batch mean; ``kl/exact_per_token``: mean over tokens), from the same chunked pass as the
        rollout's step 5 (``completion_token_stats``: logits / temperature, the PEFT reference with its adapter
        disabled or the separate reference) -- also when the single-pass update skips that pass in training."""
        args = self.args
        stats = self._sampling_policy_token_stats(input_ids, attention_mask, T)
        metrics = self._metrics["eval"]
        valid = mask.bool()
        exact_kl = torch.where(valid, stats["exact_kl"], torch.zeros((), device=valid.device))
        metrics["kl/exact"].append(self._gather_mean(exact_kl.sum(1)))
        metrics["kl/exact_per_token"].append(self._global_masked_mean(exact_kl, mask))
        penalty = KL_PENALTIES.get(args.kl_estimator)
        if not penalty.needs_full_vocabulary:  # the sampled estimate the penalty uses, as `_kl_bookkeeping` logs it
            kl = penalty(stats["logprobs"], stats["ref_logprobs"], exact_kl=stats["exact_kl"])
            metrics[f"kl/{args.kl_estimator}"].append(self._gather_mean(torch.where(valid, kl, 0.0).sum(1)))
        metrics["entropy"].append(self._gather_mean(masked_mean(stats["entropy"], mask, dim=1)))

    @torch.no_grad()
    def _rewards_and_advantages(self, batch: RolloutBatch, stats: dict, values: torch.Tensor) -> RolloutBatch:
        """Steps 7-10 of the rollout: from the batch's ``train_scores`` and ``group_index``, the sampling policy's
        ``stats`` (``(B, T)`` ``logprobs``, ``ref_logprobs``, ``exact_kl``, ``entropy``) and the ``(B, T)`` values,
        the KL-penalized rewards, GAE advantages (normalized) and returns; the batch the update trains on."""
        args = self.args
        # 7. Per-token KL penalty r_t = -beta * KL_t (`kl_estimator`, an entry of core.kl.KL_PENALTIES: a sampled-token
        #    estimate k1/k2/k3 or the exact per-state KL), plus the score at the last valid token. A penalty that
        #    declares `direct_gradient` (exact) also adds beta * KL_t of the current policy to the loss (step 13).
        penalty = KL_PENALTIES.get(args.kl_estimator)
        mask, scores = batch.completion_mask, batch.train_scores
        logprobs, ref_logprobs = stats["logprobs"], stats["ref_logprobs"]
        kl = penalty(logprobs, ref_logprobs, exact_kl=stats["exact_kl"])
        kl = torch.where(mask.bool(), kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
        beta = self.kl_ctl.value
        rewards = scores_to_token_rewards(scores, kl, mask, beta)

        # 8. GAE over valid tokens (gamma, lambda): raw advantages, returns = advantages + values.
        values = values * mask
        advantages, returns = compute_gae(rewards, values, mask, gamma=args.gamma, lam=args.lam)

        # 9. Advantage normalization: over the global batch (all processes), per prompt group, or none.
        advantages = normalize_advantages(
            advantages, mask, mode=args.advantage_normalization, keep_mean=args.advantage_keep_mean,
            group_index=batch.group_index, accelerator=self.accelerator,
        )
        metrics = self._metrics["train"]
        # 9a. With an engine that returns its own log-probs: their gap to ours, and TRL's importance-sampling
        #     correction of the advantages when asked for (vLLM).
        advantages = self._sampler_correction(batch.sampler_logprobs, logprobs, mask, advantages, metrics)

        # 10. KL bookkeeping: adaptive beta, the budget that stops training, metrics (per-sequence sums).
        self._kl_bookkeeping(stats["exact_kl"], kl, mask, beta)
        metrics["score"].append(self._gather_mean(scores))
        metrics["penalized_reward"].append(self._gather_mean(rewards.sum(1)))
        metrics["entropy"].append(self._gather_mean(masked_mean(stats["entropy"], mask, dim=1)))
        # global, like the rollout metrics above: rank 0's share alone is not normalized (its mean is not 0)
        metrics["value/explained_variance"].append(
            float(explained_variance(values, returns, mask, accelerator=self.accelerator))
        )
        metrics["advantages/mean"].append(self._global_masked_mean(advantages, mask))

        return dataclasses.replace(
            batch, old_logprobs=logprobs, old_values=values, advantages=advantages, returns=returns,
            ref_logprobs=ref_logprobs,  # a sampled-token penalty with a direct gradient needs them in the update
            kl_coef=torch.full((len(batch),), beta, device=mask.device),  # the beta of this batch's rewards
        )

    def _single_pass_update(self) -> bool:
        """Whether the rollout batch about to be sampled gets its statistics from the update's forward instead of a
        rollout-time policy and value pass (no redundant passes; TRL's GRPO does the same at
        ``num_iterations=1``): its one optimizer step (``num_ppo_epochs=1``, one minibatch) is one micro-batch per
        process (``gradient_accumulation_steps=1``: advantages are normalized over the whole batch, so they need
        every row's statistics before any backward), taken from the sampling policy itself (after the value
        warm-up, without dropout: the same numbers as the rollout pass)."""
        args = self.args
        return (
            self._single_pass_enabled
            and self._schedule.on_policy_single_update
            and args.gradient_accumulation_steps == 1
            and args.disable_dropout
            and self.state.global_step >= args.value_warmup_steps
        )

    def _prepare_inputs(self, generation_batch):
        """Train: the micro-batch of the current rollout batch that the schedule names, sampling a new rollout batch
        when one is due (``PPOSchedule``). Eval: a fresh rollout."""
        if not self.model.training:
            return self._rollout(generation_batch, "eval")
        schedule = self._schedule
        if schedule.rollout_due():
            before = {k: len(v) for k, v in self._metrics["train"].items()}
            self._rollout_batch = self._rollout(generation_batch, "train")
            # what this rollout logged: repeated by `log` at every logged step trained on this rollout batch
            self._last_rollout_metrics = {
                k: v[-1] for k, v in self._metrics["train"].items() if len(v) > before.get(k, 0)
            }
            # epoch permutations, and the valid tokens of each optimizer step's minibatch on all processes
            schedule.start_batch(
                self._rollout_batch.completion_mask, reduce_sum=lambda t: self.accelerator.reduce(t, reduction="sum")
            )
        micro = self._rollout_batch.select(schedule.micro_batch_rows().to(self.accelerator.device))
        return dataclasses.replace(micro, num_items_in_batch=schedule.num_items_in_batch())

    # ------------------------------------------------------------------------------------------------------------
    # Update
    # ------------------------------------------------------------------------------------------------------------
    def training_step(self, model, inputs, num_items_in_batch=None):
        schedule = self._schedule
        if schedule.starts_optimizer_step() and not self._joint_model:
            # Trainer zeroes the policy's grads only (under DeepSpeed the engine owns both)
            self.value_model.zero_grad(set_to_none=True)
        if schedule.skip_step():
            # 14a. Approx-KL early stop (decided in 14b): the rest of this rollout batch's updates are skipped (no
            #      forward, no gradient: the optimizer leaves the weights alone); the next cycle samples the next batch.
            schedule.end_step()
            self._metrics["train"]["policy/skipped_steps"].append(1.0)
            return torch.zeros((), device=self.accelerator.device)
        out = super().training_step(model, inputs, num_items_in_batch)
        # 14b. At the end of an optimizer step: its approximate KL(old || new), averaged over its micro-batches on all
        #      processes (recorded by compute_loss, step 14); past `kl_early_stop_target` the schedule stops this batch.
        mb_kl, stopped = schedule.end_step(reduce_mean=self._gather_mean)
        if mb_kl is not None:
            self._metrics["train"]["policy/approx_kl"].append(mb_kl)
        if stopped:
            self._metrics["train"]["policy/early_stop"].append(1.0)
        return out

    def _aggregate(self, losses: torch.Tensor, mask: torch.Tensor, inputs: RolloutBatch) -> torch.Tensor:
        """This micro-batch's share of the optimizer step's loss (``args.loss_type``, see ``core.ppo``)."""
        return aggregate_loss(
            losses, mask, self.args.loss_type, gradient_accumulation_steps=self.current_gradient_accumulation_steps,
            num_items_in_batch=inputs.num_items_in_batch, num_processes=self.accelerator.num_processes,
            max_completion_length=self.args.max_completion_length,
        )

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            raise ValueError("PPOTrainer.compute_loss does not return outputs.")
        args = self.args
        metrics = self._metrics["train"]
        mask = inputs.completion_mask
        input_ids, attention_mask = inputs.input_ids, inputs.attention_mask
        T = inputs.completion_ids.size(1)

        # 11. One forward for the new values and (after the value warm-up, during which the policy is frozen and not
        #     run at all) the policy's log-probs and, with the exact KL, KL(pi(.|s_t) || pi_ref(.|s_t)) with its
        #     gradient, in the same chunked pass as the rollout's statistics (step 5) and under the same autocast.
        #     Under DeepSpeed `model` is the engine around PolicyAndValueModel.
        with_policy = self.state.global_step >= args.value_warmup_steps
        penalty = KL_PENALTIES.get(args.kl_estimator)
        with_kl = with_policy and penalty.direct_gradient
        single_pass = inputs.old_logprobs is None  # the rollout left steps 5-10 to this forward (`_single_pass_update`)
        forward_kwargs = dict(
            with_policy=with_policy, chunk_size=args.exact_kl_chunk_size,
            with_exact_kl=single_pass or (with_kl and penalty.needs_full_vocabulary),
            ref_model=None if self.ref_model is None else self.accelerator.unwrap_model(self.ref_model),
            ref_hidden=inputs.ref_hidden,  # cached at rollout (step 5): the reference trunk does not run here
            # how step 13's loss depends on each position's log-prob and exact KL: the fused head kernel then projects
            # one combined gradient per chunk (checked in backward: a mismatch recomputes, see core.ppo). The single
            # pass has no advantages before this forward: no hint.
            grad_hint=surrogate_grad_hint(
                inputs.old_logprobs, inputs.advantages, args.cliprange, inputs.kl_coef,
                aggregation_weights(lambda x: self._aggregate(x, mask, inputs), mask.shape, mask.device),
            ) if with_kl and penalty.needs_full_vocabulary and not single_pass else None,
        )
        if single_pass:  # everything the rollout's statistics (step 5) hold
            forward_kwargs.update(with_ref_logprobs=True, with_entropy=True)
        with self.accelerator.autocast():
            if self._joint_model:
                out, new_values = model(input_ids, attention_mask, T, args.temperature, **forward_kwargs)
            else:
                out, new_values = policy_and_values(
                    model, self.value_model, input_ids, attention_mask, T, args.temperature, **forward_kwargs
                )
        new_values = new_values.float()
        if single_pass:
            # 11a. On-policy single update: this forward IS the sampling policy's, so its detached log-probs, KL and
            #      values are the rollout's steps 5-6; rewards, GAE and normalization (steps 7-10) follow from them.
            #      Old log-probs = new ones detached: ratio exactly 1, approx KL 0, as with the rollout's own pass.
            stats = {k: v.detach() for k, v in out.items()}
            inputs = self._rewards_and_advantages(inputs, stats, new_values.detach())

        # 12. Clipped value loss (Huang et al. detail: clip the new value around the rollout value).
        vf_losses, vf_clipped = value_loss(new_values, inputs.old_values, inputs.returns, args.cliprange_value)
        vf_loss = self._aggregate(vf_losses, mask, inputs)
        self.note_loss_terms(value=vf_loss)  # a non-finite loss names its term (utils.finite)
        # Update metrics: means over the valid tokens of all processes' micro-batches (not rank 0's share), reduced
        # together once per micro-batch (_log_update_metrics)
        update_metrics = {"loss/value": vf_losses, "value/clipfrac": vf_clipped}

        if not with_policy:
            # 12a. Value warm-up: the policy is frozen (no forward, so its grads stay None and AdamW skips it;
            #      under DeepSpeed the engine hands it zero gradients instead: it does not move either).
            self._log_update_metrics(metrics, mask, update_metrics)
            return args.vf_coef * vf_loss

        # 13. Clipped surrogate on the ratio to the sampling policy (ratio = 1 at the first step of a batch), plus
        #     with the exact KL the direct term beta * KL_t, aggregated together.
        logratio = out["logprobs"] - inputs.old_logprobs
        pg_losses, pg_clipped = policy_loss(out["logprobs"], inputs.old_logprobs, inputs.advantages, args.cliprange)
        ratio = torch.exp(logratio.detach())
        update_metrics.update({"policy/clipfrac": pg_clipped, "loss/policy": pg_losses, "policy/ratio_mean": ratio})
        per_token, direct_kl = pg_losses, None
        if with_kl:  # the penalty's direct term, with its gradient w.r.t. the current policy
            direct_kl = penalty(out["logprobs"], inputs.ref_logprobs, exact_kl=out.get("exact_kl"))
            per_token = per_token + inputs.kl_coef[:, None] * direct_kl
            update_metrics["loss/kl"] = direct_kl
        pg_loss = self._aggregate(per_token, mask, inputs)
        self.note_loss_terms(policy=(pg_losses.detach() * mask).sum(),
                             kl=(direct_kl.detach() * mask).sum() if with_kl else None)
        self._log_update_metrics(metrics, mask, update_metrics, ratio=ratio)

        # 14. Approximate KL(old || new) of this micro-batch (k3 on the rollout's samples), for the early stop that
        #     training_step decides at the end of the optimizer step (14b) and executes (14a).
        with torch.no_grad():
            self._schedule.record_approx_kl(approx_kl(logratio.detach(), mask))

        # Parameters are disjoint: the sum trains both; vf_coef only rescales the value gradient.
        return pg_loss + args.vf_coef * vf_loss

    # ------------------------------------------------------------------------------------------------------------
    # Evaluation: sample from the current policy and log rewards, KL and entropy (no loss)
    # ------------------------------------------------------------------------------------------------------------
    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        batch = self._prepare_inputs(inputs)
        del batch
        return None, None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Each metric's mean over the optimizer steps since the last log (``*_min``: their min, ``*_max``: their
        max). In training, the metrics of the rollout batch (reward, rewards/*, kl/*, entropy, completions/*,
        score, value/explained_variance, advantages/mean, ...) are measured once per rollout and repeated at every
        logged step that trains on that rollout batch, so each logged step carries the rollout it learns from."""
        mode = "train" if self.model.training else "eval"
        metrics = {k: _window_reduce(k, v) for k, v in self._metrics[mode].items() if v}
        if mode == "train" and metrics:  # a window with training steps (not the end-of-training summary)
            for key, value in self._last_rollout_metrics.items():
                metrics.setdefault(key, value)
        if mode == "eval":
            metrics = {f"eval_{k}": v for k, v in metrics.items()}
        # in place: `evaluate()` returns this dict, so eval_reward reaches callbacks and metric_for_best_model
        logs.update(metrics)
        super().log(logs, start_time)
        self._metrics[mode].clear()
        if self.args.log_completions and self.accelerator.is_main_process and mode == "train":
            self._completion_log.flush(self.state.global_step)

    def _record_completions(self, rollout, reward_out, tracked) -> None:
        """Gather every process's rows (prompts, completions, each reward function's score, tracked rewards) into
        the main process's completion log."""
        from accelerate.utils import gather_object

        device = self.accelerator.device
        prompts, completions = gather_object(list(rollout.prompts)), gather_object(list(rollout.completions))
        rewards = {}
        for out in (reward_out, tracked):
            if out is not None:
                scores = self.accelerator.gather(out.per_function.to(device).float()).cpu()
                for j, name in enumerate(out.names):
                    rewards[self._metric_name(name)] = scores[:, j].tolist()
        if self.accelerator.is_main_process:
            self._completion_log.add(prompts, completions, rewards)

    # ------------------------------------------------------------------------------------------------------------
    # Checkpoints: the value model's trainable weights and the PPO state travel with each checkpoint (under
    # DeepSpeed the engine's own checkpoint holds the value model; the PPO state file is written either way)
    # ------------------------------------------------------------------------------------------------------------
    def _save_checkpoint(self, model, trial):
        """The Trainer's checkpoint plus the value model, the PPO state and (inside a rollout batch's epochs) that
        batch, complete or absent (``utils.resume``): ``resume_manifest.json`` with every file's sha256, the settings
        fingerprint and the run's lineage is written last; old checkpoints are rotated out only after the new one is
        complete. A failed write (full disk) removes the unfinished checkpoint and names the file and the disk."""
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, rotate_checkpoints

        from ...utils.atomic import atomic_write_json, atomic_writer, kill_point
        from ...utils.resume import invalidate, saving, write_manifest

        self.check_finite_before_save()  # never write (nor rotate in) a checkpoint of NaN/inf policy or value weights
        model_name = Path(self.args.output_dir).name if self.args.hub_model_id is None else self.args.hub_model_id.split("/")[-1]
        self.create_model_card(model_name=model_name)
        run_dir = self._get_output_dir(trial=trial)
        output_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        if self.args.should_save and os.path.isdir(output_dir):
            # a checkpoint of this step from an abandoned branch or an unfinished save: never mix its files with ours
            invalidate(output_dir)
            shutil.rmtree(output_dir, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        limit = self.args.save_total_limit
        keep = "Earlier complete checkpoints are kept: resume_from_checkpoint=True continues from the newest one."
        with saving(output_dir, "checkpoint", keep_hint=keep):
            self.args.save_total_limit = None  # the Trainer would rotate before our files exist
            try:
                super()._save_checkpoint(model, trial)
            finally:
                self.args.save_total_limit = limit
            if self.args.should_save:
                kill_point(f"ppo_checkpoint_extras:{self.state.global_step}")
                if not self._joint_model:
                    from safetensors.torch import save_file

                    value = self.accelerator.unwrap_model(self.value_model)
                    state = {n: p.detach().cpu().contiguous() for n, p in value.named_parameters() if p.requires_grad}
                    atomic_writer(os.path.join(output_dir, VALUE_STATE_FILE), lambda tmp: save_file(state, tmp))
                ppo_state = {"kl_coef": self.kl_ctl.value, "reward_moments": self.reward_moments.state_dict()}
                atomic_write_json(os.path.join(output_dir, PPO_STATE_FILE), ppo_state, indent=None)
            self._save_rollout_buffer(output_dir)
            self.accelerator.wait_for_everyone()  # every process's files (RNG states, rollout batch) are written
            if self.args.should_save:
                kill_point(f"ppo_checkpoint_manifest:{self.state.global_step}")
                write_manifest(
                    output_dir, CHECKPOINT_KIND, fingerprint=self._resume_fingerprint(), step=self.state.global_step,
                    lineage=self._lineage, extra=ppo_state,
                )
                rotate_checkpoints(run_dir, limit, self.state.best_model_checkpoint, use_mtime=True)

    def _save_rollout_buffer(self, output_dir: str) -> None:
        """Inside a rollout batch's epochs (not at its end), save the batch, its epoch permutations and its
        normalisers (each process its own part): a resume continues this batch, as the uninterrupted run does,
        instead of sampling another one."""
        from ...utils.atomic import atomic_writer

        if not self._schedule.in_batch() or self._rollout_batch is None:
            return
        os.makedirs(output_dir, exist_ok=True)
        # the schedule's state (step, epoch permutations, minibatch token counts, early stop), the batch's rows, and
        # what its rollout logged (`log` repeats it at each step trained on the batch: a resumed run's first logged
        # step would otherwise have no reward, KL or entropy)
        state = {**self._schedule.state_dict(), "buffer": self._rollout_batch.state_dict(),
                 "rollout_metrics": {k: float(v) for k, v in self._last_rollout_metrics.items()}}
        path = os.path.join(output_dir, rollout_buffer_file(self.accelerator.process_index))
        atomic_writer(path, lambda tmp: torch.save(state, tmp))

    def _resume_fingerprint(self) -> dict:
        return ppo_fingerprint(self.args, self._resume_inputs)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """The saved model is the policy (``from_pretrained``-able, or its adapter: the user's, without the frozen
        ``"ref"`` adapter), also under DeepSpeed."""
        if not self._joint_model:
            with reference_adapter_hidden(self.policy):
                return super()._save(output_dir, state_dict)
        # DeepSpeed hands over the state dict of PolicyAndValueModel: keep the policy's entries, unprefixed
        prefix = "policy."
        if state_dict is not None:
            state_dict = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        joint = self.model
        self.model = joint.policy
        try:
            with reference_adapter_hidden(self.policy):
                super()._save(output_dir, state_dict)
        finally:
            self.model = joint

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """``Trainer.train`` on the resume protocol (``utils.resume``):

        * before any work: the output directory must be writable, and is locked (a second run on it is refused
          while this one runs; a lock left by a killed run is taken over);
        * ``resume_from_checkpoint=True`` resumes the newest COMPLETE checkpoint on this run's lineage (incomplete
          ones are skipped with a warning; later checkpoints of an abandoned branch are never picked); a named
          checkpoint is verified file by file (sha256) first, so a damaged one is refused with the file named;
        * the checkpoint's settings must match (``ppo_fingerprint``: config, rewards/policy/reference by content),
          else the resume is refused naming the fields, unless listed in ``args.resume_allow_changes``; the world
          size, batch layout and schedule length are refused even then (``FIXED_ON_RESUME``);
        * one line says which checkpoint and step the run continues from;
        * SIGTERM / SIGINT stop at the end of the current optimizer step with a final complete checkpoint (when
          saving is on); a second signal stops at once.
        """
        import contextlib

        from ...utils.progress import log_line
        from ...utils.resume import OutputDirLock, StopSignals, check_writable, exit_with_parent, start_lineage

        main = self.args.should_save
        if self.args.world_size > 1:
            exit_with_parent()  # workers of a killed launcher stop at their next safe point instead of running on
        lock = contextlib.nullcontext()
        if main:
            check_writable(self.args.output_dir)
            lock = OutputDirLock(self.args.output_dir, "PPO run")
        with lock, StopSignals() as stop:
            if resume_from_checkpoint is True:
                resume_from_checkpoint = latest_complete_checkpoint(self.args.output_dir)
            elif resume_from_checkpoint:
                problem = checkpoint_problem(str(resume_from_checkpoint))
                if problem:
                    raise ValueError(f"Cannot resume from {resume_from_checkpoint}: {problem}")
            self._accepted_changes = {}
            if resume_from_checkpoint:
                self._accepted_changes = self._check_resume_settings(str(resume_from_checkpoint))
                step = self._global_step_from_checkpoint(resume_from_checkpoint)
                accepted = f"; accepted changes: {sorted(self._accepted_changes)}" if self._accepted_changes else ""
                line = f"resuming from checkpoint {resume_from_checkpoint} at step {step}{accepted}"
                logger.info(line)
                log_line("ppo", line)
            self.accelerator.wait_for_everyone()  # every process chose the checkpoint before the lineage changes
            if main:
                self._lineage = start_lineage(self.args.output_dir, resume_from_checkpoint or None)
            self._stop_signals = stop
            callback = _StopAtSafePoint(self)
            self.add_callback(callback)
            try:
                return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
            finally:
                self.remove_callback(callback)
                self._stop_signals = None
                stopped_by, self._stopped_by = self._stopped_by, None
                if stopped_by:
                    log_line("ppo", f"stopped by {stopped_by} at step {self.state.global_step}"
                             + ("" if self.args.save_strategy == "no" else
                                "; its checkpoint is complete: resume with resume_from_checkpoint=True"))

    def _check_resume_settings(self, checkpoint: str) -> dict:
        """Refuse a checkpoint made under other settings (naming the fields) unless they are accepted by
        ``resume_allow_changes``; returns the accepted changes."""
        from ...utils.fingerprint import check_fingerprint
        from ...utils.resume import read_manifest

        stored = (read_manifest(checkpoint) or {}).get("fingerprint")
        return check_fingerprint(
            stored, self._resume_fingerprint(), f"Checkpoint {checkpoint}",
            "Resume with the settings it was made with, or start a new run (another output_dir, or no "
            "resume_from_checkpoint).",
            allow=self.args.resume_allow_changes, never_allow=FIXED_ON_RESUME,
        )

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        # Not called under DeepSpeed: the Trainer restores the engine (policy and value) from its own checkpoint
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        value_file = os.path.join(resume_from_checkpoint, VALUE_STATE_FILE)
        if not os.path.isfile(value_file):
            raise ValueError(f"{resume_from_checkpoint} has no {VALUE_STATE_FILE}: not a PPOTrainer checkpoint.")
        from safetensors.torch import load_file

        value = self.accelerator.unwrap_model(self.value_model)
        try:
            state = load_file(value_file)
        except Exception as err:
            raise ValueError(f"Checkpoint {resume_from_checkpoint}: {VALUE_STATE_FILE} is unreadable ({err}).") from err
        result = value.load_state_dict(state, strict=False)
        if result.unexpected_keys:
            raise ValueError(f"Value checkpoint does not match the value model: {result.unexpected_keys[:5]}")

    def _load_optimizer_and_scheduler(self, checkpoint):
        # Called on resume by every backend (DeepSpeed included): the PPO state is restored here
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is not None:
            self._load_ppo_state(checkpoint)

    def _load_ppo_state(self, checkpoint: str) -> None:
        state_file = os.path.join(checkpoint, PPO_STATE_FILE)
        if not os.path.isfile(state_file):
            raise ValueError(f"{checkpoint} has no {PPO_STATE_FILE}: not a PPOTrainer checkpoint.")
        from ...utils.atomic import read_json

        ppo_state = read_json(state_file, what=f"Checkpoint {checkpoint}:")
        self.kl_ctl.value = float(ppo_state["kl_coef"])
        if "kl_coef" in self._accepted_changes:  # a knowingly changed β starts at its new value
            self.kl_ctl.value = float(self.args.kl_coef)
        self.reward_moments.load_state_dict(ppo_state["reward_moments"])
        # resume at the right place of the rollout cycle, inside the same rollout batch when it was saved there
        self._schedule.resume_at(self._global_step_from_checkpoint(checkpoint))
        self._rollout_batch = None
        self._load_rollout_buffer(checkpoint)

    def _load_rollout_buffer(self, checkpoint: str) -> None:
        schedule = self._schedule
        path = os.path.join(checkpoint, rollout_buffer_file(self.accelerator.process_index))
        if schedule.position == 0:
            return  # a rollout boundary: the next step samples a new batch, as the uninterrupted run does
        if not os.path.isfile(path):
            raise ValueError(
                f"Checkpoint {checkpoint} was saved inside a rollout batch's epochs (step {schedule.step} of a "
                f"{schedule.cycle_length}-step cycle) but has no {os.path.basename(path)}: "
                "it was written by an older version that re-sampled the batch on resume. Resume from a checkpoint "
                "at a rollout boundary, or start over."
            )
        state = torch.load(path, map_location="cpu", weights_only=True)
        where = f"Checkpoint {checkpoint}: {os.path.basename(path)}"
        if int(state.get("step", -1)) != schedule.step:
            raise ValueError(f"{where} was saved at micro-step {state.get('step')}, not {schedule.step}: it belongs to "
                             "another checkpoint. Resume from an intact checkpoint.")
        device = self.accelerator.device
        self._rollout_batch = RolloutBatch.from_state_dict(state["buffer"], where=where).to(device)
        self._last_rollout_metrics = dict(state.get("rollout_metrics", {}))  # absent in older checkpoints
        schedule.load_state_dict(state, device=device)

    @staticmethod
    def _global_step_from_checkpoint(path) -> int:
        from transformers.trainer_callback import TrainerState

        state_file = os.path.join(path, "trainer_state.json")
        return TrainerState.load_from_json(state_file).global_step if os.path.isfile(state_file) else 0


class _StopAtSafePoint(TrainerCallback):
    """SIGTERM / SIGINT (``utils.resume.StopSignals``) end training after the current optimizer step: the Trainer then
    saves a final checkpoint (complete, with its manifest) unless saving is off. Under several processes the request
    is shared (any process signalled stops them all at the same step, so none waits forever in a collective)."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_end(self, args, state, control, **kwargs):
        from ...utils.atomic import kill_point

        kill_point(f"ppo_step_end:{state.global_step}")  # after an optimizer step, before its checkpoint (tests)
        stop = self.trainer._stop_signals
        requested = stop is not None and stop.requested is not None
        if args.world_size > 1:
            flag = torch.tensor([1.0 if requested else 0.0], device=self.trainer.accelerator.device)
            requested = bool(self.trainer.accelerator.reduce(flag, reduction="sum").item() > 0)
        if requested:
            self.trainer._stopped_by = stop.requested if stop is not None and stop.requested else "a signal to another process"
            control.should_training_stop = True
            if args.save_strategy != "no":
                control.should_save = True
        return control
