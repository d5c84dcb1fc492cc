"""The final DARTS networks built from a genotype (the reference's `model.py`: NetworkCIFAR, NetworkImageNet).

Pure functions over explicit pytrees: `init(key, cfg) -> (params, batch_stats)` and
`apply(params, batch_stats, x, cfg, train) -> (logits, aux_logits, new_batch_stats)`. Tensors are NHWC.
BatchNorm is affine with running statistics (momentum 0.1); training mode normalizes with the batch's
statistics and returns updated running statistics, evaluation mode uses (and returns unchanged) the running
ones.

Layout of `params` (`batch_stats` mirrors it wherever a BatchNorm sits):
  stem (CIFAR) or stem0/stem1 (ImageNet); cells[i] = {"pre0", "pre1", "ops": [one entry per genotype edge]};
  aux (only with `auxiliary`); classifier = {"w": (C_prev, classes), "b"}.

The numbers are the reference's for the inputs it accepts. Where it would fail, this port generalizes:
  * Odd feature-map sizes: FactorizedReduce pads its shifted path (see `ops`), so any input of at least
    `cfg.min_input_size` pixels works (e.g. 28×28 Fashion-MNIST).
  * ImageNet's final AvgPool2d(7) is a global average pool (the same on the 7×7 map of a 224×224 input).
  * Auxiliary heads assume one input size (8×8 for CIFAR, 7×7 for ImageNet), where AvgPool2d(5) leaves a 2×2
    map for the 2×2 convolution. On a 6×6 or 7×7 CIFAR map (28×28 inputs) the pooling's floor mode would
    leave 1×1, so the last window is taken partially (ceil mode, averaging only the pixels inside); on larger
    maps the 2×2 convolution's output is averaged globally before the linear layer. A map below 6×6
    raises a ValueError when the head runs (in training mode).
  * The reference's auxiliary head rectifies its input in place (ReLU(inplace=True)); with 3 cells it sits
    after the last cell, so in training mode the classifier pools the rectified output. This is reproduced.
"""
from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Dict, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax

from darts_jax import genotypes, layers, ops

Params = Dict[str, Any]
KINDS = ("cifar", "imagenet")
STEM_MULTIPLIER = 3
AUX_CHANNELS = (128, 768)
AUX_POOL = {"cifar": (5, 3), "imagenet": (5, 2)}  # AvgPool2d (kernel, stride) of the auxiliary heads.
AUX_MIN_SIZE = 6  # Smallest map the auxiliary heads accept: pooling (partial last window) must leave 2×2.


@dataclasses.dataclass(frozen=True)
class NetworkConfig:
  """A final DARTS network.

  Attributes:
    genotype: a `genotypes.Genotype`, a registry name ("DARTS_V2"), genotype text or a .json/.txt path;
      stored resolved and validated.
    C: initial channels (36 for the paper's CIFAR-10 network, 48 for ImageNet).
    layers: number of cells; reduction cells sit at layers//3 and 2*layers//3.
    auxiliary: build the auxiliary head (after cell 2*layers//3; its logits are returned in training mode).
    kind: "cifar" (3×3 stem, stride 1) or "imagenet" (three stride-2 3×3 convolutions).
    drop_path_prob: default drop-path probability in training mode (`apply` can override it per call).
    dw_impl: depthwise convolution implementation, see `ops.Ctx`.
  """
  genotype: Any = "DARTS_V2"
  C: int = 36
  num_classes: int = 10
  layers: int = 20
  auxiliary: bool = False
  in_channels: int = 3
  kind: str = "cifar"
  drop_path_prob: float = 0.0
  dw_impl: str = "auto"

  def __post_init__(self):
    spec = self.genotype
    if not isinstance(spec, (str, genotypes.Genotype)) and not hasattr(spec, "__fspath__"):
      raise ValueError(f"genotype must be a Genotype, a registry name, genotype text or a file path, "
                       f"got {type(spec).__name__}")
    g = genotypes.validate(genotypes.canonical(genotypes.resolve_genotype(spec)), primitives=tuple(ops.OPS))
    object.__setattr__(self, "genotype", g)
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r}; expected one of {', '.join(KINDS)}")
    if self.layers < 3:
      raise ValueError(f"layers={self.layers}: the DARTS network needs at least 3 layers "
                       "(reduction cells sit at layers//3 and 2*layers//3)")
    if self.C < 1 or self.num_classes < 1 or self.in_channels < 1:
      raise ValueError(f"C={self.C}, num_classes={self.num_classes} and in_channels={self.in_channels} "
                       "must be positive")
    if self.kind == "imagenet" and self.C % 2:
      raise ValueError(f"C={self.C}: the ImageNet network needs an even C (its stem has C/2 channels and its "
                       "first cell a factorized reduce)")
    if not 0.0 <= self.drop_path_prob < 1.0:
      raise ValueError(f"drop_path_prob={self.drop_path_prob} must be in [0, 1)")
    if self.dw_impl not in ("auto", "xla", "shift", "loop"):
      raise ValueError(f"dw_impl={self.dw_impl!r}; use 'auto', 'xla', 'shift' or 'loop'")

  def __hash__(self):  # Genotype holds lists; hash its text so configs can be static jit arguments.
    return hash((genotypes.to_text(self.genotype), self.C, self.num_classes, self.layers, self.auxiliary,
                 self.in_channels, self.kind, self.drop_path_prob, self.dw_impl))

  @property
  def reduction_layers(self) -> Tuple[int, int]:
    return (self.layers // 3, 2 * self.layers // 3)

  @property
  def auxiliary_layer(self) -> int:
    """Index of the cell whose output feeds the auxiliary head."""
    return 2 * self.layers // 3

  @property
  def downsampling(self) -> int:
    """Total stride: two reduction cells, plus three stride-2 stem convolutions for ImageNet."""
    return 4 if self.kind == "cifar" else 32

  @property
  def min_input_size(self) -> int:
    return self.downsampling


class CellSpec(NamedTuple):
  reduction: bool
  reduction_prev: bool
  c_prev_prev: int
  c_prev: int
  c: int
  ops: Tuple[Tuple[str, int, int], ...]  # (op name, input state, stride) per edge, node by node
  concat: Tuple[int, ...]
  nodes: Tuple[int, ...] = ()   # the state each edge adds into (`genotypes.cell_edges`)
  node_drop_path: bool = False  # drop path on each node's sum (FairDARTS' DCOCell), not on each edge


class Layout(NamedTuple):
  cells: Tuple[CellSpec, ...]
  c_aux: int  # channels entering the auxiliary head
  c_out: int  # channels entering the classifier


def layout(cfg: NetworkConfig) -> Layout:
  """Channels and operations of every cell, following the reference's constructor."""
  g = cfg.genotype
  if cfg.kind == "cifar":
    c_pp, c_p, c_curr = STEM_MULTIPLIER * cfg.C, STEM_MULTIPLIER * cfg.C, cfg.C
    reduction_prev = False
  else:
    c_pp, c_p, c_curr = cfg.C, cfg.C, cfg.C
    reduction_prev = True
  cells, c_aux = [], 0
  for i in range(cfg.layers):
    reduction = i in cfg.reduction_layers
    if reduction:
      c_curr *= 2
    which = "reduce" if reduction else "normal"
    edges, concat = genotypes.cell_edges(g, which), genotypes.cell_nodes(g, which)
    cell_ops = tuple((name, j, 2 if reduction and j < 2 else 1) for name, _, j in edges)
    cells.append(CellSpec(reduction, reduction_prev, c_pp, c_p, c_curr, cell_ops, tuple(concat),
                          tuple(node for _, node, _ in edges), genotypes.is_sparse(g)))
    reduction_prev = reduction
    c_pp, c_p = c_p, len(concat) * c_curr
    if i == cfg.auxiliary_layer:
      c_aux = c_p
  return Layout(tuple(cells), c_aux, c_p)


def check_input(cfg: NetworkConfig, x_shape) -> None:
  """Raises a one-line ValueError when an input batch cannot go through the network (`ops.check_images`)."""
  ops.check_images(x_shape, cfg.in_channels, cfg.min_input_size, network=f"the {cfg.kind} network",
                   reason=f"its {cfg.downsampling}x downsampling")


# --------------------------------------------------------------------------------------------------------
# Parameters.


def _linear_init(key, c_in, c_out):
  kw, kb = jax.random.split(key)
  return {"w": ops._uniform(kw, (c_in, c_out), c_in), "b": ops._uniform(kb, (c_out,), c_in)}


def _conv_bn_init(key, k, c_in, c_out, p, s, conv_name="conv", bn_name="bn"):
  p[conv_name] = ops.conv_init(key, k, k, c_in, c_out)
  p[bn_name], s[bn_name] = ops.bn_init(c_out, True, True)


def _cell_init(key, spec: CellSpec):
  k0, k1, k_ops = jax.random.split(key, 3)
  if spec.reduction_prev:
    pre0 = ops.factorized_reduce_init(k0, spec.c_prev_prev, spec.c, True, True)
  else:
    pre0 = ops.relu_conv_bn_init(k0, spec.c_prev_prev, spec.c, 1, True, True)
  pre1 = ops.relu_conv_bn_init(k1, spec.c_prev, spec.c, 1, True, True)
  op_p, op_s = [], []
  for e, (name, _, stride) in enumerate(spec.ops):
    p, s = ops.get_op(name).init(jax.random.fold_in(k_ops, e), spec.c, stride, True, True)
    op_p.append(p)
    op_s.append(s)
  return {"pre0": pre0[0], "pre1": pre1[0], "ops": op_p}, {"pre0": pre0[1], "pre1": pre1[1], "ops": op_s}


def init(key, cfg: NetworkConfig) -> Tuple[Params, Params]:
  """Parameters and BatchNorm running statistics, with PyTorch's default initialization."""
  lay = layout(cfg)
  k_stem, k_cells, k_aux, k_cls = jax.random.split(key, 4)
  params: Params = {}
  stats: Params = {}
  if cfg.kind == "cifar":
    params["stem"], stats["stem"] = {}, {}
    _conv_bn_init(k_stem, 3, cfg.in_channels, STEM_MULTIPLIER * cfg.C, params["stem"], stats["stem"])
  else:
    k0, k1, k2 = jax.random.split(k_stem, 3)
    params["stem0"], stats["stem0"], params["stem1"], stats["stem1"] = {}, {}, {}, {}
    _conv_bn_init(k0, 3, cfg.in_channels, cfg.C // 2, params["stem0"], stats["stem0"], "conv1", "bn1")
    _conv_bn_init(k1, 3, cfg.C // 2, cfg.C, params["stem0"], stats["stem0"], "conv2", "bn2")
    _conv_bn_init(k2, 3, cfg.C, cfg.C, params["stem1"], stats["stem1"])
  cells = [_cell_init(jax.random.fold_in(k_cells, i), spec) for i, spec in enumerate(lay.cells)]
  params["cells"] = [c[0] for c in cells]
  stats["cells"] = [c[1] for c in cells]
  if cfg.auxiliary:
    k1, k2, k3 = jax.random.split(k_aux, 3)
    c1, c2 = AUX_CHANNELS
    p, s = {}, {}
    _conv_bn_init(k1, 1, lay.c_aux, c1, p, s, "conv1", "bn1")
    p["conv2"] = ops.conv_init(k2, 2, 2, c1, c2)
    if cfg.kind == "cifar":  # The reference's ImageNet head has this BatchNorm commented out.
      p["bn2"], s["bn2"] = ops.bn_init(c2, True, True)
    p["classifier"] = _linear_init(k3, c2, cfg.num_classes)
    params["aux"], stats["aux"] = p, s
  params["classifier"] = _linear_init(k_cls, lay.c_out, cfg.num_classes)
  return params, stats


def count_params(params: Params, include_auxiliary: bool = False) -> int:
  """Number of trainable parameters; by default without the auxiliary head (the paper's convention)."""
  tree = params if include_auxiliary else {k: v for k, v in params.items() if k != "aux"}
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))


# --------------------------------------------------------------------------------------------------------
# Forward pass.


def _aux_pool(x, k, stride):
  """AvgPool2d(k, stride, padding=0, count_include_pad=False); where floor mode would leave a single
  row/column (maps of k+1 .. k+stride-1), the last window is partial, as in ceil mode."""
  pads = []
  for n in x.shape[1:3]:
    pads.append((0, 0) if (n - k) // stride + 1 >= 2 else (0, stride + k - n))
  window, strides = (1, k, k, 1), (1, stride, stride, 1)
  padding = ((0, 0), pads[0], pads[1], (0, 0))
  total = lax.reduce_window(x, 0.0, lax.add, window, strides, padding)
  count = lax.reduce_window(jnp.ones((1,) + x.shape[1:3] + (1,), x.dtype), 0.0, lax.add, window, strides,
                            padding)
  return total / count


def _aux_apply(p, s, x, cfg: NetworkConfig, ctx):
  h, w = x.shape[1:3]
  if h < AUX_MIN_SIZE or w < AUX_MIN_SIZE:
    raise ValueError(f"the auxiliary head needs a feature map of at least {AUX_MIN_SIZE}x{AUX_MIN_SIZE} "
                     f"after cell {cfg.auxiliary_layer}, got {h}x{w}; use larger inputs or auxiliary=False")
  new_s = {}
  y = _aux_pool(jax.nn.relu(x), *AUX_POOL[cfg.kind])
  y, new_s["bn1"] = ops.batch_norm(ops.conv(y, p["conv1"]), p["bn1"], s["bn1"], ctx)
  y = ops.conv(jax.nn.relu(y), p["conv2"])
  if "bn2" in p:
    y, new_s["bn2"] = ops.batch_norm(y, p["bn2"], s["bn2"], ctx)
  y = jnp.mean(jax.nn.relu(y), axis=(1, 2))  # 1×1 at the reference's input size
  return y @ p["classifier"]["w"] + p["classifier"]["b"], new_s




# --------------------------------------------------------------------------------------------------------
# The network as Flax NNX modules, each of whose calls runs its children.


class AuxHead(layers.Layer):
  """The auxiliary classifier after cell 2·layers//3 (the reference's AuxiliaryHeadCIFAR / ImageNet)."""

  def __init__(self, params, stats, cfg: NetworkConfig):
    super().__init__(params, stats, cfg.dw_impl)
    self.cfg = cfg

  def kernel(self, params, stats, x, ctx):
    return _aux_apply(params, stats, x, self.cfg, ctx)


class Cell(nnx.Module):
  """One cell of a final network: ``pre0`` and ``pre1`` (its inputs' preprocessing), ``ops[e]`` (a module per
  genotype edge, `layers.Op` as built) and ``spec`` (`CellSpec`: channels, reduction, each edge's input,
  stride and node). ``cell(s0, s1, train=..., drop_prob=..., key=...)`` runs the preprocessing, every edge
  and the node sums, with drop path where the reference applies it (on each edge but identities, or on each
  node's sum in FairDARTS' cells), and returns the concatenated output nodes. Replace ``ops[e]`` by any
  module mapping the edge's input to its output and the cell computes with it."""

  def __init__(self, spec: CellSpec, params, stats, dw_impl: str = "auto"):
    self.spec = spec
    if spec.reduction_prev:
      self.pre0 = layers.FactorizedReduce(params["pre0"], stats["pre0"], dw_impl)
    else:
      self.pre0 = layers.ReLUConvBN(params["pre0"], stats["pre0"], dw_impl=dw_impl)
    self.pre1 = layers.ReLUConvBN(params["pre1"], stats["pre1"], dw_impl=dw_impl)
    self.ops = nnx.List([layers.Op(name, spec.c, stride, trees=(p, s), dw_impl=dw_impl)
                         for (name, _, stride), p, s in zip(spec.ops, params["ops"], stats["ops"])])

  def __call__(self, s0, s1, *, train: bool = False, drop_prob=0.0, key=None):
    spec = self.spec
    states = {0: layers.call(self.pre0, s0, train), 1: layers.call(self.pre1, s1, train)}
    for e, (op, (name, j, stride)) in enumerate(zip(self.ops, spec.ops)):
      y = layers.call(op, states[j], train)
      # The reference skips drop path on Identity (stride-1 skip_connect) only.
      if key is not None and not spec.node_drop_path and not (name == "skip_connect" and stride == 1):
        y = ops.drop_path(y, drop_prob, jax.random.fold_in(key, e))
      node = spec.nodes[e]
      states[node] = states[node] + y if node in states else y
      if key is not None and spec.node_drop_path and (e + 1 == len(spec.ops) or spec.nodes[e + 1] != node):
        states[node] = ops.drop_path(states[node], drop_prob, jax.random.fold_in(key, len(spec.ops) + node))
    return jnp.concatenate([states[i] for i in spec.concat], axis=-1)

  def trees(self) -> Tuple[Params, Params]:
    """(params, batch_stats): this cell's entries of the functional network's ``cells`` lists (its children
    must be the `layers.Layer`s it was built with)."""
    children = {"pre0": self.pre0, "pre1": self.pre1}
    for k, child in list(children.items()) + [(f"ops[{e}]", op) for e, op in enumerate(self.ops)]:
      if not isinstance(child, layers.Layer):
        raise ValueError(f"cell child {k} is a {type(child).__name__}, which has no functional pytrees; "
                         "the functional network (networks.apply, interop, checkpoints) needs the built layers")
    out = {k: c.trees() for k, c in children.items()}
    op_trees = [op.trees() for op in self.ops]
    return ({**{k: t[0] for k, t in out.items()}, "ops": [t[0] for t in op_trees]},
            {**{k: t[1] for k, t in out.items()}, "ops": [t[1] for t in op_trees]})


class Network(nnx.Module):
  """A final DARTS network (`NetworkConfig`) as an NNX module.

  ``model(x)`` gives evaluation logits (running statistics); ``model(x, train=True)`` gives
  ``(logits, aux_logits)`` with batch statistics, updates the running statistics and applies drop path at
  ``model.drop_path_prob`` (keys from ``rngs.dropout``; aux_logits is None without the auxiliary head). Set
  ``model.drop_path_prob`` to schedule it (the reference raises it linearly over the epochs).

  Its children compute it: ``stem`` (ImageNet: ``stem0``, ``stem1``), ``cells[i]`` (a `Cell`, whose ``ops[e]``
  are `layers.Op`s), ``aux`` (with the auxiliary head) and ``classifier``. ``Network(cfg, rngs=...)``
  initializes it (`init`); ``Network(cfg, trees=(params, batch_stats))`` holds given functional pytrees;
  ``trees()`` gathers them back (`apply`, `interop`, checkpoints).
  """

  def __init__(self, cfg: NetworkConfig, *, rngs: Optional[nnx.Rngs] = None,
               trees: Optional[Tuple[Params, Params]] = None):
    if (rngs is None) == (trees is None):
      raise ValueError("Network needs exactly one of rngs= (fresh weights) and trees= (given (params, batch_stats))")
    params, stats = trees if trees is not None else init(rngs.params(), cfg)
    self.cfg = cfg
    if cfg.kind == "cifar":
      self.stem = layers.ConvBN(params["stem"], stats["stem"], (("conv", "bn", 1),), dw_impl=cfg.dw_impl)
    else:
      self.stem0 = layers.ConvBN(params["stem0"], stats["stem0"], (("conv1", "bn1", 2), ("conv2", "bn2", 2)),
                                 dw_impl=cfg.dw_impl)
      self.stem1 = layers.ConvBN(params["stem1"], stats["stem1"], (("conv", "bn", 2),), relu_first=True,
                                 dw_impl=cfg.dw_impl)
    self.cells = nnx.List([Cell(spec, p, s, cfg.dw_impl) for spec, p, s in
                           zip(layout(cfg).cells, params["cells"], stats["cells"])])
    if cfg.auxiliary:
      self.aux = AuxHead(params["aux"], stats["aux"], cfg)
    self.classifier = layers.Linear(params["classifier"], {})
    self.drop_path_prob = nnx.data(jnp.asarray(cfg.drop_path_prob, jnp.float32))
    self.rngs = rngs

  def __call__(self, x: jax.Array, *, train: bool = False):
    key = self.rngs.dropout() if train and self.rngs is not None else None
    logits, aux = self.forward(x, train=train, rng=key, drop_path_prob=self.drop_path_prob)
    return (logits, aux) if train else logits

  def forward(self, x: jax.Array, *, train: bool, rng=None, drop_path_prob=None):
    """(logits, aux_logits) with an explicit drop-path key and probability (see `apply`)."""
    cfg = self.cfg
    check_input(cfg, x.shape)
    p_drop = cfg.drop_path_prob if drop_path_prob is None else drop_path_prob
    if isinstance(p_drop, numbers.Real):
      if not 0.0 <= p_drop < 1.0:
        raise ValueError(f"drop_path_prob={p_drop} must be in [0, 1)")
      use_drop = train and p_drop > 0
    else:
      use_drop = train
    if use_drop and rng is None:
      raise ValueError("a training call with drop path needs a key: rngs= with a 'dropout' stream, an rng for "
                       "networks.apply, or drop_path_prob=0")
    if cfg.kind == "cifar":
      s0 = s1 = layers.call(self.stem, x, train)
    else:
      s0 = layers.call(self.stem0, x, train)
      s1 = layers.call(self.stem1, s0, train)
    aux_logits = None
    for i, cell in enumerate(self.cells):
      key = jax.random.fold_in(rng, i) if use_drop else None
      s0, s1 = s1, cell(s0, s1, train=train, drop_prob=p_drop, key=key)
      if i == cfg.auxiliary_layer and cfg.auxiliary and train:
        aux_logits = layers.call(self.aux, s1, train)
        if i == cfg.layers - 1:
          # The reference's head starts with ReLU(inplace=True), rectifying this cell's output in place. Later
          # cells begin with a ReLU anyway; only the classifier sees it, when this is the last cell (3 cells).
          s1 = jax.nn.relu(s1)
    return layers.call(self.classifier, jnp.mean(s1, axis=(1, 2)), train), aux_logits

  def trees(self) -> Tuple[Params, Params]:
    """(params, batch_stats) as `init` lays them out."""
    heads = ("stem",) if self.cfg.kind == "cifar" else ("stem0", "stem1")
    heads += ("aux",) if self.cfg.auxiliary else ()
    out = {k: getattr(self, k).trees() for k in heads}
    cells = [c.trees() for c in self.cells]
    params = {**{k: t[0] for k, t in out.items()}, "cells": [t[0] for t in cells],
              "classifier": self.classifier.trees()[0]}
    stats = {**{k: t[1] for k, t in out.items()}, "cells": [t[1] for t in cells]}
    return params, stats


def apply(params: Params, batch_stats: Params, x: jax.Array, cfg: NetworkConfig, train: bool,
          rng: Optional[jax.Array] = None, drop_path_prob=None):
  """Runs the network on an NHWC batch: the `Network` module holding the given pytrees.

  Args:
    train: training mode (batch statistics, running statistics updated, drop path, auxiliary logits).
    rng: key for drop path; required in training mode when the drop-path probability is not 0.
    drop_path_prob: overrides `cfg.drop_path_prob`. A Python number is static (0 compiles no drop path);
      an array may be traced (e.g. the reference's linearly increasing schedule without recompiling).

  Returns:
    (logits, aux_logits, new_batch_stats); aux_logits is None unless `train` and `cfg.auxiliary`.
  """
  model = Network(cfg, trees=(params, batch_stats))
  logits, aux = model.forward(x, train=train, rng=rng, drop_path_prob=drop_path_prob)
  return logits, aux, model.trees()[1]


def from_genotype(genotype, *, C: int, layers: int, num_classes: int, auxiliary: bool = False,
                  in_channels: int = 3, kind: str = "cifar", drop_path_prob: float = 0.0, seed: int = 0,
                  rngs=None) -> Network:
  """The final network of `genotype` (a `genotypes.Genotype`, a registry name, genotype text or a .json/.txt
  path) as a Flax NNX `Network`, for training in an ordinary Flax/optax loop: ``model(x)`` gives evaluation
  logits, ``model(x, train=True)`` ``(logits, aux_logits)``. `rngs` (an ``nnx.Rngs`` with ``params`` and
  ``dropout`` streams) defaults to ``nnx.Rngs(seed)``."""
  cfg = NetworkConfig(genotype=genotype, C=C, num_classes=num_classes, layers=layers, auxiliary=auxiliary,
                      in_channels=in_channels, kind=kind, drop_path_prob=drop_path_prob)
  return Network(cfg, rngs=rngs if rngs is not None else nnx.Rngs(seed))
