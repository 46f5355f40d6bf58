"""PPO's rollout/update schedule in one object: when to roll out, which rows each micro-batch trains on, the
token counts that normalise each optimizer step, and the approx-KL early stop (decided and executed here).

The Trainer calls ``training_step`` once per micro-step. One rollout batch (``steps_per_generation *
per_device_batch_size`` rows per process) is trained on for ``num_ppo_epochs`` epochs; each epoch shuffles its rows
(a permutation per epoch, seeded by ``seed`` and the optimizer step the batch starts at) and cuts them into
``steps_per_generation`` micro-batches of ``per_device_batch_size`` rows; ``gradient_accumulation_steps``
consecutive micro-batches are one optimizer step's minibatch, ``num_mini_batches`` of them per epoch. So a rollout
batch lasts ``cycle_length = steps_per_generation * num_ppo_epochs`` micro-steps and a new one is sampled exactly
every ``cycle_length`` micro-steps.

Approx-KL early stop (``kl_early_stop_target``): at the end of each optimizer step the mean approximate
KL(old || new) of its micro-batches (all processes) is compared with the target; past it, the remaining micro-steps
of this rollout batch are skipped (no forward, no gradient) and the next cycle samples the next rollout batch.

Pure Python/torch: no trainer, no model, no collective (the all-process reductions are functions passed in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class PPOSchedule:
    """The schedule of one PPO run and its position in it.

    Args:
        steps_per_generation: micro-batches per process per epoch of a rollout batch
            (``gradient_accumulation_steps * num_mini_batches``).
        num_ppo_epochs: passes over each rollout batch.
        gradient_accumulation_steps: micro-batches per optimizer step.
        per_device_batch_size: rows per micro-batch.
        num_mini_batches: optimizer steps per epoch.
        seed: the run's seed (the epoch permutations are drawn from ``seed + optimizer step``).
        kl_early_stop_target: stop a rollout batch's updates once an optimizer step's approx KL exceeds it (None: never).

    State (what a checkpoint inside a rollout batch saves, :meth:`state_dict`): ``step`` (micro-steps done),
    ``epoch_perms`` (``num_ppo_epochs`` tensors ``(N,)`` of the current batch's ``N`` rows; None before the first
    batch and after a resume at a rollout boundary), ``minibatch_tokens`` (``(num_ppo_epochs, num_mini_batches)``
    valid tokens of each minibatch on all processes), ``stopped`` (the early stop fired in this batch) and the
    approx KLs of the current optimizer step's micro-batches.
    """

    steps_per_generation: int
    num_ppo_epochs: int
    gradient_accumulation_steps: int
    per_device_batch_size: int
    num_mini_batches: int
    seed: int
    kl_early_stop_target: float | None = None
    step: int = 0
    epoch_perms: list[torch.Tensor] | None = None
    minibatch_tokens: torch.Tensor | None = None
    stopped: bool = False
    approx_kls: list[torch.Tensor] = field(default_factory=list)

    def __post_init__(self):
        for name in ("steps_per_generation", "num_ppo_epochs", "gradient_accumulation_steps", "per_device_batch_size",
                     "num_mini_batches"):  # fmt: skip
            if int(getattr(self, name)) < 1:
                raise ValueError(f"PPOSchedule: {name} must be >= 1, got {getattr(self, name)}.")
        if self.steps_per_generation != self.gradient_accumulation_steps * self.num_mini_batches:
            raise ValueError(
                f"PPOSchedule: steps_per_generation ({self.steps_per_generation}) must equal "
                f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) x num_mini_batches "
                f"({self.num_mini_batches})."
            )

    @classmethod
    def from_args(cls, args) -> PPOSchedule:
        """The schedule a :class:`~trl_extras.trainers.ppo.PPOConfig` describes."""
        return cls(
            steps_per_generation=args.steps_per_generation, num_ppo_epochs=args.num_ppo_epochs,
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            per_device_batch_size=args.per_device_train_batch_size, num_mini_batches=args.num_mini_batches,
            seed=args.seed, kl_early_stop_target=args.kl_early_stop_target,
        )

    # --------------------------------------------------------------------------------------------------------
    # Where we are
    # --------------------------------------------------------------------------------------------------------
    @property
    def cycle_length(self) -> int:
        """Micro-steps per rollout batch."""
        return self.steps_per_generation * self.num_ppo_epochs

    @property
    def position(self) -> int:
        """Micro-steps done in the current rollout batch's cycle (0 = a new batch is due)."""
        return self.step % self.cycle_length

    @property
    def rows_per_batch(self) -> int:
        """Rows of one rollout batch on one process."""
        return self.steps_per_generation * self.per_device_batch_size

    @property
    def on_policy_single_update(self) -> bool:
        """Each rollout batch is used by exactly one optimizer step, from the policy that sampled it."""
        return self.num_ppo_epochs == 1 and self.num_mini_batches == 1

    def rollout_due(self) -> bool:
        """A new rollout batch is needed now: at each cycle start, or mid-cycle without one (never sampled, or a
        resume whose checkpoint did not hold one)."""
        return self.position == 0 or self.epoch_perms is None

    def in_batch(self) -> bool:
        """Inside a rollout batch's epochs (not at its start): a checkpoint here must hold the batch."""
        return self.position != 0 and self.epoch_perms is not None

    def starts_optimizer_step(self) -> bool:
        return self.step % self.gradient_accumulation_steps == 0

    def ends_optimizer_step(self) -> bool:
        return (self.step + 1) % self.gradient_accumulation_steps == 0

    # --------------------------------------------------------------------------------------------------------
    # A new rollout batch
    # --------------------------------------------------------------------------------------------------------
    def start_batch(self, completion_mask: torch.Tensor, reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Begin a rollout batch whose rows have ``completion_mask`` ``(N, T)``: draw its epoch permutations and
        count each minibatch's valid tokens (``reduce_sum`` sums the ``(num_ppo_epochs, num_mini_batches)`` local
        counts over processes; identity in one process). Clears the early stop of the previous batch."""
        n = completion_mask.size(0)
        if n != self.rows_per_batch:
            raise ValueError(
                f"PPOSchedule: a rollout batch of {n} rows, expected steps_per_generation x per_device_batch_size = "
                f"{self.steps_per_generation} x {self.per_device_batch_size} = {self.rows_per_batch}."
            )
        gen = torch.Generator().manual_seed(self.seed + self.step // self.gradient_accumulation_steps)
        self.epoch_perms = [torch.randperm(n, generator=gen) for _ in range(self.num_ppo_epochs)]
        counts = self.minibatch_token_counts(completion_mask)
        self.minibatch_tokens = reduce_sum(counts) if reduce_sum is not None else counts
        self.stopped = False
        self.approx_kls = []

    def minibatch_token_counts(self, completion_mask: torch.Tensor) -> torch.Tensor:
        """``(num_ppo_epochs, num_mini_batches)`` float: valid tokens of each optimizer step's minibatch on this
        process (the rows of ``gradient_accumulation_steps`` consecutive micro-batches of each epoch permutation)."""
        rows = self.per_device_batch_size * self.gradient_accumulation_steps
        valid = completion_mask.sum(1)
        return torch.stack([
            torch.stack([valid[perm[m * rows : (m + 1) * rows].to(valid.device)].sum() for m in range(self.num_mini_batches)])
            for perm in self.epoch_perms
        ]).float()  # fmt: skip

    # --------------------------------------------------------------------------------------------------------
    # This micro-step
    # --------------------------------------------------------------------------------------------------------
    def epoch_and_micro(self) -> tuple[int, int]:
        """(epoch, micro-batch within the epoch) of this micro-step."""
        return divmod(self.position, self.steps_per_generation)

    def micro_batch_rows(self) -> torch.Tensor:
        """``(per_device_batch_size,)`` the rows of the rollout batch this micro-step trains on."""
        epoch, micro = self.epoch_and_micro()
        bs = self.per_device_batch_size
        return self.epoch_perms[epoch][micro * bs : (micro + 1) * bs]

    def num_items_in_batch(self) -> torch.Tensor:
        """``()`` valid tokens of this micro-step's whole minibatch on all processes (the ``'dapo'`` normaliser)."""
        epoch, micro = self.epoch_and_micro()
        return self.minibatch_tokens[epoch, micro // self.gradient_accumulation_steps]

    def skip_step(self) -> bool:
        """The early stop fired in this rollout batch: this micro-step does nothing (a new batch's first step is
        never skipped)."""
        return self.stopped and self.position != 0

    def record_approx_kl(self, value: torch.Tensor) -> None:
        """``()`` this micro-batch's approximate KL(old || new) (``core.ppo.approx_kl``, local)."""
        self.approx_kls.append(value.detach())

    def end_step(self, reduce_mean: Callable[[torch.Tensor], float] | None = None) -> tuple[float | None, bool]:
        """Finish this micro-step; returns ``(approx_kl, early_stop)``.

        At the end of an optimizer step whose micro-batches recorded an approx KL: ``approx_kl`` is their mean
        (``reduce_mean`` of the ``(n,)`` recorded values over all processes; every process must call this at the
        same steps), and ``early_stop`` says whether it passed ``kl_early_stop_target``, which stops this rollout
        batch: its remaining micro-steps are skipped (:meth:`skip_step`). Otherwise ``(None, False)``."""
        mean, stop = None, False
        if self.ends_optimizer_step() and self.approx_kls:
            values = torch.stack(self.approx_kls)
            mean = float(reduce_mean(values)) if reduce_mean is not None else float(values.float().mean())
            self.approx_kls = []
            stop = self.kl_early_stop_target is not None and mean > self.kl_early_stop_target
            self.stopped = self.stopped or stop
        self.step += 1
        return mean, stop

    # --------------------------------------------------------------------------------------------------------
    # Checkpoint / resume
    # --------------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The position and the current batch's schedule state (CPU tensors), under the keys of the rollout-buffer
        file written before this class existed."""
        return {
            "step": self.step,
            "epoch_perms": [p.cpu() for p in self.epoch_perms or []],
            "minibatch_tokens": None if self.minibatch_tokens is None else self.minibatch_tokens.detach().cpu(),
            "stop_batch_updates": self.stopped,
            "minibatch_approx_kl": [t.detach().cpu() for t in self.approx_kls],
        }

    def load_state_dict(self, state: dict, device=None) -> None:
        """Continue from :meth:`state_dict` (``device``: where the token counts and KLs go)."""
        if len(state["epoch_perms"]) != self.num_ppo_epochs:
            raise ValueError(
                f"The saved rollout batch has {len(state['epoch_perms'])} epoch permutations, this run "
                f"num_ppo_epochs={self.num_ppo_epochs}."
            )
        self.step = int(state["step"])
        self.epoch_perms = list(state["epoch_perms"])
        tokens = state["minibatch_tokens"]
        self.minibatch_tokens = None if tokens is None else tokens.to(device)
        self.stopped = bool(state["stop_batch_updates"])
        self.approx_kls = [t.to(device) for t in state["minibatch_approx_kl"]]

    def resume_at(self, global_step: int) -> None:
        """Go to optimizer step ``global_step``, with no rollout batch (one is loaded with :meth:`load_state_dict`
        when the checkpoint was saved inside a batch's epochs, else the next step samples one)."""
        self.step = global_step * self.gradient_accumulation_steps
        self.epoch_perms = None
        self.minibatch_tokens = None
        self.stopped = False
        self.approx_kls = []
