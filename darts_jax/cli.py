"""What the `experiments/` entry points share: one-line errors instead of tracebacks, and the final report."""
from __future__ import annotations

import os
import sys
from typing import Callable

from darts_jax import workdir as wd
from darts_jax import xla_setup

# Errors a user can fix (bad config/flags, data, genotype, workdir) or must know about (divergence).
_USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, wd.Diverged)


def run(fn: Callable[[], object]) -> int:
  """Runs `fn`; a user-facing error becomes one line on stderr and exit status 1 (2 for divergence)."""
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
    print(f"error: {msg}", file=sys.stderr)
    return 2 if isinstance(e, wd.Diverged) else 1
  return 0


def search_and_report(config, workdir: str) -> dict:
  from darts_jax import search  # pylint: disable=g-import-not-at-top
  summary = search.search(config, workdir)
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
  print(f"test accuracy: {summary['test_acc']:.4f}; parameters: {summary['num_params']:,}; "
        f"train time: {summary['train_seconds']:.1f} s")
  return summary
