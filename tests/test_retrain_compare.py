"""The retraining comparison: every genotype × seed once (resumable), the table and the plain verdict."""
import importlib.util
import json
import os

import pytest

from darts_jax import retrain as retrain_lib
from darts_jax import retrain_compare
from darts_jax import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(arg=""):
  path = os.path.join(ROOT, "experiments", "configs", "fashion_retrain_compare.py")
  spec = importlib.util.spec_from_file_location("fashion_retrain_compare", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_verdict_compares_the_gap_with_the_seed_spread():
  row = lambda m, s: {"test_acc": {"mean": m, "std": s, "n": 2}}
  assert retrain_compare.verdict({"s": row(0.92, 0.002), "random": row(0.91, 0.003)}, "s").startswith(
      "s beats random")
  assert "within the seed spread" in retrain_compare.verdict({"s": row(0.912, 0.002), "random": row(0.91, 0.003)},
                                                             "s")
  assert "does not beat" in retrain_compare.verdict({"s": row(0.90, 0.0), "random": row(0.91, 0.003)}, "s")
  assert retrain_compare.verdict({"s": row(0.90, 0.0)}, "s") is None


def test_every_genotype_and_seed_retrains_once(tmp_path, monkeypatch):
  calls = []

  def fake(config, workdir):
    calls.append((config.genotype, config.seed))
    wd.prepare(workdir, config.to_dict(), ignore=retrain_lib.RESUMABLE_KEYS)
    acc = {"random": 0.90, "DARTS_V2": 0.91}.get(config.genotype, 0.93) + 0.001 * config.seed
    summary = {"test_acc": acc, "num_params": 1000, "train_seconds": 36.0, "genotype": f"{config.genotype}"}
    wd.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary
  monkeypatch.setattr(retrain_lib, "train_and_evaluate", fake)
  c = _config()
  assert dict(c.seeds) == {"searched": (0, 1), "random": (0, 1, 2), "DARTS_V2": (0,)}
  assert os.path.exists(c.genotypes.searched)     # the main job's committed genotype
  report = retrain_compare.run_retrain_comparison(c, str(tmp_path))
  assert len(calls) == 6 and ("random", 2) in calls and ("DARTS_V2", 0) in calls
  assert report["rows"]["searched"]["test_acc"]["mean"] == pytest.approx(0.9305)
  assert report["verdict"].startswith("searched beats random")
  assert report["total_hours"] == pytest.approx(6 * 0.01)
  md = open(tmp_path / "report.md").read()
  assert "| random | 0, 1, 2 | 90.10 ± 0.10 | 90.00, 90.10, 90.20 |" in md
  again = retrain_compare.run_retrain_comparison(c, str(tmp_path))
  assert len(calls) == 6 and again["executed_this_call"] == []
  assert json.load(open(tmp_path / "report.json"))["verdict"] == report["verdict"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/usr/share/datasets/fashion-mnist"), reason="dataset-fashion-mnist missing")
def test_smoke_retrain_comparison_from_the_command_line(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "retrain_compare.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', 'fashion_retrain_compare.py')}:smoke",
         f"--workdir={tmp_path}"]
  out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200, check=False)
  assert out.returncode == 0, out.stderr[-3000:]
  report = json.load(open(tmp_path / "report.json"))
  assert [len(r["runs"]) for r in report["rows"].values()] == [1, 2, 1]
  assert report["rows"]["random"]["runs"][0]["genotype"] != report["rows"]["random"]["runs"][1]["genotype"]
  assert all(0.0 <= r["test_acc"]["mean"] <= 1.0 for r in report["rows"].values())
