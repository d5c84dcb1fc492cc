"""Bilevel search steps: α on the validation batch, then the weights on the training batch.

Everything is a pure function over an explicit `SearchState`; `make_search_step` returns one jitted step
that donates the state and never leaves the device (or, with ``compile_once``, the same step as one compiled
network-gradient program called once per pass: less compile time and memory). Hypergradient modes:

* ``first_order``: ∇α L_val(w, α).
* ``second_order_exact``: the exact gradient of L_val(w′(α), α) through the unrolled weight step
  w′ = w − η(μ·m + ∇w L_train(w, α) + λw), by automatic differentiation.
* ``second_order_fd``: the reference's finite-difference estimate
  ∇α L_val(w′, α) − η·(∇α L_train(w⁺, α) − ∇α L_train(w⁻, α)) / (2ε), w± = w ± εv, v = ∇w′ L_val(w′, α),
  ε = 0.01/‖v‖.

How α becomes op weights, and what a method adds to the α objective, come from a `SearchProblem`, so the
search variants of `darts_jax.methods` share these steps.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import optax

from darts_jax import parallel

Params = Dict[str, Any]
HYPERGRADIENTS = ("first_order", "second_order_exact", "second_order_fd")


@dataclasses.dataclass(frozen=True)
class SearchHParams:
  """Optimization hyperparameters; defaults are the DARTS paper's CIFAR-10 search."""
  epochs: int = 50
  steps_per_epoch: int = 1
  w_lr: float = 0.025
  w_lr_min: float = 0.001
  w_momentum: float = 0.9
  w_nesterov: bool = False
  w_weight_decay: float = 3e-4
  grad_clip: float = 5.0
  a_lr: float = 3e-4
  a_beta1: float = 0.5
  a_beta2: float = 0.999
  a_weight_decay: float = 1e-3
  hypergradient: str = "first_order"
  fd_r: float = 0.01

  def __post_init__(self):
    if self.hypergradient not in HYPERGRADIENTS:
      raise ValueError(f"unknown hypergradient {self.hypergradient!r}; choose one of {', '.join(HYPERGRADIENTS)}")
    if self.epochs < 1 or self.steps_per_epoch < 1:
      raise ValueError(f"epochs={self.epochs} and steps_per_epoch={self.steps_per_epoch} must be positive")


# Set by the search config (epochs, steps_per_epoch) rather than overridden through `config.hparams`.
_SCHEDULE_FIELDS = ("epochs", "steps_per_epoch")


def hparams_config(**overrides) -> ml_collections.ConfigDict:
  """A config block with one unset entry per `SearchHParams` field, so `--config.hparams.a_lr=3e-3` parses.

  Unset entries (None) keep the method's default; `overrides` sets some (e.g. ``hypergradient="..."``).
  """
  c = ml_collections.ConfigDict()
  for f in dataclasses.fields(SearchHParams):
    if f.name not in _SCHEDULE_FIELDS:
      c[f.name] = ml_collections.config_dict.placeholder(type(f.default))
  for k, v in overrides.items():
    if k not in c:
      raise ValueError(f"unknown search hyperparameter {k!r}; choose from {', '.join(sorted(c))}")
    c[k] = v
  return c


def hparams_overrides(block) -> Dict[str, Any]:
  """The set entries of a `hparams_config` block (or of any mapping), for `Method.search_hparams(**...)`."""
  return {k: v for k, v in dict(block or {}).items() if v is not None}


def cosine_lr(lr_max: float, lr_min: float, epochs: int, steps_per_epoch: int) -> optax.Schedule:
  """The reference's per-epoch CosineAnnealingLR: constant within an epoch, lr_max in epoch 0."""
  def schedule(count):
    epoch = jnp.minimum(count // steps_per_epoch, epochs)
    return lr_min + 0.5 * (lr_max - lr_min) * (1 + jnp.cos(jnp.pi * epoch / epochs))
  return schedule


def weight_optimizer(hp: SearchHParams) -> optax.GradientTransformation:
  """SGD with momentum (Nesterov's with `w_nesterov`) and L2 weight decay after global-norm clipping, as
  `torch.optim.SGD` does it. The unrolled step of the second orders stays DARTS' plain-momentum formula, as in
  the released code (AutoDL's DARTS-V2 included)."""
  lr = cosine_lr(hp.w_lr, hp.w_lr_min, hp.epochs, hp.steps_per_epoch)
  return optax.chain(optax.clip_by_global_norm(hp.grad_clip), optax.add_decayed_weights(hp.w_weight_decay),
                     optax.trace(decay=hp.w_momentum, nesterov=hp.w_nesterov), optax.scale_by_learning_rate(lr))


def alpha_optimizer(hp: SearchHParams) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient (`torch.optim.Adam(weight_decay=...)`)."""
  return optax.chain(optax.add_decayed_weights(hp.a_weight_decay),
                     optax.scale_by_adam(b1=hp.a_beta1, b2=hp.a_beta2, eps=1e-8),
                     optax.scale(-hp.a_lr))


def momentum_buffer(w_opt_state) -> Params:
  """SGD's momentum buffer m inside `weight_optimizer`'s state."""
  return w_opt_state[2].trace


class SearchState(NamedTuple):
  params: Params        # supernet weights w
  alphas: Params        # architecture parameters α (kept apart from w)
  w_opt: Any
  a_opt: Any
  step: jax.Array
  rng: jax.Array


class SearchProblem(NamedTuple):
  """What the steps need to know about the network and the search method.

  apply: (params, images, arch_weights) -> logits.
  arch_weights: (alphas, rng, step) -> the op weights `apply` takes (softmax(α) for DARTS).
  regularizer: (alphas, arch_weights, step) -> a scalar added to the α objective (0 for DARTS).
  weight_arch_weights: optional (alphas, rng, step, loss_fn) -> the op weights of the *weight* step only,
    where loss_fn(arch_weights) is the training loss at the current weights on the training batch (e.g.
    SDARTS' perturbed α). They are constants to the weight gradient. None: the weight step uses
    `arch_weights`, like the α step.
  grads: optional (params, arch_weights, batch, wrt_params=True) -> (loss, accuracy, ∂params, ∂arch_weights)
    of `apply`'s cross-entropy, computed otherwise than as one compiled program (`edgewise.cellwise_grads`:
    one program per distinct edge shape, chained); `SharedPassStep` calls it for every pass, with
    wrt_params=False (∂params None, and not computed) where only ∂arch_weights is used. None: jit of the
    gradient.
  grads_and_hvp: optional (params, arch_weights, batch) -> (loss, accuracy, ∂params, ∂arch_weights, hvp) with
    hvp(v) = ∇_{arch_weights} ⟨∇params L, v⟩ at the same point: the training pass of `second_order_exact` in
    `SharedPassStep` and its second-order term, computed otherwise than as compiled programs of the whole
    network (`edgewise.cellwise_grads_and_hvp`). None: `grads`, and jit of reverse-over-reverse
    differentiation of `apply`.
  """
  apply: Callable[..., jax.Array]
  arch_weights: Callable[..., Params]
  regularizer: Optional[Callable[..., jax.Array]] = None
  weight_arch_weights: Optional[Callable[..., Params]] = None
  grads: Optional[Callable[..., Any]] = None
  grads_and_hvp: Optional[Callable[..., Any]] = None


def cross_entropy(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def _forward(problem: SearchProblem, params, weights, batch):
  logits = problem.apply(params, batch["image"], weights)
  return cross_entropy(logits, batch["label"]), jnp.mean(jnp.argmax(logits, -1) == batch["label"])


def _loss(problem: SearchProblem, params, alphas, batch, rng, step, with_reg: bool):
  weights = problem.arch_weights(alphas, rng, step)
  loss, acc = _forward(problem, params, weights, batch)
  total = loss
  if with_reg and problem.regularizer is not None:
    total = total + problem.regularizer(alphas, weights, step)
  return total, (loss, acc)


def _weight_step_loss(problem: SearchProblem, params, alphas, batch, rng, step):
  """`params -> (train loss, (loss, accuracy))` of the weight step."""
  if problem.weight_arch_weights is None:
    return lambda p: _loss(problem, p, alphas, batch, rng, step, False)
  weights = jax.lax.stop_gradient(problem.weight_arch_weights(
      alphas, rng, step, lambda w: _forward(problem, params, w, batch)[0]))

  def fn(p):
    loss, acc = _forward(problem, p, weights, batch)
    return loss, (loss, acc)
  return fn


def unrolled_weights(problem, hp: SearchHParams, params, alphas, w_opt, train_batch, rng, step, eta):
  """w′ = w − η(μ·m + ∇w L_train(w, α) + λw), the reference's one-step look-ahead (no clipping)."""
  g = jax.grad(lambda p: _loss(problem, p, alphas, train_batch, rng, step, False)[0])(params)
  m = momentum_buffer(w_opt)
  return jax.tree.map(lambda w, gw, mw: w - eta * (hp.w_momentum * mw + gw + hp.w_weight_decay * w),
                      params, g, m)


def hypergradient(problem: SearchProblem, hp: SearchHParams, params, alphas, w_opt, train_batch, val_batch,
                  rng, step) -> Tuple[Params, Tuple[jax.Array, jax.Array]]:
  """∇α of the α objective under `hp.hypergradient`; returns (gradient, (val loss, val accuracy))."""
  eta = cosine_lr(hp.w_lr, hp.w_lr_min, hp.epochs, hp.steps_per_epoch)(step)
  k_val, k_train = jax.random.split(rng)
  if hp.hypergradient == "first_order":
    (_, aux), g = jax.value_and_grad(
        lambda a: _loss(problem, params, a, val_batch, k_val, step, True), has_aux=True)(alphas)
    return g, aux
  if hp.hypergradient == "second_order_exact":
    def objective(a):
      w2 = unrolled_weights(problem, hp, params, a, w_opt, train_batch, k_train, step, eta)
      return _loss(problem, w2, a, val_batch, k_val, step, True)
    (_, aux), g = jax.value_and_grad(objective, has_aux=True)(alphas)
    return g, aux
  # second_order_fd
  w2 = unrolled_weights(problem, hp, params, alphas, w_opt, train_batch, k_train, step, eta)
  (gw, ga), aux = jax.grad(
      lambda w, a: _loss(problem, w, a, val_batch, k_val, step, True), argnums=(0, 1), has_aux=True)(w2, alphas)
  norm = optax.global_norm(gw)
  r = hp.fd_r / norm
  grad_a = jax.grad(lambda w, a: _loss(problem, w, a, train_batch, k_train, step, False)[0], argnums=1)
  g_plus = grad_a(jax.tree.map(lambda w, v: w + r * v, params, gw), alphas)
  g_minus = grad_a(jax.tree.map(lambda w, v: w - r * v, params, gw), alphas)
  g = jax.tree.map(lambda a, p, m: a - eta * (p - m) / (2 * r), ga, g_plus, g_minus)
  return g, aux


def init_state(params: Params, alphas: Params, hp: SearchHParams, rng) -> SearchState:
  return SearchState(params=params, alphas=alphas, w_opt=weight_optimizer(hp).init(params),
                     a_opt=alpha_optimizer(hp).init(alphas), step=jnp.zeros((), jnp.int32), rng=rng)


def search_step(problem: SearchProblem, hp: SearchHParams, state: SearchState, train_batch, val_batch,
                update_alphas: bool = True) -> Tuple[SearchState, Dict[str, jax.Array]]:
  """One search iteration in the reference's order: α step on `val_batch`, then weight step on
  `train_batch` with the updated α. Pure; jit it (see `make_search_step`)."""
  rng, k_arch, k_w = jax.random.split(state.rng, 3)
  alphas, a_opt = state.alphas, state.a_opt
  metrics = {}
  if update_alphas:
    g_a, (val_loss, val_acc) = hypergradient(problem, hp, state.params, alphas, state.w_opt, train_batch,
                                             val_batch, k_arch, state.step)
    a_updates, a_opt = alpha_optimizer(hp).update(g_a, a_opt, alphas)
    alphas = optax.apply_updates(alphas, a_updates)
    metrics.update(val_loss=val_loss, val_acc=val_acc, alpha_grad_norm=optax.global_norm(g_a))
  (_, (loss, acc)), g_w = jax.value_and_grad(
      _weight_step_loss(problem, state.params, alphas, train_batch, k_w, state.step), has_aux=True)(state.params)
  params, w_opt, more = _weight_update(hp, state.params, state.w_opt, alphas, g_w, loss, acc, state.step)
  metrics.update(more)
  return SearchState(params, alphas, w_opt, a_opt, state.step + 1, rng), metrics


def _weight_update(hp: SearchHParams, params, w_opt, alphas, g_w, loss, acc, step):
  """The weight optimizer's step and the weight pass's metrics, incl. the ``finite`` flag of the new state."""
  updates, w_opt = weight_optimizer(hp).update(g_w, w_opt, params)
  params = optax.apply_updates(params, updates)
  metrics = dict(train_loss=loss, train_acc=acc, weight_grad_norm=optax.global_norm(g_w),
                 lr=cosine_lr(hp.w_lr, hp.w_lr_min, hp.epochs, hp.steps_per_epoch)(step))
  metrics["finite"] = jnp.isfinite(loss) & jnp.isfinite(optax.global_norm(params)) & jnp.isfinite(
      optax.global_norm(alphas))
  return params, w_opt, metrics


def make_search_step(problem: SearchProblem, hp: SearchHParams, update_alphas: bool = True,
                     donate: bool = True, compile_once: bool = False, shardings=None):
  """The jitted step `(state, train_batch, val_batch) -> (state, metrics)`, state donated.

  shardings: optional (state sharding, batch sharding), e.g. `parallel.Layout.step_shardings()`: the
    step runs data-parallel on that mesh (the fused step only), gradients over the global batch.

  compile_once: run the step as `SharedPassStep` (same numbers up to float rounding): one compiled network
    gradient serves every pass of the step (plus, for the exact second order, one Hessian-vector program),
    which cuts compile time and peak memory at the price of computing weight gradients in the α passes too
    (unless the problem's own `grads` can skip them, as `edgewise.cellwise_grads` does).
  """
  if compile_once:
    if shardings is not None:
      raise ValueError("compile_once runs on one device; use the fused step on a mesh of several devices")
    return SharedPassStep(problem, hp, update_alphas, donate)
  fn = lambda state, tb, vb: search_step(problem, hp, state, tb, vb, update_alphas)
  return parallel.jit_step(fn, shardings, batches=2, donate=donate)


def supports_compile_once(problem: SearchProblem, hp: SearchHParams) -> bool:
  """Whether `make_search_step(..., compile_once=True)` can run this problem (any hypergradient, as long as
  the weight pass takes its op weights from `arch_weights`)."""
  del hp
  return problem.weight_arch_weights is None


class SharedPassStep:
  """`search_step` as one compiled network-gradient program called once per pass, plus small programs.

  The fused step holds every forward+backward pass of the supernet in one program (two for first order, five
  for the finite-difference second order), so XLA compiles the network that many times and may keep several
  passes' activations alive at once. Here `grads(params, op_weights, batch)` returns the loss and its
  gradients with respect to both the weights and the op weights, compiled once and called for every pass;
  gradients with respect to op weights are chained back to α through `problem.arch_weights` by a small
  program. The second-order hypergradients use
  ∇α L_val(w′, α) − η·∇²_{α,w} L_train(w, α)·v with v = ∇w′ L_val(w′, α): `second_order_fd` estimates the
  second term by finite differences of two more `grads` calls, `second_order_exact` computes it with one
  Hessian-vector program (reverse over reverse through the training loss only), which is the exact gradient
  through the unrolled step. Results equal `search_step` up to float rounding (tested); the warm-up step (no
  α update) reuses the same program. A problem that carries its own `grads` (`edgewise.cellwise_grads`:
  one program per distinct edge shape, chained) has that called for every pass instead, and its own
  `grads_and_hvp` (`edgewise.cellwise_grads_and_hvp`) for the exact second order's training pass and term.
  """

  def __init__(self, problem: SearchProblem, hp: SearchHParams, update_alphas: bool = True,
               donate: bool = True):
    if not supports_compile_once(problem, hp):
      raise ValueError("compile_once needs a problem without weight_arch_weights (e.g. SDARTS' perturbed "
                       "weight pass); use the fused step (compile_once=False)")
    self.problem, self.hp, self.update_alphas = problem, hp, update_alphas
    eta_at = cosine_lr(hp.w_lr, hp.w_lr_min, hp.epochs, hp.steps_per_epoch)

    def grads(params, weights, batch):
      (loss, acc), (g_p, g_w) = jax.value_and_grad(
          lambda p, w: _forward(problem, p, w, batch), argnums=(0, 1), has_aux=True)(params, weights)
      return loss, acc, g_p, g_w

    def hvp(params, weights, v, batch):
      """∇ over the op weights of ∇w L(w, op weights)·v."""
      def inner(w):
        return optax.tree_utils.tree_vdot(jax.grad(lambda p: _forward(problem, p, w, batch)[0])(params), v)
      return jax.grad(inner)(weights)

    def keys(rng):   # the fused step's keys: α pass (val, unrolled train) and weight pass
      rng, k_arch, k_w = jax.random.split(rng, 3)
      k_val, k_train = jax.random.split(k_arch)
      return rng, k_val, k_train, k_w

    def arch_pass_weights(alphas, rng, step):
      _, k_val, k_train, _ = keys(rng)
      return problem.arch_weights(alphas, k_val, step), problem.arch_weights(alphas, k_train, step)

    def unroll(params, w_opt, g_p, step):
      eta = eta_at(step)
      return jax.tree.map(lambda w, gw, mw: w - eta * (hp.w_momentum * mw + gw + hp.w_weight_decay * w),
                          params, g_p, momentum_buffer(w_opt))

    def fd_points(params, v):
      r = hp.fd_r / optax.global_norm(v)
      shifted = lambda sign: jax.tree.map(lambda w, d: w + sign * r * d, params, v)
      return shifted(1.0), shifted(-1.0), r

    def fd_difference(g_plus, g_minus, r):
      return jax.tree.map(lambda p, m: (p - m) / (2 * r), g_plus, g_minus)

    def alpha_update(alphas, a_opt, g_weights, h_weights, rng, step):
      _, k_val, k_train, _ = keys(rng)
      g_weights, h_weights = jax.lax.stop_gradient((g_weights, h_weights))

      def surrogate(a):   # its gradient is the chain rule through arch_weights, plus the regularizer's
        w = problem.arch_weights(a, k_val, step)
        out = optax.tree_utils.tree_vdot(g_weights, w)
        if problem.regularizer is not None:
          out = out + problem.regularizer(a, w, step)
        if h_weights is not None:
          out = out - eta_at(step) * optax.tree_utils.tree_vdot(h_weights, problem.arch_weights(a, k_train, step))
        return out

      g_a = jax.grad(surrogate)(alphas)
      updates, a_opt = alpha_optimizer(hp).update(g_a, a_opt, alphas)
      alphas = optax.apply_updates(alphas, updates)
      return alphas, a_opt, optax.global_norm(g_a), train_weights(alphas, rng, step)

    def train_weights(alphas, rng, step):
      *_, k_w = keys(rng)
      return jax.lax.stop_gradient(problem.arch_weights(alphas, k_w, step))

    def weight_update(params, w_opt, alphas, a_opt, step, rng, g_p, loss, acc):
      rng, *_ = keys(rng)
      params, w_opt, metrics = _weight_update(hp, params, w_opt, alphas, g_p, loss, acc, step)
      return SearchState(params, alphas, w_opt, a_opt, step + 1, rng), metrics

    self._grads = problem.grads if problem.grads is not None else jax.jit(grads)
    # Passes that only need ∂arch_weights skip the weight gradients where the problem's grads can
    # (`edgewise.cellwise_grads`); the one-program gradient is reused rather than compiling a second one.
    self._arch_grads = (functools.partial(problem.grads, wrt_params=False) if problem.grads is not None
                        else self._grads)
    self._hvp = jax.jit(hvp)
    self._arch_pass_weights = jax.jit(arch_pass_weights)
    self._unroll = jax.jit(unroll)
    self._fd_points = jax.jit(fd_points)
    self._fd_difference = jax.jit(fd_difference)
    self._alpha_update = jax.jit(alpha_update)
    self._train_weights = jax.jit(train_weights)
    self._weight_update = jax.jit(weight_update, donate_argnums=(0, 1) if donate else ())

  def _arch_pass(self, state: SearchState, train_batch, val_batch):
    """(val loss, val accuracy, ∂L_val/∂op weights, the second-order term's op-weight factor or None)."""
    w_val, w_tr = self._arch_pass_weights(state.alphas, state.rng, state.step)
    if self.hp.hypergradient == "first_order":
      val_loss, val_acc, _, g_w = self._arch_grads(state.params, w_val, val_batch)
      return val_loss, val_acc, g_w, None
    exact = self.hp.hypergradient == "second_order_exact"
    if exact and self.problem.grads_and_hvp is not None:
      _, _, g_p, _, hvp = self.problem.grads_and_hvp(state.params, w_tr, train_batch)
    else:
      _, _, g_p, _ = self._grads(state.params, w_tr, train_batch)
      hvp = lambda v: self._hvp(state.params, w_tr, v, train_batch)
    w2 = self._unroll(state.params, state.w_opt, g_p, state.step)
    val_loss, val_acc, v, g_w = self._grads(w2, w_val, val_batch)
    if exact:
      return val_loss, val_acc, g_w, hvp(v)
    w_plus, w_minus, r = self._fd_points(state.params, v)
    g_plus = self._arch_grads(w_plus, w_tr, train_batch)[3]
    g_minus = self._arch_grads(w_minus, w_tr, train_batch)[3]
    return val_loss, val_acc, g_w, self._fd_difference(g_plus, g_minus, r)

  def __call__(self, state: SearchState, train_batch, val_batch) -> Tuple[SearchState, Dict[str, jax.Array]]:
    metrics = {}
    alphas, a_opt = state.alphas, state.a_opt
    if self.update_alphas:
      val_loss, val_acc, g_w, h_w = self._arch_pass(state, train_batch, val_batch)
      alphas, a_opt, g_norm, w_train = self._alpha_update(alphas, a_opt, g_w, h_w, state.rng, state.step)
      metrics.update(val_loss=val_loss, val_acc=val_acc, alpha_grad_norm=g_norm)
    else:
      w_train = self._train_weights(alphas, state.rng, state.step)
    loss, acc, g_p, _ = self._grads(state.params, w_train, train_batch)
    state, more = self._weight_update(state.params, state.w_opt, alphas, a_opt, state.step, state.rng, g_p,
                                      loss, acc)
    metrics.update(more)
    return state, metrics


def make_eval_step(problem: SearchProblem, out_sharding=None):
  """Jitted `(params, alphas, batch) -> (sum of losses, number correct, count)`, masked for padding
  (`out_sharding`: where the sums go, e.g. replicated on a mesh)."""
  def fn(params, alphas, batch, rng, step):
    weights = problem.arch_weights(alphas, rng, step)
    logits = problem.apply(params, batch["image"], weights)
    mask = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return jnp.sum(losses * mask), jnp.sum(correct * mask), jnp.sum(mask)
  return jax.jit(fn) if out_sharding is None else jax.jit(fn, out_shardings=out_sharding)


def init_seeds(init_params: Callable, init_alphas: Callable, hp: SearchHParams, seeds) -> SearchState:
  """The states of S independent searches stacked along a leading axis: seed s gets its own weights, α and
  rng from `jax.random.PRNGKey(seed)`, exactly as a separate run with that seed would.

  init_params / init_alphas: key -> pytree.
  """
  states = []
  for seed in seeds:
    key = jax.random.PRNGKey(int(seed))
    k_w, k_a, k_state = jax.random.split(key, 3)
    states.append(init_state(init_params(k_w), init_alphas(k_a), hp, k_state))
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def make_multi_seed_step(problem: SearchProblem, hp: SearchHParams, update_alphas: bool = True,
                         donate: bool = True, shardings=None):
  """S searches as one jit-compiled program: `(states, train_batches, val_batches) -> (states, metrics)`
  with every argument stacked along a leading seed axis (each seed its own data order too). One compile
  serves all seeds; the results equal S separate runs of `make_search_step` up to float rounding.

  shardings: optional (state sharding, batch sharding) of a mesh with a ``seed`` axis
    (`parallel.make_layout(seeds=...)`): the seeds are spread over its devices, each seed's batch over its
    ``data`` axis."""
  from darts_jax import xla_setup  # pylint: disable=g-import-not-at-top
  fn = jax.vmap(lambda state, tb, vb: search_step(problem, hp, state, tb, vb, update_alphas))
  return parallel.jit_step(fn, shardings, batches=2, donate=donate,
                           compiler_options=xla_setup.cpu_compiler_options_without_ynn_reduce())
