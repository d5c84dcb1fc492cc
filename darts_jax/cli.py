"""What the `experiments/` entry points share: one-line errors instead of tracebacks, and the final report."""
from __future__ import annotations

import os
import sys
from typing import Callable

from darts_jax import parallel
from darts_jax import workdir as wd
from darts_jax import xla_setup

# Errors a user can fix (bad config/flags, data, genotype, workdir) or must know about (divergence,
# preemption, processes that disagree).
_USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, wd.Diverged, wd.Preempted,
                parallel.ProcessMismatch)
PREEMPTED_EXIT = 143   # 128 + SIGTERM, what schedulers expect of a job stopped by SIGTERM


def add_process_flags():
  """The absl flags of a multi-process run (unset: one process); pass their values to `initialize`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  return (flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)"),
          flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)"),
          flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes)"))


def initialize(process_flags) -> int:
  """Starts `jax.distributed` from `add_process_flags`' values before any other JAX call; 1 on bad flags."""
  try:
    parallel.initialize(*(f.value for f in process_flags))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run(fn: Callable[[], object]) -> int:
  """Runs `fn`; a user-facing error becomes one line on stderr and exit status 1 (2 for divergence, 143 for a
  run stopped by SIGTERM after saving its checkpoint)."""
  xla_setup.enable_compilation_cache()
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
  try:
    fn()
  except KeyboardInterrupt:
    print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
    return 130
  except _USER_ERRORS as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, KeyError):
      msg = f"unknown config field or name {msg}"
    if isinstance(e, wd.Preempted):
      print(msg, file=sys.stderr)
      return PREEMPTED_EXIT
    print(f"error: {msg}", file=sys.stderr)
    return 2 if isinstance(e, wd.Diverged) else 1
  return 0


def search_and_report(config, workdir: str) -> dict:
  from darts_jax import search  # pylint: disable=g-import-not-at-top
  summary = search.search(config, workdir)
  if not parallel.is_main():
    return summary
  print(f"genotype: {summary['genotype']}")
  print(f"search time: {summary['search_seconds']:.1f} s; supernet val accuracy: {summary['val_acc']}")
  names = [n for n in ("genotype.json", "genotype.txt", "cells_normal.png", "cells_reduce.png", "cell.png",
                        "alphas.png")
           if os.path.exists(os.path.join(workdir, n))]
  print(f"exports in {workdir}: {', '.join(names)}")
  return summary


def retrain_and_report(config, workdir: str) -> dict:
  from darts_jax import retrain  # pylint: disable=g-import-not-at-top
  summary = retrain.train_and_evaluate(config, workdir)
  if not parallel.is_main():
    return summary
  print(f"test accuracy: {summary['test_acc']:.4f}; parameters: {summary['num_params']:,}; "
        f"train time: {summary['train_seconds']:.1f} s")
  return summary
