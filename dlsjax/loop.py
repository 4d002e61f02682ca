"""The epoch loop that the search, the training and PT's fine-tuning share.

It owns the order of things within a run: batches of an epoch from a given
batch on (resume at the exact batch), one step per batch, the check of the
step's metrics (a non-finite loss stops the run), the progress bar, a
checkpoint every ``every`` steps and at every epoch's end, the preemption
sync point (save, then raise), and a step budget for this call. What a step
is, what a checkpoint holds and what an epoch's record says are the caller's
(callbacks), so the same loop serves a vmapped multi-seed search, a training
run with validation, and a checkpoint-free fine-tuning.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterator


class Budget:
  """How many steps this call may still take (``None``: no limit); may be shared by runs."""

  def __init__(self, steps: int | None = None):
    self.left = steps

  def spend(self) -> None:
    if self.left is not None:
      self.left -= 1

  @property
  def exhausted(self) -> bool:
    return self.left is not None and self.left <= 0


@dataclasses.dataclass
class EpochLoop:
  """One run's epochs; :meth:`run` starts at ``(epoch, batch)`` and returns the steps taken.

  Attributes:
    epochs, steps_per_epoch: the run's length.
    batches: ``(epoch, start) -> iterator`` of the epoch's batches from batch ``start`` on.
    step: ``(batch) -> metrics`` (host values); the caller keeps its running sums.
    end_epoch: ``(epoch, seconds, last metrics)``: the record of the finished epoch
      (0-based), called before its checkpoint.
    save: ``(epoch, batch)`` writes a checkpoint at that position (None: no checkpoints).
    check: ``(metrics, epoch, batch_index)`` raises to stop the run (a non-finite loss).
    every: a checkpoint every that many global steps within an epoch (0: epoch ends only).
    preemption: a ``distributed.Preemption``; at its sync point the loop saves and raises
      ``preempted(global_step, epoch, batch)``.
    budget: steps allowed in this call; when spent mid-epoch the loop returns, after saving its
      position if ``save_when_spent`` (else a later resume starts at the last checkpoint, as
      after a kill). At an epoch's end it saves either way.
    desc: ``(epoch) -> str`` for the progress bar; ``postfix``: ``(metrics) -> dict`` for it.
    progress: show a progress bar.
  """

  epochs: int
  steps_per_epoch: int
  batches: Callable[[int, int], Iterator]
  step: Callable[[object], object]
  end_epoch: Callable[[int, float, object], None] | None = None
  save: Callable[[int, int], None] | None = None
  check: Callable[[object, int, int], None] | None = None
  every: int = 0
  preemption: object | None = None
  preempted: Callable[[int, int, int], Exception] | None = None
  budget: Budget = dataclasses.field(default_factory=Budget)
  save_when_spent: bool = True
  desc: Callable[[int], str] | None = None
  postfix: Callable[[object], dict] | None = None
  progress: bool = False
  steps_done: int = 0  # steps taken by run() so far (also when it raised)

  def _save(self, epoch: int, batch: int) -> None:
    if self.save is not None:
      self.save(epoch, batch)

  def run(self, epoch: int = 0, start: int = 0) -> int:
    """Epochs ``epoch..`` from batch ``start``; returns the number of steps taken."""
    while epoch < self.epochs:
      it = self.batches(epoch, start)
      bar = range(start, self.steps_per_epoch)
      if self.progress:
        from tqdm import tqdm

        desc = self.desc(epoch) if self.desc else f"epoch {epoch + 1}/{self.epochs}"
        bar = tqdm(bar, desc=desc, initial=start, total=self.steps_per_epoch)
      t0 = time.perf_counter()
      m = None
      for i in bar:
        m = self.step(next(it))
        if self.check is not None:
          self.check(m, epoch, i)
        if self.progress and self.postfix is not None:
          bar.set_postfix(**self.postfix(m))
        self.steps_done += 1
        self.budget.spend()
        last = i + 1 == self.steps_per_epoch
        global_step = epoch * self.steps_per_epoch + i + 1
        if self.preemption is not None and self.preemption.reached(global_step):
          self._save(epoch, i + 1)
          raise self.preempted(global_step, epoch, i + 1)
        if last:
          continue
        spent = self.budget.exhausted and self.save_when_spent
        if (self.every and global_step % self.every == 0) or spent:
          self._save(epoch, i + 1)
        if self.budget.exhausted:
          return self.steps_done
      if self.end_epoch is not None:
        self.end_epoch(epoch, time.perf_counter() - t0, m)
      epoch, start = epoch + 1, 0
      self._save(epoch, 0)
      if self.budget.exhausted:
        return self.steps_done
    return self.steps_done
