"""Flax NNX modules over darts_jax's functional models, for users' own Flax/optax code.

* `Network` (`networks.from_genotype`) and `NB201Network` (`nb201.from_arch`): a final network as an
  ``nnx.Module``, its weights ``nnx.Param`` and its BatchNorm running statistics ``nnx.BatchStat``; calling it
  runs `networks.apply` / `nb201.apply_network`, the functions the reference fixtures and the interop loaders
  check, so a module and the functional network give the same numbers. A `Network`'s layers are submodules
  (``model.cells[i]`` a `Cell`, ``model.cells[i].ops[e]`` an `Op`).
* `Op`: a built-in candidate operation (``sep_conv_3x3``, ``max_pool_3x3``, ...) as a layer of one's own model,
  computing what `ops.get_op` computes.
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


class _Layer(nnx.Module):
  """One layer's functional pytrees held as variables: its weights (`_Tree` of ``nnx.Param``) and its BatchNorm
  running statistics (`_Tree` of ``nnx.BatchStat``)."""

  def __init__(self, params, stats):
    self.params = _Tree(params, nnx.Param)
    self.batch_stats = _Tree(stats, nnx.BatchStat)

  def trees(self) -> Tuple[Params, Params]:
    """(params, batch_stats) as the functional pytrees (`ops`, `networks.apply`, `nb201.apply_network`,
    `interop`)."""
    return self.params.value(), self.batch_stats.value()

  def _set_stats(self, stats) -> None:
    self.batch_stats.assign(stats)


class Op(_Layer):
  """A candidate operation (any name in `ops.OPS`: the built-in ones or those of `register_op`) as an NNX
  module, to use a DARTS op as a layer in one's own Flax model.

  ``Op(name, C, stride, affine=True, rngs=...)`` initializes it like a final network's edge: weights from
  ``rngs.params`` as ``nnx.Param`` (``affine``: whether its BatchNorms learn a scale and bias) and tracked
  BatchNorm running statistics as ``nnx.BatchStat``; a weight-free op (pooling, ``none``, stride-1
  ``skip_connect``) holds neither. ``trees=(params, batch_stats)`` holds given functional pytrees instead (e.g.
  an edge of a trained network). ``op(x)`` is evaluation mode (running statistics); ``op(x, train=True)``
  normalizes with the batch's statistics and updates the running ones in the module. Either runs the
  functional op, ``ops.get_op(name).apply``, so the numbers are the functional op's. ``dw_impl``: depthwise
  convolution implementation (`ops.Ctx`).
  """

  def __init__(self, name: str, C: int, stride: int = 1, *, affine: bool = True,
               rngs: Optional[nnx.Rngs] = None, trees: Optional[Tuple[Params, Params]] = None,
               dw_impl: str = "auto"):
    if (rngs is None) == (trees is None):
      raise ValueError("Op needs exactly one of rngs= (fresh weights) and trees= (given (params, batch_stats))")
    opdef = ops.get_op(name)
    super().__init__(*(trees if trees is not None else opdef.init(rngs.params(), C, stride, affine, True)))
    self.name, self.C, self.stride, self.dw_impl = name, C, stride, dw_impl

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    params, stats = self.trees()
    y, new_stats = ops.get_op(self.name).apply(params, stats, x, self.stride,
                                               ops.Ctx(train=train, dw_impl=self.dw_impl))
    if train:
      self._set_stats(new_stats)
    return y


class Cell(nnx.Module):
  """One cell of a final `Network`, for inspecting (or changing) its weights and statistics layer by layer:
  ``pre0`` and ``pre1`` (the two inputs' preprocessing, `_Layer`s) and ``ops[e]``, an `Op` per genotype edge
  (callable on its own); ``spec`` is its `networks.CellSpec` (channels, reduction, each edge's input and
  stride). The network runs all cells together through `networks.apply`."""

  def __init__(self, spec, params, stats, dw_impl: str = "auto"):
    self.spec = spec
    self.pre0 = _Layer(params["pre0"], stats["pre0"])
    self.pre1 = _Layer(params["pre1"], stats["pre1"])
    self.ops = nnx.List([Op(name, spec.c, stride, trees=(p, s), dw_impl=dw_impl)
                         for (name, _, stride), p, s in zip(spec.ops, params["ops"], stats["ops"])])

  def trees(self) -> Tuple[Params, Params]:
    """(params, batch_stats): this cell's entries of the functional network's ``cells`` lists."""
    layers = {"pre0": self.pre0.trees(), "pre1": self.pre1.trees()}
    op_trees = [op.trees() for op in self.ops]
    return ({**{k: t[0] for k, t in layers.items()}, "ops": [t[0] for t in op_trees]},
            {**{k: t[1] for k, t in layers.items()}, "ops": [t[1] for t in op_trees]})

  def _set_stats(self, stats) -> None:
    self.pre0._set_stats(stats["pre0"])
    self.pre1._set_stats(stats["pre1"])
    for op, s in zip(self.ops, stats["ops"]):
      op._set_stats(s)


class Network(nnx.Module):
  """A final DARTS network (`networks.NetworkConfig`) as an NNX module.

  ``model(x)`` gives evaluation logits (running statistics); ``model(x, train=True)`` gives
  ``(logits, aux_logits)`` with batch statistics, updates the running statistics and applies drop path at
  ``cfg.drop_path_prob`` (keys from ``rngs.dropout``; aux_logits is None without the auxiliary head). Set
  ``model.drop_path_prob`` to schedule it (the reference raises it linearly over the epochs).

  Its layers are submodules: ``stem`` (ImageNet: ``stem0``, ``stem1``), ``cells[i]`` (a `Cell`, whose
  ``ops[e]`` are `Op`s), ``aux`` (with the auxiliary head) and ``classifier``; ``trees()`` gathers them into
  the functional pytrees, on which a call runs `networks.apply` as a whole.
  """

  def __init__(self, cfg, *, rngs: nnx.Rngs):
    params, stats = networks.init(rngs.params(), cfg)
    self.cfg = cfg
    self.cells = nnx.List([Cell(spec, p, s, cfg.dw_impl) for spec, p, s in
                           zip(networks.layout(cfg).cells, params["cells"], stats["cells"])])
    self._heads = tuple(k for k in params if k != "cells")
    self._stat_keys = tuple(stats)   # the classifier has no statistics; trees() keeps networks.init's keys
    for k in self._heads:
      setattr(self, k, _Layer(params[k], stats.get(k, {})))
    self.drop_path_prob = nnx.data(jnp.asarray(cfg.drop_path_prob, jnp.float32))
    self.rngs = rngs

  def trees(self) -> Tuple[Params, Params]:
    """(params, batch_stats) as `networks.init` lays them out (`networks.apply`, `interop`)."""
    heads = {k: getattr(self, k).trees() for k in self._heads}
    cells = [c.trees() for c in self.cells]
    params = {**{k: t[0] for k, t in heads.items()}, "cells": [t[0] for t in cells]}
    stats = {**{k: t[1] for k, t in heads.items()}, "cells": [t[1] for t in cells]}
    return params, {k: stats[k] for k in self._stat_keys}

  def __call__(self, x: jax.Array, *, train: bool = False):
    key = self.rngs.dropout() if train else None
    params, stats = self.trees()
    logits, aux, new_stats = networks.apply(params, stats, x, self.cfg, train, rng=key,
                                            drop_path_prob=self.drop_path_prob)
    if not train:
      return logits
    for k, s in new_stats.items():
      if k == "cells":
        for cell, cs in zip(self.cells, s):
          cell._set_stats(cs)
      else:
        getattr(self, k)._set_stats(s)
    return logits, aux


class NB201Network(_Layer):
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
