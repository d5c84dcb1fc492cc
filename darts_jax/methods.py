"""Search methods behind one interface, chosen by name; all of them run the one search step of `darts_jax.steps`.

A method is a `Method` (a NamedTuple of pure functions and settings):

* ``init_alphas(key, space) -> alphas``: the architecture parameters, a dict with one (num_edges, num_ops)
  array per cell kind of `SearchSpace.cell_names` (``"normal"`` and ``"reduce"``; NAS-Bench-201 shares one α
  under ``"normal"``), plus (num_edges,) edge parameters under ``"normal_edge"`` / ``"reduce_edge"`` for
  PC-DARTS.
* ``problem(apply_fn, space, hp) -> bilevel.SearchProblem``: how α becomes the op weights of the α step and
  of the weight step, and what is added to the α objective. ``apply_fn(params, images, arch_weights) ->
  logits``; ``hp`` is the run's `bilevel.SearchHParams`, whose epochs drive the schedules (per epoch, as
  the papers' code does).
* ``derive(alphas, space, key=None)``: the discrete architecture, a `genotypes.Genotype` on DARTS-like spaces
  or an `nb201` arch tuple on NAS-Bench-201 (see `derive_from_weights`); ``key`` is for the random baselines.
* ``op_weights(alphas, space) -> {"normal": (E, O)[, "reduce": (E, O)]}``: the deterministic per-edge op
  strengths that `derive` ranks (for logs, plots, entropies). Rows sum to 1 except for FairDARTS (independent
  sigmoids) and PC-DARTS (softmax times the edge's normalized weight).
* ``update_alphas``: False for methods that never step α (pass it to `steps.make_search_step`).
* ``supernet_kwargs``: supernet config fields the method needs (`supernet.SupernetConfig` via
  `supernet_config`, `nb201.NB201Config`; `models.build_supernet` applies them).
* ``hparams``: the paper's `bilevel.SearchHParams` overrides (`Method.search_hparams` applies them).
* ``warmup_epochs``: epochs at the start of each of ``warmup_stages`` equal stages that the paper trains
  weights only (run them with ``update_alphas=False``; `frozen_epochs`).
* ``per_space``: the released code's settings for a search space other than DARTS', by space name (hparams
  fields, ``warmup_epochs``, ``warmup_stages``); `Method.for_space` applies them.
* ``select``: for RS-WS, the weight-sharing selection ``(key, space, eval_fn, num_candidates)``
  (`rsws_select`); None elsewhere.

`get_method(name, **options)` builds one; `METHODS` lists the names. Options are each factory's keyword
arguments (e.g. ``get_method("gdas", tau_min=0.5)``); unknown names or options raise ValueError.

Defaults come from each paper's released code (cited per factory). Deviations forced by the shared
supernet are noted where they apply.
"""
from __future__ import annotations

import inspect
import types
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import digamma, gammaln

from darts_jax import bilevel, genotypes, supernet
from darts_jax.search_space import SearchSpace

Params = Dict[str, Any]
EDGE = "_edge"
_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


class Method(NamedTuple):
  name: str
  init_alphas: Callable[[jax.Array, SearchSpace], Params]
  problem: Callable[[Callable[..., jax.Array], SearchSpace, bilevel.SearchHParams], bilevel.SearchProblem]
  derive: Callable[..., Any]
  op_weights: Callable[[Params, SearchSpace], Params]
  update_alphas: bool = True
  supernet_kwargs: Mapping[str, Any] = _EMPTY
  hparams: Mapping[str, Any] = _EMPTY
  warmup_epochs: int = 0
  select: Optional[Callable[..., Any]] = None
  citation: str = ""
  warmup_stages: int = 1
  per_space: Mapping[str, Mapping[str, Any]] = _EMPTY

  def search_hparams(self, **overrides) -> bilevel.SearchHParams:
    """`bilevel.SearchHParams` with the method's paper defaults, then `overrides`."""
    return bilevel.SearchHParams(**{**self.hparams, **overrides})

  def for_space(self, space) -> "Method":
    """The method with the defaults its released code uses in `space` (a `SearchSpace` or its name)."""
    extra = dict(self.per_space.get(getattr(space, "name", space), {}))
    schedule = {k: extra.pop(k) for k in ("warmup_epochs", "warmup_stages") if k in extra}
    return self._replace(hparams={**self.hparams, **extra}, per_space=_EMPTY, **schedule)


def frozen_epochs(epochs: int, warmup_epochs: int, stages: int = 1) -> np.ndarray:
  """(epochs,) bool: the epochs whose steps leave α untouched, the first `warmup_epochs` of each of `stages`
  stages of (near) equal length (DrNAS freezes α at the start of both its stages)."""
  frozen = np.zeros(epochs, bool)
  bounds = [round(i * epochs / max(stages, 1)) for i in range(max(stages, 1) + 1)]
  for start, end in zip(bounds[:-1], bounds[1:]):
    frozen[start:min(start + warmup_epochs, end)] = True
  return frozen


def supernet_config(method: Method, **kwargs) -> supernet.SupernetConfig:
  """A `supernet.SupernetConfig` with the method's required fields (e.g. PC-DARTS' partial channels)."""
  return supernet.SupernetConfig(**{**method.supernet_kwargs, **kwargs})


# --------------------------------------------------------------------------------------------------------
# Space helpers and schedules.


def cell_names(space: SearchSpace) -> Tuple[str, ...]:
  return space.cell_names


def node_slices(space: SearchSpace) -> List[Tuple[int, int]]:
  """[start, end) of each intermediate node's incoming edges in the space's edge order."""
  out, start = [], 0
  for i in range(space.num_nodes):
    n = space.num_inputs + i
    out.append((start, start + n))
    start += n
  return out


def _op_keys(alphas: Params) -> List[str]:
  return [k for k in alphas if not k.endswith(EDGE)]


def _map_ops(fn, alphas: Params) -> Params:
  return {k: fn(alphas[k]) for k in _op_keys(alphas)}


def _normal_alphas(key, space: SearchSpace, scale: float = 1e-3) -> Params:
  """1e-3·N(0, 1) per cell kind (`SearchSpace.init_alphas`)."""
  return space.init_alphas(key, scale)


def epoch_of(step, hp: bilevel.SearchHParams) -> jax.Array:
  """The epoch a step belongs to (as `bilevel.cosine_lr` counts it), as a float, capped at `hp.epochs`."""
  return jnp.minimum(jnp.asarray(step) // hp.steps_per_epoch, hp.epochs).astype(jnp.float32)


def gdas_tau(step, hp: bilevel.SearchHParams, tau_max: float = 10.0, tau_min: float = 0.1) -> jax.Array:
  """GDAS' temperature, tau_max at epoch 0 linearly down to tau_min at the last epoch."""
  frac = epoch_of(step, hp) / max(hp.epochs - 1, 1)
  return jnp.maximum(tau_max - (tau_max - tau_min) * frac, tau_min)


def sdarts_epsilon(step, hp: bilevel.SearchHParams, eps_min: float = 0.03, eps_max: float = 0.3) -> jax.Array:
  """SDARTS' perturbation radius eps_min + (eps_max - eps_min)·epoch/epochs."""
  return eps_min + (eps_max - eps_min) * epoch_of(step, hp) / hp.epochs


def beta_darts_lambda(step, hp: bilevel.SearchHParams, lam_max: float = 50.0) -> jax.Array:
  """β-DARTS' regularization weight lam_max·epoch/epochs (linear from 0)."""
  return lam_max * epoch_of(step, hp) / hp.epochs


def darts_minus_beta(step, hp: bilevel.SearchHParams, beta0: float = 1.0) -> jax.Array:
  """DARTS-' auxiliary-skip weight beta0·(epochs - epoch)/epochs: beta0 at epoch 0, 0 after the last."""
  return beta0 * (hp.epochs - epoch_of(step, hp)) / hp.epochs


# --------------------------------------------------------------------------------------------------------
# Discretization.


def derive_from_weights(op_weights: Params, space: SearchSpace):
  """The DARTS-family discretization of per-edge op strengths, as the space defines it (`SearchSpace.derive`:
  the top `inputs_per_node` edges per node in DARTS' space, every edge's argmax in NAS-Bench-201)."""
  return space.derive(op_weights)


def _deriver(op_weights: Callable[[Params, SearchSpace], Params]):
  return lambda alphas, space, key=None: derive_from_weights(op_weights(alphas, space), space)


def _spaceless(fn: Callable[[Params], Params]) -> Callable[[Params, SearchSpace], Params]:
  return lambda alphas, space: fn(alphas)


def _numpy_rng(key) -> np.random.Generator:
  if isinstance(key, (int, np.integer)):
    return np.random.default_rng(int(key))
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
    key = jax.random.key_data(key)
  return np.random.default_rng(np.asarray(key, np.uint32).ravel())


def random_architecture(key, space: SearchSpace):
  """A uniformly random architecture of the space (`SearchSpace.random_arch`), from a JAX key or an int."""
  return space.random_arch(_numpy_rng(key))


def _random_derive(alphas, space, key=None):
  if key is None:
    raise ValueError("this method's derive samples an architecture: pass key=")
  return random_architecture(key, space)


# --------------------------------------------------------------------------------------------------------
# DARTS and variants that keep softmax(α).


def softmax_op_weights(alphas: Params) -> Params:
  return _map_ops(lambda a: jax.nn.softmax(a, axis=-1), alphas)


def _softmax_problem(regularizer=None, weight_arch_weights=None):
  def problem(apply_fn, space, hp):
    return bilevel.SearchProblem(
        apply=apply_fn, arch_weights=lambda alphas, rng, step: softmax_op_weights(alphas),
        regularizer=None if regularizer is None else regularizer(space, hp),
        weight_arch_weights=None if weight_arch_weights is None else weight_arch_weights(space, hp))
  return problem


_CITE_DARTS = "Liu, Simonyan, Yang. DARTS: Differentiable Architecture Search. ICLR 2019."
# NAS-Bench-201's own DARTS and GDAS runs (AutoDL-Projects, configs/nas-benchmark/algos/{DARTS,GDAS}.config and
# scripts-search/NAS-Bench-201-algos/*.sh): SGD 0.025 -> 0.001 with Nesterov momentum, weight decay 5e-4;
# Adam 3e-4 with α weight decay 1e-3.
_NB201_AUTODL = {"w_lr": 0.025, "w_lr_min": 0.001, "w_nesterov": True, "w_weight_decay": 5e-4, "a_lr": 3e-4,
                 "a_weight_decay": 1e-3}
_DARTS_NAMES = {"first_order": "darts", "second_order_exact": "darts_2nd", "second_order_fd": "darts_2nd_fd"}


def darts(hypergradient: str = "first_order") -> Method:
  """DARTS: softmax(α) and the reference discretization; `bilevel.SearchHParams`' defaults are the paper's.
  `hypergradient` is one of `bilevel.HYPERGRADIENTS` (``darts_2nd`` / ``darts_2nd_fd`` preset the last two)."""
  if hypergradient not in _DARTS_NAMES:
    raise ValueError(f"unknown hypergradient {hypergradient!r}; choose one of {', '.join(_DARTS_NAMES)}")
  ow = _spaceless(softmax_op_weights)
  return Method(_DARTS_NAMES[hypergradient], _normal_alphas, _softmax_problem(), _deriver(ow), ow,
                hparams={"hypergradient": hypergradient}, citation=_CITE_DARTS, per_space={"nb201": _NB201_AUTODL})


# --------------------------------------------------------------------------------------------------------
# GDAS.


def gumbel_hard(key, logits: jax.Array, tau) -> jax.Array:
  """One-hot of argmax(log_softmax(α) + Gumbel) forward, softmax((log_softmax(α) + g)/τ)'s gradient backward.

  The forward value is exactly one-hot: the straight-through term is probs - stop_gradient(probs) = 0.
  """
  g = jax.random.gumbel(key, logits.shape, logits.dtype)
  probs = jax.nn.softmax((jax.nn.log_softmax(logits, axis=-1) + g) / tau, axis=-1)
  hard = jax.nn.one_hot(jnp.argmax(probs, axis=-1), logits.shape[-1], dtype=probs.dtype)
  return hard + (probs - jax.lax.stop_gradient(probs))


def gdas_arch_weights(key, logits: jax.Array, tau, zero_terms: bool) -> Params:
  """GDAS' op weights of one cell kind, as the released code feeds them to the network.

  The forward value is the one-hot sample of `gumbel_hard`. Its straight-through gradient reaches α through
  the sampled op alone (AutoDL's DARTS-space cell runs ``op[index](x) * hardwts[index]``), and in NB201's
  cell also through the other ops' weights, which the released cell adds as zero-valued scalars
  (``hardwts[o]`` for o ≠ index): each of those gets the sum of the edge's output gradient. Returns
  ``{"w": (E, O) weights, "offset": (E,) scalars or None}`` (`supernet.mixed_cell_apply`'s ``edge_offset``).
  """
  hard = gumbel_hard(key, logits, tau)
  sampled = jax.lax.stop_gradient(hard)
  offset = jnp.sum((1.0 - sampled) * hard, axis=-1) if zero_terms else None
  return {"w": sampled * hard, "offset": offset}


def gdas(tau_max: float = 10.0, tau_min: float = 0.1) -> Method:
  """GDAS: a hard Gumbel-softmax sample per edge and step (straight-through gradient), τ annealed linearly
  per epoch from tau_max to tau_min, derive = DARTS' rule on softmax(α).

  Dong, Yang. Searching for A Robust Neural Architecture in Four GPU Hours. CVPR 2019. Defaults from
  github.com/D-X-Y/AutoDL-Projects (GDAS-NASNet-CIFAR.config: 250 epochs, weight decay 5e-4; τ 10 -> 0.1 as
  ``tau_max - (tau_max - tau_min)·epoch/(epochs - 1)``). The α-gradient is the released estimator of each
  space (`gdas_arch_weights`). The supernet still evaluates the ops it did not sample (weighted by an exact
  0, so their weights get no gradient): the same numbers as the released code, at the cost of a DARTS step.
  Nesterov momentum in both spaces (its configs); NB201: `_NB201_AUTODL`, 250 epochs. Not reproduced: batch
  size 256 in the DARTS space (a data setting).
  """
  def problem(apply_fn, space, hp):
    zero_terms = space.scalar_unsampled_ops

    def arch_weights(alphas, rng, step):
      tau = gdas_tau(step, hp, tau_max, tau_min)
      keys = jax.random.split(rng, len(_op_keys(alphas)))
      out = {}
      for k, kk in zip(_op_keys(alphas), keys):
        w = gdas_arch_weights(kk, alphas[k], tau, zero_terms)
        out[k] = w["w"]
        if w["offset"] is not None:
          out[k + "_offset"] = w["offset"]
      return out
    return bilevel.SearchProblem(apply=apply_fn, arch_weights=arch_weights)
  ow = _spaceless(softmax_op_weights)
  return Method("gdas", _normal_alphas, problem, _deriver(ow), ow,
                hparams={"epochs": 250, "w_weight_decay": 5e-4, "w_nesterov": True},
                per_space={"nb201": {**_NB201_AUTODL, "epochs": 250}},
                citation="Dong, Yang. Searching for A Robust Neural Architecture in Four GPU Hours. CVPR 2019.")


# --------------------------------------------------------------------------------------------------------
# PC-DARTS.


def edge_softmax(beta: jax.Array, space: SearchSpace) -> jax.Array:
  """PC-DARTS' edge normalization: softmax of β over each node's incoming edges."""
  return jnp.concatenate([jax.nn.softmax(beta[s:e]) for s, e in node_slices(space)])


def pcdarts(partial_channels: int = 4) -> Method:
  """PC-DARTS: partial channel connections (1/K of the channels through the mixed op, channel shuffle) and
  edge normalization β; derive ranks softmax(α) times the edge weight.

  Xu et al. PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture Search. ICLR 2020.
  Defaults from github.com/yuhuixu1993/PC-DARTS train_search.py: K=4, weight lr 0.1 -> 0.001, α lr 6e-4,
  50 epochs, α frozen for the first 15 (`warmup_epochs`); batch size 256 is the data pipeline's business.
  """
  def init_alphas(key, space):
    k_op, k_edge = jax.random.split(key)
    alphas = _normal_alphas(k_op, space)
    for i, c in enumerate(cell_names(space)):
      k = jax.random.fold_in(k_edge, i)
      alphas[c + EDGE] = 1e-3 * jax.random.normal(k, (space.num_edges,), jnp.float32)
    return alphas

  def weights_fn(space):
    def fn(alphas):
      out = softmax_op_weights(alphas)
      out.update({c + EDGE: edge_softmax(alphas[c + EDGE], space) for c in _op_keys(alphas)})
      return out
    return fn

  def op_weights(alphas, space):
    w = weights_fn(space)(alphas)
    return {c: w[c] * w[c + EDGE][:, None] for c in _op_keys(alphas)}

  def problem(apply_fn, space, hp):
    fn = weights_fn(space)
    return bilevel.SearchProblem(apply=apply_fn, arch_weights=lambda alphas, rng, step: fn(alphas))

  return Method("pcdarts", init_alphas, problem, _deriver(op_weights), op_weights,
                supernet_kwargs={"partial_channels": partial_channels},
                hparams={"w_lr": 0.1, "w_lr_min": 0.001, "a_lr": 6e-4, "epochs": 50}, warmup_epochs=15,
                citation="Xu et al. PC-DARTS: Partial Channel Connections for Memory-Efficient Architecture "
                         "Search. ICLR 2020.")


# --------------------------------------------------------------------------------------------------------
# DrNAS.


def dirichlet_concentration(alphas: Params) -> Params:
  """DrNAS' concentration elu(α) + 1 (> 0) per cell."""
  return _map_ops(lambda a: jax.nn.elu(a) + 1.0, alphas)


def dirichlet_mean(alphas: Params) -> Params:
  return {k: c / jnp.sum(c, -1, keepdims=True) for k, c in dirichlet_concentration(alphas).items()}


def dirichlet_kl(a: jax.Array, b: jax.Array) -> jax.Array:
  """KL(Dir(a) || Dir(b)) over the last axis."""
  a0, b0 = jnp.sum(a, -1), jnp.sum(b, -1)
  return (gammaln(a0) - gammaln(b0) - jnp.sum(gammaln(a) - gammaln(b), -1)
          + jnp.sum((a - b) * (digamma(a) - digamma(a0)[..., None]), -1))


def drnas(reg_type: str = "l2", reg_scale: float = 1e-3, prior: float = 1.0,
          partial_channels: int = 1) -> Method:
  """DrNAS: op weights are a Dirichlet sample per edge and step (pathwise gradient through
  `jax.random.dirichlet`'s implicit reparameterization), concentration elu(α) + 1; derive ranks the mean.

  Chen et al. DrNAS: Dirichlet Neural Architecture Search. ICLR 2021. Defaults from
  github.com/xiangning-chen/DrNAS. DARTS space (DARTS-space/train_search.py + model_search.py): reg_type
  "l2" (the code's default) is α's Adam weight decay reg_scale; "kl" adds reg_scale·Σ KL(Dir(elu(α)+1) ||
  Dir(prior)) to the α objective and drops the decay; weight lr 0.1 -> 0, α lr 6e-4, 50 epochs in two stages
  of 25, α frozen for the first 10 of each. NB201 (201-space/train_search.py): weight lr 0.025 -> 0.001, α lr
  3e-4, 100 epochs, no freeze. Not reproduced: the progressive schedule's channel and op changes (K = 6 -> 4
  partial channels, pruning to 7 then 4 ops); set partial_channels for a fixed K. The code discretizes
  softmax(α), which picks the same op per edge as the mean but may rank edges differently.
  """
  if reg_type not in ("kl", "l2"):
    raise ValueError(f"drnas reg_type must be 'kl' or 'l2', got {reg_type!r}")

  def problem(apply_fn, space, hp):
    def arch_weights(alphas, rng, step):
      conc = dirichlet_concentration(alphas)
      keys = jax.random.split(rng, len(conc))
      return {k: jax.random.dirichlet(kk, c) for (k, c), kk in zip(conc.items(), keys)}

    def regularizer(alphas, weights, step):
      conc = dirichlet_concentration(alphas)
      return reg_scale * sum(jnp.sum(dirichlet_kl(c, jnp.full_like(c, prior))) for c in conc.values())
    return bilevel.SearchProblem(apply=apply_fn, arch_weights=arch_weights,
                                 regularizer=regularizer if reg_type == "kl" else None)

  decay = 0.0 if reg_type == "kl" else reg_scale
  ow = _spaceless(dirichlet_mean)
  return Method("drnas", _normal_alphas, problem, _deriver(ow), ow,
                supernet_kwargs={"partial_channels": partial_channels} if partial_channels > 1 else {},
                hparams={"w_lr": 0.1, "w_lr_min": 0.0, "a_lr": 6e-4, "epochs": 50, "a_weight_decay": decay},
                warmup_epochs=10, warmup_stages=2,
                per_space={"nb201": {"w_lr": 0.025, "w_lr_min": 0.001, "a_lr": 3e-4, "epochs": 100,
                                     "a_weight_decay": decay, "warmup_epochs": 0, "warmup_stages": 1}},
                citation="Chen, Wang, Cheng, Tang, Hsieh. DrNAS: Dirichlet Neural Architecture Search. "
                         "ICLR 2021.")


# --------------------------------------------------------------------------------------------------------
# FairDARTS.


def sigmoid_op_weights(alphas: Params) -> Params:
  return _map_ops(jax.nn.sigmoid, alphas)


def zero_one_loss(alphas: Params) -> jax.Array:
  """FairDARTS' zero-one loss -mean((σ(α) - 0.5)²) over every op weight of every cell."""
  s = jnp.concatenate([jax.nn.sigmoid(alphas[k]).ravel() for k in _op_keys(alphas)])
  return -jnp.mean((s - 0.5) ** 2)


def fairdarts(w01: float = 10.0, parse: str = "darts", op_threshold: float = 0.85) -> Method:
  """FairDARTS: independent sigmoid op weights and w01·(zero-one loss) on the α objective.

  Chu, Zhou, Zhang, Li. Fair DARTS: Eliminating Unfair Advantages in Differentiable Architecture Search.
  ECCV 2020. Defaults from github.com/xiaomi-automl/FairDARTS fairdarts/train_search.py + model_search.py:
  α = 0 at init, w01 = 10, weight lr 0.005 -> 0.001, α Adam lr 3e-3 with β1 = 0.9, 50 epochs. `parse`:
  ``"darts"`` keeps two edges per node by σ(α) (DARTS' rule, the networks every other method's genotypes
  build); ``"threshold_sparse"`` (the released default) and ``"threshold_edge"`` are its threshold parses
  (`genotypes.derive_threshold` at σ ≥ `op_threshold`), which can drop edges and nodes. On NAS-Bench-201 every
  parse is the per-edge argmax. Not reproduced: their search space drops ``none`` (here its weight is inert and
  never derived).
  """
  if parse != "darts" and parse not in genotypes.THRESHOLD_PARSES:
    raise ValueError(f"fairdarts parse must be one of darts, {', '.join(genotypes.THRESHOLD_PARSES)}; "
                     f"got {parse!r}")

  def problem(apply_fn, space, hp):
    return bilevel.SearchProblem(
        apply=apply_fn, arch_weights=lambda alphas, rng, step: sigmoid_op_weights(alphas),
        regularizer=lambda alphas, weights, step: w01 * zero_one_loss(alphas))

  def init_alphas(key, space):
    return jax.tree.map(jnp.zeros_like, _normal_alphas(key, space))

  def derive(alphas, space, key=None):
    w = sigmoid_op_weights(alphas)
    return space.derive(w) if parse == "darts" else space.derive_threshold(w, op_threshold, parse)

  return Method("fairdarts", init_alphas, problem, derive, _spaceless(sigmoid_op_weights),
                hparams={"w_lr": 0.005, "w_lr_min": 0.001, "a_lr": 3e-3, "a_beta1": 0.9, "epochs": 50},
                citation="Chu, Zhou, Zhang, Li. Fair DARTS: Eliminating Unfair Advantages in Differentiable "
                         "Architecture Search. ECCV 2020.")


# --------------------------------------------------------------------------------------------------------
# SDARTS.


def sdarts_project(w: jax.Array) -> jax.Array:
  """SDARTS' `clip()`: clamp each edge's weights to [0, 1] (all zero -> one-hot of the argmax), renormalize."""
  c = jnp.clip(w, 0.0, 1.0)
  fallback = jax.nn.one_hot(jnp.argmax(w, -1), w.shape[-1], dtype=w.dtype)
  c = jnp.where(jnp.sum(c, -1, keepdims=True) == 0, fallback, c)
  return c / jnp.sum(c, -1, keepdims=True)


def random_perturbation(key, weights: Params, eps) -> Params:
  """weights + U(-eps, eps), independently per entry."""
  keys = jax.random.split(key, len(weights))
  return {k: w + jax.random.uniform(kk, w.shape, w.dtype, -eps, eps)
          for (k, w), kk in zip(weights.items(), keys)}


def pgd_perturbation(loss_fn: Callable[[Params], jax.Array], weights: Params, key, eps, steps: int = 7,
                     random_start: bool = True, project: bool = True) -> Params:
  """SDARTS-ADV's L∞ PGD on the op weights: maximize loss_fn within |δ| <= eps by `steps` signed-gradient
  steps of 2·eps/steps from a random start, projecting with `sdarts_project` after each (if `project`); the
  unperturbed weights are kept when the attack did not raise the loss (as the reference does)."""
  proj = sdarts_project if project else (lambda x: x)
  lr = 2.0 * eps / steps
  x = jax.tree.map(proj, random_perturbation(key, weights, eps)) if random_start else weights

  def body(_, x):
    g = jax.grad(loss_fn)(x)
    return jax.tree.map(lambda xi, gi, wi: proj(wi + jnp.clip(xi + lr * jnp.sign(gi) - wi, -eps, eps)),
                        x, g, weights)

  x = jax.lax.fori_loop(0, steps, body, x)
  keep = loss_fn(x) >= loss_fn(weights)
  return jax.tree.map(lambda a, w: jnp.where(keep, a, w), x, weights)


# SmoothDARTS' and Beta-DARTS' nasbench201/train_search.py: DARTS' settings (SGD 0.025 -> 0.001, wd 3e-4, no
# Nesterov; α Adam 3e-4) for 100 epochs.
_NB201_SDARTS_BETA = {"epochs": 100}
_CITE_SDARTS = ("Chen, Hsieh. Stabilizing Differentiable Architecture Search via Perturbation-based "
                "Regularization. ICML 2020 (github.com/xiangning-chen/SmoothDARTS).")


def sdarts_rs(eps_min: float = 0.03, eps_max: float = 0.3) -> Method:
  """SDARTS-RS: the weight step sees softmax(α) + U(-ε, ε), projected (`sdarts_project`); ε grows linearly
  per epoch from eps_min to eps_max (reference train_search.py: 0.03 + (epsilon_alpha - 0.03)·epoch/epochs,
  epsilon_alpha = 0.3). The α step is DARTS'. NB201: the released NB201 script's 100 epochs."""
  def perturb(space, hp):
    def fn(alphas, rng, step, loss_fn):
      eps = sdarts_epsilon(step, hp, eps_min, eps_max)
      return jax.tree.map(sdarts_project, random_perturbation(rng, softmax_op_weights(alphas), eps))
    return fn
  ow = _spaceless(softmax_op_weights)
  return Method("sdarts_rs", _normal_alphas, _softmax_problem(weight_arch_weights=perturb), _deriver(ow), ow,
                per_space={"nb201": _NB201_SDARTS_BETA}, citation=_CITE_SDARTS)


def sdarts_adv(eps_min: float = 0.03, eps_max: float = 0.3, steps: int = 7) -> Method:
  """SDARTS-ADV: the weight step sees softmax(α) under an L∞ PGD attack on the training loss
  (`pgd_perturbation`: 7 steps of 2ε/7 from a random start), ε scheduled as in `sdarts_rs`. The reference
  runs the attack with BatchNorm in eval mode; the supernet here always normalizes with batch statistics."""
  def perturb(space, hp):
    def fn(alphas, rng, step, loss_fn):
      eps = sdarts_epsilon(step, hp, eps_min, eps_max)
      return pgd_perturbation(loss_fn, softmax_op_weights(alphas), rng, eps, steps)
    return fn
  ow = _spaceless(softmax_op_weights)
  return Method("sdarts_adv", _normal_alphas, _softmax_problem(weight_arch_weights=perturb), _deriver(ow), ow,
                per_space={"nb201": _NB201_SDARTS_BETA}, citation=_CITE_SDARTS)


# --------------------------------------------------------------------------------------------------------
# β-DARTS and DARTS-.


def beta_regularizer(alphas: Params) -> jax.Array:
  """β-DARTS' Beta-Decay loss: Σ over cells of the mean over edges of logsumexp(α_edge)."""
  return sum(jnp.mean(jax.nn.logsumexp(alphas[k], axis=-1)) for k in _op_keys(alphas))


def beta_darts(lam_max: float = 50.0) -> Method:
  """β-DARTS: DARTS plus λ·(Beta-Decay loss) on the α objective, λ = lam_max·epoch/epochs.

  Ye et al. β-DARTS: Beta-Decay Regularization for Differentiable Architecture Search. CVPR 2022. The
  reference (github.com/Sunshine-Ye/Beta-DARTS, optimizers/darts/architect.py) uses λ = 50·epoch/100 with
  its 100-epoch default, i.e. 0 -> 50 over the search; here the ramp is relative to `hp.epochs`. NB201: the
  released NB201 script's 100 epochs (the only space where its released code runs with λ).
  """
  def reg(space, hp):
    return lambda alphas, weights, step: beta_darts_lambda(step, hp, lam_max) * beta_regularizer(alphas)
  ow = _spaceless(softmax_op_weights)
  return Method("beta_darts", _normal_alphas, _softmax_problem(regularizer=reg), _deriver(ow), ow,
                per_space={"nb201": _NB201_SDARTS_BETA}, citation="Ye et al. β-DARTS: Beta-Decay Regularization for Differentiable Architecture Search. "
                         "CVPR 2022.")


def darts_minus(beta0: float = 1.0) -> Method:
  """DARTS-: an auxiliary skip connection on every edge, weight β decaying linearly per epoch from beta0 to 0,
  here as softmax(α) + β·onehot(skip_connect); derive ignores it (DARTS' rule on softmax(α)).

  Chu, Wang, Zhang, Zhang, Li, Wei. DARTS-: Robustly Stepping out of Performance Collapse Without
  Indicators. ICLR 2021. Reference: github.com/Meituan-AutoML/DARTS- (scripts/run_darts_minus.sh: beta 1,
  linear decay, β = (epochs - epoch)/epochs; the released schedule counts to its decay_max_epoch = 50 whatever
  the epochs, which is the same at its default 50). Difference: on stride-2 edges the reference's auxiliary
  skip is its own FactorizedReduce; here it shares the candidate skip_connect's. The released code has no
  NB201 search; the auxiliary skip on NB201 edges (and DARTS' settings there) are this package's extension.
  """
  def problem(apply_fn, space, hp):
    skip = jax.nn.one_hot(space.primitive_index("skip_connect"), space.num_ops)

    def arch_weights(alphas, rng, step):
      beta = darts_minus_beta(step, hp, beta0)
      return {k: w + beta * skip for k, w in softmax_op_weights(alphas).items()}
    return bilevel.SearchProblem(apply=apply_fn, arch_weights=arch_weights)
  ow = _spaceless(softmax_op_weights)
  return Method("darts_minus", _normal_alphas, problem, _deriver(ow), ow,
                citation="Chu et al. DARTS-: Robustly Stepping out of Performance Collapse Without Indicators. "
                         "ICLR 2021.")


# --------------------------------------------------------------------------------------------------------
# Random search with weight sharing, and the random baseline.


def random_path(key, space: SearchSpace) -> Params:
  """One-hot op weights of a uniformly random discrete architecture per cell kind (`SearchSpace.random_path`:
  in DARTS' space `inputs_per_node` distinct inputs per node with a uniform non-``none`` op, as Li &
  Talwalkar's `sample_arch` minus ``none``; in NAS-Bench-201 a uniform op per edge, ``none`` included)."""
  return space.random_path(key)


class RSWSResult(NamedTuple):
  best: Any                   # the selected architecture (Genotype or NB201 arch)
  best_weights: Params        # its one-hot op weights
  scores: np.ndarray          # eval_fn of every candidate, in sampling order
  candidates: List[Any]


def rsws_select(key, space: SearchSpace, eval_fn: Callable[[Params], Any],
                num_candidates: int = 1000) -> RSWSResult:
  """RS-WS' selection: sample `num_candidates` architectures (`random_path`), score each with
  eval_fn(one-hot op weights) -> validation accuracy on the trained supernet, return the best (first on ties).

  Li & Talwalkar rank 1000 samples on a validation minibatch and re-score the top 10 on the whole validation
  set; give eval_fn the data you want ranked on, and re-score a shortlist from `scores` if wanted.
  """
  if num_candidates < 1:
    raise ValueError(f"num_candidates={num_candidates} must be positive")
  sample = jax.jit(lambda k: random_path(k, space))
  weights = [sample(k) for k in jax.random.split(key, num_candidates)]
  scores = np.array([float(eval_fn(w)) for w in weights])
  candidates = [derive_from_weights(w, space) for w in weights]
  i = int(np.argmax(scores))
  return RSWSResult(candidates[i], weights[i], scores, candidates)


def _random_path_problem(apply_fn, space, hp):
  return bilevel.SearchProblem(apply=apply_fn, arch_weights=lambda alphas, rng, step: random_path(rng, space))


def rsws() -> Method:
  """RS-WS: weights trained on a uniformly random discrete architecture per step, α never updated; the
  architecture comes from `rsws_select` (``Method.select``), `derive` is a random sample.

  Li, Talwalkar. Random Search and Reproducibility for Neural Architecture Search. UAI 2019.
  """
  return Method("rsws", _normal_alphas, _random_path_problem, _random_derive, _spaceless(softmax_op_weights),
                update_alphas=False, select=rsws_select,
                citation="Li, Talwalkar. Random Search and Reproducibility for Neural Architecture Search. "
                         "UAI 2019.")


def random_baseline() -> Method:
  """The random-sampling baseline: no search; derive(alphas, space, key) is a uniformly random architecture
  (`random_architecture`). Its problem is RS-WS' (weights on random paths, α fixed), for loops that step it."""
  return Method("random", _normal_alphas, _random_path_problem, _random_derive, _spaceless(softmax_op_weights),
                update_alphas=False, citation="Uniform random sampling of the search space (the usual baseline).")


# --------------------------------------------------------------------------------------------------------
# Registry.

_FACTORIES: Dict[str, Callable[..., Method]] = {
    "darts": darts,
    "darts_2nd": lambda: darts("second_order_exact"),
    "darts_2nd_fd": lambda: darts("second_order_fd"),
    "gdas": gdas,
    "pcdarts": pcdarts,
    "drnas": drnas,
    "fairdarts": fairdarts,
    "sdarts_rs": sdarts_rs,
    "sdarts_adv": sdarts_adv,
    "beta_darts": beta_darts,
    "darts_minus": darts_minus,
    "rsws": rsws,
    "random": random_baseline,
}
METHODS: Tuple[str, ...] = tuple(_FACTORIES)


def get_method(name: str, **options) -> Method:
  """The method `name` (case-insensitive, ``-`` read as ``_``) built with its factory's keyword `options`.

  Raises:
    ValueError: unknown name (listing `METHODS`) or an option the method does not take.
  """
  key = name.strip().lower().replace("-", "_") if isinstance(name, str) else None
  if key not in _FACTORIES:
    raise ValueError(f"unknown search method {name!r}; choose one of {', '.join(METHODS)}")
  factory = _FACTORIES[key]
  accepted = list(inspect.signature(factory).parameters)
  unknown = sorted(set(options) - set(accepted))
  if unknown:
    raise ValueError(f"search method {key!r} takes no option(s) {', '.join(unknown)}; "
                     f"it takes: {', '.join(accepted) or 'none'}")
  return factory(**options)
