"""DARTS (1st and exact 2nd order), GDAS, PC-DARTS, DrNAS and the random baseline on Fashion-MNIST, 3 seeds.

  python experiments/compare.py --config=experiments/configs/fashion_compare.py --workdir=/tmp/fashion_compare
  python experiments/compare.py --config=experiments/configs/fashion_compare.py:retrain --workdir=/tmp/fashion_compare
  python experiments/compare.py --config=experiments/configs/fashion_compare.py:smoke --workdir=/tmp/cmp_smoke

Every method searches the DARTS space with the same protocol: `fashion_search`'s config with a small budget
for a 2-core CPU: a 5-cell, C=8 supernet on 4,000 training images (2,000 for the weights, 2,000 for α),
28×28×1, batch 64, 5 epochs of 31 steps, 1,000 validation images scored per epoch, one warm-up epoch (weights
only) for every method. The shared warm-up replaces the papers' own (PC-DARTS 15 of 50 epochs, DrNAS 10 of 50):
with only 5 epochs those defaults would never update α. Each method keeps its paper's optimizer settings
(`darts_jax.methods`). The budget is far below the papers' (50 epochs on CIFAR-10): it compares the methods'
behaviour under a small, identical budget, not their published accuracies. Wall time was not measured here;
expect the exact second-order DARTS runs to cost about three times a first-order run — time one search with
``experiments/search.py`` first and scale by 5 methods × 3 seeds (the random baseline searches nothing).

Outputs in the workdir: ``runs/darts/<method>/seed<k>/search/`` (each a `darts_jax.search` work directory),
``report.md`` / ``report.json`` (per method: supernet val accuracy mean ± std, search CPU-hours, the share of
``skip_connect`` in the normal cells, the random baseline's row, a reproducibility checklist) and
``accuracy_over_time.png``. ``:retrain`` also retrains every genotype (incl. the random ones) with
`fashion_retrain`'s protocol (about an hour each on 2 CPU cores) and adds the test accuracies. ``:smoke``
(combinable: ``:smoke,retrain``) is darts + random × 2 seeds with `fashion_search`'s smoke settings, about
4 minutes on 2 busy CPU cores (measured; mostly XLA compilation). Re-running a command skips finished runs.
"""
import importlib.util
import os

import ml_collections


def _sibling(name):
  """A config module of this folder (config files are loaded by path, not as a package)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                   name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


fashion_search = _sibling("fashion_search")
fashion_retrain = _sibling("fashion_retrain")


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  args = {a.strip() for a in arg.split(",") if a.strip()}
  unknown = args - {"smoke", "retrain"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {', '.join(sorted(unknown))}; use 'smoke' and/or 'retrain'")
  smoke = "smoke" in args
  c = ml_collections.ConfigDict()
  c.methods = ["darts", "darts_2nd", "gdas", "pcdarts", "drnas", "random"]
  c.seeds = [0, 1, 2]
  c.spaces = ["darts"]
  c.search = fashion_search.get_config("smoke" if smoke else "")
  if not smoke:
    c.search.subset = 4_000
    c.search.epochs = 5
    c.search.eval_examples = 1_000
    c.search.warmup_epochs = 1
  else:
    c.search.warmup_epochs = 0
    c.search.progress = False
    c.search.tensorboard = False
  c.retrain = "retrain" in args
  c.retrain_config = fashion_retrain.get_config("smoke" if smoke else "")
  if smoke:
    c.retrain_config.progress = False
    c.retrain_config.tensorboard = False
  c.benchmark_path = ""          # NB201 table for space "nb201" ("" : nb201.default_benchmark_path())
  c.benchmark_dataset = "cifar10"
  c.include_random_baseline = True
  if smoke:
    c.methods = ["darts", "random"]
    c.seeds = [0, 1]
  return c
