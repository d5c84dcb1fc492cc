"""NAS-Bench-201's search and final networks.

The networks follow the NAS-Bench-201 macro skeleton (AutoDL's `TinyNetwork`): a 3×3 conv + BN stem, three
stages of N cells with C, 2C and 4C channels separated by stride-2 residual blocks, then BN + ReLU, global
average pooling and a linear classifier. Both networks get their stem, residual blocks and classifier from the
same per-layer keys, so a key gives the same macro weights in either network.

The search supernet evaluates every cell with `supernet.mixed_cell_apply` and one α shared by all cells (as
in NB201's DARTS baseline); its cell BatchNorms are non-affine and use batch statistics, and its average
pooling has no BatchNorm after it (NB201's `POOLING`; DARTS' `MixedOp` adds one, see
`Topology.pool_batch_norm`). `NB201Config.partial_channels` gives the search network PC-DARTS' partial channel
connections, as in the DARTS space. `network_param_count` is a cell's final-network size without initializing
it.

Architectures and the benchmark table are `darts_jax.nb201_arch`'s; their names are re-exported here.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from darts_jax import layers, ops, supernet
from darts_jax.nb201_arch import (BENCHMARK_FILE, DATASETS, NUM_EDGES, Arch, ArchLike, Benchmark, arch_from_alphas,
                                  arch_to_string, as_arch, default_benchmark_path, enumerate_archs,
                                  expected_best_of_n, is_connected, load_benchmark, parse_arch, random_arch,
                                  random_search_curve)
from darts_jax.search_space import NB201_SPACE
from darts_jax.topology import NB201_CELL, NB201_PRIMITIVES

__all__ = ["BENCHMARK_FILE", "DATASETS", "NUM_EDGES", "NB201_PRIMITIVES", "Arch", "ArchLike", "Benchmark",
           "arch_from_alphas", "arch_to_string", "as_arch", "default_benchmark_path", "enumerate_archs",
           "expected_best_of_n", "is_connected", "load_benchmark", "parse_arch", "random_arch",
           "random_search_curve", "NB201Config", "check_input", "init_supernet", "init_alphas", "apply_supernet",
           "init_network", "network_arch", "ResBlock", "Cell", "Network", "apply_network", "network_from_supernet",
           "count_params", "network_param_count", "from_arch"]

Params = Dict[str, Any]
_STEM = (("conv", "bn", 1),)

# --------------------------------------------------------------------------------------------------------
# Networks.


@dataclasses.dataclass(frozen=True)
class NB201Config:
  """NB201 macro network: C channels in stage 1, N cells per stage. `partial_channels` (K of PC-DARTS) is
  for the search network only: 1/K of each state's channels go through the mixed ops."""
  C: int = 16
  N: int = 5
  num_classes: int = 10
  in_channels: int = 3
  dw_impl: str = "auto"
  partial_channels: int = 1

  def __post_init__(self):
    for name in ("C", "N", "num_classes", "in_channels"):
      if getattr(self, name) < 1:
        raise ValueError(f"NB201Config.{name}={getattr(self, name)} must be at least 1")
    if self.dw_impl not in ("auto", "xla", "shift", "loop"):
      raise ValueError(f"NB201Config.dw_impl={self.dw_impl!r}; use 'auto', 'xla', 'shift' or 'loop'")
    if self.partial_channels < 1 or self.C % self.partial_channels:
      raise ValueError(f"NB201Config.C={self.C} must be divisible by partial_channels={self.partial_channels}")

  @property
  def layers(self) -> Tuple[Tuple[int, bool], ...]:
    """(channels, is_reduction_block) of every layer after the stem."""
    stage = lambda c: [(c, False)] * self.N
    return tuple(stage(self.C) + [(2 * self.C, True)] + stage(2 * self.C) + [(4 * self.C, True)]
                 + stage(4 * self.C))


def check_input(cfg: NB201Config, x_shape) -> None:
  """Raises a one-line ValueError when an input batch cannot go through the network (`ops.check_images`)."""
  ops.check_images(x_shape, cfg.in_channels, 4, 4, network="the NAS-Bench-201 network",
                   reason="its two 2x2 reductions")


def _resblock_init(key, c_in, c_out, track):
  ka, kb, ks = jax.random.split(key, 3)
  pa, sa = ops.relu_conv_bn_init(ka, c_in, c_out, 3, True, track)
  pb, sb = ops.relu_conv_bn_init(kb, c_out, c_out, 3, True, track)
  params = {"conv_a": pa, "conv_b": pb, "shortcut": ops.conv_init(ks, 1, 1, c_in, c_out)}
  return params, ({"conv_a": sa, "conv_b": sb} if track else {})


def _resblock_apply(p, s, x, ctx):
  a, sa = ops.relu_conv_bn_apply(p["conv_a"], s.get("conv_a", {}), x, 2, 1, ctx)
  b, sb = ops.relu_conv_bn_apply(p["conv_b"], s.get("conv_b", {}), a, 1, 1, ctx)
  n, h, w, c = x.shape
  short = x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4)) @ p["shortcut"][0, 0]
  return short + b, ({"conv_a": sa, "conv_b": sb} if s else {})


def _macro_init(key, cfg: NB201Config, cell_init, track: bool):
  k_stem, k_layers, k_cls = jax.random.split(key, 3)
  params = {"stem": {"conv": ops.conv_init(k_stem, 3, 3, cfg.in_channels, cfg.C),
                     "bn": ops.bn_init(cfg.C, True, False)[0]}}
  stats = {"stem": {"bn": ops.bn_init(cfg.C, False, True)[1]}} if track else {}
  layers, layer_stats, c_prev = [], [], cfg.C
  for i, (c, reduction) in enumerate(cfg.layers):
    k = jax.random.fold_in(k_layers, i)
    p, s = _resblock_init(k, c_prev, c, track) if reduction else cell_init(k, c)
    layers.append(p)
    layer_stats.append(s)
    c_prev = c
  params["layers"] = layers
  c_last = 4 * cfg.C
  params["lastact"] = {"bn": ops.bn_init(c_last, True, False)[0]}
  kw, kb = jax.random.split(k_cls)
  params["classifier"] = {"w": ops._uniform(kw, (c_last, cfg.num_classes), c_last),
                          "b": ops._uniform(kb, (cfg.num_classes,), c_last)}
  if track:
    stats.update(layers=layer_stats, lastact={"bn": ops.bn_init(c_last, False, True)[1]})
  return params, stats


def _macro(x, cfg: NB201Config, stem, blocks, lastact, classifier):
  """The macro network on callables: stem, every cell or residual block, BN, ReLU, pooling, classifier."""
  check_input(cfg, x.shape)
  if len(blocks) != len(cfg.layers):
    raise ValueError(f"the network has {len(blocks)} layers but N={cfg.N} needs {len(cfg.layers)}")
  h = stem(x)
  for block in blocks:
    h = block(h)
  return classifier(jnp.mean(jax.nn.relu(lastact(h)), axis=(1, 2)))


def init_supernet(key, cfg: NB201Config) -> Params:
  """Weights of the NB201 search network (α excluded)."""
  cell_init = lambda k, c: (supernet.mixed_cell_init(k, NB201_CELL, c, False, cfg.partial_channels), {})
  return _macro_init(key, cfg, cell_init, track=False)[0]


def init_alphas(key, scale: float = 1e-3) -> Params:
  """The single α shared by every cell, 1e-3·N(0, 1) (`NB201Space.init_alphas`)."""
  return NB201_SPACE.init_alphas(key, scale)


def apply_supernet(params: Params, x: jax.Array, arch_weights: Params, cfg: NB201Config,
                   ctx: ops.Ctx = ops.Ctx()) -> jax.Array:
  """Logits of the search network. `arch_weights["normal"]` holds (6, 5) op weights shared by every cell,
  optionally `arch_weights["normal_edge"]` (6,) edge factors and `arch_weights["normal_offset"]` (6,) scalars
  added to the edges' outputs (`supernet.mixed_cell_apply`). BatchNorm always uses batch statistics."""
  w = arch_weights["normal"]
  if tuple(w.shape) != NB201_CELL.alpha_shape:
    raise ValueError(f"arch_weights['normal'] must have shape {NB201_CELL.alpha_shape}, got {tuple(w.shape)}")
  edge, offset = arch_weights.get("normal_edge"), arch_weights.get("normal_offset")
  ctx = ctx._replace(train=True, dw_impl=cfg.dw_impl if ctx.dw_impl == "auto" else ctx.dw_impl)

  def block(p, reduction):
    if reduction:
      return lambda h: _resblock_apply(p, {}, h, ctx)[0]
    return lambda h: supernet.mixed_cell_apply(p, [h], w, NB201_CELL, False, ctx, cfg.partial_channels,
                                               edge_scale=edge, edge_offset=offset)[-1]

  return _macro(x, cfg, lambda h: layers.conv_bn(params["stem"], {}, h, _STEM, False, ctx)[0],
                [block(p, r) for p, (_, r) in zip(params["layers"], cfg.layers)],
                lambda h: layers.batch_norm(params["lastact"], {}, h, ctx)[0],
                lambda h: h @ params["classifier"]["w"] + params["classifier"]["b"])


def _cell_init(key, c, arch: Arch):
  edges_p, edges_s = [], []
  for e, name in enumerate(arch):
    p, s = ops.get_op(name).init(jax.random.fold_in(key, e), c, 1, True, True)
    edges_p.append({name: p})
    edges_s.append({name: s})
  return {"edges": edges_p}, {"edges": edges_s}


def init_network(key, arch: ArchLike, cfg: NB201Config) -> Tuple[Params, Params]:
  """(params, running statistics) of the final network of `arch` (affine BatchNorm, tracked statistics).

  Each edge's parameters sit under its op's name, so `network_arch(params)` recovers the architecture.
  """
  arch = as_arch(arch)
  return _macro_init(key, cfg, lambda k, c: _cell_init(k, c, arch), track=True)


def network_arch(params: Params) -> Arch:
  """The architecture a final network's parameters were built for (all cells share it)."""
  cells = [p for p in params["layers"] if "edges" in p]
  archs = {tuple(next(iter(e)) for e in cell["edges"]) for cell in cells}
  if len(archs) != 1:
    raise ValueError(f"the network's cells disagree on their architecture: {sorted(archs)}")
  return archs.pop()


class ResBlock(layers.Layer):
  """NB201's stride-2 residual block between stages (`_resblock_apply`)."""

  def kernel(self, params, stats, x, ctx):
    return _resblock_apply(params, stats, x, ctx)


class Cell(nnx.Module):
  """A final NB201 cell: ``edges[e]``, one module per edge of the cell (`layers.Op` as built), in
  `NB201_CELL`'s edge order; a call sums each node's incoming edges and returns the last node. Replace an
  edge by any module mapping its input to its output and the cell computes with it."""

  def __init__(self, arch: Arch, C: int, params, stats, dw_impl: str = "auto"):
    self.arch = arch
    self.edges = nnx.List([layers.Op(name, C, 1, trees=(p[name], st[name]), dw_impl=dw_impl)
                           for name, p, st in zip(arch, params["edges"], stats["edges"])])

  def __call__(self, h, *, train: bool = False):
    nodes = {0: h}
    for edge, op in zip(NB201_CELL.edges, self.edges):
      y = layers.call(op, nodes[edge.src], train)
      nodes[edge.dst] = nodes[edge.dst] + y if edge.dst in nodes else y
    return nodes[NB201_CELL.num_nodes]

  def trees(self) -> Tuple[Params, Params]:
    for e, op in enumerate(self.edges):
      if not isinstance(op, layers.Op):
        raise ValueError(f"cell edge {e} is a {type(op).__name__}, which has no functional pytrees")
    t = [op.trees() for op in self.edges]
    return ({"edges": [{n: x[0]} for n, x in zip(self.arch, t)]},
            {"edges": [{n: x[1]} for n, x in zip(self.arch, t)]})


class Network(nnx.Module):
  """A NAS-Bench-201 final network (`init_network`) as an NNX module whose children compute it: ``stem``,
  ``layers[i]`` (a `Cell` or a `ResBlock`), ``lastact`` and ``classifier``. ``model(x)`` gives evaluation
  logits, ``model(x, train=True)`` training logits (batch statistics, running ones updated).
  ``Network(arch, cfg, rngs=...)`` initializes it; ``trees=(params, batch_stats)`` holds given pytrees."""

  def __init__(self, arch: ArchLike, cfg: NB201Config, *, rngs: Optional[nnx.Rngs] = None,
               trees: Optional[Tuple[Params, Params]] = None):
    if (rngs is None) == (trees is None):
      raise ValueError("Network needs exactly one of rngs= (fresh weights) and trees= (given (params, batch_stats))")
    self.arch, self.cfg = as_arch(arch), cfg
    params, stats = trees if trees is not None else init_network(rngs.params(), self.arch, cfg)
    if network_arch(params) != self.arch:
      raise ValueError(f"parameters were built for {arch_to_string(network_arch(params))}, "
                       f"not {arch_to_string(self.arch)}")
    self.stem = layers.ConvBN(params["stem"], stats["stem"], _STEM, dw_impl=cfg.dw_impl)
    self.layers = nnx.List([
        ResBlock(p, s, cfg.dw_impl) if reduction else Cell(self.arch, c, p, s, cfg.dw_impl)
        for (c, reduction), p, s in zip(cfg.layers, params["layers"], stats["layers"])])
    self.lastact = layers.BatchNorm(params["lastact"], stats["lastact"], cfg.dw_impl)
    self.classifier = layers.Linear(params["classifier"], {})

  def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
    run = lambda m: lambda h: layers.call(m, h, train)
    return _macro(x, self.cfg, run(self.stem), [run(m) for m in self.layers], run(self.lastact),
                  run(self.classifier))

  def trees(self) -> Tuple[Params, Params]:
    """(params, batch_stats) as `init_network` lays them out."""
    t = {k: getattr(self, k).trees() for k in ("stem", "lastact")}
    blocks = [m.trees() for m in self.layers]
    return ({**{k: v[0] for k, v in t.items()}, "layers": [b[0] for b in blocks],
             "classifier": self.classifier.trees()[0]},
            {**{k: v[1] for k, v in t.items()}, "layers": [b[1] for b in blocks]})


def apply_network(params: Params, stats: Params, x: jax.Array, arch: ArchLike, cfg: NB201Config,
                  train: bool) -> Tuple[jax.Array, Params]:
  """(logits, new running statistics) of the final network (the `Network` module holding the given
  pytrees); `train` selects batch statistics."""
  model = Network(arch, cfg, trees=(params, stats))
  return model(x, train=train), model.trees()[1]


def network_from_supernet(supernet_params: Params, arch: ArchLike, cfg: NB201Config) -> Tuple[Params, Params]:
  """A final network of `arch` inheriting the supernet's weights (weight-sharing evaluation).

  Cell BatchNorms start at the identity affine map and every running statistic at (0, 1). In training mode,
  the result computes what the supernet computes with one-hot weights on `arch`.
  """
  arch = as_arch(arch)
  params, stats = init_network(jax.random.PRNGKey(0), arch, cfg)
  where = {}
  for w_i, wave in enumerate(supernet.cell_waves(NB201_CELL, False)):
    for (s_i, d_i), e in np.ndenumerate(wave.edge_ids):
      where[int(e)] = (w_i, s_i, d_i)
  layers = []
  for sp, p in zip(supernet_params["layers"], params["layers"]):
    if "edges" not in p:
      layers.append(sp)
      continue
    edges = []
    for e, (name, ep) in enumerate(zip(arch, p["edges"])):
      ep = dict(ep[name])
      if "conv" in ep:
        w_i, s_i, d_i = where[e]
        ep["conv"] = sp["waves"][w_i][name]["conv"][s_i, d_i]
      edges.append({name: ep})
    layers.append({"edges": edges})
  params = dict(params, stem=supernet_params["stem"], layers=layers, lastact=supernet_params["lastact"],
                classifier=supernet_params["classifier"])
  return params, stats


def count_params(params: Params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def network_param_count(arch: ArchLike, cfg: NB201Config = NB201Config()) -> int:
  """Parameters of the final NB201 network of `arch` (default: the benchmark's C=16, N=5, 10 classes),
  from shapes alone (nothing is initialized)."""
  shapes = jax.eval_shape(lambda k: init_network(k, arch, cfg)[0], jax.random.PRNGKey(0))
  return count_params(shapes)


def from_arch(arch: ArchLike, cfg: NB201Config = NB201Config(), seed: int = 0, rngs=None) -> Network:
  """The final network of `arch` as a Flax NNX `Network`; `rngs` defaults to ``nnx.Rngs(seed)``."""
  return Network(arch, cfg, rngs=rngs if rngs is not None else nnx.Rngs(seed))
