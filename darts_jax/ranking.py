"""How well scores rank NAS-Bench-201 cells: rank correlations with the benchmark table, the supernet's
one-shot ranking (Kendall τ of weight sharing) and the best-of-N baseline of a score that needs no training.

`rank_correlation` gives Kendall's τ-b and Spearman's ρ over the finite pairs. `supernet_ranking` scores
sampled cells with a search's supernet (inherited weights, each cell as one-hot op weights; the NB201 supernet's
BatchNorm uses batch statistics) and the cells its α ranks highest, against the table. `score_best_of_n` is
the expected table accuracy of the best-scoring of N cells drawn at random, beside random search's best of N.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, Mapping, Sequence

import numpy as np
from scipy import stats

from darts_jax import nb201_arch
from darts_jax.topology import NB201_PRIMITIVES

BN_MODE = "batch statistics (the NB201 supernet's non-affine BatchNorm)"


def rank_correlation(scores: Sequence[float], truth: Sequence[float]) -> Dict[str, Any]:
  """Kendall τ-b and Spearman ρ of `scores` against `truth` over the pairs where both are finite."""
  a, b = np.asarray(scores, np.float64), np.asarray(truth, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"{a.shape[0]} scores but {b.shape[0]} true values; give one score per cell")
  ok = np.isfinite(a) & np.isfinite(b)
  if ok.sum() < 2 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:   # undefined for a constant side
    return {"kendall_tau": None, "spearman_rho": None, "n": int(ok.sum())}
  tau = stats.kendalltau(a[ok], b[ok]).statistic
  rho = stats.spearmanr(a[ok], b[ok]).statistic
  clean = lambda v: None if v is None or not math.isfinite(v) else float(v)
  return {"kendall_tau": clean(tau), "spearman_rho": clean(rho), "n": int(ok.sum())}


def one_hot(arch) -> Dict[str, np.ndarray]:
  """The op weights that select `arch` in the NB201 supernet."""
  w = np.zeros((nb201_arch.NUM_EDGES, len(NB201_PRIMITIVES)), np.float32)
  for e, op in enumerate(nb201_arch.as_arch(arch)):
    w[e, NB201_PRIMITIVES.index(op)] = 1.0
  return {"normal": w}


def alpha_log_probs(op_weights: np.ndarray, archs: Sequence[Any]) -> np.ndarray:
  """Σ over edges of log(op weight of the cell's op): how highly α ranks each cell."""
  p = np.log(np.maximum(np.asarray(op_weights, np.float64), 1e-30))
  idx = np.asarray([[NB201_PRIMITIVES.index(o) for o in nb201_arch.as_arch(a)] for a in archs])
  return p[np.arange(nb201_arch.NUM_EDGES)[None, :], idx].sum(axis=1)


def supernet_ranking(one_shot: Callable[[Mapping[str, np.ndarray]], float], op_weights: np.ndarray,
                     benchmark: nb201_arch.Benchmark, num_cells: int, top_k: int, seed: int,
                     dataset: str = "cifar10") -> Dict[str, Any]:
  """The supernet's ranking of NB201 cells against the table.

  ``sampled``: `num_cells` cells drawn uniformly (seeded), each scored by ``one_shot(op_weights)`` (the
  supernet's validation accuracy with that cell's one-hot weights), τ/ρ against the table. ``top_k``: the same
  for the `top_k` cells α ranks highest (`alpha_log_probs`). ``alpha``: τ/ρ of α's own ranking of every cell.
  """
  if num_cells < 2 or top_k < 0:
    raise ValueError(f"ranking needs at least 2 sampled cells and top_k >= 0, got {num_cells} and {top_k}")
  archs = benchmark.archs
  acc = benchmark.accuracies(dataset)
  rng = np.random.default_rng(seed)
  sampled = rng.choice(len(archs), size=min(num_cells, len(archs)), replace=False)
  logp = alpha_log_probs(op_weights, archs)
  top = np.argsort(-logp, kind="stable")[:top_k]
  evaluated = {int(i): float(one_shot(one_hot(archs[i]))) for i in np.concatenate([sampled, top])}
  in_sample, in_top = set(sampled.tolist()), set(top.tolist())
  block = lambda ids: {**rank_correlation([evaluated[int(i)] for i in ids], acc[ids]),
                       "one_shot_acc_mean": float(np.mean([evaluated[int(i)] for i in ids])) if len(ids) else None,
                       "table_acc_mean": float(np.mean(acc[ids])) if len(ids) else None}
  return {"sampled": block(sampled), "top_k": {**block(top), "k": int(top_k)} if top_k >= 2 else None,
          "alpha": rank_correlation(logp, acc), "bn": BN_MODE, "dataset": dataset, "seed": int(seed),
          "cells": [{"arch": nb201_arch.arch_to_string(archs[i]), "one_shot_acc": v, "table_acc": float(acc[i]),
                     "sampled": i in in_sample, "alpha_top_k": i in in_top}
                    for i, v in evaluated.items()]}


def score_best_of_n(scores: Sequence[float], accuracies: Sequence[float], ns: Sequence[int], draws: int = 2000,
                    seed: int = 0) -> Dict[int, Dict[str, float]]:
  """For each N: the mean table accuracy of the best-scoring of N cells drawn uniformly with replacement
  (NaN scores lose; `draws` Monte-Carlo draws) and, exactly, random search's expected best and mean of N."""
  s = np.asarray(scores, np.float64)
  a = np.asarray(accuracies, np.float64)
  s = np.where(np.isfinite(s), s, -np.inf)
  rng = np.random.default_rng(seed)
  out = {}
  for n in ns:
    idx = rng.integers(0, len(s), size=(draws, int(n)))
    pick = idx[np.arange(draws), np.argmax(s[idx], axis=1)]
    chosen = a[pick]
    out[int(n)] = {"by_score": float(chosen.mean()), "by_score_std_error": float(chosen.std(ddof=1) / math.sqrt(draws)),
                   "random_best": nb201_arch.expected_best_of_n(a, int(n)), "random_one": float(a.mean())}
  return out
