"""The bilevel search problem's parts: hyperparameters, optimizers, the state and what a method supplies.

`SearchHParams` (the DARTS paper's defaults), the weight and α optimizers as optax chains, the reference's
per-epoch cosine schedule, the pure `SearchState` (weights and α apart) and `SearchProblem` (how α becomes
op weights, what a method adds to the α objective). The step itself, written once for every backend, is
`darts_jax.steps.hypergradient`; `darts_jax.steps.make_search_step` compiles it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, NamedTuple, Optional

import jax
import jax.numpy as jnp
import ml_collections
import optax

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
  """
  apply: Callable[..., jax.Array]
  arch_weights: Callable[..., Params]
  regularizer: Optional[Callable[..., jax.Array]] = None
  weight_arch_weights: Optional[Callable[..., Params]] = None


def cross_entropy(logits, labels):
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))


def init_state(params: Params, alphas: Params, hp: SearchHParams, rng) -> SearchState:
  return SearchState(params=params, alphas=alphas, w_opt=weight_optimizer(hp).init(params),
                     a_opt=alpha_optimizer(hp).init(alphas), step=jnp.zeros((), jnp.int32), rng=rng)


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
