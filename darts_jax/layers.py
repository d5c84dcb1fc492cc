"""Flax NNX layers over darts_jax's kernels: the building blocks of the final networks' modules.

* `Layer`: one layer's weights (``nnx.Param``) and BatchNorm running statistics (``nnx.BatchStat``), laid out
  as the functional pytrees of `darts_jax.ops` (so checkpoints, the interop loaders and the reference
  fixtures read and write them unchanged); calling a layer runs its kernel on them. In training mode
  (``train=True``) BatchNorm normalizes with the batch's statistics and the layer updates its running ones.
* `Op`: a candidate operation (``sep_conv_3x3``, ``max_pool_3x3``, ...; any name in `ops.OPS`) as a layer.
  `ReLUConvBN`, `FactorizedReduce`, `ConvBN`, `BatchNorm` and `Linear`: the cells' preprocessing, stems and classifiers.
* `Alpha`: the variable type of architecture parameters.
* `register_op`: a candidate operation defined as an NNX module, usable in search spaces and final networks
  like the built-in ones.
* `call`: runs a child module with the network's mode, whether or not its ``__call__`` takes ``train``.

Each op and each kernel is defined once, in `darts_jax.ops`; a layer is its variables and its call.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, Callable, Dict, Optional, Tuple

import jax
from flax import nnx

from darts_jax import ops

Params = Dict[str, Any]


class Alpha(nnx.Variable):
  """Architecture parameters α: a variable type of their own, so that ``nnx.split(module, Alpha, ...)`` and
  optimizers with ``wrt=nnx.Param`` keep them apart from the weights."""


class Tree(nnx.Module):
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


def takes_train(module) -> bool:
  """Whether a module's ``__call__`` takes the ``train`` keyword."""
  return _call_takes_train(type(module))


@functools.lru_cache(maxsize=None)
def _call_takes_train(cls) -> bool:
  return "train" in inspect.signature(cls.__call__).parameters


def call(module, x, train: bool):
  """``module(x, train=train)``, or ``module(x)`` for a module without a mode (e.g. ``nnx.Conv``)."""
  return module(x, train=train) if takes_train(module) else module(x)


class Layer(nnx.Module):
  """One layer's functional pytrees held as variables: ``params`` (a `Tree` of ``nnx.Param``) and
  ``batch_stats`` (a `Tree` of ``nnx.BatchStat``). Subclasses define `kernel`; a call runs it in the given
  mode and, in training mode, stores the updated running statistics."""

  def __init__(self, params, stats, dw_impl: str = "auto"):
    self.params = Tree(params, nnx.Param)
    self.batch_stats = Tree(stats, nnx.BatchStat)
    self.dw_impl = dw_impl

  def trees(self) -> Tuple[Params, Params]:
    """(params, batch_stats) as the functional pytrees (`darts_jax.ops`, `networks.apply`, `interop`)."""
    return self.params.value(), self.batch_stats.value()

  def kernel(self, params, stats, x, ctx: ops.Ctx):
    """(output, new statistics) of the layer's functional kernel."""
    raise NotImplementedError

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    params, stats = self.trees()
    y, new_stats = self.kernel(params, stats, x, ops.Ctx(train=train, dw_impl=self.dw_impl))
    if train and stats:
      self.batch_stats.assign(new_stats)
    return y


class Op(Layer):
  """A candidate operation (any name in `ops.OPS`: the built-in ones or those of `register_op`) as an NNX
  module, for a final network's edge or a layer of one's own model.

  ``Op(name, C, stride, affine=True, rngs=...)`` initializes it like a final network's edge: weights from
  ``rngs.params`` (``affine``: whether its BatchNorms learn a scale and bias) and tracked running statistics;
  a weight-free op (pooling, ``none``, stride-1 ``skip_connect``) holds neither. ``trees=(params,
  batch_stats)`` holds given functional pytrees instead (e.g. an edge of a trained network). ``op(x)`` is
  evaluation mode, ``op(x, train=True)`` training mode. ``dw_impl``: depthwise convolution implementation
  (`ops.Ctx`).
  """

  def __init__(self, name: str, C: int, stride: int = 1, *, affine: bool = True,
               rngs: Optional[nnx.Rngs] = None, trees: Optional[Tuple[Params, Params]] = None,
               dw_impl: str = "auto"):
    if (rngs is None) == (trees is None):
      raise ValueError("Op needs exactly one of rngs= (fresh weights) and trees= (given (params, batch_stats))")
    opdef = ops.get_op(name)
    super().__init__(*(trees if trees is not None else opdef.init(rngs.params(), C, stride, affine, True)),
                     dw_impl=dw_impl)
    self.name, self.C, self.stride = name, C, stride

  def kernel(self, params, stats, x, ctx):
    return ops.get_op(self.name).apply(params, stats, x, self.stride, ctx)


class ReLUConvBN(Layer):
  """ReLU, a convolution (no bias) and BatchNorm (`ops.relu_conv_bn_apply`): a cell's preprocessing."""

  def __init__(self, params, stats, stride: int = 1, pad: int = 0, dw_impl: str = "auto"):
    super().__init__(params, stats, dw_impl)
    self.stride, self.pad = stride, pad

  def kernel(self, params, stats, x, ctx):
    return ops.relu_conv_bn_apply(params, stats, x, self.stride, self.pad, ctx)


class FactorizedReduce(Layer):
  """ReLU and two offset stride-2 1×1 convolutions, concatenated, then BatchNorm
  (`ops.factorized_reduce_apply`): the preprocessing of a cell's input from before a reduction."""

  def kernel(self, params, stats, x, ctx):
    return ops.factorized_reduce_apply(params, stats, x, ctx)


def conv_bn(params, stats, x, convs, relu_first: bool, ctx: ops.Ctx):
  """Convolutions each followed by BatchNorm, with ReLUs between (and before, with `relu_first`): a stem.
  `convs` names (conv, bn, stride) of each step in `params`; `stats` may be empty (search networks)."""
  new = {}
  for i, (conv, bn, stride) in enumerate(convs):
    if i or relu_first:
      x = jax.nn.relu(x)
    x, new[bn] = ops.batch_norm(ops.conv(x, params[conv], stride, 1), params[bn], stats.get(bn, {}), ctx)
  return x, (new if stats else {})


class ConvBN(Layer):
  """A stem's convolutions and BatchNorms (`conv_bn`)."""

  def __init__(self, params, stats, convs, relu_first: bool = False, dw_impl: str = "auto"):
    super().__init__(params, stats, dw_impl)
    self.convs, self.relu_first = tuple(convs), relu_first

  def kernel(self, params, stats, x, ctx):
    return conv_bn(params, stats, x, self.convs, self.relu_first, ctx)


def batch_norm(params, stats, x, ctx: ops.Ctx):
  """BatchNorm of ``params["bn"]`` (statistics ``stats["bn"]``, or none in search networks)."""
  y, new = ops.batch_norm(x, params["bn"], stats.get("bn", {}), ctx)
  return y, ({"bn": new} if stats else {})


class BatchNorm(Layer):
  """An affine BatchNorm (`batch_norm`)."""

  def kernel(self, params, stats, x, ctx):
    return batch_norm(params, stats, x, ctx)


class Linear(Layer):
  """A linear layer on pooled features: ``x @ w + b``."""

  def kernel(self, params, stats, x, ctx):
    del ctx
    return x @ params["w"] + params["b"], stats


# --------------------------------------------------------------------------------------------------------
# Candidate operations defined as NNX modules.


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
    y = call(module, x, ctx.train)
    return y.astype(x.dtype), (nnx.state(module, nnx.Not(nnx.Param)).to_pure_dict() if s else {})

  return ops.OpDef(init, apply, weight_free=weight_free)


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
