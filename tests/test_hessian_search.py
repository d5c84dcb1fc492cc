"""The α Hessian's eigenvalue inside searches, on a tiny known-answer task (the single-edge space, synthetic
data, seconds): per seed in the multi-seed program, the picture in the workdir, and DARTS-ES stopping a search
and exporting the kept epoch's architecture, resumably."""
import json
import os
import sys

import numpy as np
import pytest

from darts_jax import compare
from darts_jax import hessian
from darts_jax import search
from darts_jax import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments", "configs"))
import known_answer  # pylint: disable=g-import-not-at-top,wrong-import-position


def _tiny(**overrides):
  """The known-answer search on 256 synthetic images, 4 channels, 2 steps per epoch, the eigenvalue every epoch."""
  c = known_answer.search_config("receptive_field")
  c.synthetic.examples, c.synthetic.test_examples = 256, 64
  c.epochs, c.steps_per_epoch, c.eval_examples = 3, 2, 64
  c.model.C = 4
  c.hessian_every, c.hessian_batches, c.hessian_iters = 1, 1, 10
  for k, v in overrides.items():
    setattr(c, k, v)
  return c


def _epochs(workdir):
  return [r for r in wd.read_metrics(os.path.join(workdir, "metrics.jsonl")) if r["phase"] == "epoch"]


FORCED = {"window": 1, "delta": 1, "factor": 0.5, "start_epoch": 0}   # fires at the first check it may


def _es(**overrides):
  c = _tiny(**{"epochs": 5, "early_stop": "darts_es", **overrides})
  c.early_stop_kwargs.update(FORCED)
  return c


def test_darts_es_stops_the_search_and_exports_the_kept_epoch_resumably(tmp_path):
  """DARTS-ES with a window of one measurement, comparing each with the one before, from epoch 0, at a factor
  of 0.5: the released rule (`hessian.darts_es` on the logged eigenvalues) stops at epoch 1 and keeps epoch 0;
  the search stops there and exports epoch 0's recorded genotype and α, the cell `compare.es_replay` names from
  the records of the same search run without the early stop. Re-running the finished run trains nothing; a run resumed from the epoch before the stop
  reaches the same decision and exports the same."""
  workdir = str(tmp_path / "es")
  summary = search.search(_es(), workdir)
  records = _epochs(workdir)
  rule = hessian.darts_es([(r["epoch"], r["hessian_eigenvalue"]) for r in records], 5, ev_freq=1, **FORCED)
  assert rule == (1, 0) and [r["epoch"] for r in records] == [0, 1]
  assert (summary["early_stop_epoch"], summary["early_stop_kept_epoch"]) == rule and summary["steps"] == 4
  assert summary["genotype"] == records[0]["genotype"] == open(os.path.join(workdir, "genotype.txt")).read().strip()
  # The same search without the early stop, replayed with the rule: the same stop and the exported cell.
  plain = str(tmp_path / "plain")
  search.search(_tiny(epochs=5), plain)
  replay = compare.es_replay(wd.read_metrics(os.path.join(plain, "metrics.jsonl")), 5,
                             compare.es_rule({**_es().to_dict(), "early_stop": ""}))
  assert (replay["stop_epoch"], replay["kept_epoch"], replay["genotype"]) == (1, 0, summary["genotype"])
  assert replay["final_genotype"] == _epochs(plain)[-1]["genotype"]
  assert summary["val_acc"] == records[0]["val_acc"]
  alphas = json.load(open(os.path.join(workdir, "alphas.json")))
  assert alphas == records[0]["alphas"] and alphas != records[1]["alphas"]
  assert all(os.path.getsize(os.path.join(workdir, f"hessian.{ext}")) > 0 for ext in ("png", "svg"))
  saved = json.load(open(os.path.join(workdir, "summary.json")))
  assert saved["early_stop_kept_epoch"] == 0 and saved["early_stop_settings"]["ev_freq"] == 1

  again = search.search(_es(), workdir)
  assert (again["genotype"], again["steps"], again["early_stop_epoch"]) == (summary["genotype"], 4, 1)
  assert len(_epochs(workdir)) == 2

  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(workdir, "checkpoints", "4"))   # as if killed before the stop epoch's checkpoint
  os.remove(os.path.join(workdir, "summary.json"))
  resumed = search.search(_es(), workdir)
  assert (resumed["early_stop_epoch"], resumed["early_stop_kept_epoch"], resumed["genotype"]) == (1, 0,
                                                                                                 summary["genotype"])
  assert [r["hessian_eigenvalue"] for r in _epochs(workdir)] == [r["hessian_eigenvalue"] for r in records]
  assert json.load(open(os.path.join(workdir, "alphas.json"))) == alphas


def test_darts_ada_rolls_back_with_more_weight_decay_until_its_maximum_and_resumes(tmp_path, monkeypatch):
  """DARTS-ADA with the forced rule (it fires at epoch 1 and keeps epoch 0, as in the DARTS-ES test) and a
  maximum weight decay of 9× the method's: the run returns to epoch 0 twice, each time with 3× the weight
  decay, then runs to its last epoch and exports its final α. Each epoch appears once in the final records;
  the roll-backs are ``ada`` records. A run killed right after its first roll-back, or inside its second
  (checkpoints deleted, record not written), resumes to the same α and roll-backs."""
  base = search._schedule(_tiny(), search._method(_tiny()), 256)[0].w_weight_decay  # pylint: disable=protected-access
  def config():
    c = _es(early_stop="darts_ada")
    c.early_stop_kwargs.mul_factor, c.early_stop_kwargs.max_weight_decay = 3.0, 9 * base
    return c
  workdir = str(tmp_path / "ada")
  summary = search.search(config(), workdir)
  records = wd.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  epochs = [r for r in records if r["phase"] == "epoch"]
  assert [r["epoch"] for r in epochs] == [0, 1, 2, 3, 4] and summary["steps"] == 10
  rollbacks = summary["ada_rollbacks"]
  assert [(e["stop_epoch"], e["kept_epoch"], e["rollback_epoch"]) for e in rollbacks] == [(1, 0, 0)] * 2
  np.testing.assert_allclose([e["weight_decay"] for e in rollbacks], [3 * base, 9 * base], rtol=1e-9)
  assert summary["hparams"]["w_weight_decay"] == pytest.approx(9 * base)
  assert summary["w_weight_decay_final"] == pytest.approx(9 * base) and summary["early_stop"] == "darts_ada"
  ada_records = [r for r in records if r["phase"] == "ada"]
  assert len(ada_records) == 2 and all(r["step"] == 2 for r in ada_records)
  assert all(len(r["abandoned_eigenvalues"]) == 1 for r in ada_records)
  svg = open(os.path.join(workdir, "hessian.svg")).read()   # both roll-backs' discarded epochs in the picture
  assert all(f"discarded by roll-back {k} to epoch 0" in svg for k in (1, 2)) and "roll-back 3" not in svg
  alphas = json.load(open(os.path.join(workdir, "alphas.json")))
  assert alphas == epochs[-1]["alphas"] and summary["genotype"] == epochs[-1]["genotype"]
  search.search(_tiny(epochs=5), str(tmp_path / "plain"))
  assert json.load(open(tmp_path / "plain" / "alphas.json")) != alphas   # the weight decay changed the run

  real, calls = search._roll_back, []  # pylint: disable=protected-access
  def killed_after_first(*args, **kwargs):
    out = real(*args, **kwargs)
    calls.append(1)
    if len(calls) == 1:
      raise KeyboardInterrupt
    return out
  monkeypatch.setattr(search, "_roll_back", killed_after_first)
  again = str(tmp_path / "killed")
  with pytest.raises(KeyboardInterrupt):
    search.search(config(), again)
  resumed = search.search(config(), again)
  assert len(calls) == 2 and resumed["ada_rollbacks"] == summary["ada_rollbacks"]
  assert json.load(open(os.path.join(again, "alphas.json"))) == alphas
  assert [r["epoch"] for r in _epochs(again)] == [0, 1, 2, 3, 4]
  monkeypatch.setattr(search, "_roll_back", real)
  delete_after, deletes = wd.Checkpoints.delete_after, []
  def killed_midway(self, step):   # the later checkpoints gone, the ada record not yet written
    delete_after(self, step)
    deletes.append(step)
    if len(deletes) == 2:
      raise KeyboardInterrupt
  monkeypatch.setattr(wd.Checkpoints, "delete_after", killed_midway)
  midway = str(tmp_path / "midway")
  with pytest.raises(KeyboardInterrupt):
    search.search(config(), midway)
  assert len([r for r in wd.read_metrics(os.path.join(midway, "metrics.jsonl")) if r["phase"] == "ada"]) == 1
  resumed = search.search(config(), midway)
  assert resumed["ada_rollbacks"] == summary["ada_rollbacks"]
  assert json.load(open(os.path.join(midway, "alphas.json"))) == alphas
  with pytest.raises(ValueError, match="darts_ada"):
    search.search_seeds([config(), _es(early_stop="darts_ada", seed=1)], [str(tmp_path / "s0"), str(tmp_path / "s1")])


def test_multi_seed_search_logs_each_seeds_own_eigenvalue_and_early_stop(tmp_path):
  """`search_seeds` logs every seed's eigenvalue, of its own state on its own validation batches (what
  `search` logs for that seed alone, up to the vmapped program's rounding, and not the other seed's), runs
  each seed's DARTS-ES rule on its own eigenvalues until every seed's has fired, and each seed exports the
  genotype and α recorded at its own kept epoch, as `search` does."""
  dirs = [str(tmp_path / f"seed{s}") for s in (0, 1)]
  summaries = search.search_seeds([_es(seed=0), _es(seed=1)], dirs)
  together = []
  for d, summary in zip(dirs, summaries):
    records = _epochs(d)
    together.append([r["hessian_eigenvalue"] for r in records])
    assert all(np.isfinite(together[-1]))
    stop, kept = hessian.darts_es([(r["epoch"], r["hessian_eigenvalue"]) for r in records], 5, ev_freq=1, **FORCED)
    assert (summary["early_stop_epoch"], summary["early_stop_kept_epoch"]) == (stop, kept) == (1, 0)
    assert summary["genotype"] == records[kept]["genotype"] and summary["steps"] == 4
    assert json.load(open(os.path.join(d, "alphas.json"))) == records[kept]["alphas"]
    assert all(os.path.getsize(os.path.join(d, f"hessian.{ext}")) > 0 for ext in ("png", "svg"))
  assert np.abs(np.asarray(together[0]) / np.asarray(together[1]) - 1).min() > 1e-2
  alone = str(tmp_path / "alone1")
  single = search.search(_es(seed=1), alone)
  np.testing.assert_allclose(together[1], [r["hessian_eigenvalue"] for r in _epochs(alone)], rtol=1e-4)
  assert (single["genotype"], single["early_stop_kept_epoch"]) == (summaries[1]["genotype"], 0)


def test_darts_es_settings_that_cannot_run_are_one_line_errors(tmp_path):
  cases = [(dict(hessian_every=0), "hessian_every=0"), (dict(early_stop="es"), "unknown early_stop"),
           (dict(hessian_every=2, epochs=6), "ev_freq=3 is not a multiple"), (dict(method="rsws"), "does not learn"),
           (dict(), "start_epoch at least 0")]
  for i, (overrides, words) in enumerate(cases):
    c = _es(**overrides)
    if "ev_freq" in words:
      c.early_stop_kwargs.ev_freq = 3
    if "start_epoch" in words:
      c.early_stop_kwargs.start_epoch = -1
    with pytest.raises(ValueError, match=words):
      search.search(c, str(tmp_path / str(i)))
    assert not os.path.exists(tmp_path / str(i))
  for i, (name, words) in enumerate([("darts_ada", "mul_factor > 1"), ("darts_es", "unknown early_stop_kwargs")]):
    c = _es(early_stop=name)
    c.early_stop_kwargs.mul_factor = 1.0   # no increase (ADA) / an ADA field (ES)
    with pytest.raises(ValueError, match=words):
      search.search(c, str(tmp_path / f"ada{i}"))


@pytest.mark.parametrize("method", ["drnas", "gdas"])
def test_eigenvalue_of_methods_with_sampled_op_weights(tmp_path, method):
  """DrNAS samples its op weights from a Dirichlet (a rejection loop reverse mode cannot differentiate twice)
  and GDAS a hard Gumbel one-hot: the curvature is taken under their deterministic op weights and is finite."""
  search.search(_tiny(method=method, epochs=1), str(tmp_path / method))
  (record,) = _epochs(str(tmp_path / method))
  assert np.isfinite(record["hessian_eigenvalue"]) and record["hessian_eigenvalue"] != 0


def _nb201_cli(workdir, devices: int):
  """The smoke search in the NB201 space (N=1) through experiments/search.py on `devices` virtual CPU devices
  (the fused step either way), with the eigenvalue every epoch and the supernet ranking of 6 cells."""
  import subprocess  # pylint: disable=g-import-not-at-top
  flags = "--xla_backend_optimization_level=0" + (
      f" --xla_force_host_platform_device_count={devices}" if devices > 1 else "")
  env = dict(os.environ, XLA_FLAGS=flags, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', 'fashion_search.py')}:smoke",
         f"--workdir={workdir}", "--config.progress=False", "--config.tensorboard=False", "--config.space=nb201",
         "--config.model.N=1", "--config.step_backend=fused", f"--config.num_devices={devices}",
         "--config.hessian_every=1", "--config.hessian_iters=300", "--config.ranking_cells=6",
         "--config.ranking_top_k=2", "--config.ranking_examples=64"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


@pytest.mark.slow
def test_eigenvalue_and_ranking_on_a_mesh_equal_one_device(tmp_path):
  """On 2 devices the data-parallel search measures the α Hessian's eigenvalue on the sharded validation batch
  and ranks cells with the one-shot scorer as on one device. After the first epoch (weights only, so both runs
  are at the same state up to rounding) the eigenvalues agree to 1e-4. Once α moves, the two runs' states drift
  apart by reduction-order rounding (measured: weights by 1.6e-5, α by 4e-6 after 6 steps), and the
  eigenvalue of this tiny supernet moves with them: the exact λ_max of the two final states, from the full
  Hessian, differ by 2.4 %; hence 10 % there."""
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  s1, s2 = _nb201_cli(one, 1), _nb201_cli(two, 2)
  assert s1["num_devices"] == 1 and s2["num_devices"] == 2
  ev1 = [r["hessian_eigenvalue"] for r in _epochs(one)]
  ev2 = [r["hessian_eigenvalue"] for r in _epochs(two)]
  assert len(ev1) == len(ev2) >= 1 and all(np.isfinite(ev1))
  np.testing.assert_allclose(ev2[0], ev1[0], rtol=1e-4)
  np.testing.assert_allclose(ev2[1:], ev1[1:], rtol=0.1)
  assert all(r["hessian_converged"] for r in _epochs(one) + _epochs(two))
  assert os.path.exists(os.path.join(two, "hessian.png"))
  cells = [{c["arch"]: c["one_shot_acc"] for c in json.load(open(os.path.join(d, "ranking.json")))["cells"]}
           for d in (one, two)]
  assert cells[0].keys() == cells[1].keys() and len(cells[0]) >= 6
  for arch, acc in cells[0].items():
    assert abs(cells[1][arch] - acc) <= 1 / 64 + 1e-9, arch   # at most one of the 64 images flips
  for part in ("sampled", "top_k"):
    assert s2["ranking"][part]["n"] == s1["ranking"][part]["n"]
