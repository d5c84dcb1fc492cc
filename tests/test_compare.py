"""The comparison runner: aggregation/collapse/NB201 baseline on synthetic summaries, the run loop with fake
search/retrain functions (both spaces, retraining, protocol check), and the smoke comparison end to end on
real Fashion-MNIST (search compile dominates: about a minute the first time, cached afterwards)."""
import importlib.util
import json
import os

import numpy as np
import pytest

from darts_jax import compare
from darts_jax import genotypes
from darts_jax import nb201
from darts_jax import workdir as wd

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FASHION = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
EXAMPLE_NB201 = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
ALL_SKIP_NB201 = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"


def _compare_config_module():
  path = os.path.join(ROOT, "experiments", "configs", "fashion_compare.py")
  spec = importlib.util.spec_from_file_location("fashion_compare", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(autouse=True)
def _no_git(monkeypatch):
  monkeypatch.setattr(compare, "_git_commit", lambda: "test-commit")


def _skip_genotype(num_skip: int) -> str:
  ops = ["skip_connect"] * num_skip + ["sep_conv_3x3"] * (8 - num_skip)
  inputs = [0, 1, 0, 1, 0, 2, 1, 3]
  normal = list(zip(ops, inputs))
  g = genotypes.Genotype(normal=normal, normal_concat=[2, 3, 4, 5], reduce=[("max_pool_3x3", i) for i in inputs],
                         reduce_concat=[2, 3, 4, 5])
  return genotypes.to_text(g)


def test_helpers_on_synthetic_summaries():
  assert compare.mean_std([0.5, None, 0.7])["mean"] == pytest.approx(0.6)
  assert compare.mean_std([0.5, None, 0.7])["std"] == pytest.approx(np.std([0.5, 0.7], ddof=1))
  assert compare.mean_std([None]) == {"mean": None, "std": None, "n": 0}
  assert compare.mean_std([3.0])["std"] == 0.0
  assert compare.skip_share(_skip_genotype(6)) == pytest.approx(0.75)
  assert compare.skip_share(genotypes.get_genotype("DARTS_V2")) == pytest.approx(0.25)
  assert compare.skip_share("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|") == 0.0
  assert compare.skip_share({"nb201": ALL_SKIP_NB201}) == 1.0
  assert compare.skip_share("|skip_connect~0|+|none~0|none~1|+|none~0|none~1|none~2|") == pytest.approx(1 / 6)
  assert compare.skip_share("not a cell") is None
  assert compare.parameter_free("|avg_pool_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|avg_pool_3x3~0|none~1|none~2|")
  assert not compare.parameter_free(EXAMPLE_NB201)
  assert compare.parameter_free(_skip_genotype(8)) and not compare.parameter_free(_skip_genotype(7))
  assert compare.parameter_free("not a cell") is None

  runs = []
  for seed in range(3):
    runs.append({"space": "darts", "method": "darts", "seed": seed,
                 "search": {"val_acc": 0.8 + 0.01 * seed, "search_seconds": 3600.0, "supernet_params": 1000,
                            "genotype": _skip_genotype(6 if seed < 2 else 4)},
                 "retrain": {"test_acc": 0.9, "num_params": 500}})
    runs.append({"space": "darts", "method": "random", "seed": seed,
                 "search": {"val_acc": None, "search_seconds": 0.0, "supernet_params": None,
                            "genotype": _skip_genotype(1)}})
  tables = compare.aggregate(runs, device_kind="CPU")
  darts_row, random_row = tables["darts"]
  assert darts_row["method"] == "darts" and random_row["is_random_baseline"]
  assert darts_row["seeds"] == [0, 1, 2]
  assert darts_row["search_val_acc"]["mean"] == pytest.approx(0.81)
  assert darts_row["search_hours_sum"] == pytest.approx(3.0)
  assert darts_row["search_hours_mean"] == pytest.approx(1.0)
  assert darts_row["skip_share"]["mean"] == pytest.approx((0.75 + 0.75 + 0.5) / 3)
  assert darts_row["collapse"] and not random_row["collapse"]
  assert darts_row["retrain_test_acc"]["mean"] == pytest.approx(0.9)
  assert random_row["search_val_acc"]["mean"] is None and random_row["search_hours_sum"] == 0.0

  # NB201: benchmark scores of the cells and the exact expected best-of-N of random sampling.
  archs = nb201.enumerate_archs()[:4]
  table = nb201.Benchmark(tuple(archs), {"cifar10": np.array([10.0, 20.0, 30.0, 40.0])},
                          {a: i for i, a in enumerate(archs)})
  nb_runs = [{"space": "nb201", "method": "gdas", "seed": s,
              "search": {"val_acc": 0.5, "search_seconds": 10.0, "genotype": nb201.arch_to_string(archs[s])}}
             for s in range(2)]
  row = compare.aggregate(nb_runs, benchmark=table)["nb201"][0]
  assert row["benchmark_test_acc"]["mean"] == pytest.approx(15.0)
  counts = [nb201.network_param_count(archs[s]) for s in range(2)]
  assert row["network_params"]["mean"] == pytest.approx(np.mean(counts))
  collapsed = compare.aggregate([{"space": "nb201", "method": "darts", "seed": 0,
                                  "search": {"genotype": ALL_SKIP_NB201}}])["nb201"][0]
  assert collapsed["collapse"] and collapsed["skip_share"]["mean"] == 1.0 and collapsed["disconnected"] == 0
  pools = "|avg_pool_3x3~0|+|avg_pool_3x3~0|skip_connect~1|+|avg_pool_3x3~0|avg_pool_3x3~1|skip_connect~2|"
  pooled = compare.aggregate([{"space": "nb201", "method": "gdas", "seed": s, "search": {"genotype": g}}
                              for s, g in enumerate([pools, pools, EXAMPLE_NB201])])["nb201"][0]
  assert pooled["parameter_free"] == 2 and pooled["collapse"] and pooled["skip_share"]["mean"] < 0.5
  dead = "|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_3x3~1|nor_conv_3x3~2|"
  assert compare.aggregate([{"space": "nb201", "method": "darts", "seed": 0,
                             "search": {"genotype": dead}}])["nb201"][0]["disconnected"] == 1
  expected = [compare.skip_share(nb201.arch_to_string(archs[s])) for s in range(2)]
  free = sum(bool(compare.parameter_free(nb201.arch_to_string(archs[s]))) for s in range(2))
  assert row["skip_shares"] == expected and row["parameter_free"] == free and row["collapse"] == (free == 2)
  base = compare.nb201_random_baseline(table.accuracies("cifar10"), [1, 2, 2])
  assert set(base) == {"1", "2"}
  assert base["1"] == pytest.approx(25.0)
  # best of 2 draws with replacement from {10, 20, 30, 40}: sum a_i((i/4)^2 - ((i-1)/4)^2)
  assert base["2"] == pytest.approx(sum(a * ((i / 4) ** 2 - ((i - 1) / 4) ** 2)
                                        for i, a in enumerate([10, 20, 30, 40], 1)))

  assert compare.protocol_differences([{"method": "a", "lr": 1, "seed": 0}, {"method": "b", "lr": 1, "seed": 1}],
                                      compare.RUN_KEYS) == []
  assert compare.protocol_differences([{"method": "a", "lr": 1}, {"method": "b", "lr": 2}],
                                      compare.RUN_KEYS) == ["lr"]


def test_git_commit_unknown_without_git(monkeypatch):
  monkeypatch.undo()  # the real _git_commit, with subprocess failing as when git is missing

  def boom(*a, **k):
    raise FileNotFoundError("git")
  import subprocess  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(subprocess, "run", boom)
  assert compare._git_commit() == "unknown"  # pylint: disable=protected-access


def test_code_version_marks_uncommitted_changes(tmp_path, monkeypatch):
  import subprocess  # pylint: disable=g-import-not-at-top
  outputs = {"rev-parse": "abc123\n", "status": ""}

  def fake(cmd, **kwargs):
    return subprocess.CompletedProcess(cmd, 0, outputs["rev-parse" if "rev-parse" in cmd else "status"], "")
  monkeypatch.setattr(subprocess, "run", fake)
  assert wd.code_version() == "abc123"
  outputs["status"] = " M darts_jax/search.py\n"
  assert wd.code_version() == "abc123+dirty"


def _fake_search(config, workdir):
  wd.prepare(workdir, config.to_dict(), ignore=("progress", "log_every"))
  rng = np.random.default_rng(config.seed)
  if config.space == "nb201":
    text = nb201.arch_to_string(nb201.random_arch(rng))
    wd.write_json(os.path.join(workdir, "genotype.json"), {"nb201": text})
  else:
    g = genotypes.random_genotype(rng)
    text = genotypes.to_text(g)
    wd.atomic_write(os.path.join(workdir, "genotype.json"), genotypes.to_json(g))
  log = wd.MetricsLog(workdir, tensorboard=False)
  # Per epoch, a cell with 2 skip_connect edges, then the all-skip cell (a collapse as epochs go on).
  cells = ([EXAMPLE_NB201, ALL_SKIP_NB201] if config.space == "nb201" else [_skip_genotype(2), _skip_genotype(8)])
  for e in range(2):
    log.write(e + 1, {"phase": "epoch", "epoch": e, "val_acc": 0.5 + 0.1 * e, "elapsed": 2.0 * (e + 1),
                      "alpha_entropy": 1.6 - 0.8 * e, "genotype": cells[e]})
  log.close()
  summary = {"method": config.method, "space": config.space, "seed": config.seed, "genotype": text,
             "search_seconds": 4.0, "val_acc": 0.6, "supernet_params": 123}
  wd.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _fake_retrain(config, workdir):
  wd.prepare(workdir, config.to_dict())
  genotypes.resolve_genotype(config.genotype)
  summary = {"test_acc": 0.7 + 0.01 * config.seed, "num_params": 999, "train_seconds": 5.0}
  wd.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def test_run_loop_with_fake_search(tmp_path, monkeypatch):
  from darts_jax import retrain as retrain_lib
  from darts_jax import search as search_lib
  calls = []
  monkeypatch.setattr(search_lib, "search", lambda c, w: calls.append(("s", w)) or _fake_search(c, w))
  monkeypatch.setattr(retrain_lib, "train_and_evaluate", lambda c, w: calls.append(("r", w)) or _fake_retrain(c, w))
  archs = nb201.enumerate_archs()
  bench = tmp_path / "nb201.csv"
  with open(bench, "w") as f:
    f.write("arch,cifar10_test_acc\n")
    f.writelines(f"{nb201.arch_to_string(a)},{50 + 40 * i / len(archs):.4f}\n" for i, a in enumerate(archs))
  c = _compare_config_module().get_config("smoke,retrain")
  c.methods = ["darts", "gdas"]          # random is added
  c.seeds = [0, 1, 2]
  c.spaces = ["darts", "nb201"]
  c.benchmark_path = str(bench)
  work = str(tmp_path / "cmp")
  report = compare.run_comparison(c, work)
  assert report["methods"] == ["darts", "gdas", "random"]
  # 2 searching methods × 3 seeds × 2 spaces, retrain only on darts (3 methods × 3 seeds)
  assert sum(k == "s" for k, _ in calls) == 12 and sum(k == "r" for k, _ in calls) == 9
  darts_rows = {r["method"]: r for r in report["tables"]["darts"]}
  assert set(darts_rows) == {"darts", "gdas", "random"}
  assert darts_rows["darts"]["retrain_test_acc"]["mean"] == pytest.approx(0.71)
  nb_rows = {r["method"]: r for r in report["tables"]["nb201"]}
  assert all(r["benchmark_test_acc"]["n"] == 3 for r in nb_rows.values())
  base = report["nb201_random_baseline"]["expected_best_of_n"]
  assert set(base) == {"1", "3", "10", "100"} and base["1"] < base["3"] < base["10"] < base["100"] < 90
  assert report["reproducibility"]["same_protocol"] is True
  assert report["reproducibility"]["git_commit"] == "test-commit"
  md = open(os.path.join(work, "report.md")).read()
  assert "Same protocol for all methods: yes" in md and "expected best-of-N" in md
  # Per-epoch curves: entropy, skip_connect share and parameter-free share of each epoch's cell.
  nb = report["curves"]["nb201"]["darts"]
  assert nb["num_seeds"] == 3 and nb["alpha_entropy"] == pytest.approx([1.6, 0.8])
  assert nb["skip_share"] == pytest.approx([2 / 6, 1.0]) and nb["parameter_free_share"] == pytest.approx([0.5, 1.0])
  assert report["curves"]["darts"]["gdas"]["skip_share"] == pytest.approx([0.25, 1.0])
  assert os.path.getsize(os.path.join(work, report["cells_plot"])) > 0
  assert "| skip share | 0.33 | 1.00 |" in md and "| α entropy | 1.600 | 0.800 |" in md
  assert "retrained test acc" in md
  # No PT selection, ranking or proxy scores: none of their columns, rows or fields.
  assert not any(k in md for k in ("argmax acc", "PT acc", "τ (one-shot", "best of N by", "zero-cost"))
  assert "nb201_proxy_baseline" not in report and not any("ranking" in r or "selections" in r
                                                         for rows in report["tables"].values() for r in rows)
  # random genotypes come from the run seed and are retrained from the written genotype.json
  rdir = os.path.join(work, "runs", "darts", "random", "seed1")
  g = genotypes.from_json(open(os.path.join(rdir, "search", "genotype.json")).read())
  assert json.load(open(os.path.join(rdir, "retrain", "config.json")))["genotype"].endswith("genotype.json")
  assert genotypes.to_text(g) == json.load(open(os.path.join(rdir, "search", "summary.json")))["genotype"]

  calls.clear()
  report = compare.run_comparison(c, work)
  assert calls == [] and report["executed_this_call"] == []

  # A run whose config was changed by hand is no longer the same protocol.
  path = os.path.join(work, "runs", "darts", "gdas", "seed0", "search", "config.json")
  cfg = json.load(open(path))
  cfg["batch_size"] = 999
  wd.write_json(path, cfg)
  monkeypatch.setattr(compare, "finished_summary", lambda *a: json.load(open(os.path.join(a[0], "summary.json"))))
  report = compare.run_comparison(c, work)
  assert report["reproducibility"]["same_protocol"] is False
  assert report["reproducibility"]["protocol_differences"]["search"] == ["batch_size"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(FASHION), reason="Fashion-MNIST IDX files not available")
def test_smoke_comparison_end_to_end(tmp_path):
  c = _compare_config_module().get_config("smoke,darts")
  c.search.data_dir = os.path.dirname(FASHION)
  work = str(tmp_path / "cmp")
  report = compare.run_comparison(c, work)
  for name in ("report.md", "report.json", "accuracy_over_time.png"):
    assert os.path.getsize(os.path.join(work, name)) > 0, name
  with open(os.path.join(work, "accuracy_over_time.png"), "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  loaded = json.load(open(os.path.join(work, "report.json")))
  rows = {r["method"]: r for r in loaded["tables"]["darts"]}
  assert set(rows) == {"darts", "random"}
  assert rows["darts"]["seeds"] == [0, 1] and rows["random"]["seeds"] == [0, 1]
  assert rows["darts"]["search_val_acc"]["n"] == 2 and rows["darts"]["search_hours_sum"] > 0
  assert rows["random"]["search_hours_sum"] == 0 and rows["random"]["is_random_baseline"]
  assert 0 <= rows["darts"]["skip_share"]["mean"] <= 1
  assert rows["darts"]["alpha_entropy_uniform"] == pytest.approx(np.log(8))
  assert 0 < rows["darts"]["alpha_entropy"]["mean"] <= np.log(8) and rows["darts"]["alpha_entropy"]["n"] == 2
  assert loaded["reproducibility"]["seeds"] == [0, 1]
  assert loaded["reproducibility"]["same_protocol"] is True
  assert set(loaded["curves"]["darts"]) == {"darts"}
  md = open(os.path.join(work, "report.md")).read()
  assert "| darts |" in md and "| random (random-sampling baseline) |" in md and "(uniform 2.0794)" in md
  assert "Same protocol for all methods: yes" in md and "Seeds: 0, 1" in md
  for seed in (0, 1):
    genotypes.validate(genotypes.from_json(open(os.path.join(
        work, "runs", "darts", "random", f"seed{seed}", "search", "genotype.json")).read()))
  g0, g1 = (r["genotype"] for r in report["runs"] if r["method"] == "random")
  assert g0 != g1

  metrics = [os.path.join(work, "runs", "darts", "darts", f"seed{s}", "search", "metrics.jsonl") for s in (0, 1)]
  lines = [len(open(p).readlines()) for p in metrics]
  again = compare.run_comparison(c, work)
  assert again["executed_this_call"] == []
  assert [len(open(p).readlines()) for p in metrics] == lines
  assert again["tables"]["darts"][0]["search_val_acc"] == report["tables"]["darts"][0]["search_val_acc"]


@pytest.mark.skipif(not os.path.exists(FASHION), reason="Debian package dataset-fashion-mnist not installed")
def test_multi_seed_comparison_equals_seed_by_seed_searches(tmp_path):
  """`multi_seed=True` runs a method's seeds as one vmapped program whose per-seed work directories hold what
  `search.search` writes for that seed: the same genotype and α (GDAS: its Gumbel samples come from each
  seed's own rng), and a summary that says so."""
  from darts_jax import search  # pylint: disable=g-import-not-at-top
  c = _compare_config_module().get_config("smoke")
  c.methods = ["gdas"]
  c.include_random_baseline = False
  c.multi_seed = True
  c.search.data_dir = os.path.dirname(FASHION)
  work = str(tmp_path / "cmp")
  report = compare.run_comparison(c, work)
  assert report["executed_this_call"] == [f"nb201/gdas/seed{s}/search (multi-seed program)" for s in (0, 1)]
  for seed in (0, 1):
    together = os.path.join(work, "runs", "nb201", "gdas", f"seed{seed}", "search")
    summary = json.load(open(os.path.join(together, "summary.json")))
    assert summary["multi_seed"] == 2 and summary["step_program"] == "multi_seed" and summary["seed"] == seed
    alone = str(tmp_path / f"alone{seed}")
    single = search.search(compare.run_config(c.search, method="gdas", seed=seed, space="nb201"), alone)
    assert single["genotype"] == summary["genotype"]
    a, b = (json.load(open(os.path.join(d, "alphas.json"))) for d in (together, alone))
    # The vmapped program reduces in another order (and keeps YNNPACK off its reductions, `xla_setup`); Adam
    # normalizes α's near-zero gradients. NB201 GDAS' gradient of an op it did not sample is the sum of a
    # whole feature map's gradient, which nearly cancels, so after 6 steps α differs by up to 7e-5 (measured;
    # a quarter of one step of lr 3e-4). Another seed's data or rng would move it by whole steps.
    for k in a:
      np.testing.assert_allclose(np.asarray(a[k]), np.asarray(b[k]), rtol=1e-3, atol=1.5e-4, err_msg=k)
  assert compare.run_comparison(c, work)["executed_this_call"] == []


def test_eigenvalue_trend_on_synthetic_metrics(tmp_path, monkeypatch):
  """The α Hessian's eigenvalue trend per method: first and last measured value (means over the seeds that
  measured any) and their ratio, from the metrics records, in report.json, report.md and the epoch curves."""
  records = [{"phase": "epoch", "epoch": 2, "hessian_eigenvalue": 2.0}, {"phase": "search", "epoch": 0},
             {"phase": "epoch", "epoch": 0, "hessian_eigenvalue": 1.0}, {"phase": "epoch", "epoch": 1},
             {"phase": "epoch", "epoch": 3, "hessian_eigenvalue": float("nan")}]
  assert compare.eigenvalue_series(records) == [(0, 1.0), (2, 2.0)]
  trend = compare.eigenvalue_trend([[(0, 1.0), (2, 2.0)], [], [(1, 3.0), (3, 6.0)]])
  assert trend["first"]["mean"] == pytest.approx(2.0) and trend["last"]["mean"] == pytest.approx(4.0)
  assert trend["ratio"] == pytest.approx(2.0) and trend["num_seeds"] == 2
  assert trend["first_epochs"] == [0, 1] and trend["last_epochs"] == [2, 3]
  assert compare.eigenvalue_trend([[], []]) is None and compare.format_trend(None) == "—"
  assert compare.format_trend(trend) == "2 → 4 (×2.00)"

  from darts_jax import search as search_lib  # pylint: disable=g-import-not-at-top

  def fake(config, workdir):   # seed s: eigenvalue (s + 1)·(epoch + 1); DARTS-ES stopped seed 1
    summary = _fake_search(config, workdir)
    path = os.path.join(workdir, "metrics.jsonl")
    rs = [{**r, "hessian_eigenvalue": (config.seed + 1) * (r["epoch"] + 1.0)} for r in wd.read_metrics(path)]
    wd.atomic_write(path, "".join(json.dumps(r) + "\n" for r in rs))
    summary["early_stop_epoch"] = 1 if config.seed == 1 else None
    wd.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary
  monkeypatch.setattr(search_lib, "search", fake)
  c = _compare_config_module().get_config("smoke")
  c.methods, c.seeds, c.spaces = ["darts"], [0, 1], ["darts"]
  work = str(tmp_path / "cmp")
  compare.run_comparison(c, work)
  report = json.load(open(os.path.join(work, "report.json")))
  rows = {r["method"]: r for r in report["tables"]["darts"]}
  got = rows["darts"]["eigenvalue_trend"]
  assert got["first"]["mean"] == pytest.approx(1.5) and got["last"]["mean"] == pytest.approx(3.0)
  assert got["ratio"] == pytest.approx(2.0) and rows["darts"]["early_stopped"] == 1
  assert rows["random"]["eigenvalue_trend"] is None
  assert report["curves"]["darts"]["darts"]["hessian_eigenvalue"] == pytest.approx([1.5, 3.0])
  md = open(os.path.join(work, "report.md")).read()
  assert "eigenvalue trend (first → last, ratio)" in md and "1.5 → 3 (×2.00); DARTS-ES stopped 1/2" in md
  assert "| α Hessian λ_max | 1.5000 | 3.0000 |" in md


def test_darts_es_replayed_on_recorded_eigenvalues(tmp_path):
  """`es_replay` runs the released rule on a finished search's eigenvalues, fed as the search feeds it (every
  ev_freq-th epoch), and names the kept epoch's and the last epoch's recorded cells; `es_rule` takes the run's
  early_stop_kwargs with the compare config's overrides, checked as the search checks them, and gives none for
  a run that measured nothing, stopped early or ran a method DARTS-ES refuses; the NB201 report scores the kept
  and the final cells on the table."""
  archs = [nb201.arch_to_string(a) for a in nb201.enumerate_archs()]
  cells = [archs[100 * (e + 1)] for e in range(6)]    # a different cell each epoch
  evs = [1.0, 1.0, 1.0, 3.0, 3.0, 3.0]                # a jump at epoch 3
  records = [{"phase": "epoch", "epoch": e, "hessian_eigenvalue": v, "genotype": cells[e]}
             for e, v in enumerate(evs)]
  rule = {"window": 1, "delta": 1, "factor": 2.0, "start_epoch": 0, "ev_freq": 1}
  assert compare.es_replay(records, 6, rule) == {"stop_epoch": 3, "kept_epoch": 2, "genotype": cells[2],
                                                 "final_genotype": cells[5]}
  assert compare.es_replay(records, 6, {**rule, "factor": 3.5}) is None
  assert compare.es_replay(records, 6, {**rule, "start_epoch": 3}) is None
  # ev_freq 2: the rule reads epochs 1, 3, 5 only (1.0, 3.0 and the last), so it stops at 3 and keeps 1.
  assert compare.es_replay(records, 6, {**rule, "ev_freq": 2})["kept_epoch"] == 1
  kw = {"window": 5, "delta": 4, "factor": 1.3, "start_epoch": 10, "ev_freq": 0, "mul_factor": None}
  cfg = {"hessian_every": 2, "early_stop": "", "early_stop_kwargs": kw, "epochs": 6, "method": "darts"}
  assert compare.es_rule(cfg) == {"window": 5, "delta": 4, "factor": 1.3, "start_epoch": 10, "ev_freq": 2}
  assert compare.es_rule(cfg, {"window": 1, "delta": None})["window"] == 1
  assert compare.es_rule({**cfg, "hessian_every": 0}) is None and compare.es_rule({**cfg, "early_stop": "darts_es"}) is None
  assert compare.es_rule({**cfg, "method": "rsws"}) is None
  with pytest.raises(ValueError, match="not a multiple of hessian_every=2"):
    compare.es_rule(cfg, {"ev_freq": 3})

  bench_path = tmp_path / "nb201.csv"
  bench_path.write_text("arch,cifar10_test_acc\n" + "".join(f"{a},{50 + 40 * i / len(archs):.4f}\n"
                                                            for i, a in enumerate(archs)))
  bench = nb201.load_benchmark(str(bench_path))
  runs = []
  for seed, jump in ((0, True), (1, False)):
    d = tmp_path / f"seed{seed}"
    d.mkdir()
    rs = records if jump else [{**r, "hessian_eigenvalue": 1.0} for r in records]
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rs))
    wd.write_json(str(d / "config.json"), {**cfg, "hessian_every": 1})
    runs.append({"space": "nb201", "method": "darts", "seed": seed, "search_dir": str(d), "search": {}})
  tables = {"nb201": [{"method": "darts", "num_runs": 2}]}
  compare._add_eigenvalue_trends(tables, runs, {"window": 1, "delta": 1, "factor": 2.0, "start_epoch": 0},  # pylint: disable=protected-access
                                 bench, "cifar10")
  got = tables["nb201"][0]["es_replay"]
  assert (got["fired"], got["num_runs"]) == (1, 2) and got["runs"][0]["stop_epoch"] == 3
  assert got["runs"][0]["rule"]["ev_freq"] == 1 and not got["runs"][1]["fired"]
  kept, final = bench.query(cells[2]), bench.query(cells[5])
  assert kept != final
  assert got["acc"]["mean"] == pytest.approx(kept) and got["final_acc"]["mean"] == pytest.approx(final)
  md = "\n".join(compare._es_replay_md(tables["nb201"], True))  # pylint: disable=protected-access
  assert "window 1, delta 1, factor 2.0, start epoch 0, an eigenvalue every 1 epoch;" in md
  assert f"| darts | 1/2 | 3 → 2 (0) | {kept:.2f} ± 0.00 | {final:.2f} ± 0.00 |" in md


def test_darts_ada_runs_report_their_roll_backs_and_final_cells(tmp_path):
  """Runs searched with early_stop=darts_ada: the NB201 report lists each run's roll-backs (stop → kept epoch,
  the weight decay after it) and final weight decay, counts the runs that rolled back and scores the final
  cells on the table; runs of other methods get no such entry, and the replay skips ADA runs."""
  archs = [nb201.arch_to_string(a) for a in nb201.enumerate_archs()]
  bench_path = tmp_path / "nb201.csv"
  bench_path.write_text("arch,cifar10_test_acc\n" + "".join(f"{a},{50 + 40 * i / len(archs):.4f}\n"
                                                            for i, a in enumerate(archs)))
  bench = nb201.load_benchmark(str(bench_path))
  backs = {0: [{"iteration": 1, "stop_epoch": 7, "kept_epoch": 1, "weight_decay": 1.5e-3, "kept_genotype": archs[5]}],
           1: []}
  runs = []
  for seed in (0, 1):
    d = tmp_path / f"seed{seed}"
    d.mkdir()
    (d / "metrics.jsonl").write_text("".join(json.dumps({"phase": "epoch", "epoch": e, "hessian_eigenvalue": 1.0 + e})
                                             + "\n" for e in range(8)))
    wd.write_json(str(d / "config.json"), {"hessian_every": 1, "early_stop": "darts_ada", "epochs": 8,
                                           "method": "darts", "early_stop_kwargs": {}})
    runs.append({"space": "nb201", "method": "darts", "seed": seed, "search_dir": str(d),
                 "search": {"early_stop": "darts_ada", "genotype": archs[10 * (seed + 1)],
                            "ada_rollbacks": backs[seed], "w_weight_decay_final": 1.5e-3 if seed == 0 else 5e-4}})
  runs.append({"space": "nb201", "method": "gdas", "seed": 0, "search_dir": None, "search": {"genotype": archs[0]}})
  tables = {"nb201": [{"method": "darts", "num_runs": 2}, {"method": "gdas", "num_runs": 1}]}
  compare._add_eigenvalue_trends(tables, runs, None, bench, "cifar10")  # pylint: disable=protected-access
  darts, gdas = tables["nb201"]
  assert "ada" not in gdas and "es_replay" not in darts
  got = darts["ada"]
  assert (got["rolled_back"], got["num_runs"]) == (1, 2)
  assert got["runs"][0]["rollbacks"] == [{"stop_epoch": 7, "kept_epoch": 1, "weight_decay": 1.5e-3}]
  accs = [bench.query(archs[10]), bench.query(archs[20])]
  assert accs[0] != accs[1] and got["acc"]["mean"] == pytest.approx(np.mean(accs))
  md = "\n".join(compare._ada_md([darts], True))  # pylint: disable=protected-access
  assert ("| darts | 1/2 | seed 0: 7 → 1 (wd 0.0015) | seed 0: 0.0015, seed 1: 0.0005 | "
          f"{np.mean(accs):.2f} ± {np.std(accs, ddof=1):.2f} |") in md


def test_epoch_table_shows_the_epochs_whose_eigenvalue_was_measured():
  """With the Hessian measured every other epoch (epochs 1, 3, ..., 19) the per-epoch table's columns are those
  epochs (and epoch 0), so each λ_max cell of the row is filled; without it, ten evenly spaced epochs."""
  n = 20
  ev = [None if (e + 1) % 2 else float(e) for e in range(n)]
  assert compare._epoch_columns(n, [e for e, v in enumerate(ev) if v is not None]) == [0] + list(range(1, n, 2))
  assert compare._epoch_columns(n, []) == list(range(0, n, 2)) + [19]
  assert compare._epoch_columns(40, list(range(1, 40, 2))) == [0] + list(range(1, 40, 4)) + [39]
  curves = {"darts": {"num_seeds": 1, "elapsed": [1.0] * n, "alpha_entropy": [1.6] * n, "skip_share": [0.0] * n,
                      "parameter_free_share": [0.0] * n, "val_acc": [0.5] * n, "hessian_eigenvalue": ev}}
  row = next(line for line in compare._epochs_md(curves) if line.startswith("| α Hessian λ_max"))
  assert row.split(" | ")[1:3] == ["—", "1.0000"] and row.count("—") == 1 and "19.0000" in row


def _write_table(path):
  """A full NB201 table whose cell i (in `enumerate_archs` order) scores 50 + 40·i/15,625; its accuracies."""
  archs = nb201.enumerate_archs()
  acc = [float(f"{50 + 40 * i / len(archs):.4f}") for i in range(len(archs))]
  with open(path, "w") as f:
    f.write("arch,cifar10_test_acc\n")
    f.writelines(f"{nb201.arch_to_string(a)},{v:.4f}\n" for a, v in zip(archs, acc))
  return archs, np.asarray(acc)


def test_selection_and_ranking_helpers_on_synthetic_summaries():
  """PT beside argmax and the supernet's τ from summaries; argmax-only summaries without ranking add nothing."""
  archs = nb201.enumerate_archs()[:4]
  table = nb201.Benchmark(tuple(archs), {"cifar10": np.array([10.0, 20.0, 30.0, 40.0])},
                          {a: i for i, a in enumerate(archs)})
  name = lambda i: nb201.arch_to_string(archs[i])
  sp = compare.get_space("nb201")
  assert compare.selection_accuracies([{"genotype": name(0)}, {"selection": "argmax", "genotype": name(1)}],
                                      sp, table) is None
  got = compare.selection_accuracies([{"selection": "pt", "genotype": name(3), "genotype_argmax": name(0)},
                                      {"selection": "pt_fixed", "genotype": name(2), "genotype_argmax": name(1)},
                                      {"selection": "argmax", "genotype": name(1)}], sp, table)
  assert got["selections"] == {"argmax": 1, "pt": 1, "pt_fixed": 1}
  assert got["argmax_test_accs"] == [10.0, 20.0, 20.0] and got["pt_test_accs"] == [40.0, 30.0]
  assert got["pt_test_acc"]["mean"] == pytest.approx(35.0) and got["argmax_test_acc"]["n"] == 3

  assert compare.ranking_summary([None, {}]) is None and compare.format_ranking(None) == "—"
  rk = lambda tau, top: {"sampled": {"kendall_tau": tau, "spearman_rho": tau + 0.1, "n": 50},
                         "top_k": top, "alpha": {"kendall_tau": 0.1, "spearman_rho": 0.2, "n": 15625}, "bn": "batch"}
  summary = compare.ranking_summary([rk(0.4, {"kendall_tau": 0.2, "spearman_rho": 0.3, "n": 10, "k": 10}), None,
                                     rk(0.6, {"kendall_tau": 0.4, "spearman_rho": 0.5, "n": 10, "k": 10})])
  assert summary["num_seeds"] == 2 and summary["sampled_kendall_tau"]["mean"] == pytest.approx(0.5)
  assert summary["sampled_spearman_rho"]["mean"] == pytest.approx(0.6) and summary["sampled_n"] == [50]
  assert summary["top_k_kendall_tau"]["mean"] == pytest.approx(0.3) and summary["top_k"] == [10]
  assert summary["alpha_kendall_tau"]["mean"] == pytest.approx(0.1) and summary["bn"] == ["batch"]
  assert compare.format_ranking(summary) == "0.50 ± 0.14 (n=50); top-10: 0.30 ± 0.14"
  no_top = compare.ranking_summary([rk(0.4, None)])
  assert no_top["top_k_kendall_tau"] is None and compare.format_ranking(no_top) == "0.40 ± 0.00 (n=50)"

  plain = compare.aggregate([{"space": "nb201", "method": "darts", "seed": 0, "search": {"genotype": name(0)}}],
                            benchmark=table)["nb201"]
  assert "selections" not in plain[0] and "ranking" not in plain[0]
  md = "\n".join(compare._table_md("nb201", plain, False, "CPU"))  # pylint: disable=protected-access
  assert "argmax acc" not in md and "PT acc" not in md and "τ (one-shot" not in md


def test_proxy_baseline_on_a_tiny_scores_csv(tmp_path):
  """Best of N by a proxy over the cells it scored: a proxy equal to the accuracy finds random search's best
  of N over those cells, its negation the worst; cells outside the table are counted, not used."""
  archs = nb201.enumerate_archs()[:20]
  acc = np.arange(20, dtype=np.float64) + 50.0
  table = nb201.Benchmark(tuple(archs), {"cifar10": acc}, {a: i for i, a in enumerate(archs)})
  path = tmp_path / "scores.csv"
  outside = nb201.arch_to_string(nb201.enumerate_archs()[100])
  with open(path, "w") as f:
    f.write("arch,synflow,snip\n")
    for i, a in enumerate(archs):
      f.write(f"{nb201.arch_to_string(a)},{float(acc[i])!r},{'' if i % 2 else repr(-float(acc[i]))}\n")
    f.write(f"{outside},1e9,1e9\n")
  assert compare.proxy_scores_file(str(path)) == str(path)
  assert compare.proxy_scores_file(str(tmp_path)) == str(path)   # a zero-cost workdir
  with pytest.raises(ValueError, match=r"missing\.csv.*experiments/zero_cost\.py"):
    compare.proxy_scores_file(str(tmp_path / "missing.csv"))
  base = compare.proxy_baseline(compare.zero_cost.read_scores(str(path)), table, "cifar10", (5, 1))
  assert base["ns"] == [1, 5] and base["not_in_table"] == 1 and base["table_cells"] == 20
  assert base["random_best"]["5"] == pytest.approx(nb201.expected_best_of_n(acc, 5))
  syn, snip = base["proxies"]["synflow"], base["proxies"]["snip"]
  assert syn["cells"] == 20 and snip["cells"] == 10
  assert syn["best_of_n"] == {str(n): b for n, b in compare.ranking.score_best_of_n(
      acc, acc, [1, 5], draws=compare.PROXY_DRAWS, seed=0).items()}
  b5 = syn["best_of_n"]["5"]
  assert b5["random_best"] == pytest.approx(nb201.expected_best_of_n(acc, 5))
  assert abs(b5["by_score"] - b5["random_best"]) < 5 * b5["by_score_std_error"]
  even = acc[::2]                       # snip scored the even cells only, and ranks them backwards
  worst5 = -nb201.expected_best_of_n(-even, 5)
  assert snip["best_of_n"]["5"]["random_best"] == pytest.approx(nb201.expected_best_of_n(even, 5))
  assert abs(snip["best_of_n"]["5"]["by_score"] - worst5) < 5 * snip["best_of_n"]["5"]["by_score_std_error"]
  assert snip["best_of_n"]["1"]["by_score"] == pytest.approx(even.mean(), abs=0.5)


def test_pt_ranking_and_proxy_columns_in_the_nb201_report(tmp_path, monkeypatch):
  """An NB201 comparison whose darts runs chose by DARTS-PT and ranked the supernet, with a proxy scores file:
  argmax and PT accuracy, τ and the proxy-only rows in report.md and report.json; gdas (argmax, no ranking)
  shows "—" there. A missing scores file fails before any search, naming the path and the command."""
  from darts_jax import search as search_lib  # pylint: disable=g-import-not-at-top
  archs, acc = _write_table(tmp_path / "nb201.csv")
  calls = []

  def fake(config, workdir):   # darts seed s: argmax cell 100·s, PT cell 100·s + 10, τ 0.4 + 0.2·s
    calls.append(workdir)
    summary = _fake_search(config, workdir)
    if config.method == "darts":
      s = config.seed
      summary.update(selection="pt", genotype=nb201.arch_to_string(archs[100 * s + 10]),
                     genotype_argmax=nb201.arch_to_string(archs[100 * s]),
                     ranking={"sampled": {"kendall_tau": 0.4 + 0.2 * s, "spearman_rho": 0.5, "n": 50},
                              "top_k": {"kendall_tau": 0.1 * s, "spearman_rho": 0.2, "n": 10, "k": 10},
                              "alpha": {"kendall_tau": 0.05, "spearman_rho": 0.1, "n": 15625},
                              "bn": compare.ranking.BN_MODE})
      wd.write_json(os.path.join(workdir, "summary.json"), summary)
    return summary
  monkeypatch.setattr(search_lib, "search", fake)
  c = _compare_config_module().get_config("smoke")
  c.methods, c.seeds, c.spaces = ["darts", "gdas"], [0, 1], ["nb201"]
  c.benchmark_path = str(tmp_path / "nb201.csv")
  c.proxy_scores = str(tmp_path / "nowhere" / "scores.csv")
  with pytest.raises(ValueError, match=r"nowhere/scores\.csv.*experiments/zero_cost\.py"):
    compare.run_comparison(c, str(tmp_path / "cmp"))
  assert calls == []

  with open(tmp_path / "scores.csv", "w") as f:
    f.write("arch,synflow\n")
    f.writelines(f"{nb201.arch_to_string(a)},{float(i % 7)!r}\n" for i, a in enumerate(archs[:1000]))
  c.proxy_scores = str(tmp_path / "scores.csv")
  c.proxy_best_of_n = (10,)
  work = str(tmp_path / "cmp")
  compare.run_comparison(c, work)
  report = json.load(open(os.path.join(work, "report.json")))
  rows = {r["method"]: r for r in report["tables"]["nb201"]}
  darts = rows["darts"]
  assert darts["selections"] == {"pt": 2}
  assert darts["argmax_test_acc"]["mean"] == pytest.approx(np.mean([acc[0], acc[100]]))
  assert darts["pt_test_acc"]["mean"] == pytest.approx(np.mean([acc[10], acc[110]]))
  assert darts["benchmark_test_acc"]["mean"] == pytest.approx(darts["pt_test_acc"]["mean"])
  assert darts["ranking"]["sampled_kendall_tau"]["mean"] == pytest.approx(0.5)
  assert darts["ranking"]["top_k_kendall_tau"]["mean"] == pytest.approx(0.05)
  assert "selections" not in rows["gdas"] and "ranking" not in rows["gdas"]
  run0 = next(r for r in report["runs"] if r["method"] == "darts" and r["seed"] == 0)
  assert run0["selection"] == "pt" and run0["genotype_argmax"] == nb201.arch_to_string(archs[0])
  assert "selection" not in next(r for r in report["runs"] if r["method"] == "gdas")
  proxy = report["nb201_proxy_baseline"]
  assert proxy["scores_path"] == c.proxy_scores and proxy["proxies"]["synflow"]["cells"] == 1000
  b = proxy["proxies"]["synflow"]["best_of_n"]["10"]
  assert b["random_best"] == pytest.approx(nb201.expected_best_of_n(acc[:1000], 10))
  assert proxy["random_best"]["10"] == pytest.approx(nb201.expected_best_of_n(acc, 10))

  md = open(os.path.join(work, "report.md")).read()
  header = next(line for line in md.splitlines() if line.startswith("| method |"))
  assert "| argmax acc (%) | PT acc (%) | τ (one-shot, n) |" in header
  argmax_pt = f"| {darts['argmax_test_acc']['mean']:.2f} ± {darts['argmax_test_acc']['std']:.2f} | " \
              f"{darts['pt_test_acc']['mean']:.2f} ± {darts['pt_test_acc']['std']:.2f} | "
  assert argmax_pt + "0.50 ± 0.14 (n=50); top-10: 0.05 ± 0.07 |" in md
  gdas_line = next(line for line in md.splitlines() if line.startswith("| gdas |"))
  assert gdas_line.endswith("| — | — | — |")
  assert "Selection per method: darts pt 2/2." in md and "α's own ranking of every cell, Kendall τ: darts 0.05" in md
  assert f"| random best of N | 15625 | {proxy['random_best']['10']:.2f} |" in md
  assert (f"| best of N by synflow | 1000 | {b['by_score']:.2f} ± {b['by_score_std_error']:.2f} "
          f"(random over these cells {b['random_best']:.2f}) |") in md
  assert f"(pt; argmax `{nb201.arch_to_string(archs[0])}`)" in md
