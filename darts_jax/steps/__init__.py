"""The search step's backends, chosen by name: one formula (`formula`), three ways to run it.

* ``fused`` (`fused`): the whole step as one jitted program; GPUs, TPUs, meshes, several seeds, SDARTS.
* ``per_pass`` (`per_pass`): one compiled network-gradient program called for every pass, plus small
  programs between the passes: less compile time and memory than fused.
* ``edgewise`` (`edgewise`): the per-pass step with the network's gradients as a chain of one small program
  per distinct edge (DARTS space): the fastest to compile and run on a CPU.

All three compute `formula.search_step`; they agree up to float rounding (tests/test_methods.py,
tests/test_supernet.py). The search loop picks one with ``config.step_backend`` (`search.step_backend`).
"""
from __future__ import annotations

from typing import Optional

from darts_jax.bilevel import SearchHParams, SearchProblem
from darts_jax.steps import edgewise, fused, per_pass
from darts_jax.steps.fused import make_multi_seed_step, search_step
from darts_jax.steps.formula import NetworkGradients, hypergradient

__all__ = ["BACKENDS", "NetworkGradients", "hypergradient", "make_multi_seed_step", "make_search_step",
           "search_step", "supports"]
BACKENDS = ("fused", "per_pass", "edgewise")


def make_search_step(problem: SearchProblem, hp: SearchHParams, update_alphas: bool = True, donate: bool = True,
                     backend: str = "fused", gradients: Optional[NetworkGradients] = None, shardings=None):
  """The step `(state, train_batch, val_batch) -> (state, metrics)` of `backend`, state donated.

  gradients: the edgewise backend's `edgewise.gradients(cfg)` (required there); for per_pass, other
    `NetworkGradients` than the jitted autodiff ones. shardings: the fused step's (state, batch) shardings of
    a mesh (`parallel.Layout.step_shardings`); the other backends run on one device."""
  if backend not in BACKENDS:
    raise ValueError(f"unknown step backend {backend!r}; choose one of {', '.join(BACKENDS)}")
  if backend == "fused":
    return fused.make_step(problem, hp, update_alphas, donate, shardings)
  if shardings is not None:
    raise ValueError(f"step backend {backend!r} runs on one device; use 'fused' on a mesh of several devices")
  if backend == "edgewise":
    if gradients is None:
      raise ValueError("the edgewise step needs the supernet's edge programs: gradients=edgewise.gradients(cfg)")
    return edgewise.make_step(problem, hp, gradients, update_alphas, donate)
  return per_pass.PerPassStep(problem, hp, update_alphas, donate, gradients)


def supports(backend: str, problem: SearchProblem) -> bool:
  """Whether `backend` can run `problem` (the pass-by-pass backends cannot run SDARTS' perturbed weight pass)."""
  return backend == "fused" or per_pass.supports(problem)
