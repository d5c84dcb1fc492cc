"""Tests for darts_jax.retrain and the retrain/paper configs: tiny real runs on Fashion-MNIST (C=4, 3 cells).

Every run is a few steps of the `:smoke` config; XLA compilation dominates, so the finished run is shared.
Needs the Fashion-MNIST IDX files (skipped where they are missing).
"""
import importlib.util
import json
import math
import os
import pathlib
import shutil

import numpy as np
import pytest

from darts_jax import cli, data, genotypes, retrain
from darts_jax import workdir as wd

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_config_module(name):
  spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _smoke(**overrides):
  c = _load_config_module("fashion_retrain").get_config("smoke")
  c.progress = False
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _have_fashion_mnist():
  try:
    data.load_dataset("fashion_mnist", "test")
    return True
  except data.DataError:
    return False


needs_data = pytest.mark.skipif(not _have_fashion_mnist(), reason="Fashion-MNIST IDX files not available")


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("retrain") / "run")
  config = _smoke()
  summary = retrain.train_and_evaluate(config, workdir)
  return config, workdir, summary


@needs_data
def test_smoke_run_writes_every_artifact(finished):
  config, workdir, summary = finished
  for name in ("config.json", "metrics.jsonl", "genotype.txt", "genotype.json", "summary.json",
               "cells_normal.png", "cells_normal.svg", "cells_reduce.png", "cells_reduce.svg"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit()) == [3, 6]

  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["genotype"] == "DARTS_V2"
  g = genotypes.canonical(genotypes.get_genotype("DARTS_V2"))
  assert genotypes.resolve_genotype(os.path.join(workdir, "genotype.json")) == g
  assert genotypes.resolve_genotype(os.path.join(workdir, "genotype.txt")) == g

  with open(os.path.join(workdir, "summary.json")) as f:
    stored = json.load(f)
  assert stored == summary
  assert 0.0 <= summary["test_acc"] <= 1.0 and math.isfinite(summary["test_loss"])
  assert summary["num_params"] > 0 and summary["train_seconds"] > 0
  assert summary["genotype"] == genotypes.to_text(g)
  assert summary["seed"] == 0 and summary["steps"] == 6 and summary["test_examples"] == 128
  assert {"jax", "optax", "flax", "python"} <= set(summary["versions"])

  records = wd.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  train = [r for r in records if r["phase"] == "train"]
  epochs = [r for r in records if r["phase"] == "epoch"]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  assert all(math.isfinite(r["loss"]) and "aux_loss" in r for r in train)
  assert [r["epoch"] for r in epochs] == [0, 1]
  # Cosine per epoch from 0.025 to 0, drop path linear from 0 to 0.2 (epoch e of 2: 0.025*(1+cos(pi e/2))/2).
  assert epochs[0]["lr"] == pytest.approx(0.025) and epochs[1]["lr"] == pytest.approx(0.0125)
  assert epochs[0]["drop_path_prob"] == 0.0 and epochs[1]["drop_path_prob"] == pytest.approx(0.1)
  for r in epochs:
    assert 0.0 <= r["test_acc"] <= 1.0 and 0.0 <= r["train_acc"] <= 1.0 and r["seconds_per_step"] > 0
  assert epochs[-1]["test_acc"] == summary["test_acc"]


@needs_data
def test_finished_run_is_not_trained_again(finished):
  config, workdir, summary = finished
  metrics = pathlib.Path(workdir, "metrics.jsonl").read_text()
  checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  again = retrain.train_and_evaluate(config, workdir)
  assert again == summary
  assert pathlib.Path(workdir, "metrics.jsonl").read_text() == metrics
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints


@needs_data
def test_resume_from_a_mid_run_checkpoint_matches_the_uninterrupted_run(finished, tmp_path):
  config, workdir, summary = finished
  copy = str(tmp_path / "run")
  shutil.copytree(workdir, copy)
  shutil.rmtree(os.path.join(copy, "checkpoints", "6"))
  os.remove(os.path.join(copy, "summary.json"))
  resumed = retrain.train_and_evaluate(config, copy)
  assert resumed["steps"] == 6
  assert resumed["test_acc"] == pytest.approx(summary["test_acc"])
  assert resumed["test_loss"] == pytest.approx(summary["test_loss"], rel=1e-5)
  records = wd.read_metrics(os.path.join(copy, "metrics.jsonl"))
  assert [r["step"] for r in records if r["phase"] == "train"] == [1, 2, 3, 4, 5, 6]  # no duplicates


@needs_data
def test_stop_request_mid_epoch_checkpoints_that_step_and_resumes_to_the_same_result(finished, tmp_path,
                                                                                  monkeypatch):
  """A stop request (SIGTERM, `workdir.TerminationWatch`) after step 4 of 6 (mid epoch 1) saves step 4 and
  raises `Preempted`; the resumed run ends with the uninterrupted run's test loss and accuracy to the bit."""
  config, _, summary = finished
  calls = {"n": 0}

  def requested(self):
    del self
    calls["n"] += 1
    return calls["n"] == 4
  monkeypatch.setattr(wd.TerminationWatch, "requested", requested)
  work = str(tmp_path / "run")
  with pytest.raises(wd.Preempted, match="at step 4 of 6.*re-run the same command"):
    retrain.train_and_evaluate(config, work)
  assert sorted(int(d) for d in os.listdir(os.path.join(work, "checkpoints")) if d.isdigit()) == [3, 4]
  assert not os.path.exists(os.path.join(work, "summary.json"))
  resumed = retrain.train_and_evaluate(config, work)
  assert resumed["steps"] == 6
  assert resumed["test_loss"] == summary["test_loss"] and resumed["test_acc"] == summary["test_acc"]


@needs_data
def test_random_genotype_baseline_without_aux_or_drop_path_with_cutout(tmp_path):
  config = _smoke(genotype="random", seed=3, epochs=1, steps_per_epoch=2, auxiliary=False, drop_path_prob=0.0,
                  cutout=8, tensorboard=False)
  summary = retrain.train_and_evaluate(config, str(tmp_path / "run"))
  expected = genotypes.canonical(genotypes.random_genotype(np.random.default_rng(3)))
  assert summary["genotype"] == genotypes.to_text(expected)
  assert genotypes.resolve_genotype(str(tmp_path / "run" / "genotype.json")) == expected
  assert 0.0 <= summary["test_acc"] <= 1.0 and summary["steps"] == 2


@needs_data
def test_divergence_stops_with_one_line_naming_the_step(tmp_path):
  config = _smoke(lr=float("nan"), tensorboard=False)
  with pytest.raises(wd.Diverged, match=r"retrain step 2; no checkpoint was saved before it") as e:
    retrain.train_and_evaluate(config, str(tmp_path / "run"))
  assert "\n" not in str(e.value)


@pytest.mark.parametrize("spec", ["NOT_A_GENOTYPE", "Genotype(normal=[('sep_conv_3x3', 0)])", ""])
def test_bad_genotype_is_a_one_line_error_before_anything_is_written(tmp_path, spec, capsys):
  workdir = str(tmp_path / "run")
  config = _smoke(genotype=spec)
  with pytest.raises(genotypes.GenotypeError) as e:
    retrain.train_and_evaluate(config, workdir)
  assert isinstance(e.value, ValueError) and "\n" not in str(e.value)
  assert not os.path.exists(workdir)
  assert cli.run(lambda: cli.retrain_and_report(config, workdir)) == 1
  err = capsys.readouterr().err
  assert err.startswith("error: ") and err.count("\n") == 1


def test_paper_configs():
  search = _load_config_module("cifar10_search_darts")
  c = search.get_config("")
  assert (c.dataset, c.model.C, c.model.layers, c.batch_size, c.epochs, c.train_portion) == (
      "cifar10", 16, 8, 64, 50, 0.5)
  assert c.method == "darts" and c.space == "darts" and c.hparams.hypergradient == "first_order"
  assert search.get_config("second").hparams.hypergradient == "second_order_fd"
  assert search.get_config("exact").hparams.hypergradient == "second_order_exact"
  s = search.get_config("smoke")
  assert s.model.C == 4 and s.model.layers == 3 and s.epochs * s.steps_per_epoch <= 10
  assert set(c.keys()) == set(_load_config_module("fashion_search").get_config("").keys())

  rt = _load_config_module("cifar10_retrain_darts")
  c = rt.get_config("")
  assert (c.dataset, c.epochs, c.model.C, c.model.layers, c.batch_size) == ("cifar10", 600, 36, 20, 96)
  assert (c.auxiliary, c.auxiliary_weight, c.drop_path_prob, c.cutout, c.lr, c.lr_min) == (
      True, 0.4, 0.2, 16, 0.025, 0.0)
  assert (c.momentum, c.weight_decay, c.grad_clip, c.subset) == (0.9, 3e-4, 5.0, 0)
  s = rt.get_config("smoke")
  assert s.model.C == 4 and s.model.layers == 3 and s.epochs * s.steps_per_epoch <= 10

  f = _load_config_module("fashion_retrain")
  assert f.get_config("").genotype == "DARTS_V2" and f.get_config("").dataset == "fashion_mnist"
  assert set(f.get_config("").keys()) == set(c.keys())
  for module in (search, rt, f):
    with pytest.raises(ValueError):
      module.get_config("nope")


def test_config_search_fields_are_accepted_by_the_search_hparams():
  from darts_jax import bilevel
  for arg in ("", "second", "exact"):
    c = _load_config_module("cifar10_search_darts").get_config(arg)
    bilevel.SearchHParams(**bilevel.hparams_overrides(c.hparams))


def test_search_configs_take_any_search_hparam_from_the_command_line():
  import dataclasses
  from darts_jax import bilevel
  from darts_jax import methods
  fields = {f.name for f in dataclasses.fields(bilevel.SearchHParams)} - {"epochs", "steps_per_epoch"}
  for name in ("fashion_search", "cifar10_search_darts"):
    c = _load_config_module(name).get_config("")
    assert set(c.hparams.keys()) == fields, name
    c.hparams.a_lr = 3e-3   # what --config.hparams.a_lr=3e-3 does; unset fields keep the method's values
    hp = methods.get_method("pcdarts").search_hparams(**bilevel.hparams_overrides(c.hparams))
    assert hp.a_lr == 3e-3 and hp.w_lr == methods.get_method("pcdarts").search_hparams().w_lr != 0.025
  with pytest.raises(ValueError, match="unknown search hyperparameter 'a_learning_rate'"):
    bilevel.hparams_config(a_learning_rate=1e-3)
