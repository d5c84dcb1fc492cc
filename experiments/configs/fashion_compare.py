"""DARTS (1st and exact 2nd order), GDAS, PC-DARTS, DrNAS and the random baseline on Fashion-MNIST, 3 seeds.

  JAX_COMPILATION_CACHE_DIR=/tmp/jax_cache \
  python experiments/compare.py --config=experiments/configs/fashion_compare.py --workdir=/tmp/fashion_compare
  python experiments/compare.py --config=experiments/configs/fashion_compare.py:darts --workdir=/tmp/cmp_darts
  python experiments/compare.py --config=experiments/configs/fashion_compare.py:smoke --workdir=/tmp/cmp_smoke

Default (the README's comparison: 3,040 α steps per run, in which α's entropy falls but does not converge):
every method searches the NAS-Bench-201 space with the same protocol: the NB201 supernet with C=8 and N=1 cell
per stage (channels 8/16/32) on 10,240 training images of Fashion-MNIST resized to 16x16 (5,120 for the
weights, 5,120 for α), batch 32, 20 epochs of 160 steps (3,200 steps; the first epoch weights only for every
method, a shared warm-up, so 3,040 α steps), α's Adam learning rate 3e-3 for every method (the papers' 3e-4
leaves α near uniform at this budget), 512 validation images scored per epoch. Each method keeps its released
code's other optimizer settings for the NB201 space (`darts_jax.methods`, `Method.for_space`). Why NB201:
every discovered cell is scored by the real NATS-Bench table (CIFAR-10 test accuracy after 200 epochs) without
retraining, and the random baseline's expected best-of-N is exact. One run takes 2.3 (PC-DARTS) to 9.3 (exact
second order) minutes on 2 cores (benchmarks/README.md); the whole comparison, 5 methods x 3 seeds, 71
minutes, resumable. The budget is still far below the papers' (50 epochs of CIFAR-10 at C=16, N=5): the table
compares the methods' behaviour under one identical budget, not their published accuracies. Expected: the
README's "Comparing methods" table (PC-DARTS 93.41 ± 0.37 %, DrNAS 93.39 ± 0.35 %, DARTS 91.08 ± 2.93 % on the
table; α's entropy 1.53-1.59 of 1.61); ``report.md`` adds α's entropy and the cells' skip_connect and
parameter-free shares per epoch (``cells_over_epochs.png``). ``--config.methods="('darts',)"
--config.seeds="(0,)"`` runs a subset.

``:darts`` runs the same methods in the DARTS space (`fashion_search`'s 5-cell C=8 supernet, 4,000 images, 5
epochs of 31 steps): hours on a 2-core CPU. ``:retrain`` (DARTS space only) also retrains every genotype with
`fashion_retrain`'s protocol (about an hour each on 2 CPU cores).
``:smoke`` (combinable, e.g. ``:smoke,darts``) is darts + random × 2 seeds with `fashion_search`'s smoke
settings, a few minutes (mostly XLA compilation). Re-running a command skips finished runs and rewrites the
report: ``runs/<space>/<method>/seed<k>/search/`` (each a `darts_jax.search` work directory), ``report.md`` /
``report.json`` and ``accuracy_over_time.png``.
``--config.search.selection=pt`` runs every method with DARTS-PT's selection (the report gives argmax and PT
accuracy side by side); ``--config.proxy_scores=DIR/scores.csv`` (from experiments/zero_cost.py) adds the
best-of-N-by-proxy baseline to the NB201 section. Where the searches measured the α Hessian's eigenvalue
(``--config.search.hessian_every=N``), the report replays DARTS-ES on it; ``--config.es_replay.window=3
--config.es_replay.delta=2 --config.es_replay.start_epoch=4`` replays a rule sized to 20 epochs instead of the
released one (the report only: no search runs again).
"""
import importlib.util
import os

import ml_collections

P = ml_collections.config_dict.placeholder


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
  unknown = args - {"smoke", "retrain", "darts"}
  if unknown:
    raise ValueError(f"unknown config argument(s) {', '.join(sorted(unknown))}; use 'darts', 'smoke' and/or "
                     "'retrain'")
  smoke = "smoke" in args
  darts_space = "darts" in args or "retrain" in args
  c = ml_collections.ConfigDict()
  c.methods = ("darts", "darts_2nd", "gdas", "pcdarts", "drnas", "random")   # a tuple: overridable
  c.seeds = (0, 1, 2)          # a tuple, so that --config.seeds="(0,)" can override it
  c.spaces = ["darts" if darts_space else "nb201"]
  c.search = fashion_search.get_config("smoke" if smoke else "")
  c.search.space = c.spaces[0]
  if smoke:
    c.search.warmup_epochs = 0
    c.search.progress = False
    c.search.tensorboard = False
    if not darts_space:
      c.search.model.N = 1
  elif darts_space:
    c.search.subset = 4_000
    c.search.epochs = 5
    c.search.eval_examples = 1_000
    c.search.pt_eval_examples = 1_000
    c.search.warmup_epochs = 1
  else:
    c.search.model.C = 8
    c.search.model.N = 1
    c.search.image_size = 16
    c.search.subset = 10_240
    c.search.batch_size = 32
    c.search.epochs = 20
    c.search.eval_examples = 512
    c.search.pt_eval_examples = 0     # PT's masked accuracies on the whole α half, as released
    c.search.warmup_epochs = 1
    c.search.hparams.a_lr = 3e-3
    c.search.progress = False
  c.retrain = "retrain" in args
  c.retrain_config = fashion_retrain.get_config("smoke" if smoke else "")
  if smoke:
    c.retrain_config.progress = False
    c.retrain_config.tensorboard = False
  c.benchmark_path = ""          # NB201 table for space "nb201" ("" : nb201.default_benchmark_path())
  c.benchmark_dataset = "cifar10"
  c.include_random_baseline = True
  c.multi_seed = False           # run each method's seeds as one vmapped program (search.search_seeds)
  # NB201: a zero-cost scores.csv (experiments/zero_cost.py) for the proxy-only baseline ("" : none), and its Ns
  c.proxy_scores = ""
  c.proxy_best_of_n = (10, 100)  # a tuple: overridable
  # DARTS-ES replayed on searches that measured eigenvalues (compare.es_replay): fields set here replace the
  # runs' own search.early_stop_kwargs for the replay only (None: theirs)
  c.es_replay = ml_collections.ConfigDict({"window": P(int), "delta": P(int), "factor": P(float),
                                           "start_epoch": P(int), "ev_freq": P(int)})
  if smoke:
    c.methods = ("darts", "random")
    c.seeds = (0, 1)
  return c
