"""Comparing search methods under one protocol: `run_comparison(config, workdir) -> report dict`.

Every (space, method, seed) runs the same search config (``config.search``; only ``space``, ``method`` and
``seed`` change) in its own resumable work directory, optionally followed by retraining its genotype with
``config.retrain_config`` (``genotype`` set to the run's ``genotype.json``, ``seed`` to the run's seed)::

  workdir/runs/<space>/<method>/seed<k>/search/    darts_jax.search work directory (summary.json, metrics.jsonl)
  workdir/runs/<space>/<method>/seed<k>/retrain/   darts_jax.retrain work directory (DARTS-like spaces only)
  workdir/report.md, report.json                   one table per space, the random baseline, reproducibility
  workdir/accuracy_over_time.png                   supernet val accuracy vs search seconds, mean over seeds

The ``random`` method is the random-sampling baseline and is always included (added when missing). It does
no search: its genotype is drawn with the run's seed exactly as `darts_jax.search.search` would derive it
(``methods.get_method("random").derive(..., key=split(PRNGKey(seed), 4)[3])``), written into its search
directory with zero search time, then retrained like every other genotype. On NAS-Bench-201 the report also
gives the discovered cells' benchmark accuracy and the exact expected best-of-N accuracy of random sampling
from the table. Finished runs (a ``summary.json`` beside an identical ``config.json``) are not touched again,
so re-running the same command only fills in what is missing and rewrites the report.

The report flags DARTS' known failure mode, collapse to parameter-free cells: per method, the share of
``skip_connect`` among the normal cells' edges of the final genotypes (flagged at >= `COLLAPSE_SHARE`). Where
the searches measured the α Hessian's largest eigenvalue (``search.hessian_every``), each method's row gives
its trend (`eigenvalue_trend`: first and last measured value, means over seeds, and their ratio), the
curvature growth RobustDARTS ties to that collapse, and DARTS-ES replayed on the measured eigenvalues
(`es_replay`; the runs' own ``early_stop_kwargs``, fields of ``config.es_replay`` overriding them): where the
rule fires, the epoch a search with ``early_stop="darts_es"`` would have stopped at and the cell it would have
exported, scored on the table beside the same runs' final cells.

Three more measurements join the NB201 table where the runs or the config provide them:

* DARTS-PT beside argmax (`selection_accuracies`): a method whose searches chose by ``search.selection`` "pt"
  or "pt_fixed" (`darts_jax.projection`) gets the table accuracy of both choices, PT's ``genotype`` and the
  method's own ``genotype_argmax``.
* Supernet ranking (`ranking_summary`): where the summaries hold ``ranking`` (`ranking.supernet_ranking`
  without its cells; ``search.ranking_cells``), Kendall τ of the one-shot accuracy of n sampled cells (and of
  the top-k cells α ranks highest) against the table, mean over seeds.
* Proxy-only search (`proxy_baseline`): with ``config.proxy_scores`` (a ``scores.csv`` of
  ``experiments/zero_cost.py``), the table accuracy of the best-scoring of N random cells by each proxy
  (``config.proxy_best_of_n``; `ranking.score_best_of_n`) beside random search's best of N.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import platform
import time
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from darts_jax import exports
from darts_jax import hessian
from darts_jax import methods as methods_lib
from darts_jax import models
from darts_jax import nb201_arch
from darts_jax import ranking
from darts_jax import retrain as retrain_lib
from darts_jax import search as search_lib
from darts_jax import workdir as wd
from darts_jax import zero_cost
from darts_jax.search_space import SPACES, get_space

RANDOM = "random"
RUN_KEYS = ("method", "seed", "space")   # the only search-config fields allowed to differ between runs
RETRAIN_RUN_KEYS = ("genotype", "seed")
COLLAPSE_SHARE = 0.5                       # normal-cell skip_connect share flagged as collapse
BEST_OF_N = (1, 10, 100)
PROXY_BEST_OF_N = (10, 100)
PROXY_DRAWS = 2000                         # Monte-Carlo draws of `ranking.score_best_of_n`
ZERO_COST_COMMAND = ("python experiments/zero_cost.py --config=experiments/configs/nb201_zero_cost.py "
                     "--workdir=DIR")


# --------------------------------------------------------------------------------------------------------
# Small statistics helpers (pure; unit-tested on synthetic summaries).


def mean_std(values: Iterable[Any]) -> Dict[str, Any]:
  """{"mean", "std" (sample, ddof=1; 0 for one value), "n"} of the finite numbers in `values` (None: none)."""
  xs = [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
  if not xs:
    return {"mean": None, "std": None, "n": 0}
  return {"mean": float(np.mean(xs)), "std": float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0, "n": len(xs)}


def skip_share(genotype: Any, space=None) -> Optional[float]:
  """The share of ``skip_connect`` edges in the normal cell of a DARTS genotype (text, dict or Genotype), or
  among the 6 edges of a NAS-Bench-201 cell (its ``|op~i|+...`` string or ``{"nb201": string}``)."""
  ops_ = cell_ops(genotype, space)
  return sum(op == "skip_connect" for op in ops_) / len(ops_) if ops_ else None


PARAMETER_FREE = frozenset({"none", "skip_connect", "avg_pool_3x3", "max_pool_3x3"})


def cell_ops(genotype: Any, space=None) -> Optional[List[str]]:
  """The ops of the (normal) cell of an architecture or its text/JSON form (`SearchSpace.cell_ops`), in
  `space` or, if None, in the first space that reads it; None if none does."""
  if genotype is None:
    return None
  for sp in ([space] if space is not None else SPACES.values()):
    ops_ = sp.cell_ops(genotype)
    if ops_ is not None:
      return ops_
  return None


def parameter_free(genotype: Any, space=None) -> Optional[bool]:
  """Whether the (normal) cell has no op with weights: the collapse of GDAS/DARTS to pooling and identity."""
  ops_ = cell_ops(genotype, space)
  return None if not ops_ else all(op in PARAMETER_FREE for op in ops_)


def nb201_random_baseline(accuracies, ns: Iterable[int]) -> Dict[str, float]:
  """{str(n): exact expected best-of-n accuracy of uniform random sampling} from a benchmark column."""
  return {str(int(n)): nb201_arch.expected_best_of_n(accuracies, int(n)) for n in sorted(set(int(n) for n in ns))}


def eigenvalue_series(records: Iterable[Mapping[str, Any]]) -> List[tuple]:
  """The (epoch, α Hessian's largest eigenvalue) pairs of a search's metrics records, by epoch."""
  return sorted((int(r["epoch"]), float(r["hessian_eigenvalue"])) for r in records
                if r.get("phase") == "epoch" and isinstance(r.get("hessian_eigenvalue"), (int, float))
                and math.isfinite(r["hessian_eigenvalue"]))


def eigenvalue_trend(series: Sequence[Sequence[tuple]]) -> Optional[Dict[str, Any]]:
  """A method's eigenvalue trend from its seeds' `eigenvalue_series`: the first and the last measured value
  (`mean_std` over the seeds that measured any), the ratio of their means, and each seed's first and last
  epoch; None when no seed measured one."""
  measured = [sorted(s) for s in series if s]
  if not measured:
    return None
  first, last = mean_std(s[0][1] for s in measured), mean_std(s[-1][1] for s in measured)
  return {"first": first, "last": last, "ratio": last["mean"] / first["mean"] if first["mean"] else None,
          "first_epochs": [s[0][0] for s in measured], "last_epochs": [s[-1][0] for s in measured],
          "num_seeds": len(measured)}


def format_trend(trend: Optional[Mapping[str, Any]]) -> str:
  """``"first → last (×ratio)"`` of an `eigenvalue_trend`, or "—"."""
  if not trend:
    return "—"
  ratio = f" (×{trend['ratio']:.2f})" if trend.get("ratio") is not None else ""
  return f"{trend['first']['mean']:.4g} → {trend['last']['mean']:.4g}{ratio}"


def es_rule(search_config: Mapping[str, Any], overrides: Optional[Mapping[str, Any]] = None
            ) -> Optional[Dict[str, Any]]:
  """The DARTS-ES rule (`hessian.EarlyStop`'s window, delta, factor, start_epoch, ev_freq; checked as the search
  checks it) to replay on a search that ran with `search_config` (a config.json): its ``early_stop_kwargs``,
  the set fields of `overrides` replacing them; None when the search measured no eigenvalue, stopped early
  itself, or ran a method DARTS-ES refuses (one that does not learn α, or selects by itself)."""
  every = int(search_config.get("hessian_every") or 0)
  if every <= 0 or search_config.get("early_stop"):
    return None
  try:
    method = methods_lib.get_method(search_config.get("method") or "",
                                    **dict(search_config.get("method_kwargs") or {}))
  except (KeyError, ValueError, TypeError):
    return None
  if not method.update_alphas or method.select is not None:
    return None
  kw = dict(search_config.get("early_stop_kwargs") or {})
  kw.update({k: v for k, v in dict(overrides or {}).items() if v is not None})
  return search_lib.early_stop_rule(kw, every)


def es_replay(records: Sequence[Mapping[str, Any]], total_epochs: int, rule: Mapping[str, Any]
              ) -> Optional[Dict[str, Any]]:
  """DARTS-ES (`hessian.darts_es` with `rule`) replayed on a finished search's metrics records, fed as the
  search feeds it (the eigenvalues of every ``ev_freq``-th epoch): {"stop_epoch", "kept_epoch", "genotype": the
  kept epoch's recorded argmax cell, "final_genotype": the last epoch's}, or None when the rule does not fire.
  The rule only reads the eigenvalues, so a search run with it (and argmax selection) stops at that epoch and
  exports that cell, its epochs before the stop being this run's."""
  series = [(e, v) for e, v in eigenvalue_series(records) if (e + 1) % int(rule["ev_freq"]) == 0]
  hit = hessian.darts_es(series, total_epochs, **rule)
  if hit is None:
    return None
  epochs = {int(r["epoch"]): r for r in records if r.get("phase") == "epoch"}
  return {"stop_epoch": hit[0], "kept_epoch": hit[1], "genotype": epochs[hit[1]].get("genotype"),
          "final_genotype": epochs[max(epochs)].get("genotype")}


def format_mean_std(stat: Optional[Mapping[str, Any]], scale: float = 1.0, digits: int = 2) -> str:
  """``"mean ± std"`` of a `mean_std` result times `scale`, or "—" when it has no value."""
  if not stat or stat.get("mean") is None:
    return "—"
  return f"{stat['mean'] * scale:.{digits}f} ± {stat['std'] * scale:.{digits}f}"


def _table_acc(space, arch, benchmark, dataset: str) -> Optional[float]:
  """The benchmark table's accuracy of `arch` in `space`; None without a table or an architecture."""
  if benchmark is None or arch is None:
    return None
  return space.arch_stats(arch, benchmark, dataset).get("benchmark_test_acc")


def selection_accuracies(searches: Sequence[Mapping[str, Any]], space, benchmark=None,
                         dataset: str = "cifar10") -> Optional[Dict[str, Any]]:
  """DARTS-PT's choice beside the method's argmax, for a method any of whose `searches` (summaries) selected
  with ``selection`` other than "argmax"; None when every one took α's argmax.

  ``argmax_test_acc``: the table accuracy of every seed's argmax architecture (``genotype_argmax`` where PT
  chose, else ``genotype``); ``pt_test_acc``: that of PT's choices (``genotype`` of the PT runs); `mean_std`
  each, with the per-run values and ``selections`` {selection: number of runs}."""
  chosen = [str(s.get("selection") or "argmax") for s in searches]
  if all(c == "argmax" for c in chosen):
    return None
  argmax = [_table_acc(space, s.get("genotype") if c == "argmax" else s.get("genotype_argmax"), benchmark, dataset)
            for s, c in zip(searches, chosen)]
  pt = [_table_acc(space, s.get("genotype"), benchmark, dataset) for s, c in zip(searches, chosen) if c != "argmax"]
  return {"selections": {c: chosen.count(c) for c in sorted(set(chosen))},
          "argmax_test_acc": mean_std(argmax), "argmax_test_accs": argmax,
          "pt_test_acc": mean_std(pt), "pt_test_accs": pt}


def ranking_summary(rankings: Iterable[Optional[Mapping[str, Any]]]) -> Optional[Dict[str, Any]]:
  """A method's supernet ranking from its seeds' summary ``ranking`` entries (`ranking.supernet_ranking`
  without ``cells``): `mean_std` over the seeds that measured one of the sampled cells' Kendall τ and Spearman
  ρ, of the top-k cells' (None when no seed ranked them) and of α's own ranking, the distinct n and k, and the
  BatchNorm modes; None when no seed measured one."""
  rs = [r for r in rankings if r]
  if not rs:
    return None
  sampled = [r.get("sampled") or {} for r in rs]
  top = [r["top_k"] for r in rs if r.get("top_k")]
  alpha = [r.get("alpha") or {} for r in rs]
  distinct = lambda blocks, key: sorted({int(b[key]) for b in blocks if b.get(key) is not None})
  return {"num_seeds": len(rs),
          "sampled_kendall_tau": mean_std(b.get("kendall_tau") for b in sampled),
          "sampled_spearman_rho": mean_std(b.get("spearman_rho") for b in sampled),
          "sampled_n": distinct(sampled, "n"),
          "top_k_kendall_tau": mean_std(b.get("kendall_tau") for b in top) if top else None,
          "top_k_spearman_rho": mean_std(b.get("spearman_rho") for b in top) if top else None,
          "top_k": distinct(top, "k"),
          "alpha_kendall_tau": mean_std(b.get("kendall_tau") for b in alpha),
          "alpha_spearman_rho": mean_std(b.get("spearman_rho") for b in alpha),
          "bn": sorted({str(r["bn"]) for r in rs if r.get("bn")})}


def format_ranking(summary: Optional[Mapping[str, Any]]) -> str:
  """``"τ ± std (n=…); top-k: τ ± std"`` of a `ranking_summary`, or "—"."""
  if not summary or summary["sampled_kendall_tau"]["mean"] is None:
    return "—"
  text = (format_mean_std(summary["sampled_kendall_tau"]) +
          f" (n={'/'.join(map(str, summary['sampled_n'])) or '?'})")
  if summary.get("top_k_kendall_tau") and summary["top_k_kendall_tau"]["mean"] is not None:
    text += f"; top-{'/'.join(map(str, summary['top_k']))}: " + format_mean_std(summary["top_k_kendall_tau"])
  return text


def proxy_scores_file(path: str) -> str:
  """The scores CSV that ``config.proxy_scores`` names (the file, or a zero-cost work directory holding
  ``scores.csv``); a one-line ValueError saying how to write one when there is none."""
  file = os.path.join(path, zero_cost.SCORES) if os.path.isdir(path) else path
  if not os.path.isfile(file):
    raise ValueError(f"proxy_scores={path!r}: no such scores file; write one with `{ZERO_COST_COMMAND}` and "
                     f"set proxy_scores to DIR/{zero_cost.SCORES}")
  return file


def proxy_baseline(scores: Mapping[str, Mapping[str, float]], benchmark, dataset: str = "cifar10",
                   ns: Iterable[int] = PROXY_BEST_OF_N, draws: int = PROXY_DRAWS, seed: int = 0) -> Dict[str, Any]:
  """Search by a zero-cost proxy alone, against random search, on the benchmark table.

  `scores`: {arch string: {proxy: score}} (`zero_cost.read_scores`). Per proxy, over the table's cells that
  have its score: `ranking.score_best_of_n` (the mean table accuracy of the best-scoring of N cells drawn
  uniformly with replacement, `draws` draws from `seed`, its standard error, and random search's exact best of
  N over the same cells); ``random_best``: random search's exact expected best of N over the whole table."""
  ns = sorted({int(n) for n in ns})
  acc = benchmark.accuracies(dataset)
  names = list(dict.fromkeys(name for s in scores.values() for name in s))
  rows = [(benchmark.index.get(nb201_arch.parse_arch(arch)), s) for arch, s in scores.items()]
  out = {"ns": ns, "draws": int(draws), "seed": int(seed), "dataset": dataset, "table_cells": len(benchmark),
         "not_in_table": sum(1 for i, _ in rows if i is None),
         "random_best": nb201_random_baseline(acc, ns), "proxies": {}}
  for name in names:
    idx = [i for i, s in rows if i is not None and name in s]
    if not idx:
      continue
    values = [s[name] for i, s in rows if i is not None and name in s]
    best = ranking.score_best_of_n(values, acc[idx], ns, draws=draws, seed=seed)
    out["proxies"][name] = {"cells": len(idx), "best_of_n": {str(n): b for n, b in best.items()}}
  return out


def aggregate(runs: Sequence[Mapping[str, Any]], benchmark=None, benchmark_dataset: str = "cifar10",
              device_kind: str = "CPU") -> Dict[str, List[Dict[str, Any]]]:
  """One row per (space, method) from per-run records.

  A run record holds ``space``, ``method``, ``seed``, ``search`` (the search summary: val_acc, search_seconds,
  supernet_params, genotype; optionally selection and genotype_argmax, ranking) and optionally ``retrain``
  (test_acc, num_params, train_seconds). `benchmark` (an `nb201_arch.Benchmark`) scores NB201 genotypes. A row
  gains `selection_accuracies`' fields where a benchmarked space's run chose by DARTS-PT, and ``ranking``
  (`ranking_summary`) where runs ranked the supernet. Returns {space: [row, ...]}, methods in first-seen order.
  """
  out: Dict[str, List[Dict[str, Any]]] = {}
  groups: Dict[tuple, List[Mapping[str, Any]]] = {}
  for r in runs:
    groups.setdefault((r["space"], r["method"]), []).append(r)
  for (space, method), rs in groups.items():
    searches = [r["search"] for r in rs]
    retrains = [r.get("retrain") for r in rs if r.get("retrain")]
    seconds = [float(s.get("search_seconds") or 0.0) for s in searches]
    row = {
        "method": method, "seeds": sorted(int(r["seed"]) for r in rs), "num_runs": len(rs),
        "search_val_acc": mean_std(s.get("val_acc") for s in searches),
        "retrain_test_acc": mean_std(t.get("test_acc") for t in retrains) if retrains else None,
        "retrain_params": mean_std(t.get("num_params") for t in retrains) if retrains else None,
        "supernet_params": mean_std(s.get("supernet_params") for s in searches),
        # The final α's mean per-edge entropy; at the uniform value (ln num_ops) the cells are α's noise.
        "alpha_entropy": mean_std(s.get("alpha_entropy") for s in searches),
        "alpha_entropy_uniform": next((s["alpha_entropy_uniform"] for s in searches
                                       if s.get("alpha_entropy_uniform") is not None), None),
        "search_hours_sum": sum(seconds) / 3600.0, "search_hours_mean": sum(seconds) / 3600.0 / len(rs),
        "device_kind": device_kind, "genotypes": [s.get("genotype") for s in searches],
        "is_random_baseline": method == RANDOM,
    }
    sp = get_space(space)
    stats = [models.arch_stats(sp, s.get("genotype"), benchmark, benchmark_dataset) for s in searches]
    for key in sorted({k for st in stats for k in st}):
      values = [st.get(key) for st in stats]
      if all(isinstance(v, bool) for v in values):
        row[key] = sum(values)           # a count of runs, e.g. disconnected cells
      else:
        row[key] = mean_std(values)
        if key == "benchmark_test_acc":
          row["benchmark_test_accs"] = values
    if "benchmark_test_acc" in row:
      row["benchmark_dataset"] = benchmark_dataset
    shares = [skip_share(s.get("genotype"), sp) for s in searches]
    row["skip_share"] = mean_std(shares)
    row["skip_shares"] = shares
    row["parameter_free"] = sum(1 for s in searches if parameter_free(s.get("genotype"), sp))
    row["collapse"] = bool((row["skip_share"]["mean"] is not None and row["skip_share"]["mean"] >= COLLAPSE_SHARE)
                           or 2 * row["parameter_free"] > len(rs))
    chosen = selection_accuracies(searches, sp, benchmark, benchmark_dataset) if sp.has_benchmark else None
    if chosen:
      row.update(chosen)
    ranked = ranking_summary(s.get("ranking") for s in searches)
    if ranked:
      row["ranking"] = ranked
    out.setdefault(space, []).append(row)
  return out


# --------------------------------------------------------------------------------------------------------
# Environment and protocol checks.


def _git_commit() -> str:
  return wd.code_version()


def hardware_info() -> Dict[str, Any]:
  """The JAX backend, its devices, the platform and CPU count, for run records."""
  import jax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return {"backend": jax.default_backend(), "devices": [f"{d.platform}:{d.device_kind}" for d in devices],
          "num_devices": len(devices), "platform": platform.platform(), "processor": platform.processor(),
          "cpu_count": os.cpu_count()}


def protocol_differences(configs: Sequence[Mapping[str, Any]], allowed: Iterable[str],
                         ignore: Iterable[str] = ()) -> List[str]:
  """The config keys (outside `allowed` and `ignore`) whose values differ between any of `configs`."""
  skip = set(allowed) | set(ignore)
  keys = set().union(*[set(c) for c in configs]) if configs else set()
  return sorted(k for k in keys - skip if len({json.dumps(c.get(k), sort_keys=True) for c in configs}) > 1)


def read_json(path: str) -> Optional[Dict[str, Any]]:
  """The JSON file at `path`, or None if there is none."""
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


# --------------------------------------------------------------------------------------------------------
# Running.


def run_config(base, **fields):
  """A copy of the ConfigDict `base` with `fields` set (unlocked for the copy)."""
  cfg = copy.deepcopy(base)
  with cfg.unlocked():
    for k, v in fields.items():
      setattr(cfg, k, v)
  return cfg


def finished_summary(run_dir: str, config_dict: Mapping[str, Any], ignore: Iterable[str]) -> Optional[Dict[str, Any]]:
  """The summary of a finished run of exactly this config in `run_dir`, else None."""
  summary = read_json(os.path.join(run_dir, "summary.json"))
  old = read_json(os.path.join(run_dir, "config.json"))
  if summary is None or old is None:
    return None
  strip = lambda d: {k: v for k, v in d.items() if k not in set(ignore)}
  new = json.loads(json.dumps(wd._jsonable(dict(config_dict))))  # pylint: disable=protected-access
  return summary if strip(old) == strip(new) else None


def random_search_run(config, run_dir: str) -> Dict[str, Any]:
  """The random baseline's "search": a uniformly random genotype from the run's seed, no training."""
  import jax  # pylint: disable=g-import-not-at-top
  wd.prepare(run_dir, config.to_dict(), ignore=search_lib.RESUMABLE_KEYS)
  space = get_space(config.space)
  method = methods_lib.get_method(RANDOM)
  k_derive = jax.random.split(jax.random.PRNGKey(config.seed), 4)[3]   # the key search.search derives with
  arch = method.derive(None, space, key=k_derive)
  text = exports.write_architecture(run_dir, arch, space)
  summary = {"method": RANDOM, "space": space.name, "dataset": config.dataset, "seed": config.seed,
             "genotype": text, "search_seconds": 0.0, "val_acc": None, "supernet_params": None, "steps": 0,
             "note": "random-sampling baseline: no search, a uniformly random architecture from the seed",
             "versions": wd.versions(), "code_version": wd.code_version()}
  wd.write_json(os.path.join(run_dir, "summary.json"), summary)
  return summary


def _run_dir(workdir: str, space: str, method: str, seed: int) -> str:
  return os.path.join(workdir, "runs", space, method, f"seed{seed}")


def _methods(config) -> List[str]:
  methods = [str(m) for m in config.methods]
  if RANDOM not in methods and config.get("include_random_baseline", True):
    methods.append(RANDOM)
  return methods


def _latest_checkpoint(run_dir: str) -> int:
  path = os.path.join(run_dir, "checkpoints")
  steps = [int(d) for d in os.listdir(path) if d.isdigit()] if os.path.isdir(path) else []
  return max(steps, default=0)


def _search_seeds_together(config, workdir: str, space: str, method: str, seeds: Sequence[int]) -> List[str]:
  """Runs a method's unfinished seeds as one multi-seed program (`search.search_seeds`) when there are two or
  more and their checkpoints are at one step; returns the stages run (none: the loop runs them one by one)."""
  todo = []
  for seed in seeds:
    scfg = run_config(config.search, method=method, seed=seed, space=space)
    sdir = os.path.join(_run_dir(workdir, space, method, seed), "search")
    if finished_summary(sdir, scfg.to_dict(), search_lib.RESUMABLE_KEYS) is None:
      todo.append((seed, scfg, sdir))
  if len(todo) < 2 or len({_latest_checkpoint(d) for _, _, d in todo}) > 1:
    return []
  search_lib.search_seeds([c for _, c, _ in todo], [d for _, _, d in todo])
  return [f"{space}/{method}/seed{seed}/search (multi-seed program)" for seed, _, _ in todo]


def run_comparison(config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) every (space, method, seed) of `config`, then writes and returns the report."""
  methods = _methods(config)
  seeds = [int(s) for s in config.seeds]
  spaces = [str(s) for s in config.spaces]
  if not methods or not seeds or not spaces:
    raise ValueError("config.methods, config.seeds and config.spaces must each name at least one entry")
  for m in methods:
    methods_lib.get_method(m)   # unknown names fail before anything runs
  if config.get("proxy_scores"):
    proxy_scores_file(config.proxy_scores)
  do_retrain = bool(config.get("retrain", False))
  os.makedirs(workdir, exist_ok=True)

  runs, executed, t0 = [], [], time.perf_counter()
  for space in spaces:
    for method in methods:
      if config.get("multi_seed", False) and method != RANDOM:
        executed += _search_seeds_together(config, workdir, space, method, seeds)
      for seed in seeds:
        rdir = _run_dir(workdir, space, method, seed)
        scfg = run_config(config.search, method=method, seed=seed, space=space)
        sdir = os.path.join(rdir, "search")
        summary = finished_summary(sdir, scfg.to_dict(), search_lib.RESUMABLE_KEYS)
        if summary is None:
          executed.append(f"{space}/{method}/seed{seed}/search")
          summary = (random_search_run(scfg, sdir) if method == RANDOM else search_lib.search(scfg, sdir))
        record = {"space": space, "method": method, "seed": seed, "search": summary, "search_dir": sdir}
        if do_retrain and get_space(space).retrainable:
          tcfg = run_config(config.retrain_config, genotype=os.path.join(sdir, "genotype.json"), seed=seed)
          tdir = os.path.join(rdir, "retrain")
          rsum = finished_summary(tdir, tcfg.to_dict(), retrain_lib.RESUMABLE_KEYS)
          if rsum is None:
            executed.append(f"{space}/{method}/seed{seed}/retrain")
            rsum = retrain_lib.train_and_evaluate(tcfg, tdir)
          record.update(retrain=rsum, retrain_dir=tdir)
        runs.append(record)
  report = build_report(config, workdir, runs, methods=methods, seeds=seeds, spaces=spaces)
  report["executed_this_call"] = executed
  report["wall_seconds_this_call"] = time.perf_counter() - t0
  write_report(report, workdir)
  return report


# --------------------------------------------------------------------------------------------------------
# The report.


def _load_benchmark(config, spaces):
  """The first benchmark table one of `spaces` scores its architectures with (`SearchSpace.load_benchmark`,
  at ``config.benchmark_path`` or its default place), and its path; (None, None) if there is none."""
  for space in spaces:
    table, path = get_space(space).load_benchmark(config.get("benchmark_path") or None)
    if table is not None:
      return table, path
  return None, None


def parameter_free_share(genotype: Any, space=None) -> Optional[float]:
  """The share of parameter-free ops (`PARAMETER_FREE`) among the (normal) cell's edges; None if unreadable."""
  ops_ = cell_ops(genotype, space)
  return sum(op in PARAMETER_FREE for op in ops_) / len(ops_) if ops_ else None


CURVE_KEYS = ("elapsed", "val_acc", "alpha_entropy", "skip_share", "parameter_free_share", "hessian_eigenvalue")


def _epoch_record(m: Mapping[str, Any], space) -> Dict[str, Optional[float]]:
  genotype = m.get("genotype")
  num = lambda v: float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None
  return {"elapsed": num(m.get("elapsed")), "val_acc": num(m.get("val_acc")),
          "alpha_entropy": num(m.get("alpha_entropy")),
          "skip_share": skip_share(genotype, space) if genotype else None,
          "parameter_free_share": parameter_free_share(genotype, space) if genotype else None,
          "hessian_eigenvalue": num(m.get("hessian_eigenvalue"))}


def _curves(runs: Sequence[Mapping[str, Any]]) -> Dict[str, Dict[str, Dict[str, Any]]]:
  """{space: {method: {key: [...] for key in CURVE_KEYS, "num_seeds": n}}}: per epoch, the mean over the seeds
  that reached it of the elapsed seconds, the supernet's val accuracy, α's mean entropy and the share of
  ``skip_connect`` and of parameter-free ops in the cell derived at that epoch (None where no seed has it)."""
  per: Dict[tuple, List[List[Dict[str, Optional[float]]]]] = {}
  for r in runs:
    path = os.path.join(r["search_dir"], "metrics.jsonl")
    if not os.path.exists(path):
      continue
    sp = get_space(r["space"])
    recs = [_epoch_record(m, sp) for m in wd.read_metrics(path)
            if m.get("phase") == "epoch" and m.get("val_acc") is not None and m.get("elapsed") is not None]
    if recs:
      per.setdefault((r["space"], r["method"]), []).append(recs)
  out: Dict[str, Dict[str, Dict[str, Any]]] = {}
  for (space, method), seqs in per.items():
    n = max(len(s) for s in seqs)
    curve: Dict[str, Any] = {k: [] for k in CURVE_KEYS}
    for i in range(n):
      for k in CURVE_KEYS:
        vals = [s[i][k] for s in seqs if len(s) > i and s[i][k] is not None]
        curve[k].append(float(np.mean(vals)) if vals else None)
    curve["num_seeds"] = len(seqs)
    out.setdefault(space, {})[method] = curve
  return out


def plot_curves(curves, path: str) -> None:
  """The supernet's val accuracy over search seconds, one panel per space, one line per method."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  spaces = sorted(curves) or ["darts"]
  fig, axes = plt.subplots(1, len(spaces), figsize=(6 * len(spaces), 4), squeeze=False)
  for ax, space in zip(axes[0], spaces):
    for method, c in curves.get(space, {}).items():
      ax.plot(c["elapsed"], c["val_acc"], marker="o", label=f"{method} (n={c['num_seeds']})")
    ax.set_title(f"{space}: supernet val accuracy (mean over seeds)")
    ax.set_xlabel("search seconds (elapsed)")
    ax.set_ylabel("val accuracy")
    ax.grid(alpha=0.3)
    if curves.get(space):
      ax.legend(fontsize=8)
    else:
      ax.text(0.5, 0.5, "no search curves", ha="center", va="center", transform=ax.transAxes)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_cells_over_epochs(curves, path: str) -> None:
  """Per space, three panels over epochs: α's mean entropy, the skip_connect share and the parameter-free
  share of the derived cells (means over seeds, one line per method): where DARTS' collapse shows."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  spaces = sorted(curves) or ["darts"]
  keys = (("alpha_entropy", "α mean entropy"), ("skip_share", "skip_connect share"),
          ("parameter_free_share", "parameter-free share"))
  fig, axes = plt.subplots(len(spaces), 3, figsize=(15, 3.6 * len(spaces)), squeeze=False)
  for row, space in zip(axes, spaces):
    for ax, (key, title) in zip(row, keys):
      for method, c in curves.get(space, {}).items():
        ys = c.get(key) or []
        pts = [(i, y) for i, y in enumerate(ys) if y is not None]
        if pts:
          ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=method)
      ax.set_title(f"{space}: {title}")
      ax.set_xlabel("epoch")
      ax.grid(alpha=0.3)
      if ax.lines:
        ax.legend(fontsize=7)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _add_eigenvalue_trends(tables: Mapping[str, List[Dict[str, Any]]], runs: Sequence[Mapping[str, Any]],
                           replay_overrides: Optional[Mapping[str, Any]] = None, benchmark=None,
                           benchmark_dataset: str = "cifar10") -> None:
  """Sets each row's ``eigenvalue_trend`` (`eigenvalue_trend` of its runs' metrics.jsonl), ``early_stopped``
  (how many of its searches DARTS-ES stopped), ``ada`` where its runs searched with DARTS-ADA (each run's
  roll-backs, final weight decay and final cell's table accuracy) and, where its runs measured eigenvalues
  without an early stop, ``es_replay`` (`es_replay` per run, with the cells' table accuracy where the space has
  a table)."""
  series: Dict[tuple, List[List[tuple]]] = {}
  replays: Dict[tuple, List[Dict[str, Any]]] = {}
  for r in runs:
    path = os.path.join(r["search_dir"], "metrics.jsonl") if r.get("search_dir") else None
    if not (path and os.path.exists(path)):
      continue
    records = wd.read_metrics(path)
    measured = eigenvalue_series(records)
    series.setdefault((r["space"], r["method"]), []).append(measured)
    cfg = read_json(os.path.join(r["search_dir"], "config.json")) or {}
    rule = es_rule(cfg, replay_overrides) if measured and cfg.get("epochs") else None
    if rule is None:
      continue
    hit = es_replay(records, int(cfg["epochs"]), rule)
    entry = {"seed": r["seed"], "rule": rule, "fired": hit is not None, **(hit or {})}
    if hit:
      sp = get_space(r["space"])
      entry["acc"], entry["final_acc"] = (_table_acc(sp, g, benchmark, benchmark_dataset)
                                          for g in (hit["genotype"], hit["final_genotype"]))
    replays.setdefault((r["space"], r["method"]), []).append(entry)
  for space, rows in tables.items():
    for row in rows:
      row["eigenvalue_trend"] = eigenvalue_trend(series.get((space, row["method"]), []))
      searches = [(r["seed"], r.get("search") or {}) for r in runs
                  if r["space"] == space and r["method"] == row["method"]]
      row["early_stopped"] = sum(1 for _, s in searches if s.get("early_stop_epoch") is not None)
      ada = [{"seed": seed, "rollbacks": [{k: e.get(k) for k in ("stop_epoch", "kept_epoch", "weight_decay")}
                                          for e in s.get("ada_rollbacks") or []],
              "final_weight_decay": s.get("w_weight_decay_final"),
              "acc": _table_acc(get_space(space), s.get("genotype"), benchmark, benchmark_dataset)}
             for seed, s in searches if s.get("early_stop") == "darts_ada"]
      if ada:
        row["ada"] = {"runs": ada, "rolled_back": sum(1 for e in ada if e["rollbacks"]), "num_runs": len(ada),
                      "acc": mean_std(e["acc"] for e in ada)}
      rs = replays.get((space, row["method"]))
      if rs:
        fired = [e for e in rs if e["fired"]]
        row["es_replay"] = {"runs": rs, "fired": len(fired), "num_runs": len(rs),
                            "acc": mean_std(e.get("acc") for e in fired),
                            "final_acc": mean_std(e.get("final_acc") for e in fired)}


def _run_entry(r: Mapping[str, Any], workdir: str) -> Dict[str, Any]:
  """A run's line in report.json; its selection and argmax genotype where DARTS-PT chose."""
  s = r["search"]
  entry = {"space": r["space"], "method": r["method"], "seed": r["seed"],
           "search_dir": os.path.relpath(r["search_dir"], workdir),
           "genotype": s.get("genotype"), "val_acc": s.get("val_acc"), "search_seconds": s.get("search_seconds"),
           "test_acc": (r.get("retrain") or {}).get("test_acc"),
           "num_params": (r.get("retrain") or {}).get("num_params")}
  if (s.get("selection") or "argmax") != "argmax":
    entry.update(selection=s["selection"], genotype_argmax=s.get("genotype_argmax"))
  return entry


def build_report(config, workdir: str, runs: Sequence[Mapping[str, Any]], methods, seeds, spaces) -> Dict[str, Any]:
  hardware = hardware_info()
  device_kind = "GPU" if hardware["backend"] == "gpu" else hardware["backend"].upper()
  benchmark, bench_path = _load_benchmark(config, spaces)
  bench_dataset = config.get("benchmark_dataset") or "cifar10"
  tables = aggregate(runs, benchmark, bench_dataset, device_kind)
  _add_eigenvalue_trends(tables, runs, config.get("es_replay"), benchmark, bench_dataset)

  nb201_baseline = None
  if benchmark is not None:
    ns = [len(seeds), *BEST_OF_N]
    nb201_baseline = {"dataset": bench_dataset, "benchmark_path": bench_path, "num_archs": len(benchmark),
                      "best_in_table": benchmark.best(bench_dataset)[1],
                      "expected_best_of_n": nb201_random_baseline(benchmark.accuracies(bench_dataset), ns)}
  proxy = None
  if benchmark is not None and config.get("proxy_scores"):
    path = proxy_scores_file(config.proxy_scores)
    proxy = {"scores_path": path, **proxy_baseline(zero_cost.read_scores(path), benchmark, bench_dataset,
                                                   config.get("proxy_best_of_n") or PROXY_BEST_OF_N)}

  search_cfgs = [read_json(os.path.join(r["search_dir"], "config.json")) or {} for r in runs]
  diff = protocol_differences(search_cfgs, RUN_KEYS, search_lib.RESUMABLE_KEYS)
  retrain_cfgs = [read_json(os.path.join(r["retrain_dir"], "config.json")) or {} for r in runs
                  if r.get("retrain_dir")]
  rdiff = protocol_differences(retrain_cfgs, RETRAIN_RUN_KEYS, retrain_lib.RESUMABLE_KEYS)
  same = not diff and not rdiff
  total_search = sum(float(r["search"].get("search_seconds") or 0.0) for r in runs)
  run_commits = sorted({str(r["search"].get("code_version") or "not recorded") for r in runs})
  total_retrain = sum(float(r["retrain"].get("train_seconds") or 0.0) for r in runs if r.get("retrain"))

  curves = _curves(runs)
  plot_path = os.path.join(workdir, "accuracy_over_time.png")
  plot_curves(curves, plot_path)
  cells_path = os.path.join(workdir, "cells_over_epochs.png")
  plot_cells_over_epochs(curves, cells_path)

  return {
      "methods": list(methods), "seeds": list(seeds), "spaces": list(spaces),
      "retrain": bool(config.get("retrain", False)), "device_kind": device_kind,
      "tables": tables, "nb201_random_baseline": nb201_baseline,
      **({"nb201_proxy_baseline": proxy} if proxy else {}),
      "runs": [_run_entry(r, workdir) for r in runs],
      "curves": curves, "plot": os.path.basename(plot_path), "cells_plot": os.path.basename(cells_path),
      "reproducibility": {
          "git_commit": _git_commit(), "run_commits": run_commits, "versions": wd.versions(), "hardware": hardware,
          "seeds": list(seeds),
          "search_config": config.search.to_dict(),
          "retrain_config": config.retrain_config.to_dict() if config.get("retrain") else None,
          "total_search_seconds": total_search, "total_search_hours": total_search / 3600.0,
          "total_retrain_seconds": total_retrain,
          "same_protocol": same, "protocol_differences": {"search": diff, "retrain": rdiff},
          "varied_per_run": list(RUN_KEYS),
      },
  }


def _table_md(space: str, rows: Sequence[Mapping[str, Any]], retrain: bool, device_kind: str) -> List[str]:
  sp = get_space(space)
  h = device_kind + "-hours"
  retrained = retrain and sp.retrainable
  cols = ["method", "seeds", "search val acc (%)"]
  if retrained:
    cols += ["retrained test acc (%)", "retrained params"]
  cols += ["final α entropy", "supernet params", f"search {h} (sum)", f"search {h} (mean)"]
  cols += [header for _, header, _ in sp.stat_columns]
  cols += ["parameter-free cells", "skip_connect share"]
  selected = any(r.get("selections") for r in rows)
  if selected:
    cols += ["argmax acc (%)", "PT acc (%)"]
  ranked = any(r.get("ranking") for r in rows)
  if ranked:
    cols.append("τ (one-shot, n)")
  trends = any(r.get("eigenvalue_trend") for r in rows)
  if trends:
    cols.append("eigenvalue trend (first → last, ratio)")
  lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    name = r["method"] + (" (random-sampling baseline)" if r["is_random_baseline"] else "")
    cells = [name, ", ".join(map(str, r["seeds"])), format_mean_std(r["search_val_acc"], 100)]
    if retrained:
      cells += [format_mean_std(r["retrain_test_acc"], 100), format_mean_std(r["retrain_params"], 1, 0)]
    uniform = r.get("alpha_entropy_uniform")
    entropy = format_mean_std(r.get("alpha_entropy"), 1, 4) + (f" (uniform {uniform:.4f})" if uniform else "")
    cells += [entropy, format_mean_std(r["supernet_params"], 1, 0), f"{r['search_hours_sum']:.4f}",
              f"{r['search_hours_mean']:.4f}"]
    for key, _, digits in sp.stat_columns:
      value = r.get(key)
      cells.append(f"{value}/{r['num_runs']}" if isinstance(value, int) else format_mean_std(value, 1, digits))
    share = format_mean_std(r["skip_share"], 1, 2)
    cells += [f"{r['parameter_free']}/{r['num_runs']}", share + (" ⚠ collapse" if r["collapse"] else "")]
    if selected:
      cells += ([format_mean_std(r["argmax_test_acc"]), format_mean_std(r["pt_test_acc"])] if r.get("selections")
                else ["—", "—"])
    if ranked:
      cells.append(format_ranking(r.get("ranking")))
    if trends:
      stopped = f"; DARTS-ES stopped {r['early_stopped']}/{r['num_runs']}" if r.get("early_stopped") else ""
      if r.get("ada"):
        stopped += f"; DARTS-ADA rolled back {r['ada']['rolled_back']}/{r['ada']['num_runs']}"
      cells.append(format_trend(r.get("eigenvalue_trend")) + stopped)
    lines.append("| " + " | ".join(cells) + " |")
  return lines


def _epoch_columns(n: int, measured: Sequence[int], every: int = 0) -> List[int]:
  """The epochs of a per-epoch table of `n` epochs: about ten evenly spaced, the first and the last; when the
  α Hessian was measured only at some epochs (`measured`), about ten of those instead, so its row is filled."""
  if measured and not every:
    step = max(1, math.ceil(len(measured) / 10))
    return sorted(set(measured[::step]) | {0, n - 1})
  step = every or max(1, math.ceil(n / 10))
  return sorted(set(range(0, n, step)) | {n - 1})


def _epochs_md(curves: Mapping[str, Any], every: int = 0) -> List[str]:
  """Per method, α's entropy and the derived cells' skip_connect / parameter-free share at each epoch."""
  lines = []
  for method, c in curves.items():
    n = len(c.get("elapsed") or [])
    if not n:
      continue
    idx = _epoch_columns(n, [i for i, v in enumerate(c.get("hessian_eigenvalue") or []) if v is not None], every)
    f = lambda v, d: "—" if v is None else f"{v:.{d}f}"
    lines += [f"`{method}` (mean over {c['num_seeds']} seeds):", "",
              "| epoch | " + " | ".join(str(i) for i in idx) + " |", "|---|" + "---|" * len(idx)]
    rows = [("alpha_entropy", "α entropy", 3), ("skip_share", "skip share", 2),
            ("parameter_free_share", "param-free share", 2), ("val_acc", "val acc", 3)]
    if any(v is not None for v in c.get("hessian_eigenvalue") or []):
      rows.append(("hessian_eigenvalue", "α Hessian λ_max", 4))
    for key, name, d in rows:
      lines.append(f"| {name} | " + " | ".join(f((c.get(key) or [None] * n)[i], d) for i in idx) + " |")
    lines.append("")
  return lines


def _proxy_md(p: Mapping[str, Any]) -> List[str]:
  """The proxy-only search table of a `proxy_baseline`: random search's best of N, then per proxy its best of
  N (± standard error; random search over the same cells where the proxy scored only some)."""
  ns = p["ns"]
  L = [f"Search by a zero-cost proxy alone (no training; scores `{p['scores_path']}`): the table's "
       f"{p['dataset']} test accuracy of the best-scoring of N cells drawn uniformly ({p['draws']} draws, ± "
       "standard error), beside random search's exact expected best of N.", "",
       "| search without training | cells | " + " | ".join(f"N={n}" for n in ns) + " |",
       "|---|---|" + "---|" * len(ns),
       f"| random best of N | {p['table_cells']} | " +
       " | ".join(f"{p['random_best'][str(n)]:.2f}" for n in ns) + " |"]
  for name, q in p["proxies"].items():
    subset = q["cells"] != p["table_cells"]
    cells = []
    for n in ns:
      b = q["best_of_n"][str(n)]
      cells.append(f"{b['by_score']:.2f} ± {b['by_score_std_error']:.2f}" +
                   (f" (random over these cells {b['random_best']:.2f})" if subset else ""))
    L.append(f"| best of N by {name} | {q['cells']} | " + " | ".join(cells) + " |")
  if not p["proxies"]:
    L.append("| (no proxy scores for cells of the table) | 0 |" + " — |" * len(ns))
  return L + [""]


def _es_replay_md(rows: Sequence[Mapping[str, Any]], benchmarked: bool) -> List[str]:
  defaults = {f.name: f.default for f in dataclasses.fields(hessian.EarlyStop)
              if f.name in search_lib.EARLY_STOP_KEYS}
  rule = {**defaults, **rows[0]["es_replay"]["runs"][0]["rule"]}   # the rule's own defaults where the run set none
  L = ["DARTS-ES replayed on each search's measured eigenvalues (`compare.es_replay`; window "
       f"{rule['window']}, delta {rule['delta']}, factor {rule['factor']}, start epoch "
       f"{rule['start_epoch']}, an eigenvalue every {rule['ev_freq']} epoch{'s' * (rule['ev_freq'] != 1)}; "
       "`--config.es_replay.*` sets them): where it fires, a search with `early_stop=darts_es` (and argmax "
       "selection) stops at that epoch and exports the kept epoch's argmax cell." +
       (" Accuracies: the table's, of the runs where it fires, beside the same runs' final argmax cells."
        if benchmarked else ""), ""]
  cols = ["method", "fired", "stop → kept epoch (seed)"] + (["kept cell acc (%)", "final argmax cell acc (%)"]
                                                           if benchmarked else [])
  L += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for r in rows:
    e = r["es_replay"]
    epochs = ", ".join(f"{x['stop_epoch']} → {x['kept_epoch']} ({x['seed']})" for x in e["runs"] if x["fired"])
    cells = [r["method"], f"{e['fired']}/{e['num_runs']}", epochs or "—"]
    if benchmarked:
      cells += [format_mean_std(e["acc"]), format_mean_std(e["final_acc"])]
    L.append("| " + " | ".join(cells) + " |")
  return L + [""]


def _ada_md(rows: Sequence[Mapping[str, Any]], benchmarked: bool) -> List[str]:
  L = ["DARTS-ADA (`early_stop=darts_ada`): where DARTS-ES fires at a stop epoch, the search returns to the kept "
       "epoch with the weights' weight decay multiplied and goes on; the final α gives the cell. Per run: its "
       "roll-backs as stop → kept epoch (the weight decay after it)." +
       (" Accuracy: the table's, of the final cells." if benchmarked else ""), ""]
  cols = ["method", "rolled back", "roll-backs", "final weight decay"] + (
      ["final cell acc (%)"] if benchmarked else [])
  L += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  back = lambda b: f"{b['stop_epoch']} → {b['kept_epoch']} (wd {b['weight_decay']:.2g})"
  for r in rows:
    a = r["ada"]
    backs = "; ".join(f"seed {e['seed']}: " + ", ".join(map(back, e["rollbacks"])) for e in a["runs"] if e["rollbacks"])
    decay = ", ".join(f"seed {e['seed']}: {e['final_weight_decay']:.2g}" for e in a["runs"]
                      if e["final_weight_decay"] is not None)
    cells = [r["method"], f"{a['rolled_back']}/{a['num_runs']}", backs or "—", decay or "—"]
    if benchmarked:
      cells.append(format_mean_std(a["acc"]))
    L.append("| " + " | ".join(cells) + " |")
  return L + [""]


def report_markdown(report: Mapping[str, Any]) -> str:
  rep = report["reproducibility"]
  L = ["# Search-method comparison", "",
       f"Methods: {', '.join(report['methods'])}; seeds: {', '.join(map(str, report['seeds']))}; "
       f"spaces: {', '.join(report['spaces'])}. Every run uses the same search config (only method, seed and "
       "space vary); `random` is the random-sampling baseline (no search, a uniformly random architecture per "
       "seed). Values are mean ± sample std over seeds.", ""]
  for space in report["spaces"]:
    rows = report["tables"].get(space, [])
    L += [f"## Space `{space}`", ""]
    L += _table_md(space, rows, report["retrain"], report["device_kind"])
    L.append("")
    flagged = [r["method"] for r in rows if r.get("collapse")]
    sp = get_space(space)
    n_ops = len(sp.arch_ops)
    L += [f"Collapse check (DARTS' failure mode: cells dominated by parameter-free ops): flagged when the share "
          f"of `skip_connect` among {sp.cell_ops_description} is >= {COLLAPSE_SHARE:.0%} on average, or when "
          f"most seeds found a cell with no op that has weights (only "
          f"{', '.join(f'`{o}`' for o in sorted(PARAMETER_FREE))}). Flagged: "
          f"{', '.join(flagged) if flagged else 'none'}. A uniformly random cell has a skip_connect share of "
          f"1/{n_ops} ≈ {1 / n_ops:.2f}.", ""]
    L += [note for note in sp.report_notes] + ([""] if sp.report_notes else [])
    chosen = [r for r in rows if r.get("selections")]
    if chosen:
      how = "; ".join(f"{r['method']} " + ", ".join(f"{k} {v}/{r['num_runs']}" for k, v in r["selections"].items())
                      for r in chosen)
      L += ["argmax acc / PT acc: the table accuracy of the method's own argmax cell at the end of the search and of "
            "DARTS-PT's perturbation-based selection (`darts_jax.projection`; `pt` tunes α between decisions, "
            f"`pt_fixed` holds it), mean ± std over seeds. Selection per method: {how}.", ""]
    ranked = [r for r in rows if r.get("ranking")]
    if ranked:
      bns = sorted({b for r in ranked for b in r["ranking"]["bn"]})
      alpha = "; ".join(f"{r['method']} {format_mean_std(r['ranking']['alpha_kendall_tau'])}" for r in ranked)
      L += ["τ (one-shot, n): Kendall τ between the supernet's one-shot accuracy (inherited weights, each cell as "
            f"one-hot op weights; BatchNorm: {', '.join(bns) or 'not recorded'}) of n uniformly sampled cells and "
            "the table, mean ± std over seeds; top-k: the same over the k cells α ranks highest. α's own ranking "
            f"of every cell, Kendall τ: {alpha}.", ""]
    if any(r.get("eigenvalue_trend") for r in rows):
      L += ["Eigenvalue trend: the largest eigenvalue of the α Hessian of the validation loss (`darts_jax.hessian`, "
            "measured every `hessian_every` epochs), first and last measured, means over seeds, and their ratio; "
            "RobustDARTS found its growth to precede DARTS' collapse (DARTS-ES stops on it).", ""]
    adaptive = [r for r in rows if r.get("ada")]
    if adaptive:
      L += _ada_md(adaptive, sp.has_benchmark)
    replayed = [r for r in rows if r.get("es_replay")]
    if replayed:
      L += _es_replay_md(replayed, sp.has_benchmark)
    if sp.has_benchmark:
      b = report.get("nb201_random_baseline")
      if b:
        L += [f"Random sampling on the {space} table ({b['num_archs']} cells, {b['dataset']} test accuracy, "
              f"best {b['best_in_table']:.2f}%): exact expected best of N uniform samples:", "",
              "| N | expected best-of-N test acc (%) |", "|---|---|"]
        L += [f"| {n} | {v:.2f} |" for n, v in b["expected_best_of_n"].items()]
        L.append("")
      else:
        L += [f"No benchmark table for {space} was found (config.benchmark_path or its default place).", ""]
      if b and report.get("nb201_proxy_baseline"):
        L += _proxy_md(report["nb201_proxy_baseline"])
    epochs = _epochs_md(report.get("curves", {}).get(space, {}))
    if epochs:
      L += ["Per epoch (the cell derived from α at the end of each epoch):", ""] + epochs
    L += ["Genotypes:", ""]
    L += [f"- {r['method']} seed {r['seed']}: `{r['genotype']}`" +
          (f" ({r['selection']}; argmax `{r['genotype_argmax']}`)" if r.get("selection") else "")
          for r in report["runs"] if r["space"] == space]
    L.append("")
  L += ["## Accuracy over search time", "", f"![accuracy over time]({report['plot']})", ""]
  if report.get("cells_plot"):
    L += ["## Cells over epochs", "", f"![entropy and shares over epochs]({report['cells_plot']})", ""]
  hw = rep["hardware"]
  yes = "yes" if rep["same_protocol"] else (
      "no (search differs in: " + (", ".join(rep["protocol_differences"]["search"]) or "-") +
      "; retrain differs in: " + (", ".join(rep["protocol_differences"]["retrain"]) or "-") + ")")
  L += ["## Reproducibility checklist", "",
        f"- [x] Code version (git commit): runs {', '.join(f'`{c}`' for c in rep.get('run_commits', []))}; "
        f"report written by `{rep['git_commit']}`",
        "- [x] Library versions: " + ", ".join(f"{k} {v}" for k, v in rep["versions"].items()),
        f"- [x] Hardware: backend {hw['backend']}, devices {', '.join(hw['devices'])}, {hw['cpu_count']} CPUs, "
        f"{hw['platform']}",
        f"- [x] Seeds: {', '.join(map(str, rep['seeds']))} (every method runs every seed)",
        f"- [x] Total search time: {rep['total_search_seconds']:.1f} s = {rep['total_search_hours']:.4f} "
        f"{report['device_kind']}-hours (search.search's elapsed time, which includes the first epoch's XLA "
        "compilation)" +
        (f"; total retrain time {rep['total_retrain_seconds']:.1f} s" if report["retrain"] else ""),
        f"- [x] Same protocol for all methods: {yes} (checked on every run's config.json; only "
        f"{', '.join(rep['varied_per_run'])} vary)",
        "- [x] Random-sampling baseline beside every result: yes",
        "- [x] All hyperparameters: below (search config shared by every run" +
        ("; retrain config shared by every retrain" if report["retrain"] else "") + ")", "",
        "Search config:", "", "```json", json.dumps(rep["search_config"], indent=2, sort_keys=True), "```", ""]
  if rep.get("retrain_config"):
    L += ["Retrain config (genotype = each run's genotype.json, seed = the run's seed):", "", "```json",
          json.dumps(rep["retrain_config"], indent=2, sort_keys=True), "```", ""]
  return "\n".join(L)


def write_report(report: Mapping[str, Any], workdir: str) -> None:
  wd.write_json(os.path.join(workdir, "report.json"), report)
  wd.atomic_write(os.path.join(workdir, "report.md"), report_markdown(report))
