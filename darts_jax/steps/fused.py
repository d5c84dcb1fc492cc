"""The ``fused`` step backend: the whole search step as one jitted program, state donated.

`formula.search_step` with `formula.autodiff` gradients and its pieces inline, traced into one
XLA program: the backend for GPUs and TPUs, for a mesh of devices (`parallel.Layout.step_shardings`), for
several seeds at once (`make_multi_seed_step`) and for methods whose weight pass perturbs α (SDARTS).
"""
from __future__ import annotations

import jax

from darts_jax import parallel, xla_setup
from darts_jax.bilevel import SearchHParams, SearchProblem
from darts_jax.steps import formula


def search_step(problem: SearchProblem, hp: SearchHParams, state, train_batch, val_batch,
                update_alphas: bool = True):
  """One search iteration as a pure, traceable function (`formula.search_step`, autodiff gradients)."""
  return formula.search_step(hp, formula.autodiff(problem), formula.pieces(problem, hp), state, train_batch, val_batch,
                        update_alphas)


def make_step(problem: SearchProblem, hp: SearchHParams, update_alphas: bool = True, donate: bool = True,
              shardings=None):
  """The jitted step `(state, train_batch, val_batch) -> (state, metrics)`, state donated.

  shardings: optional (state sharding, batch sharding), e.g. `parallel.Layout.step_shardings()`: the step
    runs data-parallel on that mesh, gradients over the global batch."""
  fn = lambda state, tb, vb: search_step(problem, hp, state, tb, vb, update_alphas)
  return parallel.jit_step(fn, shardings, batches=2, donate=donate)


def make_multi_seed_step(problem: SearchProblem, hp: SearchHParams, update_alphas: bool = True,
                         donate: bool = True, shardings=None):
  """S searches as one jit-compiled program: `(states, train_batches, val_batches) -> (states, metrics)`
  with every argument stacked along a leading seed axis (each seed its own data order too). One compile
  serves all seeds; the results equal S separate runs of `make_step` up to float rounding.

  shardings: optional (state sharding, batch sharding) of a mesh with a ``seed`` axis
    (`parallel.make_layout(seeds=...)`): the seeds are spread over its devices, each seed's batch over its
    ``data`` axis."""
  fn = jax.vmap(lambda state, tb, vb: search_step(problem, hp, state, tb, vb, update_alphas))
  return parallel.jit_step(fn, shardings, batches=2, donate=donate,
                           compiler_options=xla_setup.cpu_compiler_options_without_ynn_reduce())
