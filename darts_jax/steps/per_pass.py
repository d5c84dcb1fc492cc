"""The ``per_pass`` step backend: one compiled network-gradient program called for every pass of a step.

The fused step holds every forward+backward pass of the supernet in one program (two for first order, five
for finite differences), so XLA compiles the network that many times and may keep several passes' activations
alive at once. `PerPassStep` runs `formula.search_step` from Python instead: the network's loss and its
gradients with respect to the weights and the op weights are one jitted program reused by every pass (the
passes that need only the op weights' gradient reuse it too rather than compiling a second one), the exact
second order's Hessian-vector term is one more, and `formula.Pieces` are small jitted programs. Less
compile time and peak memory than the fused step, the same numbers up to float rounding. Given other
`NetworkGradients` (`steps.edgewise.gradients`: one program per distinct edge, chained) it runs those.
"""
from __future__ import annotations

import functools
from typing import Optional

import jax

from darts_jax.bilevel import SearchHParams, SearchProblem, SearchState
from darts_jax.steps import formula


def supports(problem: SearchProblem) -> bool:
  """Whether a step run pass by pass can run this problem: its weight pass takes its op weights from
  `arch_weights` (SDARTS' perturbed weight pass needs the network inside the perturbation: fused only)."""
  return problem.weight_arch_weights is None


def jitted_gradients(problem: SearchProblem) -> formula.NetworkGradients:
  """`formula.autodiff`'s gradients as one jitted program for every pass, and one Hessian-vector
  program."""
  full = jax.jit(formula.autodiff(problem).grads)
  hvp = jax.jit(formula.hessian_vector_product(problem))

  def grads(params, op_weights, batch, wrt_params=True):
    del wrt_params   # one program serves every pass; ∂params is computed anyway
    return full(params, op_weights, batch)

  def grads_and_hvp(params, op_weights, batch):
    return (*grads(params, op_weights, batch), functools.partial(hvp, params, op_weights, batch=batch))

  return formula.NetworkGradients(grads, grads_and_hvp)


class PerPassStep:
  """`(state, train_batch, val_batch) -> (state, metrics)`, pass by pass (see the module docstring); the
  weight update donates the old weights and their optimizer state."""

  def __init__(self, problem: SearchProblem, hp: SearchHParams, update_alphas: bool = True, donate: bool = True,
               gradients: Optional[formula.NetworkGradients] = None, name: str = "per_pass"):
    if not supports(problem):
      raise ValueError(f"step_backend={name!r} cannot run a method that perturbs the weight pass's α (SDARTS); "
                       "use the fused step")
    self.hp, self.update_alphas = hp, update_alphas
    self.net = gradients if gradients is not None else jitted_gradients(problem)
    wrap = lambda f, donate_argnums=(): jax.jit(f, donate_argnums=donate_argnums if donate else ())
    self.fns = formula.pieces(problem, hp, wrap)

  def __call__(self, state: SearchState, train_batch, val_batch):
    return formula.search_step(self.hp, self.net, self.fns, state, train_batch, val_batch, self.update_alphas)
