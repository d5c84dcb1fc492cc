"""The bilevel search step, written once: the hypergradients, the unrolled weight step and the step's order.

Every step backend (`darts_jax.steps`) runs `search_step` below; what differs is how the network's gradients
are computed and how the pieces are compiled:

* `NetworkGradients` is the interface to the network: ``grads(params, op_weights, batch, wrt_params=True) ->
  (loss, accuracy, ∂params or None, ∂op_weights)`` of the cross-entropy, and ``grads_and_hvp(params,
  op_weights, batch)``, the same (∂op_weights may be None) plus ``hvp(v) = ∇_{op_weights} ⟨∇_params L, v⟩``.
  `autodiff` builds it from a `bilevel.SearchProblem` by `jax.grad`; the edge chain (`steps.edgewise`)
  builds it program by program.
* `Pieces` are the small functions between network passes (the unrolled step, the finite-difference points,
  the α and weight updates): traced inline in the fused step, each jitted once in the per-pass steps.

Hypergradients (``hp.hypergradient``), with op weights a = arch_weights(α) and v = ∇w′ L_val(w′, a):

* ``first_order``: ∇α L_val(w, a).
* ``second_order_exact``: the gradient of L_val(w′(α), α) through the unrolled step
  w′ = w − η(μ·m + ∇w L_train(w, a) + λw), i.e. ∇α L_val(w′, a) − η·∇²_{α,w} L_train(w, a)·v, the second
  term by one Hessian-vector product.
* ``second_order_fd``: the reference's finite-difference estimate of that term,
  (∇α L_train(w⁺, a) − ∇α L_train(w⁻, a)) / (2ε), w± = w ± εv, ε = fd_r/‖v‖.

Gradients with respect to the op weights are carried back to α by the chain rule through
`SearchProblem.arch_weights` (`arch_gradient`), with the method's regularizer added.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import optax

from darts_jax import bilevel
from darts_jax.bilevel import Params, SearchHParams, SearchProblem, SearchState


class NetworkGradients(NamedTuple):
  """The network's side of a step (see the module docstring)."""
  grads: Callable[..., Tuple[jax.Array, jax.Array, Optional[Params], Params]]
  grads_and_hvp: Callable[..., Tuple[jax.Array, jax.Array, Params, Optional[Params], Callable[[Params], Params]]]


def forward(problem: SearchProblem, params, op_weights, batch):
  """(cross-entropy, accuracy) of `problem.apply` on a batch."""
  logits = problem.apply(params, batch["image"], op_weights)
  return bilevel.cross_entropy(logits, batch["label"]), jnp.mean(jnp.argmax(logits, -1) == batch["label"])


def autodiff(problem: SearchProblem) -> NetworkGradients:
  """`NetworkGradients` of `problem.apply` by automatic differentiation, traceable (the fused step traces it
  into its program). wrt_params=False differentiates with respect to the op weights only. `grads_and_hvp`
  linearizes w ↦ ∇_params L(params, w) once: its value is ∂params, its transpose applied to v the
  Hessian-vector product (∂op_weights comes back None: the exact second order does not use it)."""
  def grads(params, op_weights, batch, wrt_params=True):
    if not wrt_params:
      (loss, acc), g_w = jax.value_and_grad(lambda w: forward(problem, params, w, batch), has_aux=True)(op_weights)
      return loss, acc, None, g_w
    (loss, acc), (g_p, g_w) = jax.value_and_grad(lambda p, w: forward(problem, p, w, batch), argnums=(0, 1),
                                                 has_aux=True)(params, op_weights)
    return loss, acc, g_p, g_w

  def grads_and_hvp(params, op_weights, batch):
    def params_grad(w):
      (loss, acc), g_p = jax.value_and_grad(lambda p: forward(problem, p, w, batch), has_aux=True)(params)
      return g_p, (loss, acc)
    g_p, pullback, (loss, acc) = jax.vjp(params_grad, op_weights, has_aux=True)
    return loss, acc, g_p, None, lambda v: pullback(v)[0]

  return NetworkGradients(grads, grads_and_hvp)


def hessian_vector_product(problem: SearchProblem) -> Callable[..., Params]:
  """``(params, op_weights, v, batch) -> ∇_{op_weights} ⟨∇_params L, v⟩``, reverse over reverse through the
  loss, as a function of its own (the per-pass step compiles it as one program)."""
  def hvp(params, op_weights, v, batch):
    inner = lambda w: optax.tree_utils.tree_vdot(jax.grad(lambda p: forward(problem, p, w, batch)[0])(params), v)
    return jax.grad(inner)(op_weights)
  return hvp


def step_keys(rng):
  """(next rng, α pass's validation key, its training key, the weight pass's key)."""
  rng, k_arch, k_w = jax.random.split(rng, 3)
  k_val, k_train = jax.random.split(k_arch)
  return rng, k_val, k_train, k_w


def learning_rate(hp: SearchHParams):
  return bilevel.cosine_lr(hp.w_lr, hp.w_lr_min, hp.epochs, hp.steps_per_epoch)


def unrolled_weights(hp: SearchHParams, params, w_opt, g_params, step):
  """w′ = w − η(μ·m + ∇w L_train + λw), the reference's one-step look-ahead (no clipping), from ∇w L_train."""
  eta = learning_rate(hp)(step)
  return jax.tree.map(lambda w, gw, mw: w - eta * (hp.w_momentum * mw + gw + hp.w_weight_decay * w),
                      params, g_params, bilevel.momentum_buffer(w_opt))


def fd_points(hp: SearchHParams, params, v):
  """(w + εv, w − εv, ε) with ε = fd_r/‖v‖."""
  r = hp.fd_r / optax.global_norm(v)
  shifted = lambda sign: jax.tree.map(lambda w, d: w + sign * r * d, params, v)
  return shifted(1.0), shifted(-1.0), r


def fd_difference(g_plus, g_minus, r):
  return jax.tree.map(lambda p, m: (p - m) / (2 * r), g_plus, g_minus)


def arch_gradient(problem: SearchProblem, hp: SearchHParams, alphas, k_val, k_train, step, g_val,
                  g_second=None):
  """∇α of the α objective from its op-weight gradients: ∂L_val/∂a (at w′ for the second orders) and the
  second-order term's op-weight factor (None for first order), through `arch_weights` and the regularizer."""
  g_val, g_second = jax.lax.stop_gradient((g_val, g_second))

  def surrogate(a):
    w = problem.arch_weights(a, k_val, step)
    out = optax.tree_utils.tree_vdot(g_val, w)
    if problem.regularizer is not None:
      out = out + problem.regularizer(a, w, step)
    if g_second is not None:
      out = out - learning_rate(hp)(step) * optax.tree_utils.tree_vdot(
          g_second, problem.arch_weights(a, k_train, step))
    return out

  return jax.grad(surrogate)(alphas)


class Pieces(NamedTuple):
  """The functions between network passes; `pieces` builds them, inline or jitted."""
  arch_pass_weights: Callable   # (alphas, rng, step) -> (op weights of the val pass, of the unrolled train pass)
  unroll: Callable              # (params, w_opt, ∂params, step) -> w′
  fd_points: Callable           # (params, v) -> (w⁺, w⁻, ε)
  fd_difference: Callable       # (g⁺, g⁻, ε) -> the finite difference
  alpha_update: Callable        # (alphas, a_opt, rng, step, g_val, g_second) -> (alphas, a_opt, ‖∇α‖)
  train_weights: Callable       # (alphas, rng, step, params, train_batch) -> op weights of the weight pass
  weight_update: Callable       # (state with the step's α, ∂params, loss, acc) -> (state, metrics)


def pieces(problem: SearchProblem, hp: SearchHParams, wrap: Callable = lambda f, **kw: f) -> Pieces:
  """The step's `Pieces`; ``wrap(fn, donate_argnums=...)`` compiles each (`jax.jit`) or leaves it inline."""

  def arch_pass_weights(alphas, rng, step):
    _, k_val, k_train, _ = step_keys(rng)
    return problem.arch_weights(alphas, k_val, step), problem.arch_weights(alphas, k_train, step)

  def alpha_update(alphas, a_opt, rng, step, g_val, g_second):
    _, k_val, k_train, _ = step_keys(rng)
    g_a = arch_gradient(problem, hp, alphas, k_val, k_train, step, g_val, g_second)
    updates, a_opt = bilevel.alpha_optimizer(hp).update(g_a, a_opt, alphas)
    return optax.apply_updates(alphas, updates), a_opt, optax.global_norm(g_a)

  def train_weights(alphas, rng, step, params, train_batch):
    *_, k_w = step_keys(rng)
    if problem.weight_arch_weights is None:
      return jax.lax.stop_gradient(problem.arch_weights(alphas, k_w, step))
    return jax.lax.stop_gradient(problem.weight_arch_weights(
        alphas, k_w, step, lambda w: forward(problem, params, w, train_batch)[0]))

  def weight_update(state: SearchState, g_params, loss, acc):
    updates, w_opt = bilevel.weight_optimizer(hp).update(g_params, state.w_opt, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(train_loss=loss, train_acc=acc, weight_grad_norm=optax.global_norm(g_params),
                   lr=learning_rate(hp)(state.step))
    metrics["finite"] = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(params)) & (
        jnp.isfinite(optax.global_norm(state.alphas)))
    return state._replace(params=params, w_opt=w_opt, step=state.step + 1, rng=step_keys(state.rng)[0]), metrics

  return Pieces(wrap(arch_pass_weights), wrap(lambda *a: unrolled_weights(hp, *a)),
                wrap(lambda *a: fd_points(hp, *a)), wrap(fd_difference), wrap(alpha_update), wrap(train_weights),
                wrap(weight_update, donate_argnums=(0,)))


def arch_pass(hp: SearchHParams, net: NetworkGradients, fns: Pieces, params, w_opt, step, w_val, w_train,
              train_batch, val_batch):
  """The α pass: (val loss, val accuracy, ∂L_val/∂op weights, the second-order term's op-weight factor or
  None), by ``hp.hypergradient``."""
  if hp.hypergradient == "first_order":
    val_loss, val_acc, _, g_val = net.grads(params, w_val, val_batch, wrt_params=False)
    return val_loss, val_acc, g_val, None
  exact = hp.hypergradient == "second_order_exact"
  if exact:
    _, _, g_p, _, hvp = net.grads_and_hvp(params, w_train, train_batch)
  else:
    _, _, g_p, _ = net.grads(params, w_train, train_batch)
  w2 = fns.unroll(params, w_opt, g_p, step)
  val_loss, val_acc, v, g_val = net.grads(w2, w_val, val_batch)
  if exact:
    return val_loss, val_acc, g_val, hvp(v)
  w_plus, w_minus, r = fns.fd_points(params, v)
  g_plus = net.grads(w_plus, w_train, train_batch, wrt_params=False)[3]
  g_minus = net.grads(w_minus, w_train, train_batch, wrt_params=False)[3]
  return val_loss, val_acc, g_val, fns.fd_difference(g_plus, g_minus, r)


def search_step(hp: SearchHParams, net: NetworkGradients, fns: Pieces, state: SearchState, train_batch, val_batch,
                update_alphas: bool = True) -> Tuple[SearchState, Any]:
  """One search iteration in the reference's order: the α step on `val_batch`, then the weight step on
  `train_batch` with the updated α. Pure when `net` and `fns` are (the fused step jits it whole)."""
  metrics = {}
  alphas, a_opt = state.alphas, state.a_opt
  if update_alphas:
    w_val, w_train = fns.arch_pass_weights(alphas, state.rng, state.step)
    val_loss, val_acc, g_val, g_second = arch_pass(hp, net, fns, state.params, state.w_opt, state.step, w_val,
                                                   w_train, train_batch, val_batch)
    alphas, a_opt, g_norm = fns.alpha_update(alphas, a_opt, state.rng, state.step, g_val, g_second)
    metrics.update(val_loss=val_loss, val_acc=val_acc, alpha_grad_norm=g_norm)
  w = fns.train_weights(alphas, state.rng, state.step, state.params, train_batch)
  loss, acc, g_p, _ = net.grads(state.params, w, train_batch)
  state, more = fns.weight_update(state._replace(alphas=alphas, a_opt=a_opt), g_p, loss, acc)
  metrics.update(more)
  return state, metrics


def hypergradient(problem: SearchProblem, hp: SearchHParams, state: SearchState, train_batch,
                  val_batch) -> Tuple[Params, Tuple[jax.Array, jax.Array]]:
  """∇α of the α objective under ``hp.hypergradient`` at `state` (its weights, α, weight optimizer, step and
  rng; α's optimizer is not read), by autodiff: (gradient, (val loss, val accuracy)); the rng splits into the
  validation and training keys. Traceable (the reference checks jit it)."""
  params, alphas, w_opt, step = state.params, state.alphas, state.w_opt, state.step
  k_val, k_train = jax.random.split(state.rng)
  w_val, w_train = problem.arch_weights(alphas, k_val, step), problem.arch_weights(alphas, k_train, step)
  val_loss, val_acc, g_val, g_second = arch_pass(hp, autodiff(problem), pieces(problem, hp), params, w_opt, step,
                                                 w_val, w_train, train_batch, val_batch)
  return arch_gradient(problem, hp, alphas, k_val, k_train, step, g_val, g_second), (val_loss, val_acc)
