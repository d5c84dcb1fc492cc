"""Diagnostics of a finished or running search: how consistently the validation loss pushes α.

`alpha_gradient_snr` restores a search's newest checkpoint and measures α's gradient on many validation
batches at those weights: per α entry, the mean over batches against the spread from batch to batch. Adam
moves an entry by about ``a_lr`` x (that ratio) per step, so a ratio far below 1 means α's steps mostly cancel
and α stays near its start however long the search runs: what to check when α's entropy will not fall.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import jax
import numpy as np

from darts_jax import bilevel
from darts_jax import data as data_lib
from darts_jax import methods as methods_lib
from darts_jax import search as search_lib
from darts_jax import workdir as wd


def alpha_gradient_snr(config, workdir: str, num_batches: int = 64, step: Optional[int] = None) -> Dict[str, Any]:
  """α's first-order validation gradient (the method's op weights, without its regularizer) on `num_batches`
  validation batches of ``config.batch_size`` (no augmentation, batch-statistics BatchNorm as in the search),
  at the weights and α of `workdir`'s checkpoint at `step` (None: the newest).

  Returns {"step", "batches", "mean": the per-entry mean gradient and "snr": its |mean| / std over batches
  (both nested like α), "snr_median", "snr_max", "mean_abs_median", "std_median", "alpha_abs_max"}.
  """
  method = methods_lib.get_method(config.method, **dict(config.get("method_kwargs", {}) or {})).for_space(
      config.get("space", "darts"))
  train, mean, std, w_idx, a_idx = search_lib.load_search_data(config)
  model = search_lib.build_model(config, method, train.num_classes, train.image_shape)
  hp, _, _, _ = search_lib._schedule(config, method, len(w_idx))  # pylint: disable=protected-access
  problem = method.problem(model.apply, model.space, hp)
  k_w, k_a, k_state, _ = jax.random.split(jax.random.PRNGKey(config.seed), 4)
  state = bilevel.init_state(model.init(k_w), method.init_alphas(k_a, model.space), hp, k_state)
  ckpt = wd.Checkpoints(workdir)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise wd.WorkdirError(f"{workdir} has no checkpoint to measure; run the search first")
  restored = ckpt.restore({"state": state, "extra": {"elapsed": np.zeros((), np.float64)}}, step)["state"]
  state = bilevel.SearchState(*restored) if not isinstance(restored, bilevel.SearchState) else restored

  def loss(alphas, batch):
    logits = problem.apply(state.params, batch["image"], problem.arch_weights(alphas, state.rng, state.step))
    return bilevel.cross_entropy(logits, batch["label"])
  grad = jax.jit(jax.grad(loss))
  grads = []
  for batch in data_lib.eval_batches(train, config.batch_size, mean=mean, std=std, indices=a_idx):
    if len(grads) == num_batches:
      break
    if float(batch["mask"].min()) < 1:
      continue   # a padded last batch would weigh its zeros
    grads.append(jax.tree_util.tree_map(np.asarray, grad(state.alphas, batch)))
  stacked = jax.tree_util.tree_map(lambda *g: np.stack(g), *grads)
  mean_g = jax.tree_util.tree_map(lambda g: g.mean(0), stacked)
  std_g = jax.tree_util.tree_map(lambda g: g.std(0, ddof=1), stacked)
  snr = jax.tree_util.tree_map(lambda m, s: np.abs(m) / np.maximum(s, 1e-12), mean_g, std_g)
  flat = lambda t: np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(t)])
  as_lists = lambda t: jax.tree_util.tree_map(lambda x: x.tolist(), t)
  return {"step": int(step), "batches": len(grads), "mean": as_lists(mean_g), "snr": as_lists(snr),
          "snr_median": float(np.median(flat(snr))), "snr_max": float(flat(snr).max()),
          "mean_abs_median": float(np.median(np.abs(flat(mean_g)))), "std_median": float(np.median(flat(std_g))),
          "alpha_abs_max": float(np.abs(flat(jax.tree_util.tree_map(np.asarray, state.alphas))).max())}
