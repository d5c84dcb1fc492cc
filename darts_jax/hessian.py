"""The curvature of the validation loss in α (RobustDARTS, Zela et al., ICLR 2020) and the early stop it drives.

`alpha_objective` is what the eigenvalue is of: the mean cross-entropy of the supernet on the given
validation batches, with the method's op weights of α (`SearchProblem.arch_weights` at the state's rng and
step, batch-statistics BatchNorm as in the search), plus α's L2 term ``a_weight_decay/2·|α|²`` (the term whose
gradient the α optimizer adds, which RobustDARTS' `analyze.py` includes in its Hessian; it takes one
validation batch, here any number). `largest_eigenvalue` is the largest eigenvalue of its Hessian in α
(RobustDARTS' ``max(eigvals(H))``), by power iteration on exact Hessian-vector products (`make_hvp`, reverse
over reverse) without forming the Hessian, shifted when the dominant one is negative; `hessian_matrix` forms
the Hessian from the same products, for checks on small supernets.

`EarlyStop` is DARTS-ES' rule as released (automl/RobustDARTS ``src/utils.py`` `EVLocalAvg` and its calls in
``src/search/train_search.py``): local averages of the eigenvalues over a window, and a stop when the current
local average exceeds the one `delta` evaluations earlier by `factor`; the architecture kept is the one of that
earlier local average's epoch.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree
import numpy as np

from darts_jax import bilevel

Params = Dict[str, Any]


def alpha_objective(problem: bilevel.SearchProblem, hp: bilevel.SearchHParams, state: bilevel.SearchState,
                    batches: Sequence[Dict[str, Any]]) -> Callable[[Params], jax.Array]:
  """α ↦ mean validation cross-entropy over `batches` at `state`'s weights, plus ``hp.a_weight_decay/2·|α|²``."""
  def objective(alphas):
    losses = [bilevel.cross_entropy(problem.apply(state.params, b["image"],
                                                  problem.arch_weights(alphas, state.rng, state.step)), b["label"])
              for b in batches]
    l2 = sum(jnp.sum(a.astype(jnp.float32) ** 2) for a in jax.tree.leaves(alphas))
    return jnp.mean(jnp.stack(losses)) + 0.5 * hp.a_weight_decay * l2
  return objective


def hvp(objective: Callable[[Params], jax.Array], alphas: Params, v: Params) -> Params:
  """The exact Hessian-vector product ∇²f(α)·v, reverse over reverse (the supernet's CPU depthwise kernels
  have custom VJPs, which forward mode cannot differentiate)."""
  return jax.grad(lambda a: _dot(jax.grad(objective)(a), v))(alphas)


def _dot(a: Params, b: Params) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@dataclasses.dataclass(frozen=True)
class Dominant:
  """The dominant eigenvalue, its unit eigenvector (nested like α), the iterations run and whether the
  relative change of the eigenvalue fell below the tolerance."""
  value: float
  vector: Params
  iterations: int
  converged: bool


def make_hvp(objective: Callable[[Params], jax.Array]) -> Callable[[Params, Params], Params]:
  """The jitted ``(α, v) -> ∇²f(α)·v`` of `objective` (compiled once, shared by the calls below)."""
  return jax.jit(lambda a, v: hvp(objective, a, v))


def make_state_hvp(problem: bilevel.SearchProblem, hp: bilevel.SearchHParams):
  """The jitted ``(α, v, state, batches) -> ∇²f(α)·v`` of `alpha_objective`, compiled once for a whole run
  (the state and batches are arguments, not constants)."""
  return jax.jit(lambda a, v, state, batches: hvp(alpha_objective(problem, hp, state, batches), a, v))


def dominant_eigenvalue(hvp_fn: Callable[[Params, Params], Params], alphas: Params, key: jax.Array,
                        max_iters: int = 100, tol: float = 1e-5, shift: float = 0.0) -> Dominant:
  """The largest-magnitude eigenvalue of ∇²f(α) - shift·I by power iteration from a random start: v ← Hv / |Hv|,
  the Rayleigh quotient vᵀHv as the estimate, stopping when it changes by less than `tol` (relative).
  `hvp_fn`: `make_hvp`'s function. The returned value has the shift added back."""
  leaves, treedef = jax.tree.flatten(alphas)
  keys = jax.random.split(key, len(leaves))
  v = jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape, jnp.float32) for k, x in zip(keys, leaves)])
  norm = lambda t: jnp.sqrt(_dot(t, t))
  n0 = norm(v)
  v = jax.tree.map(lambda x: x / n0, v)
  value, converged, it = None, False, 0
  for it in range(1, max_iters + 1):
    hv = hvp_fn(alphas, v)
    if shift:
      hv = jax.tree.map(lambda h, x: h - shift * x, hv, v)
    new_value = float(_dot(v, hv))
    n = float(norm(hv))
    if n == 0.0:
      return Dominant(shift, v, it, True)
    v = jax.tree.map(lambda x: x / n, hv)
    if value is not None and abs(new_value - value) <= tol * max(abs(new_value), 1e-12):
      value, converged = new_value, True
      break
    value = new_value
  return Dominant(float(value) + shift, v, it, converged)


def largest_eigenvalue(hvp_fn: Callable[[Params, Params], Params], alphas: Params, key: jax.Array,
                       max_iters: int = 100, tol: float = 1e-5) -> Dominant:
  """The largest (algebraic) eigenvalue of ∇²f(α), what RobustDARTS reports (``max(eigvals(H))``): the
  dominant one, or, when that is negative, the dominant one of H - λ_dominant·I plus λ_dominant."""
  first = dominant_eigenvalue(hvp_fn, alphas, key, max_iters, tol)
  if first.value >= 0:
    return first
  second = dominant_eigenvalue(hvp_fn, alphas, jax.random.fold_in(key, 1), max_iters, tol, shift=first.value)
  return dataclasses.replace(second, iterations=first.iterations + second.iterations,
                             converged=first.converged and second.converged)


def hessian_matrix(hvp_fn: Callable[[Params, Params], Params], alphas: Params) -> np.ndarray:
  """∇²f(α) as a dense (n, n) matrix over α's leaves flattened in order, one `hvp_fn` call per column (small α
  only; for checks)."""
  flat, unravel = ravel_pytree(alphas)
  cols = [ravel_pytree(hvp_fn(alphas, unravel(e)))[0] for e in jnp.eye(flat.size, dtype=flat.dtype)]
  return np.asarray(jnp.stack(cols, axis=1))


@dataclasses.dataclass
class EarlyStop:
  """DARTS-ES: feed `update(epoch, eigenvalue, architecture)` at each measured epoch (every `ev_freq` epochs
  and the last), then `check(epoch)` before the last; `stop_epoch` / `stop_arch` are set when it fires.

  window: evaluations per local average (5); ev_freq: epochs between evaluations (the released default 2);
  factor: the ratio that stops (1.3); start_epoch: no stop before the earlier local average's epoch reaches
  it (10); delta: how many local averages back the comparison looks (4); total_epochs: the run's epochs."""
  total_epochs: int
  window: int = 5
  ev_freq: int = 2
  factor: float = 1.3
  start_epoch: int = 10
  delta: int = 4
  eigenvalues: List[float] = dataclasses.field(default_factory=list)
  local_averages: List[float] = dataclasses.field(default_factory=list)
  la_epochs: Dict[int, int] = dataclasses.field(default_factory=dict)
  archs: Dict[int, Any] = dataclasses.field(default_factory=dict)
  stop_epoch: Optional[int] = None
  stop_arch: Any = None
  _start: int = 0

  def update(self, epoch: int, eigenvalue: float, arch: Any = None) -> None:
    self.eigenvalues.append(float(eigenvalue))
    self.archs[epoch] = arch
    half_up, half_down = -(-self.window // 2), self.window // 2
    last = epoch == self.total_epochs - 1
    if len(self.eigenvalues) >= half_up and not last:
      if len(self.eigenvalues) < self.window:
        self.local_averages.append(float(np.mean(self.eigenvalues)))
      else:
        self.local_averages.append(float(np.mean(self.eigenvalues[self._start:self._start + self.window])))
        self._start += 1
      self.la_epochs[epoch] = epoch - self.ev_freq * half_down
    elif len(self.eigenvalues) < half_up:
      self.la_epochs[epoch] = -1
    elif last:   # the windows that end past the run, shrinking: window, window - 1, ..., ceil(window/2)
      end = self._start + self.window
      for _ in range(half_up):
        self.local_averages.append(float(np.mean(self.eigenvalues[self._start:end + 1])))
        self._start += 1

  def check(self, epoch: int) -> bool:
    """Whether to stop at `epoch` (True once it has fired)."""
    if self.stop_epoch is not None:
      return True
    earlier = self.la_epochs.get(epoch, -1) - self.ev_freq * self.delta
    if earlier < self.start_epoch or len(self.local_averages) <= self.delta:
      return False
    if self.local_averages[-1] / self.local_averages[-1 - self.delta] > self.factor:
      self.stop_epoch, self.stop_arch = earlier, self.archs.get(earlier)
      return True
    return False


def darts_es(eigenvalues: Sequence[Tuple[int, float]], total_epochs: int, **rule) -> Optional[Tuple[int, int]]:
  """(the epoch at which DARTS-ES stops, the epoch whose architecture it keeps) for a sequence of
  (epoch, eigenvalue), or None if it never stops; `rule`: `EarlyStop`'s fields."""
  es = EarlyStop(total_epochs=total_epochs, **rule)
  for epoch, ev in eigenvalues:
    es.update(epoch, ev, epoch)
    if epoch != total_epochs - 1 and es.check(epoch):
      return epoch, es.stop_epoch
  return None
