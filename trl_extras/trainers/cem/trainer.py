"""The cross-entropy method (CEM), the article's "poor man's RL", with entropy and diversity control.

Each round:

1. sample ``num_generations`` answers per prompt from the current model (the shared rollout path,
   :func:`trl_extras.modeling.generation.generate_rollouts`: batched, left-padded, progress bar) and measure the policy's
   token entropy on them;
2. save them as a dataset under ``output_dir/round_{r}/generations`` *before* scoring, so a failing reward loses no
   generation work;
3. score them with :class:`trl_extras.rewards.functions.RewardFunctions` (reward model paths/instances, callables,
   or a ``RewardEnsemble`` with its penalty) and, for monitoring only, with ``eval_reward_funcs`` (e.g. the
   testbed's gold reward); save again with the scores and the elite mask;
4. select elites (:func:`trl_extras.core.selection.select_elites`: top-k per prompt, a scheduled per-prompt
   quantile, an absolute threshold, de-duplication; empty answers never qualify);
5. fine-tune on the elites (plus replayed SFT rows) with TRL's ``SFTTrainer``; :class:`RegularizedSFTTrainer` adds
   the optional exact KL-to-initial-model and entropy terms;
6. save the model to ``output_dir/round_{r}/model`` and the round's metrics to ``round_{r}/metrics.json``.

Each step is a method of :class:`CEMTrainer` (``_sample_round``, ``_score_round``, ``_select_round``,
``_fine_tune_round``, ``_evaluate_round``, ``_save_round``) that fills in the round's record,
:class:`~trl_extras.trainers.cem.round.CEMRound`; ``CEMTrainer._train`` calls them in order, and the records of a run
are ``CEMTrainer.rounds``.

A restart with ``resume=True`` (default) loads the last finished round's model and reuses the saved generations
(and scores, when present) of an interrupted round.

Reference: Rubinstein 1999 (the cross-entropy method); trlx's RFT trainer (rising per-prompt percentile); the article
("after the first iteration, the model loses much of the original variation in responses").
"""

from __future__ import annotations

import copy
import logging
import math
import os
import random
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

from ...core.diversity import grouped_distinct_n, unique_fraction
from ...core.selection import quantile_schedule, select_elites
from ...modeling.generation import ensure_pad_token, generate_rollouts, make_sampler, prompt_text
from ...modeling.lm import completion_entropies
from ...modeling.peft import add_adapter, is_peft_model
from ...modeling.prompt_checks import (
    NUM_PROBE_PROMPTS,
    ShortCompletionWarning,
    has_chat_template,
    plain_prompts_to_chat_model_message,
)
from ...modeling.quantization import keep_4bit_layers_differentiable
from ...modeling.reference import reference_adapter_hidden, resolve_reference
from ...rewards.functions import RewardFunctions
from ...utils.progress import log_line, progress_bar, quiet_replica_logs
from .config import CEMConfig
from .log_steps import fine_tune_steps, state_at_step
from .plots import plot_history
from .round import CEMRound
from .settings import ROUND_KIND, SETTINGS_FILE, cem_settings

logger = logging.getLogger(__name__)

_RESERVED = {"prompt", "completion", "group", "is_eos", "num_tokens", "token_entropy", "temperature", "empty",
             "reward", "elite", "gold"}


def _round_line(metrics: dict, num_rounds: int) -> str:
    """The one progress line of a finished round (the log-file record; the full metrics go to ``metrics.json``)."""
    # 0-based like the round_{r} folders and the history's `round`: "round 0 of 0..1" is folder round_0
    parts = [f"round {metrics['round']} of 0..{num_rounds - 1}"]
    for key, label in (("reward_mean", "reward"), ("elite_reward_mean", "elite reward"), ("entropy", "entropy"),
                       ("eval_reward_mean", "eval reward"), ("eval_gold_mean", "eval gold")):
        if isinstance(metrics.get(key), (int, float)):
            parts.append(f"{label} {metrics[key]:.3f}")
    return ", ".join(parts)


def _linear(start: float, end: float | None, r: int, num_rounds: int) -> float:
    if end is None or num_rounds == 1:
        return float(start)
    return float(start + (end - start) * r / (num_rounds - 1))


def _is_empty(completion) -> bool:
    return not prompt_text(completion).strip() if isinstance(completion, list) else not str(completion).strip()


class CEMTrainer:
    """Multi-round cross-entropy method (best-of-N / elite fine-tuning) with diversity control.

    Args:
        model: a causal LM instance or a path.
        reward_funcs: what elites are selected by (optimized): a reward model path or instance, a callable
            ``f(prompts, completions, **kwargs) -> list[float]``, a ``RewardEnsemble``, or a list of them (summed
            with weights, see :class:`~trl_extras.rewards.functions.RewardFunctions`).
        args: :class:`~trl_extras.trainers.cem.config.CEMConfig`.
        train_dataset: a ``datasets.Dataset`` with a ``prompt`` column (text or conversational); other columns
            reach the reward functions as keyword arguments.
        eval_dataset: optional prompts to evaluate after every round (and before the first).
        processing_class: the tokenizer (loaded from ``model`` when it is a path).
        sft_dataset: prompt/completion rows replayed into each round when ``args.sft_mix_ratio > 0``.
        reward_processing_classes: tokenizers of reward-model instances.
        eval_reward_funcs: rewards computed for monitoring only (e.g. a gold reward), never optimized.
        peft_config: a ``peft.PeftConfig``; the model is wrapped once and the same adapter trains every round.
        callbacks: passed to every round's ``SFTTrainer``.
    """

    def __init__(
        self,
        model,
        reward_funcs,
        args: CEMConfig | None = None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        sft_dataset=None,
        reward_processing_classes=None,
        peft_config=None,
        callbacks=None,
        eval_reward_funcs=None,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if args is None:
            args = CEMConfig(output_dir="cem_output")
        if not isinstance(args, CEMConfig):
            raise TypeError(f"args must be a CEMConfig, got {type(args).__name__}")
        if args.num_generations < 2:  # re-checked: attributes can be changed after construction
            raise ValueError(f"num_generations={args.num_generations}: CEM needs N >= 2 answers per prompt to select.")
        if getattr(args, "fsdp", None) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true"):
            raise NotImplementedError(
                "CEMTrainer does not support FSDP: it samples with the full model between fine-tuning rounds. Use "
                "DDP or DeepSpeed ZeRO-2/3 (recipes/accelerate/)."
            )
        # Under `accelerate launch` every process samples and scores its share of a round's prompts (fixed chunks,
        # one random stream each: the rows do not depend on the number of processes), all get the gathered rows,
        # fine-tuning is TRL's SFTTrainer (DDP / DeepSpeed), and the main process writes the round files.
        self._process_index, self._num_processes = args.process_index, args.world_size
        self._is_main = args.process_index == 0
        quiet_replica_logs()  # under accelerate launch each warning is printed once, by the main process
        self.args = args
        if train_dataset is None or "prompt" not in getattr(train_dataset, "column_names", []):
            columns = getattr(train_dataset, "column_names", None)
            raise ValueError(f"train_dataset must have a 'prompt' column; got columns {columns}.")
        if len(train_dataset) == 0:
            raise ValueError("train_dataset is empty.")
        if eval_dataset is not None and "prompt" not in getattr(eval_dataset, "column_names", []):
            raise ValueError(f"eval_dataset must have a 'prompt' column; got columns {eval_dataset.column_names}.")
        if args.sft_mix_ratio > 0:
            if sft_dataset is None:
                raise ValueError("sft_mix_ratio > 0 needs `sft_dataset` (prompt/completion rows to replay).")
            missing = {"prompt", "completion"} - set(sft_dataset.column_names)
            if missing:
                raise ValueError(f"sft_dataset lacks columns {sorted(missing)}.")
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.sft_dataset = sft_dataset
        self.callbacks = callbacks

        # What shapes every round's data: refused on resume when it changed (see `_check_settings`)
        self._settings = cem_settings(args, model, reward_funcs, train_dataset, sft_dataset, peft_config)
        model_path = model if isinstance(model, str) else None
        from transformers.integrations import is_deepspeed_zero3_enabled

        # Under ZeRO-3 each round's SFTTrainer shards the model; sampling uses a whole copy loaded from the saved
        # round (see `_save_round_model`), so the model is never loaded partitioned (zero.Init) here.
        self._zero3 = is_deepspeed_zero3_enabled()
        if self._zero3 and peft_config is not None:
            raise NotImplementedError("CEMTrainer with a peft_config under DeepSpeed ZeRO-3 is not supported; use "
                                      "ZeRO-2 or DDP for LoRA (the adapter is small: ZeRO-3 saves little there).")
        if isinstance(model, str):
            with self._zero3_hidden():
                model = AutoModelForCausalLM.from_pretrained(model, **(args.model_init_kwargs or {}))
        if processing_class is None:
            name = model_path or getattr(model.config, "_name_or_path", None)
            if not name:
                raise ValueError("Pass `processing_class` for a model instance that was not loaded from a path.")
            processing_class = AutoTokenizer.from_pretrained(name)
        self.processing_class = ensure_pad_token(processing_class)
        from ...modeling.checks import check_fits_positions, check_prompt_column

        for split, ds in (("train", train_dataset), ("eval", eval_dataset)):
            if ds is not None:
                check_prompt_column(ds["prompt"], split)  # ints, messages without a (known) role
        check_fits_positions(model.config, self.processing_class, train_dataset["prompt"], args.max_prompt_length,
                             args.max_completion_length, "CEMTrainer")  # fmt: skip
        first = list(train_dataset.select(range(min(NUM_PROBE_PROMPTS, len(train_dataset))))["prompt"])
        message = plain_prompts_to_chat_model_message(model, self.processing_class, first, "CEMTrainer")
        if message and self._is_main:  # once, not once per process
            logger.warning(message)
        self._short_completions = ShortCompletionWarning("CEMTrainer")
        device = args.device  # this process's device (cpu with use_cpu, else its GPU under accelerate launch)
        model = model.to(device)
        self.peft_config = peft_config
        if peft_config is not None:
            model = add_adapter(model, peft_config)
        self._is_peft = is_peft_model(model)
        keep_4bit_layers_differentiable(model)  # rounds alternate no-grad sampling and training (see the function)
        # Reference for the KL control: the initial model (the shared resolver: a frozen copy; under PEFT the
        # adapter disabled while it is the identity, else a frozen "ref" copy of the starting adapter)
        self.ref_model = None
        if args.kl_coef > 0:
            self.ref_model = resolve_reference(model, make_copy=lambda: copy.deepcopy(model))
        self.model = model
        # the generation backend (generate / continuous batching / vLLM: args.use_vllm, ...), see _sync_sampler
        self.sampler = make_sampler(args, model, self.processing_class)
        self._sampler_synced_version = None  # fine-tunes the weights pushed to the sampler had seen (None: never)
        # every reward source (ensemble members included) on this process's device, through the reward contract
        self.reward_funcs = RewardFunctions(reward_funcs, reward_processing_classes, args.reward_weights).place(device)
        self.eval_reward_funcs = RewardFunctions(eval_reward_funcs).place(device) if eval_reward_funcs is not None else None
        self.output_dir = Path(args.output_dir)
        self.history: list[dict] = []  # one dict of metrics per round, the finished rounds of a resume included
        self.rounds: list[CEMRound] = []  # the records of the rounds this `train()` ran
        self.initial_eval: dict | None = None
        self._stop_reason: str | None = None  # why the last `train()` stopped before `num_rounds` (model card)
        self.last_completions_table = None  # the latest round's completion table (`log_completions`)
        self.dataset_name: str | None = None  # shown on the model card (`create_model_card(dataset_name=...)`)

    # ------------------------------------------------------------------ paths and persistence
    def round_dir(self, r: int) -> Path:
        return self.output_dir / f"round_{r}"

    def _check_settings(self) -> None:
        """Store the settings fingerprint on a fresh run; on a resume refuse saved rounds made under other settings."""
        from ...utils.atomic import atomic_write_json, read_json
        from ...utils.fingerprint import check_fingerprint

        path = self.output_dir / SETTINGS_FILE
        has_state = any(self.round_dir(r).exists() for r in range(max(self.args.num_rounds, self._finished_rounds())))
        stored = None
        if self.args.resume and path.exists() and has_state:
            stored = read_json(path, what="CEM settings file")
            accepted = check_fingerprint(
                stored, self._settings, f"The CEM state in {self.output_dir}",
                "Use the original settings to resume, or pass --resume false (resume=False) to start over "
                "(deletes the saved rounds), or another output_dir.",
                allow=self.args.resume_allow_changes,
            )
            if accepted:
                logger.warning("Resuming CEM with changed settings accepted by resume_allow_changes: %s",
                               sorted(accepted))
        if self._is_main:
            atomic_write_json(path, self._settings)

    def _finished_rounds(self) -> int:
        """Number of consecutive rounds (from 0) that are complete: their ``resume_manifest.json`` (written last,
        after the model and metrics) lists every file with its size (the round a resume loads is then verified by
        sha256, see `train`)."""
        from ...utils.resume import verify

        r = 0
        while verify(self.round_dir(r), ROUND_KIND, hashes=False) is None:
            r += 1
        return r

    @contextmanager
    def _zero3_hidden(self):
        """Context in which transformers does not see the global ZeRO-3 config, for work on the whole (unsharded)
        model: ``from_pretrained`` would build it inside ``deepspeed.zero.Init`` (sharded; accelerate's
        ``zero3_init_context_manager(enable=False)`` keeps the stage-3 config, so it does not help), and
        ``generate`` would default to ``synced_gpus=True`` (every process steps until all are done: a deadlock when
        processes sample different numbers of chunks)."""
        if not self._zero3:
            yield
            return
        from transformers.integrations import deepspeed as hf_deepspeed

        saved = hf_deepspeed._hf_deepspeed_config_weak_ref
        hf_deepspeed._hf_deepspeed_config_weak_ref = None
        try:
            yield
        finally:
            hf_deepspeed._hf_deepspeed_config_weak_ref = saved

    def _load_round_model(self, r: int):
        from transformers import AutoModelForCausalLM

        path = self.round_dir(r) / "model"
        device = next(self.model.parameters()).device
        if self._is_peft:
            # Load the saved adapter into the live adapter (same config); the base weights never change.
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            weights = path / "adapter_model.safetensors"
            if not weights.exists():
                raise FileNotFoundError(f"No adapter weights at {weights}")
            set_peft_model_state_dict(self.model, load_file(str(weights)))
        else:
            with self._zero3_hidden():
                self.model = AutoModelForCausalLM.from_pretrained(str(path)).to(device)

    @staticmethod
    def _save_dataset(ds, path: Path) -> None:
        """Write atomically: a crash mid-write leaves the previous copy (and a dataset can't overwrite itself)."""
        from ...utils.atomic import publish_dir

        tmp = path.with_name(path.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        ds.save_to_disk(str(tmp))
        publish_dir(tmp, path)

    # ------------------------------------------------------------------ sampling and scoring
    def _round_prompt_rows(self, r: int) -> list[int]:
        n = len(self.train_dataset)
        k = self.args.prompts_per_round
        if k is None or k >= n:
            return list(range(n))
        return sorted(random.Random(self.args.seed * 1000 + r).sample(range(n), k))

    def _sample(self, dataset, rows: list[int], num_generations: int, temperature: float, desc: str,
                stream: tuple) -> dict:
        """Sample ``num_generations`` answers for each prompt ``dataset[rows]`` and measure their token entropy.

        The prompts are cut into chunks of ``generation_chunk_size // num_generations`` prompts (at least one); each
        chunk is one :func:`generate_rollouts` call seeded from ``(seed, *stream, position of its first prompt)``.
        Under ``accelerate launch`` the chunks are dealt round-robin to the processes and gathered back in order,
        so every process returns the same columns as one process would: one row per sample, ``group`` = the
        prompt's position in ``rows``.
        """
        from ...utils.distributed import chunk_bounds, my_chunks, stream_seed

        per_chunk = max(1, self.args.generation_chunk_size // num_generations)
        chunks = my_chunks(chunk_bounds(len(rows), per_chunk), self._process_index, self._num_processes)
        parts = []
        self._sync_sampler(stream)
        for start, end in progress_bar(chunks, desc=desc, enabled=not self.args.disable_tqdm and self._is_main):
            torch.manual_seed(stream_seed(self.args.seed, *stream, start))  # the chunk's own stream (all devices)
            with self._zero3_hidden():  # the sampling model is whole on every process (see `_save_round_model`)
                parts.append((start, self._sample_chunk(dataset, rows[start:end], start, num_generations, temperature)))
        return self._gather_parts(parts)

    def _sync_sampler(self, stream: tuple) -> None:
        """Push the model's weights to a generation engine with its own copy (vLLM) once per round: the weights are
        those after ``r`` fine-tunes when sampling round ``r`` (``("round", r)``) and after ``r + 1`` when evaluating
        after round ``r`` (``("eval", r)``; ``("eval", -1)`` is the initial model). Round ``r + 1`` samples the weights
        evaluated after round ``r``: no second push. ``generate`` and continuous batching read ``self.model``."""
        if not self.sampler.needs_weight_sync:
            return
        kind, r = stream[0], stream[1]
        version = r + 1 if kind == "eval" else r
        if version == self._sampler_synced_version:
            return
        with self._zero3_hidden():  # the sampling model is whole on every process (see `_save_round_model`)
            self.sampler.sync_weights(self.model)  # PEFT merge -> push -> unmerge (TRL's sync_weights)
        self._sampler_synced_version = version

    def _sample_chunk(self, dataset, rows: list[int], offset: int, num_generations: int, temperature: float) -> dict:
        """Columns of one chunk's samples (``group`` counts from ``offset``)."""
        sub = dataset.select(rows)
        prompts = list(sub["prompt"])
        rollout = generate_rollouts(
            self.model, self.processing_class, prompts,
            max_new_tokens=self.args.max_completion_length, temperature=temperature, top_k=self.args.top_k,
            top_p=self.args.top_p, num_generations=num_generations, batch_size=self.args.generation_chunk_size,
            max_prompt_length=self.args.max_prompt_length, sampler=self.sampler,
        )
        T = rollout.completion_ids.size(1)
        if T > 0:
            ent = completion_entropies(self.model, rollout.input_ids, rollout.attention_mask, T,
                                       batch_size=self.args.entropy_batch_size)
            mask = rollout.completion_mask.float()
            ntok = mask.sum(1)
            per_sample = (ent * mask).sum(1) / ntok.clamp(min=1)
        else:
            ntok = torch.zeros(len(rollout))
            per_sample = torch.zeros(len(rollout))
        group = rollout.group_index
        columns = {
            "prompt": rollout.prompts,
            "completion": rollout.completions,
            "group": (group + offset).tolist(),
            "is_eos": rollout.is_eos.tolist(),
            "num_tokens": ntok.long().tolist(),
            "token_entropy": per_sample.tolist(),
            "temperature": [float(temperature)] * len(rollout),
            "empty": [_is_empty(c) for c in rollout.completions],
        }
        for name in sub.column_names:  # extra dataset columns reach the reward functions (GRPO convention)
            if name not in _RESERVED:
                values = sub[name]
                columns[name] = [values[g] for g in group.tolist()]
        return columns

    @staticmethod
    def _gather_parts(parts: list[tuple[int, dict]]) -> dict:
        """Every process's ``(chunk start, columns)`` parts, concatenated in chunk order (the same on every process)."""
        from ...utils.distributed import gather_objects

        ordered = sorted((p for process_parts in gather_objects(parts) for p in process_parts), key=lambda p: p[0])
        if not ordered:
            return {}
        return {key: [v for _, part in ordered for v in part[key]] for key in ordered[0][1]}

    def _score(self, columns: dict, r: int | str, saved_at: Path | None) -> tuple[dict, dict[str, float]]:
        """``columns`` plus ``reward`` (and per-function ``reward_{j}_{name}``, ``gold``) columns, and the mean of
        each value the reward functions logged.

        Scored in the chunks they were sampled in (each process scores its own, then all are gathered), so reward
        models see the same batches whatever the number of processes."""
        from bisect import bisect_left

        from ...utils.distributed import chunk_bounds, my_chunks

        group = columns["group"]
        num_prompts = group[-1] + 1 if group else 0
        per_chunk = max(1, self.args.generation_chunk_size // max(len(group) // max(num_prompts, 1), 1))
        parts = []
        for start, end in my_chunks(chunk_bounds(num_prompts, per_chunk), self._process_index, self._num_processes):
            lo, hi = bisect_left(group, start), bisect_left(group, end)
            parts.append((start, self._score_rows({k: v[lo:hi] for k, v in columns.items()}, r, saved_at)))
        scored = self._gather_parts(parts)
        logged = scored.pop("_logged", [])
        merged: dict[str, list[float]] = {}
        for chunk_log in logged:
            for name, values in chunk_log.items():
                merged.setdefault(name, []).extend(values)
        return {**columns, **scored}, {k: sum(v) / len(v) for k, v in merged.items()}

    def _score_rows(self, columns: dict, r: int | str, saved_at: Path | None) -> dict:
        """Score columns of one chunk; returns the new columns and ``_logged`` (one dict of logged values)."""
        prompts, completions = columns["prompt"], columns["completion"]
        extra = {k: v for k, v in columns.items() if k not in _RESERVED and not k.startswith("reward_")}
        logged: dict[str, list[float]] = {}

        def log_metric(name, value):
            logged.setdefault(name, []).append(float(value))

        try:
            out = self.reward_funcs(prompts, completions, log_metric=log_metric, **extra)
            gold = self.eval_reward_funcs(prompts, completions, **extra) if self.eval_reward_funcs else None
        except ValueError as err:
            where = f" The round's generations are saved in {saved_at}; fix the reward and rerun " \
                    "(resume=True reuses them)." if saved_at is not None else ""
            raise ValueError(f"CEM round {r}: scoring failed: {err}{where}") from err
        scored = {"reward": out.total.tolist()}
        if len(out.names) > 1:
            for j, name in enumerate(out.names):
                scored[f"reward_{j}_{name}"] = out.per_function[:, j].tolist()
        if gold is not None:
            scored["gold"] = gold.total.tolist()
        scored["_logged"] = [logged]  # one entry per chunk (a list, so that concatenating the chunks keeps them)
        return scored

    def _quantile(self, r: int) -> float | None:
        """The elite quantile of round ``r`` (scheduled from ``elite_quantile`` to ``elite_quantile_end``)."""
        start, end = self.args.elite_quantile, self.args.elite_quantile_end
        if start is None:
            return None
        return quantile_schedule(r, self.args.num_rounds, start, start if end is None else end)

    def _select(self, columns: dict, quantile: float | None) -> list[bool]:
        """The elite mask of scored ``columns`` (``quantile``: the round's scheduled elite quantile)."""
        mask = select_elites(
            torch.tensor(columns["reward"], dtype=torch.float32),
            torch.tensor(columns["group"], dtype=torch.long),
            top_k=self.args.elite_top_k, quantile=quantile, threshold=self.args.reward_threshold,
            dedupe_texts=columns["completion"] if self.args.dedupe else None,
            valid=~torch.tensor(columns["empty"], dtype=torch.bool),
        )
        return mask.tolist()

    @staticmethod
    def _measure(columns: dict, prefix: str = "") -> dict:
        """Round metrics from saved columns (so they are identical after a resume)."""
        n = len(columns["completion"])
        rewards = torch.tensor(columns["reward"], dtype=torch.float64)
        ntok = torch.tensor(columns["num_tokens"], dtype=torch.float64)
        ent = torch.tensor(columns["token_entropy"], dtype=torch.float64)
        group = columns["group"]
        m = {
            "num_samples": n,
            "num_prompts": len(set(group)),
            "num_empty": int(sum(columns["empty"])),
            "num_truncated": int(n - sum(columns["is_eos"])),
            "reward_mean": float(rewards.mean()),
            "reward_std": float(rewards.std(unbiased=False)),
            "entropy": float((ent * ntok).sum() / ntok.sum()) if ntok.sum() > 0 else 0.0,
            "distinct_1": grouped_distinct_n(columns["completion"], group, 1),
            "distinct_2": grouped_distinct_n(columns["completion"], group, 2),
            "unique_fraction": unique_fraction(columns["completion"], group),
            "completion_tokens_mean": float(ntok.mean()),
        }
        # Best-of-N by the proxy, per prompt: what one round of selection can reach.
        best = {}
        for i, g in enumerate(group):
            if g not in best or rewards[i] > rewards[best[g]]:
                best[g] = i
        m["best_of_n_reward_mean"] = float(rewards[list(best.values())].mean())
        if "gold" in columns:
            gold = torch.tensor(columns["gold"], dtype=torch.float64)
            m["gold_mean"] = float(gold.mean())
            m["best_of_n_gold_mean"] = float(gold[list(best.values())].mean())
        if "elite" in columns:
            elite = torch.tensor(columns["elite"], dtype=torch.bool)
            m["elite_count"] = int(elite.sum())
            m["elite_reward_mean"] = float(rewards[elite].mean()) if elite.any() else float("nan")
            if "gold" in columns:
                m["elite_gold_mean"] = float(gold[elite].mean()) if elite.any() else float("nan")
        return {f"{prefix}{k}": v for k, v in m.items()}

    # ------------------------------------------------------------------ fine-tuning
    def _fine_tune_dataset(self, columns: dict, r: int):
        from datasets import Dataset

        elite_rows = [i for i, e in enumerate(columns["elite"]) if e]
        prompts = [columns["prompt"][i] for i in elite_rows]
        completions = [columns["completion"][i] for i in elite_rows]
        num_mix = 0
        if self.args.sft_mix_ratio > 0 and elite_rows:
            num_mix = max(1, round(self.args.sft_mix_ratio * len(elite_rows)))
            rng = random.Random(self.args.seed * 1000 + r + 7)
            n = len(self.sft_dataset)
            picks = rng.sample(range(n), num_mix) if num_mix <= n else [rng.randrange(n) for _ in range(num_mix)]
            mix = self.sft_dataset.select(picks)
            prompts += list(mix["prompt"])
            completions += list(mix["completion"])
        return Dataset.from_dict({"prompt": prompts, "completion": completions}), num_mix

    def _fine_tune(self, dataset, r: int) -> tuple[dict, object]:
        """Fine-tune on ``dataset`` with a fresh SFT trainer; returns its metrics and the trainer (it saves the
        round's model: all processes take part under DeepSpeed)."""
        from .sft import RegularizedSFTTrainer as trainer_cls  # imports TRL's SFTTrainer

        round_args = copy.copy(self.args)
        round_args.output_dir = str(self.round_dir(r) / "sft")
        round_args.run_name = f"{self.args.run_name or 'cem'}-round{r}"
        round_args.model_init_kwargs = None  # the model was loaded with them already (SFTTrainer would warn)
        round_args.push_to_hub = False  # the CEM run pushes its final model once (`push_to_hub`), not every round
        from accelerate.state import AcceleratorState

        if AcceleratorState._shared_state and getattr(AcceleratorState(), "deepspeed_plugins", None) is not None:
            # rounds after the first: accelerate refuses a second DeepSpeed plugin and reuses the first one's
            round_args.deepspeed_plugin = None
        self._release_round_engine()
        trainer = trainer_cls(
            model=self.model, args=round_args, train_dataset=dataset, processing_class=self.processing_class,
            callbacks=self.callbacks, ref_model=self.ref_model, kl_coef=self.args.kl_coef,
            entropy_coef=self.args.entropy_coef,
        )
        self._round_accelerator = trainer.accelerator
        # the dashboards' x axis continues over rounds (log_steps): this round's steps follow the earlier rounds'
        trainer.log_step_offset = fine_tune_steps(self.history)
        result = trainer.train()
        self.model = trainer.model
        metrics = {"train_loss": float(result.training_loss), "train_steps": int(result.global_step)}
        for key in ("kl_to_ref", "entropy_bonus"):
            values = [h[key] for h in trainer.state.log_history if key in h]
            if values:
                metrics[key] = float(sum(values) / len(values))
        return metrics, trainer

    def _release_round_engine(self) -> None:
        """Destroy the previous round's DeepSpeed engine (no-op without DeepSpeed or before the first round).

        Nothing else frees it: its ZeRO optimizer's gradient hooks stay on the parameters, which keep the engine and
        its optimizer state alive, and in the next round (ZeRO-2 trains the same module) every gradient also went
        through the old engine's hooks (measured on 2 CPU processes: 2 live engines and 2 hooks per parameter in
        round 1). ``Accelerator.free_memory`` calls ``engine.destroy()``, which removes those hooks."""
        accelerator = getattr(self, "_round_accelerator", None)
        if accelerator is not None and getattr(accelerator, "deepspeed_engine_wrapped", None) is not None:
            accelerator.free_memory()
        self._round_accelerator = None

    def _save_round_model(self, r: int, trainer=None) -> None:
        """Write ``round_{r}/model`` (main process; every process calls this, and returns once it is written).

        ``trainer``: the round's SFT trainer when it fine-tuned (it saves what it trained, gathering ZeRO-3 shards)."""
        from ...utils.atomic import publish_dir
        from ...utils.distributed import barrier
        from ...utils.finite import NonFiniteError, check_finite_state

        bad = check_finite_state(self.model)  # a round model is what a resume loads: never write broken weights
        if bad:
            raise NonFiniteError(f"CEM round {r}: not saving the model, {', '.join(bad)} hold NaN/inf; the previous "
                                 "round's model is kept (resume=True continues from it).")
        path = self.round_dir(r) / "model"
        tmp = path.with_name("model.tmp")
        if self._is_main and tmp.exists():
            shutil.rmtree(tmp)
        barrier()
        from ...utils.resume import saving

        # a failed write (full disk) names the file and the disk; the round's saved generations and the earlier
        # rounds stay, so a rerun redoes only this round's fine-tuning
        keep = f"Round {r}'s saved generations and the earlier rounds are kept: rerun to redo this round."
        with saving(tmp, f"round {r} model", keep_hint=keep):
            with reference_adapter_hidden(self.model):  # the user's adapter, not the frozen "ref" copy
                if trainer is not None:  # the round's SFT trainer saves what it trained (gathers ZeRO-3 shards)
                    trainer.save_model(str(tmp))
                elif self._is_main:
                    self.model.save_pretrained(str(tmp))
            if self._is_main:
                self.processing_class.save_pretrained(str(tmp))
                publish_dir(tmp, path)
        barrier()
        if self._zero3 and trainer is not None:  # the trained model is sharded: sample from a whole copy of it
            self._load_round_model(r)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, round_index: int = -1) -> dict:
        """Sample ``eval_num_generations`` answers per eval prompt at the base temperature and measure them.

        ``round_index`` picks the random stream (-1: before the first round), so a resumed run evaluates a round
        exactly as an uninterrupted one did."""
        if self.eval_dataset is None:
            return {}
        n = max(self.args.eval_num_generations, 1)
        columns = self._sample(self.eval_dataset, list(range(len(self.eval_dataset))), n, self.args.temperature,
                               desc="Evaluating", stream=("eval", round_index))
        columns, _ = self._score(columns, "eval", None)
        return self._measure(columns, prefix="eval_")

    # ------------------------------------------------------------------ main loop
    def train(self) -> list[dict]:
        """Run the rounds; returns the history (one dict of metrics per round) and writes ``cem_history.json``."""
        import contextlib

        from ...utils.resume import OutputDirLock, StopSignals, check_writable

        lock = contextlib.nullcontext()
        if self._is_main:  # before any work: a read-only output_dir fails now; a second run on it is refused
            check_writable(self.output_dir)
            lock = OutputDirLock(self.output_dir, "CEM run")
        with lock, StopSignals() as stop:
            return self._train(stop)

    def _train(self, stop) -> list[dict]:
        """The rounds, each sample → score → select → fine-tune → evaluate → save, after resuming finished ones."""
        from ...utils.distributed import barrier

        args = self.args
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.history, self.rounds, self._stop_reason = [], [], None
        start = self._resume() if args.resume else self._start_over()
        barrier()  # every process has read the state before the main process writes the next files
        self._evaluate_initial(start)
        last_trainer = None  # the latest round's SFT trainer: its callbacks receive the round metrics
        for r in progress_bar(range(start, args.num_rounds), desc="CEM rounds", enabled=not args.disable_tqdm
                              and self._is_main):
            record = self._new_round(r)
            self.rounds.append(record)
            self._sample_round(record)
            self._score_round(record)
            self._select_round(record)
            self._measure_round(record)
            record.stop_reason = self._diversity_floor(record)
            if record.stop_reason is not None:
                self._save_stopped_round(record)
                self._stop_reason = record.stop_reason
                break
            trainer = self._fine_tune_round(record)
            self._save_round_model(r, trainer)
            self._evaluate_round(record)
            if trainer is not None:
                last_trainer = trainer
            self._save_round(record, last_trainer)
            if self._stop_requested(stop) and r + 1 < args.num_rounds:
                self._stop_reason = f"stopped by {stop.requested or 'a signal to another process'} after round {r}"
                log_line("cem", f"{self._stop_reason}; rounds 0..{r} are complete: rerun the same command to continue")
                break
        self._write_history(self._stop_reason)
        self.create_model_card()
        return self.history

    # ------------------------------------------------------------------ resume
    def _resume(self) -> int:
        """Load the finished rounds (history, last model, initial evaluation); returns the first round to run."""
        from ...utils.atomic import read_json
        from ...utils.resume import verify

        self._check_settings()
        start = self._finished_rounds()
        for r in range(start):
            self.history.append(read_json(self.round_dir(r) / "metrics.json", what=f"CEM round {r} metrics"))
        if start > 0:
            problem = verify(self.round_dir(start - 1), ROUND_KIND)  # the round we continue from, by sha256
            if problem is not None:
                raise ValueError(
                    f"CEM round {start - 1} in {self.round_dir(start - 1)} is damaged ({problem}); delete that "
                    "round directory to redo it from its saved generations, or pass --resume false."
                )
            logger.info("Resuming CEM after %d finished round(s) from %s", start, self.output_dir)
            log_line("cem", f"resuming from {self.round_dir(start - 1)}: {start} of {self.args.num_rounds} rounds done")
            self._load_round_model(start - 1)
        initial = self.output_dir / "initial_eval.json"
        if initial.exists():
            self.initial_eval = read_json(initial, what="CEM initial evaluation")
        return start

    def _start_over(self) -> int:
        """``resume=False``: delete the saved rounds and initial evaluation (main process); returns round 0."""
        r = 0
        while self._is_main and (r < self.args.num_rounds or self.round_dir(r).exists()):
            if self.round_dir(r).exists():
                shutil.rmtree(self.round_dir(r))
            r += 1
        if self._is_main:
            (self.output_dir / "initial_eval.json").unlink(missing_ok=True)
        self._check_settings()
        return 0

    def _evaluate_initial(self, start: int) -> None:
        """Evaluate the starting model once (a fresh run with eval prompts) and save it as ``initial_eval.json``."""
        from transformers import set_seed

        from ...utils.atomic import atomic_write_json

        if self.initial_eval is None and self.eval_dataset is not None and start == 0:
            set_seed(self.args.seed)
            self.initial_eval = self.evaluate()
            if self._is_main:
                atomic_write_json(self.output_dir / "initial_eval.json", self.initial_eval)

    # ------------------------------------------------------------------ the steps of a round
    def _new_round(self, r: int) -> CEMRound:
        """The empty record of round ``r`` with its scheduled temperature and quantile; creates its directory."""
        from ...utils.distributed import barrier

        record = CEMRound(index=r, directory=self.round_dir(r), quantile=self._quantile(r),
                          temperature=_linear(self.args.temperature, self.args.temperature_end, r, self.args.num_rounds))
        record.directory.mkdir(parents=True, exist_ok=True)
        barrier()  # nobody looks for this round's files while the main process may be writing them
        return record

    def _sample_round(self, record: CEMRound) -> None:
        """Sample the round's answers, or reuse the generations an interrupted run saved; saved before scoring."""
        from datasets import Dataset, load_from_disk
        from transformers import set_seed

        r, path = record.index, record.generations_path
        set_seed(self.args.seed + 1 + r)  # per round, so a resumed run samples what an uninterrupted one would
        if path.exists():  # an interrupted round: reuse its samples (and scores, when they were saved)
            record.columns, record.reused = load_from_disk(str(path)).to_dict(), True
            logger.info("Round %d: reusing %d saved generations from %s", r, len(record.columns["prompt"]), path)
            return
        record.columns = self._sample(self.train_dataset, self._round_prompt_rows(r), self.args.num_generations,
                                      record.temperature, desc=f"Round {r}: sampling", stream=("round", r))
        if self._is_main:  # a failing reward then loses no generation work
            self._save_dataset(Dataset.from_dict(record.columns), path)

    def _score_round(self, record: CEMRound) -> None:
        """Add the reward columns (unless reused from a saved round) and the means of the rewards' logged values."""
        if "reward" not in record.columns:
            record.columns, record.reward_logs = self._score(record.columns, record.index, record.generations_path)

    def _select_round(self, record: CEMRound) -> None:
        """Add the ``elite`` column (unless reused) and save the scored, selected generations."""
        from datasets import Dataset

        if "elite" not in record.columns:
            # the same on every process (same rows)
            record.columns["elite"] = self._select(record.columns, record.quantile)
            if self._is_main:
                self._save_dataset(Dataset.from_dict(record.columns), record.generations_path)

    def _measure_round(self, record: CEMRound) -> None:
        """Metrics of the samples (from the saved columns, so a resume measures the same), completion log, warnings."""
        metrics = self._measure(record.columns)
        metrics.update({f"reward_log/{k}": v for k, v in record.reward_logs.items()})
        record.sample_metrics = metrics
        if self._is_main:
            self._short_completions.check(metrics["completion_tokens_mean"], has_chat_template(self.processing_class))
        if self.args.log_completions and self._is_main:
            self._log_completions(record.columns, record.index)
        if metrics["num_empty"]:
            logger.warning("Round %d: %d of %d answers are empty (never selected).", record.index,
                           metrics["num_empty"], metrics["num_samples"])

    def _diversity_floor(self, record: CEMRound) -> str | None:
        """Why the run stops before fine-tuning (entropy or distinct-n under its floor), else None.

        Once the samples have no variety left, selection cannot improve the model."""
        args, metrics = self.args, record.sample_metrics
        reason = None
        if args.min_entropy is not None and metrics["entropy"] < args.min_entropy:
            reason = f"entropy {metrics['entropy']:.4f} < min_entropy {args.min_entropy}"
        key = f"distinct_{args.distinct_n_order}"
        if args.min_distinct_n is not None:
            dn = metrics.get(key)
            if dn is None:  # an order `_measure` does not report: measured here, and kept in the round's metrics
                dn = grouped_distinct_n(record.columns["completion"], record.columns["group"], args.distinct_n_order)
                metrics[key] = dn
            if dn < args.min_distinct_n:
                reason = f"{key} {dn:.4f} < min_distinct_n {args.min_distinct_n}"
        return reason

    def _save_stopped_round(self, record: CEMRound) -> None:
        """A round stopped by a diversity floor: its metrics go to the history and ``stopped.json`` (no model)."""
        from ...utils.atomic import atomic_write_json

        logger.warning("CEM stops before fine-tuning round %d: %s", record.index, record.stop_reason)
        self.history.append(record.metrics())
        if self._is_main:
            atomic_write_json(record.directory / "stopped.json", record.metrics())

    def _fine_tune_round(self, record: CEMRound):
        """Fine-tune on the elites (plus replayed SFT rows); returns the round's SFT trainer (None: no elite)."""
        dataset, num_mix = self._fine_tune_dataset(record.columns, record.index)
        record.fine_tune_metrics = {"sft_mix_rows": num_mix, "fine_tune_rows": len(dataset)}
        if not any(record.elite):
            logger.warning("Round %d selected no elite (all answers empty or below the threshold); the model "
                           "is not updated this round.", record.index)
            return None
        metrics, trainer = self._fine_tune(dataset, record.index)
        record.fine_tune_metrics.update(metrics)
        return trainer

    def _evaluate_round(self, record: CEMRound) -> None:
        """Evaluate the round's model on the eval prompts (its own random stream, so a resume gets the same)."""
        record.eval_metrics = self.evaluate(record.index)

    def _save_round(self, record: CEMRound, log_to=None) -> None:
        """Write ``metrics.json`` and the manifest (the round is complete), log the round, update the history file."""
        from ...utils.atomic import atomic_write_json, kill_point
        from ...utils.resume import write_manifest

        r, metrics = record.index, record.metrics()
        self.history.append(metrics)
        if self._is_main:
            atomic_write_json(record.directory / "metrics.json", metrics)
            kill_point(f"cem_round_manifest:{r}")
            write_manifest(record.directory, ROUND_KIND, fingerprint=self._settings, step=r)  # last: complete
        self._log_round(metrics, log_to)
        log_line("cem", _round_line(metrics, self.args.num_rounds))
        self._write_history()
        kill_point(f"cem_round_done:{r}")

    def _stop_requested(self, stop) -> bool:
        """SIGTERM / SIGINT seen by this process or (under several processes) any other one."""
        requested = stop.requested is not None
        from ...utils.distributed import is_distributed

        if is_distributed():
            import torch
            import torch.distributed as dist

            flag = torch.tensor([1.0 if requested else 0.0], device=self.args.device)
            dist.all_reduce(flag)
            requested = bool(flag.item() > 0)
        return requested

    def _log_completions(self, columns: dict, r: int) -> None:
        """The round's rows through the shared completion log (rich table, wandb/trackio tables), step = round."""
        from ...utils.completions import CompletionLog

        rewards = {"reward": columns["reward"]}
        rewards.update({k: v for k, v in columns.items() if k.startswith("reward_")})
        if "gold" in columns:
            rewards["gold"] = columns["gold"]
        log = CompletionLog.from_args(self.args)
        log.add(columns["prompt"], columns["completion"], rewards, extra={"elite": columns["elite"]})
        self.last_completions_table = log.flush(r)

    def _log_round(self, metrics: dict, trainer=None) -> None:
        """The round's numeric metrics as ``cem/<name>`` to ``trainer``'s callbacks (report_to integrations), at the
        fine-tuning steps of all rounds so far (``self.history`` holds this round already): where this round's
        fine-tuning ended on the dashboards' x axis (log_steps), not at ``trainer``'s own step, which restarts at 0
        every round."""
        if trainer is None:
            return
        logs = {f"cem/{k}": v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and not (isinstance(v, float) and math.isnan(v))}
        state = state_at_step(trainer.state, fine_tune_steps(self.history))
        trainer.callback_handler.on_log(trainer.args, state, trainer.control, logs)

    def _write_history(self, stop_reason: str | None = None) -> None:
        if not self._is_main:
            return
        payload = {"initial_eval": self.initial_eval, "rounds": self.history, "stopped": stop_reason}
        from ...utils.atomic import atomic_write_json

        atomic_write_json(self.output_dir / "cem_history.json", payload)
        if self.args.plot and self.history:
            plot_history(self.history, self.output_dir / "cem_history.png", self.initial_eval)

    def save_model(self, output_dir: str | None = None) -> None:
        """Save the current model and tokenizer (main process) to ``output_dir`` (default ``args.output_dir``)."""
        from ...utils.distributed import barrier

        barrier()
        if not self._is_main:
            return
        path = output_dir or self.args.output_dir
        with reference_adapter_hidden(self.model):  # the user's adapter, not the frozen "ref" copy
            self.model.save_pretrained(path)
        self.processing_class.save_pretrained(path)

    # ------------------------------------------------------------------ model card and the Hub
    def create_model_card(self, model_name: str | None = None, dataset_name: str | None = None,
                          tags: str | list[str] | None = None) -> None:
        """Write ``README.md`` in ``output_dir`` (main process), like TRL trainers' ``create_model_card``: TRL's
        template with the tags ``trl``, ``trl-extras``, ``cem`` (plus ``tags``), the CEM citation, ``dataset_name``
        and a per-round summary of the rounds run so far (mean reward, elite reward, entropy, ...)."""
        from .card import cem_model_card

        if not self._is_main:
            return
        if dataset_name is not None:
            self.dataset_name = dataset_name  # kept for the card `push_to_hub` rewrites
        config_name = getattr(self.model.config, "_name_or_path", None) or None
        base_model = config_name if config_name and not Path(config_name).is_dir() else None
        hub_model_id = self.args.hub_model_id or self.output_dir.absolute().name
        settings = {k: getattr(self.args, k) for k in ("num_rounds", "num_generations", "prompts_per_round",
                                                         "elite_top_k", "elite_quantile", "sft_mix_ratio", "kl_coef")}
        card = cem_model_card(
            base_model=base_model, model_name=model_name or hub_model_id.split("/")[-1], hub_model_id=hub_model_id,
            dataset_name=self.dataset_name, tags=[tags] if isinstance(tags, str) else list(tags or []),
            history=self.history, initial_eval=self.initial_eval, stopped=self._stop_reason,
            config_summary={k: v for k, v in settings.items() if v is not None},
        )
        self.output_dir.mkdir(parents=True, exist_ok=True)
        card.save(str(self.output_dir / "README.md"))

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, **card_kwargs):
        """Upload ``output_dir`` to the Hub repository ``args.hub_model_id`` (default: the folder's name), like
        ``transformers.Trainer.push_to_hub``: saves the final model and the model card (``card_kwargs``:
        ``model_name``, ``dataset_name``, ``tags``) first. The per-round fine-tuning folders (``round_*/sft``) and
        temporary files are not uploaded. Returns the commit info (main process; ``None`` on the others)."""
        import huggingface_hub

        self.save_model(self.args.output_dir)
        self.create_model_card(**card_kwargs)
        if not self._is_main:
            return None
        token = token if token is not None else self.args.hub_token
        repo_id = huggingface_hub.create_repo(
            self.args.hub_model_id or self.output_dir.absolute().name, token=token,
            private=self.args.hub_private_repo, exist_ok=True,
        ).repo_id
        return huggingface_hub.upload_folder(
            repo_id=repo_id, folder_path=str(self.output_dir), commit_message=commit_message, token=token,
            revision=revision or self.args.hub_revision, run_as_future=not blocking,
            ignore_patterns=["round_*/sft/**", "*.tmp", "*.tmp/**", "_*"],
        )

