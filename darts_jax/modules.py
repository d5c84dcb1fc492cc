"""Flax NNX modules over darts_jax's functional models, for users' own Flax/optax code.

* `Network` (`networks.from_genotype`) and `NB201Network` (`nb201.from_arch`): a final network as an
  ``nnx.Module``, its weights ``nnx.Param`` and its BatchNorm running statistics ``nnx.BatchStat``; calling it
  runs `networks.apply` / `nb201.apply_network`, the functions the reference fixtures and the interop loaders
  check, so a module and the functional network give the same numbers.
* `Supernet`: the search network with α in its own variable type, `Alpha`, kept apart from the weights;
  `search_state` splits it once into the pure `bilevel.SearchState` the jitted steps run on, and
  `update_from_state` writes a state back.
* `register_op`: a candidate operation defined as an NNX module, usable in search spaces and final networks
  like the built-in ones.

The jitted search steps stay functions of explicit pytrees: an NNX module is split into them once, not per
step, so the steps compile and run as they do without NNX.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
from flax import nnx

from darts_jax import bilevel, nb201, networks, ops, supernet

Params = Dict[str, Any]


class Alpha(nnx.Variable):
  """Architecture parameters α: a variable type of their own, so that ``nnx.split(module, Alpha, ...)`` and
  optimizers with ``wrt=nnx.Param`` keep them apart from the weights."""


class _Tree(nnx.Module):
  """A functional pytree held as NNX variables: its leaves in an ``nnx.List`` of `kind` variables, its
  structure static (so empty containers, e.g. the statistics of an op without any, survive)."""

  def __init__(self, tree, kind):
    leaves, self.treedef = jax.tree.flatten(tree)
    self.leaves = nnx.List([kind(x) for x in leaves])

  def value(self):
    """The pytree of the variables' current values."""
    return jax.tree.unflatten(self.treedef, [v.get_value() for v in self.leaves])

  def assign(self, tree) -> None:
    for v, x in zip(self.leaves, jax.tree.leaves(tree)):
      v.set_value(x)


class _FinalNetwork(nnx.Module):
  """What both final networks share: weights and running statistics as `_Tree`s of the functional pytrees."""

  def __init__(self, params, stats):
    self.params = _Tree(params, nnx.Param)
    self.batch_stats = _Tree(stats, nnx.BatchStat)

  def trees(self) -> Tuple[Params, Params]:
    """(params, batch_stats) as the functional network's pytrees (`networks.apply` / `nb201.apply_network`,
    `interop`)."""
    return self.params.value(), self.batch_stats.value()


class Network(_FinalNetwork):
  """A final DARTS network (`networks.NetworkConfig`) as an NNX module.

  ``model(x)`` gives evaluation logits (running statistics); ``model(x, train=True)`` gives
  ``(logits, aux_logits)`` with batch statistics, updates the running statistics and applies drop path at
  ``cfg.drop_path_prob`` (keys from ``rngs.dropout``; aux_logits is None without the auxiliary head). Set
  ``model.drop_path_prob`` to schedule it (the reference raises it linearly over the epochs).
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    super().__init__(*networks.init(rngs.params(), cfg))
    self.cfg = cfg
    self.drop_path_prob = nnx.data(jnp.asarray(cfg.drop_path_prob, jnp.float32))
    self.rngs = rngs

  def __call__(self, x: jax.Array, *, train: bool = False):
    key = self.rngs.dropout() if train else None
    logits, aux, new_stats = networks.apply(self.params.value(), self.batch_stats.value(), x, self.cfg, train,
                                            rng=key, drop_path_prob=self.drop_path_prob)
    if not train:
      return logits
    self.batch_stats.assign(new_stats)
    return logits, aux


class NB201Network(_FinalNetwork):
  """A NAS-Bench-201 final network (`nb201.init_network` / `apply_network`) as an NNX module; ``model(x)``
  gives evaluation logits, ``model(x, train=True)`` training logits (batch statistics, running ones updated)."""

  def __init__(self, arch, cfg, *, rngs: nnx.Rngs):
    super().__init__(*nb201.init_network(rngs.params(), arch, cfg))
    self.arch, self.cfg = nb201.as_arch(arch), cfg

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    logits, new_stats = nb201.apply_network(self.params.value(), self.batch_stats.value(), x, self.arch,
                                            self.cfg, train)
    if train:
      self.batch_stats.assign(new_stats)
    return logits


class Supernet(nnx.Module):
  """The DARTS search network (`supernet.SupernetConfig`) with its weights as ``nnx.Param`` and α as
  `Alpha`. ``model(x)`` runs it on softmax(α) (or on given op weights: ``model(x, op_weights)``)."""

  def __init__(self, cfg, *, rngs: nnx.Rngs, init_alphas: Optional[Callable[[jax.Array], Params]] = None):
    self.cfg = cfg
    self.weights = _Tree(supernet.init(rngs.params(), cfg), nnx.Param)
    alphas = (init_alphas or (lambda k: cfg.space.init_alphas(k)))(rngs.params())
    self.alphas = _Tree(alphas, Alpha)

  def __call__(self, x: jax.Array, op_weights: Optional[Params] = None) -> jax.Array:
    weights = op_weights if op_weights is not None else supernet.softmax_weights(self.alphas.value())
    return supernet.apply(self.weights.value(), x, weights, self.cfg)


def search_state(model: Supernet, hp, rng: jax.Array):
  """The `bilevel.SearchState` of a `Supernet` (its weights and α as plain pytrees, fresh optimizer states)."""
  return bilevel.init_state(model.weights.value(), model.alphas.value(), hp, rng)


def update_from_state(model: Supernet, state) -> None:
  """Writes a `bilevel.SearchState`'s weights and α back into `model`."""
  model.weights.assign(state.params)
  model.alphas.assign(state.alphas)


# --------------------------------------------------------------------------------------------------------
# Candidate operations as NNX modules.


def _module_op(factory: Callable[..., nnx.Module], weight_free: bool) -> ops.OpDef:
  """An `ops.OpDef` (the functional init/apply pair the supernet and networks run) of an NNX module factory
  ``factory(C, stride, affine, rngs=...)``: init splits a fresh module into its ``nnx.Param`` weights and the
  rest of its state; apply merges given values into the module's structure and calls it (with
  ``train=`` the network's mode, if its ``__call__`` takes that keyword). State other than
  weights (e.g. an ``nnx.BatchStat``) is the op's statistics where the caller tracks them (final networks);
  search cells track none, and the module then runs on its initial values of that state."""
  structures: Dict[Tuple[int, int], Dict[Any, Tuple[Any, Any, Any]]] = {}

  def split(c, stride, affine, key):
    return nnx.split(factory(c, stride, affine, rngs=nnx.Rngs(key)), nnx.Param, ...)

  def remember(c, stride, affine):
    graphdef, params, rest = split(c, stride, affine, 0)
    structures.setdefault((c, stride), {})[jax.tree.structure(params.to_pure_dict())] = (graphdef, params, rest)

  def init(key, c, stride, affine, track):
    _, params, rest = split(c, stride, affine, key)
    remember(c, stride, affine)
    return params.to_pure_dict(), (rest.to_pure_dict() if track else {})

  def with_values(state, pure=None):
    state = jax.tree.map(lambda v: v, state)   # fresh variables in this trace; the remembered ones stay as they are
    if pure:
      nnx.replace_by_pure_dict(state, pure)
    return state

  def apply(p, s, x, stride, ctx):
    c = x.shape[-1]
    known = structures.get((c, stride), {})
    if jax.tree.structure(p) not in known:   # weights made elsewhere (a checkpoint): find their structure
      remember(c, stride, False)
      remember(c, stride, True)
      known = structures[(c, stride)]
    graphdef, params, rest = known[jax.tree.structure(p)]
    module = nnx.merge(graphdef, with_values(params, p), with_values(rest, s))
    y = module(x, train=ctx.train) if _takes_train(module) else module(x)
    return y.astype(x.dtype), (nnx.state(module, nnx.Not(nnx.Param)).to_pure_dict() if s else {})

  return ops.OpDef(init, apply, weight_free=weight_free)


def _takes_train(module) -> bool:
  return "train" in inspect.signature(type(module).__call__).parameters


def register_op(name: str, factory: Callable[..., nnx.Module], weight_free: bool = False,
                override: bool = False) -> None:
  """Makes `name` a candidate operation: ``factory(C, stride, affine, rngs=...)`` builds an ``nnx.Module``
  mapping an NHWC batch with C channels to C channels at `stride` (``affine``: whether its BatchNorms learn
  a scale and bias; search cells build them without, final networks with). Put `name` in a `SearchSpace`'s
  primitives to search over it, or in a genotype to train it. Raises ValueError if `name` exists (unless
  `override`)."""
  if not override and name in ops.OPS:
    raise ValueError(f"operation {name!r} exists; pick another name or pass override=True")
  op = _module_op(factory, weight_free)
  ops.OPS[name] = op
  ops.SEARCH_OPS[name] = op
