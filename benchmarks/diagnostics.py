"""What each diagnostic of a search costs, beside one epoch of the search it measures (NB201 protocol).

  python benchmarks/diagnostics.py [--method=darts] [--repeats=3]

Builds the comparison's NB201 search (experiments/configs/fashion_compare.py: C=8, N=1, 16×16×1, batch 32)
with weights at their initialization (the costs do not depend on training) and times, after compilation:
one search step (and so one epoch), the α Hessian's largest eigenvalue (`hessian.largest_eigenvalue`, one
validation batch, at most 20 power iterations, as ``hessian_every`` runs it), one cell's one-shot accuracy
(``ranking_examples`` validation rows: the supernet ranking's unit) and one DARTS-PT op decision (5 masked
accuracies on the α half, the protocol's ``pt_eval_examples=0``). Compile times are the first call's extra.
"""
import os
import statistics
import sys
import time

from absl import app
from absl import flags
import jax

from darts_jax import data as data_lib
from darts_jax import hessian
from darts_jax import ranking
from darts_jax import search

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "configs"))
import fashion_compare  # pylint: disable=g-import-not-at-top,wrong-import-position

_METHOD = flags.DEFINE_string("method", "darts", "search method")
_REPEATS = flags.DEFINE_integer("repeats", 3, "timed calls after the first")


def _timed(fn, repeats):
  t = time.perf_counter()
  jax.block_until_ready(fn())
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return first - statistics.median(times), statistics.median(times)


def main(argv):
  del argv
  config = fashion_compare.get_config().search
  config.method = _METHOD.value
  method = search._method(config)  # pylint: disable=protected-access
  train, mean, std, w_idx, a_idx = search.load_search_data(config)
  model = search.build_model(config, method, train.num_classes, train.image_shape)
  hp, steps_per_epoch, _, _ = search._schedule(config, method, len(w_idx))  # pylint: disable=protected-access
  problem = method.problem(model.apply, model.space, hp)
  state, key = search._init_state(config, model, method, hp)  # pylint: disable=protected-access
  layout = search.parallel.make_layout(1)
  step = search.make_step("fused", model, problem, hp, True)
  batches = search._Batches(config, train, mean, std, w_idx, a_idx, 0, layout)  # pylint: disable=protected-access
  pair = next(batches)
  batches.close()
  rows = []
  fresh = lambda: jax.tree.map(lambda x: x.copy(), state)   # the step donates its state
  c, s = _timed(lambda: step(fresh(), *pair)[0].params, _REPEATS.value)
  rows.append(("search step (fused, α update)", c, s))
  epoch = s * steps_per_epoch
  val = [b for b, _ in zip(data_lib.eval_batches(train, config.batch_size, mean=mean, std=std, indices=a_idx),
                           range(1))]
  hvp = hessian.make_state_hvp(problem, hp)
  top = lambda: hessian.largest_eigenvalue(lambda a, v: hvp(a, v, state, val), state.alphas, key, max_iters=20,
                                           tol=1e-3).value
  c, s = _timed(top, _REPEATS.value)
  rows.append(("α Hessian eigenvalue (1 batch, ≤ 20 iterations)", c, s))
  one_shot = search.val_scorer(config, model, train, mean, std, a_idx[:config.ranking_examples], layout)
  arch = ranking.one_hot(("nor_conv_3x3",) * 6)
  c, s = _timed(lambda: one_shot(state, arch), _REPEATS.value)
  rows.append((f"one-shot accuracy of a cell ({config.ranking_examples} rows)", c, s))
  whole = search.val_scorer(config, model, train, mean, std, a_idx, layout)
  c, s = _timed(lambda: [whole(state, arch) for _ in range(5)], _REPEATS.value)
  rows.append((f"DARTS-PT op decision (5 masked accuracies, {len(a_idx)} rows)", c, s))
  print(f"NB201 protocol, {config.method}, {steps_per_epoch} steps per epoch: one epoch ≈ {epoch:.1f} s "
        f"(+ its validation pass)\n")
  print("| diagnostic | compile s | s per call | per epoch at every epoch |\n|---|---|---|---|")
  for name, c, s in rows:
    print(f"| {name} | {c:.1f} | {s:.3f} | {100 * s / epoch:.0f} % of an epoch |")


if __name__ == "__main__":
  app.run(main)
