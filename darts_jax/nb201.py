"""NAS-Bench-201: architecture strings, the tabular benchmark, and the search and final networks.

An NB201 architecture is a tuple of 6 op names, one per edge of `NB201_SPACE` in its edge order
(0->1, 0->2, 1->2, 0->3, 1->3, 2->3), written in the benchmark's string form
``|op~0|+|op~0|op~1|+|op~0|op~1|op~2|``.

The networks follow the NAS-Bench-201 macro skeleton (AutoDL's `TinyNetwork`): a 3×3 conv + BN stem, three
stages of N cells with C, 2C and 4C channels separated by stride-2 residual blocks, then BN + ReLU, global
average pooling and a linear classifier. Both networks are pure functions over explicit pytrees, and both
get their stem, residual blocks and classifier from the same per-layer keys, so a key gives the same
macro weights in either network.

The search supernet evaluates every cell with `supernet.mixed_cell_apply` and one α shared by all cells (as
in NB201's DARTS baseline); its cell BatchNorms are non-affine and use batch statistics, and its average pooling has no BatchNorm
after it (NB201's `POOLING`; DARTS' `MixedOp` adds one, see `SearchSpace.pool_batch_norm`). `NB201Config.partial_channels` gives the search network PC-DARTS'
partial channel connections, as in the DARTS space.

`is_connected` tells whether `none` edges cut the cell's input from its output (such cells score chance level
in the table); `network_param_count` is a cell's final-network size without initializing it.
"""
from __future__ import annotations

import csv
import dataclasses
import itertools
import os
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import ops, supernet
from darts_jax.search_space import NB201_PRIMITIVES, NB201_SPACE

Params = Dict[str, Any]
Arch = Tuple[str, ...]
ArchLike = Union[str, Sequence[str]]

NUM_EDGES = NB201_SPACE.num_edges
BENCHMARK_FILE = "nats_tss_200ep.csv"
DATASETS = ("cifar10", "cifar100", "imagenet16_120")

# --------------------------------------------------------------------------------------------------------
# Architectures.


def parse_arch(s: str) -> Arch:
  """Parses an NB201 architecture string (whitespace is ignored) into a tuple of 6 op names."""
  text = "".join(s.split())
  nodes = text.split("+")
  if len(nodes) != NB201_SPACE.num_nodes:
    raise ValueError(f"NB201 architecture {s!r} has {len(nodes)} nodes separated by '+', expected "
                     f"{NB201_SPACE.num_nodes}")
  by_edge: Dict[Tuple[int, int], str] = {}
  for j, node in enumerate(nodes, start=1):
    if len(node) < 2 or node[0] != "|" or node[-1] != "|":
      raise ValueError(f"NB201 architecture {s!r}: node {j} {node!r} must look like '|op~0|...|'")
    entries = node[1:-1].split("|")
    if len(entries) != j:
      raise ValueError(f"NB201 architecture {s!r}: node {j} has {len(entries)} entries, expected {j}")
    for i, entry in enumerate(entries):
      op, sep, src = entry.partition("~")
      if not sep or src != str(i):
        raise ValueError(f"NB201 architecture {s!r}: node {j} entry {entry!r} must read 'op~{i}'")
      if op not in NB201_PRIMITIVES:
        raise ValueError(f"NB201 architecture {s!r}: unknown op {op!r}; choose one of "
                         f"{', '.join(NB201_PRIMITIVES)}")
      by_edge[(i, j)] = op
  return tuple(by_edge[(e.src, e.dst)] for e in NB201_SPACE.edges)


def as_arch(arch: ArchLike) -> Arch:
  """Canonical tuple form of an architecture given as a string or a sequence of 6 op names."""
  if isinstance(arch, str):
    return parse_arch(arch)
  arch = tuple(arch)
  if len(arch) != NUM_EDGES:
    raise ValueError(f"an NB201 architecture has {NUM_EDGES} ops, got {len(arch)}")
  for op in arch:
    if op not in NB201_PRIMITIVES:
      raise ValueError(f"unknown NB201 op {op!r}; choose one of {', '.join(NB201_PRIMITIVES)}")
  return arch


def arch_to_string(arch: ArchLike) -> str:
  arch = as_arch(arch)
  nodes = [[] for _ in range(NB201_SPACE.num_nodes)]
  for e, op in zip(NB201_SPACE.edges, arch):
    nodes[e.dst - 1].append(f"{op}~{e.src}")
  return "+".join("|" + "|".join(entries) + "|" for entries in nodes)


def enumerate_archs() -> List[Arch]:
  """All 5**6 architectures, edge 0 varying slowest, ops in `NB201_PRIMITIVES` order."""
  return list(itertools.product(NB201_PRIMITIVES, repeat=NUM_EDGES))


def arch_from_alphas(alphas) -> Arch:
  """NB201's DARTS discretization: the argmax op of every edge, `none` included.

  Unlike the DARTS space (which drops `none` and keeps two edges per node), every NB201 edge keeps exactly
  one op, so the result may contain `none` and a node may even be all-zero.
  """
  a = np.asarray(alphas)
  if a.shape != NB201_SPACE.alpha_shape:
    raise ValueError(f"NB201 alphas must have shape {NB201_SPACE.alpha_shape}, got {a.shape}")
  return tuple(NB201_PRIMITIVES[i] for i in np.argmax(a, axis=-1))


def is_connected(arch: ArchLike) -> bool:
  """Whether some path of non-``none`` edges leads from the cell input (node 0) to its output (node 3). A
  disconnected cell outputs zeros whatever its input: the network then cannot beat chance."""
  ops_ = as_arch(arch)
  reach = {0}
  for e, op in zip(NB201_SPACE.edges, ops_):   # edges are ordered by destination, sources come first
    if op != "none" and e.src in reach:
      reach.add(e.dst)
  return NB201_SPACE.num_inputs + NB201_SPACE.num_nodes - 1 in reach


def random_arch(rng: Union[np.random.Generator, int, None] = None) -> Arch:
  rng = np.random.default_rng(rng)
  return tuple(NB201_PRIMITIVES[i] for i in rng.integers(0, len(NB201_PRIMITIVES), NUM_EDGES))


# --------------------------------------------------------------------------------------------------------
# The tabular benchmark.


def default_benchmark_path() -> Optional[Path]:
  """`$DARTS_JAX_BENCHMARK_DIR/nats_tss_200ep.csv`, else ../shared/benchmarks/ next to the repo, if it exists."""
  env = os.environ.get("DARTS_JAX_BENCHMARK_DIR")
  root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
  path = root / BENCHMARK_FILE
  return path if path.is_file() else None


@dataclasses.dataclass(frozen=True)
class Benchmark:
  """Accuracies of every NB201 cell. `columns` maps dataset names (e.g. "cifar10") to arrays over `archs`."""
  archs: Tuple[Arch, ...]
  columns: Dict[str, np.ndarray]
  index: Dict[Arch, int]

  def __len__(self) -> int:
    return len(self.archs)

  def accuracies(self, dataset: str = "cifar10") -> np.ndarray:
    key = dataset[:-len("_test_acc")] if dataset.endswith("_test_acc") else dataset
    if key not in self.columns:
      raise ValueError(f"unknown dataset {dataset!r}; the benchmark has {', '.join(self.columns)}")
    return self.columns[key]

  def query(self, arch: ArchLike, dataset: str = "cifar10") -> float:
    acc = self.accuracies(dataset)
    a = as_arch(arch)
    if a not in self.index:
      raise ValueError(f"architecture {arch_to_string(a)} is not in the benchmark")
    return float(acc[self.index[a]])

  def best(self, dataset: str = "cifar10") -> Tuple[Arch, float]:
    acc = self.accuracies(dataset)
    i = int(np.argmax(acc))
    return self.archs[i], float(acc[i])


def load_benchmark(path: Union[str, Path]) -> Benchmark:
  """Reads a CSV with an `arch` column and `<dataset>_test_acc` columns (see /work/shared/benchmarks)."""
  path = Path(path)
  if not path.is_file():
    raise ValueError(f"benchmark file {path} does not exist")
  with open(path, newline="") as f:
    reader = csv.reader(f)
    header = next(reader, None)
    if not header or header[0] != "arch":
      raise ValueError(f"{path}: the first column must be 'arch', got header {header}")
    names = [h[:-len("_test_acc")] for h in header[1:] if h.endswith("_test_acc")]
    if len(names) != len(header) - 1 or not names:
      raise ValueError(f"{path}: columns after 'arch' must be named '<dataset>_test_acc', got {header[1:]}")
    archs, values, index = [], [], {}
    for line, row in enumerate(reader, start=2):
      if len(row) != len(header):
        raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
      arch = parse_arch(row[0])
      if arch in index:
        raise ValueError(f"{path}:{line}: duplicate architecture {row[0]}")
      index[arch] = len(archs)
      archs.append(arch)
      try:
        values.append([float(v) for v in row[1:]])
      except ValueError:
        raise ValueError(f"{path}:{line}: non-numeric accuracy in {row[1:]}") from None
  table = np.asarray(values, np.float64).reshape(len(archs), len(names))
  table.flags.writeable = False
  return Benchmark(tuple(archs), {n: table[:, k] for k, n in enumerate(names)}, index)


def expected_best_of_n(accuracies, n: int) -> float:
  """Exact E[max accuracy] of n architectures drawn uniformly with replacement from `accuracies`.

  With a_(1) <= ... <= a_(M) sorted, P(max is the i-th order statistic's slot) = (i/M)^n - ((i-1)/M)^n;
  ties need no special care since tied values share one number.
  """
  if n < 1:
    raise ValueError(f"n={n}: need at least one draw")
  a = np.sort(np.asarray(accuracies, np.float64).ravel())
  if a.size == 0:
    raise ValueError("no accuracies given")
  cdf = np.arange(a.size + 1, dtype=np.float64) / a.size
  return float(np.sum(a * np.diff(cdf ** n)))


def random_search_curve(accuracies, ns: Iterable[int]) -> np.ndarray:
  """`expected_best_of_n` for every n in `ns`: the expected best of random search after n samples."""
  return np.array([expected_best_of_n(accuracies, int(n)) for n in ns])


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


def _macro_apply(params, stats, x, cfg: NB201Config, ctx: ops.Ctx, cell_apply):
  check_input(cfg, x.shape)
  if len(params["layers"]) != len(cfg.layers):
    raise ValueError(f"parameters have {len(params['layers'])} layers but N={cfg.N} needs {len(cfg.layers)}")
  new_stats: Params = {}
  h = ops.conv(x, params["stem"]["conv"], 1, 1)
  h, s = ops.batch_norm(h, params["stem"]["bn"], stats.get("stem", {}).get("bn", {}), ctx)
  layer_stats = stats.get("layers", [{}] * len(cfg.layers))
  new_layers = []
  for (_, reduction), p, st in zip(cfg.layers, params["layers"], layer_stats):
    h, st = _resblock_apply(p, st, h, ctx) if reduction else cell_apply(p, st, h)
    new_layers.append(st)
  h, s_last = ops.batch_norm(h, params["lastact"]["bn"], stats.get("lastact", {}).get("bn", {}), ctx)
  logits = jnp.mean(jax.nn.relu(h), axis=(1, 2)) @ params["classifier"]["w"] + params["classifier"]["b"]
  if stats:
    new_stats = {"stem": {"bn": s}, "layers": new_layers, "lastact": {"bn": s_last}}
  return logits, new_stats


def init_supernet(key, cfg: NB201Config) -> Params:
  """Weights of the NB201 search network (α excluded)."""
  cell_init = lambda k, c: (supernet.mixed_cell_init(k, NB201_SPACE, c, False, cfg.partial_channels), {})
  return _macro_init(key, cfg, cell_init, track=False)[0]


def init_alphas(key, scale: float = 1e-3) -> Params:
  """The single α shared by every cell, 1e-3·N(0, 1)."""
  return {"normal": scale * jax.random.normal(key, NB201_SPACE.alpha_shape, jnp.float32)}


def apply_supernet(params: Params, x: jax.Array, arch_weights: Params, cfg: NB201Config,
                   ctx: ops.Ctx = ops.Ctx()) -> jax.Array:
  """Logits of the search network. `arch_weights["normal"]` holds (6, 5) op weights shared by every cell,
  optionally `arch_weights["normal_edge"]` (6,) edge factors and `arch_weights["normal_offset"]` (6,) scalars
  added to the edges' outputs (`supernet.mixed_cell_apply`). BatchNorm always uses batch statistics."""
  w = arch_weights["normal"]
  if tuple(w.shape) != NB201_SPACE.alpha_shape:
    raise ValueError(f"arch_weights['normal'] must have shape {NB201_SPACE.alpha_shape}, got {tuple(w.shape)}")
  edge, offset = arch_weights.get("normal_edge"), arch_weights.get("normal_offset")
  ctx = ctx._replace(train=True, dw_impl=cfg.dw_impl if ctx.dw_impl == "auto" else ctx.dw_impl)

  def cell_apply(p, st, h):
    return supernet.mixed_cell_apply(p, [h], w, NB201_SPACE, False, ctx, cfg.partial_channels,
                                     edge_scale=edge, edge_offset=offset)[-1], st

  return _macro_apply(params, {}, x, cfg, ctx, cell_apply)[0]


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


def apply_network(params: Params, stats: Params, x: jax.Array, arch: ArchLike, cfg: NB201Config,
                  train: bool) -> Tuple[jax.Array, Params]:
  """(logits, new running statistics) of the final network; `train` selects batch statistics."""
  arch = as_arch(arch)
  if network_arch(params) != arch:
    raise ValueError(f"parameters were built for {arch_to_string(network_arch(params))}, "
                     f"not {arch_to_string(arch)}")
  ctx = ops.Ctx(train=train, dw_impl=cfg.dw_impl)

  def cell_apply(p, st, h):
    nodes, new = {0: h}, []
    for e, (edge, name) in enumerate(zip(NB201_SPACE.edges, arch)):
      y, s = ops.get_op(name).apply(p["edges"][e][name], st["edges"][e][name], nodes[edge.src], 1, ctx)
      new.append({name: s})
      nodes[edge.dst] = nodes[edge.dst] + y if edge.dst in nodes else y
    return nodes[NB201_SPACE.num_nodes], {"edges": new}

  return _macro_apply(params, stats, x, cfg, ctx, cell_apply)


def network_from_supernet(supernet_params: Params, arch: ArchLike, cfg: NB201Config) -> Tuple[Params, Params]:
  """A final network of `arch` inheriting the supernet's weights (weight-sharing evaluation).

  Cell BatchNorms start at the identity affine map and every running statistic at (0, 1). In training mode,
  the result computes what the supernet computes with one-hot weights on `arch`.
  """
  arch = as_arch(arch)
  params, stats = init_network(jax.random.PRNGKey(0), arch, cfg)
  where = {}
  for w_i, wave in enumerate(supernet.cell_waves(NB201_SPACE, False)):
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


def from_arch(arch: ArchLike, cfg: NB201Config = NB201Config(), seed: int = 0, rngs=None):
  """The final network of `arch` as a Flax NNX module (`darts_jax.modules.NB201Network`); `rngs` defaults to
  ``nnx.Rngs(seed)``."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from darts_jax import modules  # pylint: disable=g-import-not-at-top
  return modules.NB201Network(arch, cfg, rngs=rngs if rngs is not None else nnx.Rngs(seed))
