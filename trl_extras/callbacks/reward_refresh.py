"""Refresh the reward model on the policy's own answers during RL, every N steps (the article's "second way").

:class:`RewardRefreshCallback` plugs into ``PPOTrainer`` (and TRL's ``GRPOTrainer`` / ``ExactKLGRPOTrainer`` when one
of their rewards is a reward model or a ``RewardEnsemble``). Every ``every_n_steps`` optimizer steps it

1. collects ``num_pairs`` comparisons — the current policy's answer against the baseline's, on fresh prompts —
   through :func:`~trl_extras.refresh.comparisons.collect_comparisons` (the shared generation path);
2. labels them with ``labeler`` (a pairwise judge) and SAVES them, before anything else, to
   ``<output_dir>/reward_refresh/step_<N>/labelled.jsonl``;
3. refreshes the reward model the trainer scores with, in place
   (:func:`~trl_extras.refresh.refresh.refresh_reward_model`, replaying earlier refreshes' pairs and ``replay_pairs``),
   and logs ``refresh/*`` metrics (accuracy on the new pairs before/after, the policy's win rate against the baseline).

Crash safety: the labelled comparisons of a refresh are on disk before the reward model changes. On a re-run
(``resume_from_checkpoint``) a refresh whose ``labelled.jsonl`` exists reuses those labels instead of asking the
labeller again, so a crash between labelling and refresh loses nothing. Each checkpoint carries the refreshed reward
model (``checkpoint-N/reward_refresh/``), restored at the first step after a resume.

Single process only (the collection runs on one process); DeepSpeed-wrapped reward models are refused.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from transformers import TrainerCallback

from ..refresh.labeling import read_jsonl, write_jsonl

logger = logging.getLogger(__name__)
SUBDIR = "reward_refresh"
STATE_FILE = "refresh_state.json"


def find_trainer_reward(trainer):
    """The reward a trainer scores with that can be refreshed: ``(reward, tokenizer)``.

    ``PPOTrainer``: the first ``RewardModelScorer`` or ``RewardEnsemble`` in ``trainer.reward_functions``.
    TRL's GRPO-family trainers: the first reward-model instance in ``trainer.reward_funcs`` (its tokenizer from
    ``reward_processing_classes``) or ``RewardEnsemble``.
    """
    from ..rewards.ensemble import RewardEnsemble
    from ..rewards.scoring import RewardModelScorer
    from ..rewards.source import EnsembleReward

    def refreshable(fn):  # reward sources (trl_extras.rewards.source) that hold a trainable reward model
        fn = fn.ensemble if isinstance(fn, EnsembleReward) else fn
        return fn if isinstance(fn, (RewardModelScorer, RewardEnsemble)) else None

    functions = getattr(trainer, "reward_functions", None)
    if functions is not None and hasattr(functions, "funcs"):
        for fn in functions.funcs:
            if refreshable(fn) is not None:
                return refreshable(fn), fn.processing_class
    funcs = getattr(trainer, "reward_funcs", None)
    if funcs is not None:
        procs = getattr(trainer, "reward_processing_classes", None) or [None] * len(funcs)
        for fn, proc in zip(funcs, procs):
            if refreshable(fn) is not None:
                return refreshable(fn), fn.processing_class
            if hasattr(fn, "config") and hasattr(fn, "parameters") and not callable(getattr(fn, "judge", None)):
                if proc is None:
                    raise ValueError("The trainer's reward model has no processing class to refresh it with.")
                return fn, proc
    raise ValueError(
        "RewardRefreshCallback found no reward model to refresh among the trainer's rewards (a reward-model path or "
        "instance, or a RewardEnsemble, is needed; plain Python reward functions cannot be re-trained). Pass "
        "`reward_model=` explicitly."
    )


class RewardRefreshCallback(TrainerCallback):
    """Collect → label → refresh the reward model every ``every_n_steps`` optimizer steps.

    Args:
        labeler: a pairwise judge: an object with ``judge(prompts, completions_pairs, shuffle_order=True)`` or a
            callable with that signature, returning 0 / 1 / -1 (tie) per pair — e.g.
            :class:`~trl_extras.refresh.labeling.RewardJudge` over a verifier or the testbed's gold reward.
        every_n_steps: refresh after every this many optimizer steps (not at step 0, nor at the run's last step).
        num_pairs: comparisons per refresh (one fresh prompt each).
        prompts: the pool of fresh prompts (a list or a dataset with ``prompt``); refresh k uses the k-th block of
            ``num_pairs`` prompts, so the pool must hold ``num_pairs`` × the number of refreshes.
        baseline: the model the policy's answers are compared with (the SFT model; a path or instance). None uses
            the trainer's reference model (``trainer.ref_model``).
        reward_model: what to refresh; None finds it in the trainer (:func:`find_trainer_reward`).
        processing_class: the reward model's tokenizer when ``reward_model`` is a bare model.
        refresh_args: a :class:`~trl_extras.refresh.refresh.RewardRefreshConfig` (its ``output_dir`` is replaced
            by the refresh's directory); None uses the defaults.
        replay_pairs: the reward model's earlier data to replay (e.g. its training pairs); earlier refreshes' pairs
            are replayed too.
        max_new_tokens, temperature: sampling of both answers (``temperature=0``: greedy).
        seed: seeds each refresh's sampling and A/B order (``seed + step``).
        trainer: the trainer (or :meth:`set_trainer` after building it).
    """

    def __init__(self, labeler, every_n_steps: int, num_pairs: int, prompts, baseline=None, reward_model=None,
                 processing_class=None, refresh_args=None, replay_pairs=None, max_new_tokens: int = 64,
                 temperature: float = 1.0, seed: int = 0, trainer=None):
        from ..evaluation._common import prompts_from
        from ..refresh.labeling import judge_function

        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}.")
        if num_pairs < 1:
            raise ValueError(f"num_pairs must be >= 1, got {num_pairs}.")
        judge_function(labeler)  # fails now for something that cannot judge
        self.labeler = labeler
        self.every_n_steps = int(every_n_steps)
        self.num_pairs = int(num_pairs)
        self.prompts = prompts_from(prompts, what="refresh prompts")
        self.baseline = baseline
        self.reward_model = reward_model
        self.processing_class = processing_class
        self.refresh_args = refresh_args
        self.replay_pairs = replay_pairs
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.seed = seed
        self.trainer = trainer
        self.history: list[dict] = []  # one entry per refresh: step, report, label counts, win rate
        self._pairs_by_step: dict[int, object] = {}
        self._restored = False

    def set_trainer(self, trainer) -> RewardRefreshCallback:
        self.trainer = trainer
        return self

    # ------------------------------------------------------------------------------------------------ helpers
    def _reward(self):
        if self.reward_model is not None:
            return self.reward_model, self.processing_class
        return find_trainer_reward(self.trainer)

    def _root(self, args) -> Path:
        return Path(args.output_dir) / SUBDIR

    def _policy(self):
        policy = getattr(self.trainer, "policy", None)
        return policy if policy is not None else self.trainer.accelerator.unwrap_model(self.trainer.model)

    def _baseline(self):
        if self.baseline is not None:
            return self.baseline
        ref = getattr(self.trainer, "ref_model", None)
        if ref is None:
            raise ValueError(
                "RewardRefreshCallback needs a baseline model (the SFT model): pass `baseline=` (the trainer has no "
                "reference model to default to)."
            )
        return self.trainer.accelerator.unwrap_model(ref)

    def _prompts_for(self, index: int) -> list:
        block = self.prompts[index * self.num_pairs : (index + 1) * self.num_pairs]
        if len(block) < self.num_pairs:
            raise ValueError(
                f"Refresh {index + 1} needs {self.num_pairs} fresh prompts but only {len(block)} of the "
                f"{len(self.prompts)} refresh prompts are left: pass more prompts or refresh less often."
            )
        return block

    def _tokenizer(self):
        tok = getattr(self.trainer, "processing_class", None)
        return getattr(tok, "tokenizer", tok)

    # ------------------------------------------------------------------------------------------------ events
    def on_train_begin(self, args, state, control, **kwargs):
        if self.trainer is None:
            raise ValueError("RewardRefreshCallback needs the trainer: pass trainer= or call set_trainer(trainer).")
        if self.trainer.accelerator.num_processes > 1:
            raise NotImplementedError("RewardRefreshCallback runs in a single process only.")
        self._reward()  # a clear error now rather than at the first refresh
        if state.max_steps and state.max_steps > 0:
            planned = (state.max_steps - 1) // self.every_n_steps
            if planned * self.num_pairs > len(self.prompts):
                raise ValueError(
                    f"{planned} refreshes of {self.num_pairs} comparisons need {planned * self.num_pairs} fresh "
                    f"prompts; only {len(self.prompts)} were given."
                )
        self._restored = False

    def on_step_begin(self, args, state, control, **kwargs):
        if not self._restored:
            self._restore(args, state.global_step)
            self._restored = True

    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        # no refresh at the last step: no training would use it (and its labels would be spent for nothing)
        if step > 0 and step % self.every_n_steps == 0 and not (state.max_steps and step >= state.max_steps):
            self.refresh(args, step)

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if ckpt.is_dir():
            self._save_reward(ckpt / SUBDIR, state.global_step)

    # ------------------------------------------------------------------------------------------------ the refresh
    def refresh(self, args, step: int) -> dict:
        """Collect (or reuse saved) labelled comparisons for ``step``, save them, refresh the reward model."""
        from datasets import concatenate_datasets

        from ..refresh.comparisons import collect_comparisons
        from ..refresh.labeling import label_comparisons, label_counts, policy_win_rate, to_preference_pairs
        from ..refresh.refresh import default_refresh_config, refresh_reward_model

        index = step // self.every_n_steps - 1
        folder = self._root(args) / f"step_{step:06d}"
        labelled_file = folder / "labelled.jsonl"
        if labelled_file.is_file():  # labelled before a crash: never ask (or pay) the labeller twice
            labelled = read_jsonl(labelled_file)
            logger.info("Reward refresh at step %d: reusing %d saved labelled comparisons.", step, len(labelled))
        else:
            comparisons = collect_comparisons(
                self._policy(), self._baseline(), self._prompts_for(index), processing_class=self._tokenizer(),
                max_new_tokens=self.max_new_tokens, temperature=self.temperature, seed=self.seed + step,
                id_prefix=f"s{step}-",
            )
            labelled = label_comparisons(comparisons, self.labeler)
            write_jsonl(labelled_file, labelled)  # saved BEFORE the reward model changes
        pairs = to_preference_pairs(labelled)
        reward, tokenizer = self._reward()
        replay_parts = [p.select_columns(["prompt", "chosen", "rejected"]) for p in self._pairs_by_step.values()]
        if self.replay_pairs is not None:
            replay_parts.insert(0, self.replay_pairs.select_columns(["prompt", "chosen", "rejected"]))
        replay = concatenate_datasets(replay_parts) if replay_parts else None
        if self.refresh_args is None:
            refresh_args = default_refresh_config(str(folder / "trainer"))
        else:
            from dataclasses import replace

            refresh_args = replace(self.refresh_args, output_dir=str(folder / "trainer"))
        report = refresh_reward_model(reward, pairs, replay_pairs=replay, args=refresh_args,
                                      processing_class=tokenizer)
        self._pairs_by_step[step] = pairs
        counts = label_counts(labelled)
        win = policy_win_rate(labelled)
        entry = {"step": step, "report": report.to_dict(), "labels": counts, "policy_win_rate": win}
        from ..utils.atomic import atomic_write_text

        atomic_write_text(folder / "report.json", json.dumps(entry, indent=2))
        self.history.append(entry)
        metrics = report.metrics("refresh/")
        metrics["refresh/ties"] = float(counts["ties"])
        if win is not None:
            metrics["refresh/policy_win_rate"] = float(win)
        self._log(metrics)
        return entry

    def _log(self, metrics: dict) -> None:
        store = getattr(self.trainer, "_metrics", None)
        if isinstance(store, dict) and "train" in store:  # TRL-style trainers average and log these at their cadence
            for k, v in metrics.items():
                store["train"][k].append(v)
        else:
            self.trainer.log(dict(metrics))

    # ------------------------------------------------------------------------------------------------ persistence
    def _save_reward(self, directory: Path, step: int) -> None:
        from safetensors.torch import save_model

        from ..refresh.refresh import resolve_reward_model
        from ..utils.atomic import atomic_write_text

        reward, tokenizer = self._reward()
        kind, target, _ = resolve_reward_model(reward, tokenizer)
        directory.mkdir(parents=True, exist_ok=True)
        models = target.modules() if kind == "ensemble" else [target]  # a LoRA ensemble: its one PeftModel
        for k, model in enumerate(models):
            save_model(model, str(directory / f"reward_{k}.safetensors"))
        state = {"step": step, "refresh_steps": sorted(self._pairs_by_step), "num_models": len(models),
                 "calibration": getattr(target, "calibration", None) if kind == "ensemble" else None}
        atomic_write_text(directory / STATE_FILE, json.dumps(state, indent=2))

    def _restore(self, args, step: int) -> None:
        """After a resume: load the checkpoint's refreshed reward model and the pairs of the refreshes before it."""
        from safetensors.torch import load_model

        from ..refresh.labeling import to_preference_pairs
        from ..refresh.refresh import resolve_reward_model

        if step == 0:
            return
        directory = Path(args.output_dir) / f"checkpoint-{step}" / SUBDIR
        done = sorted(int(p.name.split("_")[1]) for p in self._root(args).glob("step_*") if (p / "report.json").is_file())
        done = [s for s in done if s <= step]
        if not (directory / STATE_FILE).is_file():
            if done:
                raise ValueError(
                    f"Resuming at step {step}, after reward refreshes at steps {done}, but {directory} holds no "
                    "refreshed reward model: the checkpoint was not written with this callback."
                )
            return
        state = json.loads((directory / STATE_FILE).read_text())
        reward, tokenizer = self._reward()
        kind, target, _ = resolve_reward_model(reward, tokenizer)
        models = target.modules() if kind == "ensemble" else [target]
        if len(models) != state["num_models"]:
            raise ValueError(f"The checkpoint holds {state['num_models']} reward models, the trainer has {len(models)}.")
        for k, model in enumerate(models):
            load_model(model, str(directory / f"reward_{k}.safetensors"))
        if kind == "ensemble" and state.get("calibration"):
            target.set_calibration(state["calibration"]["mean"], state["calibration"]["std"])
        self._pairs_by_step = {
            s: to_preference_pairs(read_jsonl(self._root(args) / f"step_{s:06d}" / "labelled.jsonl"))
            for s in state["refresh_steps"]
        }
        self.history = [json.loads((self._root(args) / f"step_{s:06d}" / "report.json").read_text())
                        for s in state["refresh_steps"]]
        logger.info("Restored the reward model refreshed at steps %s from %s.", state["refresh_steps"], directory)
