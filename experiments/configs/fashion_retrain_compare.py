"""The main job's cell against random cells and DARTS_V2: each retrained from scratch under one protocol.

  python experiments/retrain_compare.py --config=experiments/configs/fashion_retrain_compare.py \
      --workdir=runs/retrain_compare
  python experiments/retrain_compare.py --config=experiments/configs/fashion_retrain_compare.py:smoke \
      --workdir=/tmp/rt_cmp_smoke

Default: `fashion_retrain`'s protocol (10,000 Fashion-MNIST images, crop + flip, batch 64, SGD momentum 0.9,
lr 0.025 cosine, auxiliary head, drop path 0.2) for 6 epochs on a 5-cell C=8 network, sized so that the six
retrains fit a session of a 2-core CPU (about 6 minutes each); the test split is scored after epochs 3 and
6. Genotypes: the main job's (``experiments/results/fashion_main_job/genotype.json``, seeds 0 and 1), three
random cells (seeds 0, 1, 2) and DARTS_V2 (seed 0). Expected: ``experiments/results/retrain_compare/report.md``; whether the searched
cell beats random by more than the seed spread is its last line. ``--config.genotypes.searched=PATH`` compares
another search's genotype.
"""
import importlib.util
import os

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _sibling(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                                   name + ".py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  if arg not in ("", "smoke"):
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'smoke'")
  c = ml_collections.ConfigDict()
  c.genotypes = ml_collections.ConfigDict({
      "searched": os.path.join(ROOT, "experiments", "results", "fashion_main_job", "genotype.json"),
      "random": "random",
      "DARTS_V2": "DARTS_V2"})
  c.seeds = ml_collections.ConfigDict({"searched": (0, 1), "random": (0, 1, 2), "DARTS_V2": (0,)})
  c.searched = "searched"       # the row whose verdict against `random` the report states
  c.retrain = _sibling("fashion_retrain").get_config("smoke" if arg == "smoke" else "")
  c.retrain.model.C = 8
  c.retrain.model.layers = 5
  c.retrain.epochs = 6
  c.retrain.eval_every = 3
  c.retrain.progress = False
  c.retrain.tensorboard = False
  if arg == "smoke":
    c.retrain.model.C, c.retrain.model.layers, c.retrain.epochs, c.retrain.eval_every = 4, 3, 2, 1
    c.seeds = ml_collections.ConfigDict({"searched": (0,), "random": (0, 1), "DARTS_V2": (0,)})
  return c
