"""The shared epoch loop: order of steps, checkpoints, budget, preemption and the stop check
(plain Python callbacks; the search, training and PT tests run it with JAX steps)."""

import pytest

from dlsjax import loop


class Recorder:
  def __init__(self):
    self.steps, self.saves, self.epochs = [], [], []

  def batches(self, epoch, start):
    return iter([(epoch, i) for i in range(start, 4)])

  def step(self, batch):
    self.steps.append(batch)
    return {"loss": 1.0}

  def make(self, **kw):
    return loop.EpochLoop(
      epochs=3,
      steps_per_epoch=4,
      batches=self.batches,
      step=self.step,
      end_epoch=lambda e, s, m: self.epochs.append(e),
      save=lambda e, b: self.saves.append((e, b)),
      **kw,
    )


def test_resumes_at_the_exact_batch_and_checkpoints_every_n_steps_and_at_epoch_ends():
  r = Recorder()
  assert r.make(every=3).run(epoch=1, start=2) == 6
  assert r.steps == [(1, 2), (1, 3), (2, 0), (2, 1), (2, 2), (2, 3)]
  assert r.epochs == [1, 2]
  # Global step 9 = (epoch 2, batch 1) is a multiple of 3; epoch ends save (epoch + 1, 0);
  # global step 12 is an epoch's last step: its end-of-epoch checkpoint serves.
  assert r.saves == [(2, 0), (2, 1), (3, 0)]


def test_budget_stops_mid_epoch_with_or_without_a_checkpoint_and_is_shared():
  r = Recorder()
  budget = loop.Budget(5)
  lp = r.make(budget=budget)
  assert lp.run() == 5 and budget.exhausted
  assert r.saves == [(1, 0), (1, 1)]  # the epoch's end, then where the budget ran out
  r2 = Recorder()
  assert r2.make(budget=loop.Budget(5), save_when_spent=False).run() == 5
  assert r2.saves == [(1, 0)]  # as after a kill: a resume starts from the epoch's end
  # A budget spent at an epoch's last step stops after that epoch's checkpoint.
  r3 = Recorder()
  assert r3.make(budget=loop.Budget(4)).run() == 4 and r3.saves == [(1, 0)]


def test_preemption_saves_the_step_then_raises_and_a_check_stops_the_run():
  class AtStep:
    def reached(self, global_step):
      return global_step == 6

  r = Recorder()
  lp = r.make(preemption=AtStep(), preempted=lambda g, e, b: RuntimeError(f"pre {g} {e} {b}"))
  with pytest.raises(RuntimeError, match="pre 6 1 2"):
    lp.run()
  assert r.saves == [(1, 0), (1, 2)] and lp.steps_done == 6

  def check(m, epoch, i):
    if (epoch, i) == (0, 2):
      raise ValueError("non-finite loss at epoch 1, batch 3")

  r = Recorder()
  lp = r.make(check=check)
  with pytest.raises(ValueError, match="batch 3"):
    lp.run()
  assert r.saves == [] and lp.steps_done == 2  # the failing step is not counted
