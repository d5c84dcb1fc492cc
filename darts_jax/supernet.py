"""The DARTS supernet: cells whose every edge is a mixed operation Σ_o w_o · o(x).

Parameters are explicit pytrees, and α is not among them: `apply` takes the per-edge op weights (softmax(α)
for DARTS; other methods make them differently), so weights and α are differentiated and optimized apart.

Program layout, chosen for XLA compile time (benchmarks/README.md): a cell is evaluated in *waves*. Wave 0 holds
every edge leaving the cell inputs (in a reduction cell, exactly the stride-2 edges); wave t ≥ 1 holds the
edges leaving intermediate node t-1. All edges of a wave share their input shape, so each parametric
primitive runs once per wave as a call vmapped over the wave's edges with stacked parameters, and each
weight-free primitive (pooling + non-affine BatchNorm, identity) runs once per source state and is shared by
every edge leaving it. `none` costs nothing. The numbers are those of the reference's edge-by-edge loop.

`darts_jax.steps.edgewise` computes the same network's gradients another way, as a chain of small programs
(the ``edgewise`` step backend), from this module's public units (`stem`, `preprocess`, `search_op`, `head`).

Memory (`SupernetConfig.remat`, `remat_policy`, `compute_dtype`): ``remat="op"`` wraps each unit (a wave's
mixed op in `apply`, an edge, a state's shared weight-free ops, a cell's preprocessing and the stem in the
chain) in `jax.checkpoint`, so its backward recomputes what the policy does not save; ``remat="cell"`` does so
per cell (in the chain: a cell's forward programs run again before its backward, from the cell's two inputs).
``compute_dtype="bfloat16"`` runs activations and convolutions in bfloat16 (the image is cast after loading;
`darts_jax.ops` computes in its input's dtype), while the weights, α, the op-weight softmax, BatchNorm
statistics and normalization, the logits and the loss stay float32. ``compute_dtype="float64"`` (with
``jax_enable_x64`` and float64 weights) computes everything in float64, for checks that must not see float32
rounding (tests/_mesh_checks.py).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import ops
from darts_jax.search_space import DARTS_SPACE, SearchSpace

Params = Dict[str, Any]


class Wave(NamedTuple):
  sources: Tuple[int, ...]
  dsts: Tuple[int, ...]
  stride: int
  edge_ids: np.ndarray  # (len(sources), len(dsts)) indices into the space's edge list


def cell_waves(space: SearchSpace, reduction: bool) -> List[Wave]:
  waves = [Wave(tuple(range(space.num_inputs)),
                tuple(range(space.num_inputs, space.num_inputs + space.num_nodes)),
                2 if reduction else 1, None)]
  for t in range(space.num_nodes - 1):
    src = space.num_inputs + t
    waves.append(Wave((src,), tuple(range(src + 1, space.num_inputs + space.num_nodes)), 1, None))
  return [w._replace(edge_ids=np.array([[space.edge_index(s, d) for d in w.dsts] for s in w.sources]))
          for w in waves]


def stack_trees(trees):
  """The trees stacked leaf by leaf on a new leading axis (a wave's edges, vmapped)."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def mixed_cell_init(key, space: SearchSpace, C: int, reduction: bool, partial_channels: int = 1) -> Params:
  """Stacked parameters of every parametric primitive on every edge, wave by wave."""
  c = C // partial_channels
  waves = []
  for wave in cell_waves(space, reduction):
    wave_params = {}
    for name in space.primitives:
      if ops.is_weight_free(name, wave.stride):
        continue
      op = ops.get_op(name, search=True)
      per_src = []
      for s_i in range(len(wave.sources)):
        per_dst = []
        for d_i in range(len(wave.dsts)):
          edge_key = jax.random.fold_in(jax.random.fold_in(key, int(wave.edge_ids[s_i, d_i])),
                                        space.primitive_index(name))
          per_dst.append(op.init(edge_key, c, wave.stride, False, False)[0])
        per_src.append(stack_trees(per_dst))
      wave_params[name] = stack_trees(per_src)
    waves.append(wave_params)
  return {"waves": waves}


def channel_shuffle(x, groups):
  """PC-DARTS' channel shuffle of the last axis into `groups` groups."""
  *lead, c = x.shape
  return x.reshape(*lead, groups, c // groups).swapaxes(-1, -2).reshape(*lead, c)


def _static_take(x, ids: np.ndarray):
  """x[ids] for a static index array, as slices and a stack (a gather's VJP is a scatter, slow to compile)."""
  rows = [x[int(i)] for i in np.ravel(ids)]
  return jnp.stack(rows).reshape(ids.shape + x.shape[1:])


def _weighted_sum(a, y):
  """Σ_s a[s, d] · y[s, d] as a broadcast multiply-add (XLA's CPU dot is slow for this shape)."""
  a = a.reshape(a.shape + (1,) * (y.ndim - 2)).astype(y.dtype)
  return jnp.sum(a * y, axis=0)


REMAT_MODES = ("auto", "none", "op", "cell")
REMAT_POLICIES = ("nothing", "dots", "convs", "depthwise")
COMPUTE_DTYPES = ("float32", "bfloat16", "float64")


def remat_policy(name: str):
  """The `jax.checkpoint` policy of a `SupernetConfig.remat_policy` name: "nothing" saves nothing (the backward
  recomputes the whole unit from its inputs), "dots" saves matrix products and XLA convolutions
  (`jax.checkpoint_policies.dots_saveable`), "convs" saves every convolution's output, depthwise ones
  included (`ops.CONV_NAME`, `ops.DEPTHWISE_NAME`), and recomputes ReLU, BatchNorm, pooling and the weighted
  sums; "depthwise" saves the depthwise convolutions' outputs only (the costly loops on a CPU)."""
  if name == "nothing":
    return jax.checkpoint_policies.nothing_saveable
  if name == "dots":
    return jax.checkpoint_policies.dots_saveable
  if name == "convs":
    return jax.checkpoint_policies.save_only_these_names(ops.CONV_NAME, ops.DEPTHWISE_NAME)
  if name == "depthwise":
    return jax.checkpoint_policies.save_only_these_names(ops.DEPTHWISE_NAME)
  raise ValueError(f"unknown remat_policy {name!r}; choose one of {', '.join(REMAT_POLICIES)}")


def checkpointed(f, policy: Optional[str]):
  """f under `jax.checkpoint` with the named policy; f itself for None."""
  return f if policy is None else jax.checkpoint(f, policy=remat_policy(policy))


def search_op(name: str, space: SearchSpace, stride: int) -> ops.OpDef:
  """The op `name` inside a search cell of `space`: `ops`' search version (non-affine BatchNorm), whose
  weight-free pooling ends in a BatchNorm only where `space.pool_batch_norm` says so."""
  return ops.get_op(name, search=space.pool_batch_norm or not ops.is_weight_free(name, stride))


def _wave_mixed_op(wave_params, xs, A, space, stride, ctx):
  """Σ_o A[s, d, o] · o(xs[s]) for every edge (s, d) of a wave: (D, ...) sums over the wave's sources."""
  out = None
  for o, name in enumerate(space.primitives):
    if name == "none":
      continue
    op = search_op(name, space, stride)
    if ops.is_weight_free(name, stride):
      y = jax.vmap(lambda x: op.apply({}, {}, x, stride, ctx)[0])(xs)
      term = _weighted_sum(A[..., o], y[:, None])
    else:
      f = lambda p, x: op.apply(p, {}, x, stride, ctx)[0]
      y = jax.vmap(jax.vmap(f, in_axes=(0, None)), in_axes=(0, 0))(wave_params[name], xs)
      term = _weighted_sum(A[..., o], y)
    out = term if out is None else out + term
  if out is None:  # every candidate is `none`: the edges contribute zeros
    out = jnp.zeros(A.shape[1:2] + xs.shape[1:], xs.dtype)
  return out


def mixed_cell_apply(cell_params: Params, inputs: Sequence[jax.Array], weights: jax.Array, space: SearchSpace,
                     reduction: bool, ctx: ops.Ctx, partial_channels: int = 1,
                     edge_scale: Optional[jax.Array] = None, remat: Optional[str] = None,
                     edge_offset: Optional[jax.Array] = None) -> List[jax.Array]:
  """Returns the intermediate node states of a mixed cell.

  Args:
    inputs: the cell's (preprocessed) input states.
    weights: (num_edges, num_ops) op weights of every edge, in the space's edge order.
    partial_channels: K of PC-DARTS: only the first C/K channels go through the mixed op; the rest bypass it
      (max-pooled at stride 2) and the node output is channel-shuffled with K groups.
    edge_scale: optional (num_edges,) factor per edge (PC-DARTS' edge normalization).
    remat: a `remat_policy` name: each wave's mixed op runs under `jax.checkpoint` with it (None: no remat).
    edge_offset: optional (num_edges,) scalar added to each edge's output (NB201 GDAS' zero-valued terms of
      the ops it did not sample, which carry their α-gradient).
  """
  states = list(inputs)
  acc: Dict[int, jax.Array] = {}
  bypass: Dict[int, jax.Array] = {}
  C = inputs[0].shape[-1]
  c = C // partial_channels
  for wave, wave_params in zip(cell_waves(space, reduction), cell_params["waves"]):
    xs = jnp.stack([states[s] for s in wave.sources])
    if partial_channels > 1:
      xs, rest = xs[..., :c], xs[..., c:]
    A = _static_take(weights, wave.edge_ids)  # (S, D, O)
    if edge_scale is not None:
      A = A * _static_take(edge_scale, wave.edge_ids)[..., None]
    out = checkpointed(functools.partial(_wave_mixed_op, space=space, stride=wave.stride, ctx=ctx),
                        remat)(wave_params, xs, A)
    if edge_offset is not None:
      off = _static_take(edge_offset, wave.edge_ids).sum(0).astype(out.dtype)
      out = out + off.reshape(off.shape + (1,) * (out.ndim - 1))
    if partial_channels > 1:
      if wave.stride > 1:
        rest = jax.vmap(lambda x: ops.max_pool_2x2(x))(rest)
      scale = (_static_take(edge_scale, wave.edge_ids) if edge_scale is not None
               else jnp.ones(wave.edge_ids.shape, rest.dtype))
      by = _weighted_sum(scale, rest[:, None])
    for d_i, d in enumerate(wave.dsts):
      acc[d] = out[d_i] if d not in acc else acc[d] + out[d_i]
      if partial_channels > 1:
        bypass[d] = by[d_i] if d not in bypass else bypass[d] + by[d_i]
    node = wave.dsts[0]
    if partial_channels > 1:
      acc[node] = channel_shuffle(jnp.concatenate([acc[node], bypass[node]], -1), partial_channels)
    states.append(acc[node])
  return states[space.num_inputs:]


# --------------------------------------------------------------------------------------------------------
# The DARTS CNN supernet (the reference's `model_search.Network`).


@dataclasses.dataclass(frozen=True)
class SupernetConfig:
  """Shape of the DARTS search network. Reduction cells sit at layers//3 and 2·layers//3.

  remat: "none", "op" (`jax.checkpoint` around each mixed op, edge, shared weight-free ops, preprocessing and
  the stem) or "cell" (around each cell), in `apply` and in the edge chain (`edgewise`); the results are
  the same. "auto" (the default) is "op" in the edge chain and "none" in `apply` (see `remat_for`).
  remat_policy: what a checkpointed unit saves (`remat_policy`; default "dots"). compute_dtype: "float32",
  "bfloat16" (activations and convolutions) or "float64" (see the module docstring).
  """
  C: int = 16
  num_classes: int = 10
  layers: int = 8
  in_channels: int = 3
  multiplier: int = 4
  stem_multiplier: int = 3
  space: SearchSpace = DARTS_SPACE
  partial_channels: int = 1
  dw_impl: str = "auto"
  remat: str = "auto"
  remat_policy: str = "dots"
  compute_dtype: str = "float32"

  def __post_init__(self):
    if self.remat not in REMAT_MODES:
      raise ValueError(f"unknown remat {self.remat!r}; choose one of {', '.join(REMAT_MODES)}")
    remat_policy(self.remat_policy)
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"unknown compute_dtype {self.compute_dtype!r}; choose one of {', '.join(COMPUTE_DTYPES)}")
    if self.compute_dtype == "float64" and not jax.config.jax_enable_x64:
      raise ValueError("compute_dtype='float64' needs jax_enable_x64 (jax.config.update('jax_enable_x64', True))")
    if self.layers < 3:
      raise ValueError(f"layers={self.layers}: the DARTS network needs at least 3 layers "
                       "(reduction cells sit at layers//3 and 2*layers//3)")
    if self.C < 1 or self.num_classes < 1:
      raise ValueError(f"C={self.C} and num_classes={self.num_classes} must be positive")
    if not 1 <= self.multiplier <= self.space.num_nodes:
      raise ValueError(f"multiplier={self.multiplier}: a cell concatenates 1..{self.space.num_nodes} of the "
                       f"{self.space.name} space's intermediate nodes")
    if self.partial_channels < 1 or self.C % self.partial_channels:
      raise ValueError(f"C={self.C} must be divisible by partial_channels={self.partial_channels}")
    if self.space.num_inputs != 2 or self.space.output != "concat":
      raise ValueError(f"search space {self.space.name!r} does not fit the DARTS macro network; "
                       "use its own network (e.g. darts_jax.nb201 for NAS-Bench-201)")

  @property
  def reduction_layers(self) -> Tuple[int, int]:
    return (self.layers // 3, 2 * self.layers // 3)

  @property
  def min_input_size(self) -> int:
    return 4

  def remat_for(self, unit: str, chain: bool = False) -> Optional[str]:
    """The policy name that `unit` ("op" or "cell") runs `jax.checkpoint` with in `apply` (or, with ``chain``,
    in the edge chain), None if it does not.

    remat="auto" is "op" in the edge chain and "none" in `apply` (one program for the whole step). In the chain
    a checkpointed edge's forward program writes only its inputs and what the policy saves, and its backward
    program recomputes the rest: less memory for somewhat slower steps. Measure the trade-off with
    `python benchmarks/memory.py`; figures in `benchmarks/README.md`."""
    remat = self.remat if self.remat != "auto" else "op" if chain else "none"
    return self.remat_policy if remat == unit else None


def check_input(cfg: SupernetConfig, x_shape) -> None:
  """Raises a one-line ValueError when an input batch cannot go through the network (`ops.check_images`)."""
  ops.check_images(x_shape, cfg.in_channels, cfg.min_input_size, network="the search network",
                   reason="its 2 reductions")


def init(key, cfg: SupernetConfig) -> Params:
  """Weights of the supernet (α excluded)."""
  k_stem, k_cells, k_cls = jax.random.split(key, 3)
  c_curr = cfg.stem_multiplier * cfg.C
  params = {"stem": {"conv": ops.conv_init(k_stem, 3, 3, cfg.in_channels, c_curr),
                     "bn": ops.bn_init(c_curr, True, False)[0]}}
  c_pp, c_p, c_curr = c_curr, c_curr, cfg.C
  reduction_prev = False
  cells = []
  for i in range(cfg.layers):
    reduction = i in cfg.reduction_layers
    if reduction:
      c_curr *= 2
    kc = jax.random.fold_in(k_cells, i)
    k0, k1, k_ops = jax.random.split(kc, 3)
    if reduction_prev:
      pre0 = ops.factorized_reduce_init(k0, c_pp, c_curr, False, False)[0]
    else:
      pre0 = ops.relu_conv_bn_init(k0, c_pp, c_curr, 1, False, False)[0]
    pre1 = ops.relu_conv_bn_init(k1, c_p, c_curr, 1, False, False)[0]
    cell = {"pre0": pre0, "pre1": pre1}
    cell.update(mixed_cell_init(k_ops, cfg.space, c_curr, reduction, cfg.partial_channels))
    cells.append(cell)
    reduction_prev = reduction
    c_pp, c_p = c_p, cfg.multiplier * c_curr
  params["cells"] = cells
  kw, kb = jax.random.split(k_cls)
  params["classifier"] = {"w": ops._uniform(kw, (c_p, cfg.num_classes), c_p),
                          "b": ops._uniform(kb, (cfg.num_classes,), c_p)}
  return params


def init_alphas(key, cfg_or_space, scale: float = 1e-3) -> Params:
  """α of a config's (or a space's) cells (`SearchSpace.init_alphas`: 1e-3·N(0, 1) as in the reference)."""
  space = cfg_or_space.space if isinstance(cfg_or_space, SupernetConfig) else cfg_or_space
  return space.init_alphas(key, scale)


def softmax_weights(alphas: Params) -> Params:
  return {k: jax.nn.softmax(v, axis=-1) for k, v in alphas.items()}


def network_ctx(cfg: SupernetConfig, ctx: ops.Ctx) -> ops.Ctx:
  """The op context the supernet runs in: training mode, and its depthwise implementation."""
  dw_impl = cfg.dw_impl if ctx.dw_impl == "auto" else ctx.dw_impl
  if dw_impl == "auto" and jax.default_backend() == "cpu":
    # Each op runs vmapped over a wave's edges, big enough for cache-sized chunks to pay
    # (`ops.depthwise_conv_loop`; benchmarks/README.md, "Depthwise convolutions on a CPU").
    dw_impl = "chunked"
  return ctx._replace(train=True, dw_impl=dw_impl)


def stem(stem_params, x, ctx, dtype="float32"):
  """The stem: a 3×3 convolution and BatchNorm, in the compute dtype."""
  s = ops.conv(x.astype(dtype), stem_params["conv"], 1, 1)
  return ops.batch_norm(s, stem_params["bn"], {}, ctx)[0].astype(dtype)


def preprocess(cell_params, s0, s1, reduction_prev: bool, ctx):
  """A cell's two inputs brought to its channels (and, after a reduction, its resolution)."""
  if reduction_prev:
    p0, _ = ops.factorized_reduce_apply(cell_params["pre0"], {}, s0, ctx)
  else:
    p0, _ = ops.relu_conv_bn_apply(cell_params["pre0"], {}, s0, 1, 0, ctx)
  p1, _ = ops.relu_conv_bn_apply(cell_params["pre1"], {}, s1, 1, 0, ctx)
  return p0, p1


def _cell_body(cell_params, p0, p1, weights, edge_scale, space, reduction, ctx, partial_channels, multiplier,
               remat=None):
  nodes = mixed_cell_apply(cell_params, [p0, p1], weights, space, reduction, ctx, partial_channels, edge_scale,
                           remat)
  return jnp.concatenate(nodes[-multiplier:], axis=-1)


def _cell(cell, s0, s1, weights, edge_scale, cfg: SupernetConfig, reduction, reduction_prev, ctx):
  """One cell of `apply`: preprocessing and body (with ``remat="op"``, the preprocessing is checkpointed)."""
  op_remat = cfg.remat_for("op")
  p0, p1 = checkpointed(lambda c, a, b: preprocess(c, a, b, reduction_prev, ctx), op_remat)(cell, s0, s1)
  return _cell_body(cell, p0, p1, weights, edge_scale, cfg.space, reduction, ctx, cfg.partial_channels,
                    cfg.multiplier, op_remat)


def _classify(classifier, s):
  return jnp.mean(s.astype(jnp.promote_types(s.dtype, jnp.float32)), axis=(1, 2)) @ classifier["w"] + classifier["b"]


def head(classifier, s, labels):
  """(cross-entropy, accuracy) of the classifier on the last cell's output."""
  logits = _classify(classifier, s)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, labels))
  return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def apply(params: Params, x: jax.Array, arch_weights: Params, cfg: SupernetConfig,
          ctx: ops.Ctx = ops.Ctx()) -> jax.Array:
  """Logits of the supernet. `arch_weights` holds (num_edges, num_ops) op weights under "normal" and
  "reduce", and optionally (num_edges,) edge factors under "normal_edge" and "reduce_edge".

  BatchNorm always uses the batch's statistics (the search network tracks no running statistics). The logits
  are float32 whatever `cfg.compute_dtype`.
  """
  ctx = network_ctx(cfg, ctx)
  s0 = s1 = checkpointed(lambda p, x: stem(p, x, ctx, cfg.compute_dtype), cfg.remat_for("op"))(params["stem"], x)
  reduction_prev = False
  for i, cell in enumerate(params["cells"]):
    reduction = i in cfg.reduction_layers
    kind = "reduce" if reduction else "normal"
    cell_fn = functools.partial(_cell, cfg=cfg, reduction=reduction, reduction_prev=reduction_prev, ctx=ctx)
    out = checkpointed(cell_fn, cfg.remat_for("cell"))(cell, s0, s1, arch_weights[kind],
                                                        arch_weights.get(kind + "_edge"))
    s0, s1 = s1, out
    reduction_prev = reduction
  return _classify(params["classifier"], s1)


def count_params(tree) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
