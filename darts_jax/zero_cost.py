"""Zero-cost proxies over NAS-Bench-201's cells: `score_cells(config, workdir)` writes every scored cell's
proxies to ``scores.csv`` (``arch``, then one column per proxy), their rank correlation with the benchmark
table beside the published values, and each proxy's best-of-N search baseline (``correlations.json``,
``report.md``, ``correlations.png/.svg``).

One compiled program per set of proxies serves every cell (`proxies.nb201_program`, called on chunks of cells,
which ``config.num_devices`` local devices share; 0: all).
synflow needs no data; the data-dependent proxies score one batch of ``config.dataset``'s train split (the same
batch for every cell). ``config.cells`` is "all" (15,625 cells) or a number of cells drawn with
``config.seed``; ``config.data_cells`` limits the data-dependent proxies to the first that many of them (0: all),
as they cost far more per cell. The CSV is rewritten atomically after every chunk and a re-run resumes after
the last cell written.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from darts_jax import data as data_lib
from darts_jax import nb201_arch
from darts_jax import proxies
from darts_jax import ranking
from darts_jax import visualize
from darts_jax import workdir as wd

RESUMABLE_KEYS = ("progress", "chunk", "num_devices")
SCORES = "scores.csv"


def _cells(config) -> List[nb201_arch.Arch]:
  archs = nb201_arch.enumerate_archs()
  if str(config.cells) == "all":
    return archs
  n = int(config.cells)
  if not 1 <= n <= len(archs):
    raise ValueError(f"cells={config.cells!r}: use 'all' or a number of cells from 1 to {len(archs)}")
  idx = np.random.default_rng(config.seed).choice(len(archs), n, replace=False)
  return [archs[i] for i in idx]


def _batch(config):
  """The data-dependent proxies' batch: ``batch_size`` train images (seeded), normalized per channel."""
  train = data_lib.load_dataset(config.dataset, "train", config.get("data_dir") or None)
  if train.images.shape[1] % 4 or train.images.shape[2] % 4:
    raise ValueError(f"{config.dataset} images are {train.images.shape[1]}x{train.images.shape[2]}; the NB201 "
                     "network needs sides divisible by 4")
  mean, std = data_lib.channel_stats(train.images)
  idx = np.random.default_rng(config.seed).choice(len(train.labels), config.batch_size, replace=False)
  batch = next(iter(data_lib.eval_batches(train, config.batch_size, mean=mean, std=std, indices=idx)))
  return np.asarray(batch["image"], np.float32), np.asarray(batch["label"], np.int32), train.num_classes


def read_scores(path: str) -> Dict[str, Dict[str, float]]:
  """``{arch string: {proxy: score}}`` of a scores CSV (empty fields: not scored)."""
  if not os.path.exists(path):
    return {}
  with open(path, newline="") as f:
    return {r["arch"]: {k: float(v) for k, v in r.items() if k != "arch" and v != ""} for r in csv.DictReader(f)}


def _write_scores(path: str, names, rows: Dict[str, Dict[str, float]]) -> None:
  out = io.StringIO()
  w = csv.writer(out, lineterminator="\n")
  w.writerow(["arch", *names])
  for arch, s in rows.items():
    w.writerow([arch, *[repr(s[n]) if n in s else "" for n in names]])
  wd.atomic_write(path, out.getvalue())


def proxy_names(value) -> tuple:
  """Proxy names from a comma-separated string or a sequence."""
  items = value.split(",") if isinstance(value, str) else value
  return tuple(p.strip() for p in items if p.strip())


def score_cells(config, workdir: str) -> Dict[str, Any]:
  """Scores the cells `config` names (resuming ``workdir/scores.csv``); returns the correlation summary."""
  names = proxy_names(config.proxies)
  unknown = sorted(set(names) - set(proxies.PROXIES))
  if unknown or not names:
    raise ValueError(f"proxies={list(names)}: choose one or more of {', '.join(proxies.PROXIES)}")
  wd.prepare(workdir, config.to_dict(), ignore=RESUMABLE_KEYS)
  try:
    archs = _cells(config)
    x, y, params = _inputs(config, names)
    path = os.path.join(workdir, SCORES)
    rows = read_scores(path)
    data_cells = int(config.data_cells or 0) or len(archs)
    keys = [nb201_arch.arch_to_string(a) for a in archs]
    todo = []
    for i, (a, key) in enumerate(zip(archs, keys)):
      missing = [n for n in names if (n == "synflow" or i < data_cells) and n not in rows.get(key, {})]
      if missing:
        todo.append((i, a, missing))
    programs = {}
    devices = _devices(config)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if todo and devices[0].platform == "cpu" and len(jax.local_devices()) == 1 and cores > 1:
      print(f"note: one CPU device runs the proxies on one core; XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{cores} (set before JAX starts) gives them {cores}, each with its own working memory", file=sys.stderr)
    seconds = _elapsed(workdir) if rows else 0.0
    bar = tqdm.tqdm(total=len(todo), desc="zero-cost proxies", disable=not config.get("progress", True))
    for start in range(0, len(todo), config.chunk):
      chunk = todo[start:start + config.chunk]
      t0 = time.perf_counter()
      for group in sorted({tuple(w) for _, _, w in chunk}):
        members = [(i, a) for i, a, w in chunk if tuple(w) == group]
        codes = np.stack([proxies.arch_codes(a) for _, a in members])
        fn = programs.setdefault(group, proxies.nb201_program(group, x.shape, devices))
        out = _run(fn, group, len(devices), params, codes, x, y)
        for k, (i, _) in enumerate(members):
          rows.setdefault(keys[i], {}).update({n: float(out[n][k]) for n in group})
      seconds += time.perf_counter() - t0
      _write_scores(path, names, {key: rows[key] for key in keys if key in rows})
      wd.write_json(os.path.join(workdir, "timing.json"), {"seconds": seconds})
      bar.update(len(chunk))
    bar.close()
    pairs = score_table_pairs(config, rows, names)
    summary = summarize(config, rows, names, seconds, pairs)
    wd.write_json(os.path.join(workdir, "correlations.json"), summary)
    wd.atomic_write(os.path.join(workdir, "report.md"), report_markdown(summary))
    plot_correlations(config, pairs, summary, os.path.join(workdir, "correlations"))
    return summary
  finally:
    wd.unlock(workdir)


def _inputs(config, names):
  """The batch (x, y) and the weights every cell is scored with; synflow alone gets a zero batch of one
  image_size image (it reads only the shape)."""
  if set(names) - {"synflow"}:
    x, y, num_classes = _batch(config)
  else:
    x, y, num_classes = (np.zeros((1, config.image_size, config.image_size, 3), np.float32),
                         np.zeros((1,), np.int32), 10)
  return x, y, proxies.nb201_init(jax.random.PRNGKey(config.seed), config.C, config.N, num_classes, x.shape[-1])


def _devices(config):
  return jax.local_devices()[:int(config.get("num_devices") or 0) or None]


def _run(fn, names, num_devices: int, params, codes, x, y) -> Dict[str, np.ndarray]:
  pad = -len(codes) % num_devices   # the devices split the cells evenly; padded cells are dropped
  with jax.enable_x64("synflow" in names):
    out = jax.device_get(fn(params, jnp.asarray(np.concatenate([codes, codes[:1].repeat(pad, 0)])),
                            jnp.asarray(x), jnp.asarray(y)))
  return {n: np.asarray(out[n][:len(codes)]) for n in names}


def rescore(config, archs, names=proxies.PROXIES) -> Dict[str, np.ndarray]:
  """The proxies `names` of `archs` (arch strings or tuples) computed as `score_cells` computes them for
  `config` (its weights, batch and program, the cells split over the same local devices), to check a
  recorded table; run it with the recorded command's XLA_FLAGS, since XLA's settings change the rounding."""
  names = tuple(names)
  x, y, params = _inputs(config, names)
  devices = _devices(config)
  codes = np.stack([proxies.arch_codes(a) for a in archs])
  return _run(proxies.nb201_program(names, x.shape, devices), names, len(devices), params, codes, x, y)


def _elapsed(workdir: str) -> float:
  path = os.path.join(workdir, "timing.json")
  if not os.path.exists(path):
    return 0.0
  with open(path) as f:
    return float(json.load(f).get("seconds", 0.0))


def summarize(config, rows: Dict[str, Dict[str, float]], names, seconds: float,
              pairs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
  """Per proxy: cells scored, Spearman ρ and Kendall τ against the table (``config.benchmark_dataset``), the
  published ρ, ρ and τ over the cells without a zero-input conv (`nb201_arch.zero_input_convs`), and the
  best-of-N baseline (`ranking.score_best_of_n`); plus the scoring seconds. `pairs`:
  `score_table_pairs`' result, when already computed."""
  out = {"proxies": {}, "seconds": seconds, "cells": len(rows), "dataset": config.dataset,
         "batch_size": config.batch_size, "seed": config.seed, "C": config.C, "N": config.N,
         "benchmark_dataset": config.benchmark_dataset}
  pairs = score_table_pairs(config, rows, names) if pairs is None else pairs
  zero_input = {a for a in rows if nb201_arch.zero_input_convs(a)}
  for n, (s, t) in pairs.items():
    clean = np.asarray([a not in zero_input for a, r in rows.items() if n in r])   # score_table_pairs' order
    out["proxies"][n] = {**ranking.rank_correlation(s, t), "cells": len(s), "nan": int(np.sum(~np.isfinite(s))),
                         "published_spearman_rho": proxies.PUBLISHED_RHO[n],
                         "without_zero_input_convs": {**ranking.rank_correlation(s[clean], t[clean]),
                                                      "cells": int(clean.sum())},
                         "best_of_n": ranking.score_best_of_n(s, t, config.best_of_n, seed=config.seed)}
  return out


def score_table_pairs(config, rows: Dict[str, Dict[str, float]], names) -> Dict[str, Any]:
  """Per proxy with any score: (its scores, the scored cells' table accuracies); {} without the table."""
  path = config.get("benchmark") or nb201_arch.default_benchmark_path()
  if not path:
    return {}
  bench = nb201_arch.load_benchmark(path)
  acc = bench.accuracies(config.benchmark_dataset)
  out = {}
  for n in names:
    archs = [a for a, s in rows.items() if n in s]
    if archs:
      out[n] = (np.asarray([rows[a][n] for a in archs]),
                acc[[bench.index[nb201_arch.parse_arch(a)] for a in archs]])
  return out


def plot_correlations(config, pairs: Dict[str, Any], summary: Dict[str, Any], path_without_ext: str) -> List[str]:
  """``correlations.png/.svg``: per proxy (`score_table_pairs`), each scored cell's score rank against its table
  accuracy."""
  panels = [visualize.ScatterPanel(
      f"{n}: ρ {summary['proxies'][n]['spearman_rho']:.3f} (published {proxies.PUBLISHED_RHO[n]}), "
      f"n={len(s)}", n, s, t, as_rank=True) for n, (s, t) in pairs.items()]
  return visualize.plot_against_table(panels, path_without_ext,
                                      f"{config.benchmark_dataset} test accuracy (%)") if panels else []


def report_markdown(summary: Dict[str, Any]) -> str:
  data = any(n != "synflow" for n in summary["proxies"])
  lines = [f"# Zero-cost proxies on NAS-Bench-201 ({summary['cells']} cells scored)", "",
           (f"Data-dependent proxies: one batch of {summary['batch_size']} {summary['dataset']} train images; "
            if data else "") +
           f"Network C={summary['C']}, N={summary['N']}; seed {summary['seed']}; scoring took "
           f"{summary['seconds']:.0f} s. Correlations against the table's {summary['benchmark_dataset']} test "
           "accuracy.", "",
           "| proxy | cells | Spearman ρ | published ρ | Kendall τ | NaN | ρ without zero-input convs (cells) |",
           "|---|---|---|---|---|---|---|"]
  fmt = lambda v: "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"
  for n, p in summary["proxies"].items():
    w = p.get("without_zero_input_convs", {})
    lines.append(f"| {n} | {p['cells']} | {fmt(p['spearman_rho'])} | {p['published_spearman_rho']:.3f} | "
                 f"{fmt(p['kendall_tau'])} | {p['nan']} | {fmt(w.get('spearman_rho'))} ({w.get('cells', 'n/a')}) |")
  if summary["proxies"]:
    lines += ["", "Best of N cells by proxy (table accuracy, mean over draws) against random search:", "",
              "| proxy | N | best by proxy | random best of N | random cell |", "|---|---|---|---|---|"]
    for n, p in summary["proxies"].items():
      for k, b in p["best_of_n"].items():
        lines.append(f"| {n} | {k} | {b['by_score']:.2f} ± {b['by_score_std_error']:.2f} | {b['random_best']:.2f} | "
                     f"{b['random_one']:.2f} |")
  return "\n".join(lines) + "\n"
