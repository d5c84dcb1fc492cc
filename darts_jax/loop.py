"""The one run loop of searches (one seed or many) and retraining.

`run` steps a state over batches and does what every run does between steps: it logs the metrics every
`log_every` steps and at epoch ends (keeping them on the device until then), times each epoch, hands the epoch
end to the caller (evaluation, the epoch record), checkpoints at epoch ends and every `checkpoint_every` steps,
checkpoints the current step and raises `workdir.Preempted` on SIGTERM, and stops with `workdir.Diverged`
naming the first non-finite step while keeping the last good checkpoint (`workdir.LoopCheckpoints`). A tqdm
bar shows progress. The callers hold only what differs: their step, batches and records.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import jax

from darts_jax import workdir as wd


class Hooks(NamedTuple):
  """What a run does that the loop does not know.

  save: ``(step, state, seconds)`` writes a checkpoint of `state` with the run's elapsed seconds.
  check: ``(pending metrics, step, last good step) -> host metrics``, raising `workdir.Diverged` on a
    non-finite step (`workdir.fetch_finite`).
  on_log: ``(step, host metrics)``: writes the step records.
  on_epoch: ``(step, epoch, state, seconds, epoch_steps, elapsed) -> progress-bar postfix or None``: the epoch's
    evaluation and record; the loop checkpoints after it.
  """
  save: Callable[[int, Any, float], None]
  check: Callable[[list, int, int], list]
  on_log: Callable[[int, list], None]
  on_epoch: Callable[..., Optional[Dict[str, Any]]]


def run(state, step_fn: Callable[[Any, int, Any], Tuple[Any, Any]], batches: Optional[Iterator], hooks: Hooks, *,
        start: int, total_steps: int, steps_per_epoch: int, log_every: int, elapsed: float = 0.0,
        checkpoint_every: int = 0, directory: str = "", progress: Optional[str] = None,
        close: Sequence[Callable[[], None]] = (), stop: Optional[Callable[[], bool]] = None) -> Tuple[Any, float]:
  """Runs steps `start` .. `total_steps` - 1 of ``step_fn(state, step, batch) -> (state, metrics)`` on
  `batches` (None when nothing is left to run); returns the final state and the elapsed seconds (`elapsed`
  plus this run's). `progress`: the tqdm bar's label (None: no bar). `close`: called at the end, however it
  ends, after the batches' own ``close``. `stop`: asked after each epoch's checkpoint and the SIGTERM poll
  (a SIGTERM in that epoch raises `workdir.Preempted` instead); True ends the run there (an early stop)."""
  current = [state]
  guard = wd.LoopCheckpoints(lambda at, seconds: hooks.save(at, current[0], seconds), hooks.check, start,
                             total_steps, directory, checkpoint_every)
  bar = None
  if progress is not None and start < total_steps:
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top  (only runs with a bar pay for it)
    bar = tqdm(total=total_steps, initial=start, unit="step", desc=progress, dynamic_ncols=True, mininterval=2.0)
  step, epoch_steps, t_epoch = start, 0, time.perf_counter()
  try:
    with guard:
      while step < total_steps:
        state, metrics = step_fn(state, step, next(batches))
        current[0] = state
        guard.record(metrics)
        step += 1
        epoch_steps += 1
        end_of_epoch = step % steps_per_epoch == 0
        if step % log_every == 0 or end_of_epoch:
          hooks.on_log(step, guard.fetch(step))
        if bar is not None:
          bar.update(1)
        if end_of_epoch:
          jax.block_until_ready(state)
          seconds = time.perf_counter() - t_epoch
          elapsed += seconds
          postfix = hooks.on_epoch(step, step // steps_per_epoch - 1, state, seconds, epoch_steps, elapsed)
          if postfix and bar is not None:
            bar.set_postfix(postfix, refresh=False)
          guard.save(step, elapsed)
          t_epoch, epoch_steps = time.perf_counter(), 0
        # A SIGTERM of the epoch an early stop ends is acted on first: nothing would watch for it after the loop
        # (a DARTS-ADA roll-back starts a new watch).
        guard.between_steps(step, lambda: elapsed + time.perf_counter() - t_epoch)
        if end_of_epoch and stop is not None and stop():
          break
  finally:
    if batches is not None and hasattr(batches, "close"):
      batches.close()
    if bar is not None:
      bar.close()
    for fn in close:
      fn()
  return state, elapsed


def step_record(fetched: List[Dict[str, Any]], phase: str, epoch: int, drop: Sequence[str] = ()) -> Dict[str, Any]:
  """The log record of the last fetched step: its metrics as floats (without the NaN guard's ``finite`` and
  the `drop` keys), under `phase` and `epoch`."""
  m = {k: float(v) for k, v in fetched[-1].items() if k != "finite" and k not in drop}
  return {"phase": phase, "epoch": epoch, **m}
