"""Zero-cost proxies: scores of an untrained network that are read as predictions of its trained accuracy.

The six proxies of SamsungLabs/zero-cost-nas (`foresight/pruners/measures/`), as that code computes them:

- ``synflow``: weights replaced by their absolute values, no BatchNorm (see `nb201_program` for NB201's residual
  blocks), one all-ones input, float64; R = Σ logits; Σ |θ ⊙ ∂R/∂θ| over the conv and linear kernels.
- ``snip``: Σ |θ ⊙ ∂L/∂θ| over the kernels (L: mean cross-entropy of one batch, BatchNorm on batch statistics).
- ``grasp``: Σ -θ ⊙ (H g) over the kernels, with g = ∂L/∂θ held constant and H the kernels' Hessian of L.
- ``grad_norm``: Σ over kernels of ‖∂L/∂θ‖₂ (one norm per layer, summed).
- ``fisher``: per layer and output channel k, ½·mean over examples of (Σ_positions a ⊙ ∂L/∂a)², a the layer's
  output; each channel's value counts once per weight of the channel (the reference broadcasts it to the
  channel's weights before summing).
- ``jacob_cov``: J = ∂(Σ logits)/∂x per example, then -Σ_i log(λ_i + k) + 1/(λ_i + k) over the eigenvalues of
  the correlation matrix of J's rows, k = 1e-5; NaN when a row is constant (the reference's `eig` fails).

A network is a `ProxyNet`: ``apply(params, x, bn, taps)`` returning logits, with ``taps`` a dict of (N, C_out)
multipliers of the named kernels' outputs (how fisher reads each layer's activations and their gradients)
and ``kernels(params)`` the dict of the conv and linear kernels by the same names. `scores` computes any
subset of the proxies of one network; `nb201_program` gives one compiled program that scores a chunk of
NAS-Bench-201 cells (the NB201 network of zero-cost-nas' ``nasbench2.py`` with every op's weights, each edge
running the op its cell's code names), so every one of the 15,625 cells goes through the same program.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from darts_jax import ops
from darts_jax.nb201_arch import NUM_EDGES, as_arch
from darts_jax.topology import NB201_CELL, NB201_PRIMITIVES

PROXIES = ("synflow", "snip", "grasp", "grad_norm", "fisher", "jacob_cov")
DATA_PROXIES = PROXIES[1:]
# Spearman ρ against NB201 CIFAR-10 test accuracy over all cells, zero-cost-nas'
# notebooks/nasbench201_correlations.ipynb.
PUBLISHED_RHO = {"synflow": 0.737, "jacob_cov": 0.731, "snip": 0.596, "grad_norm": 0.594, "grasp": 0.514,
                 "fisher": 0.36}
JACOB_K = 1e-5


class ProxyNet(NamedTuple):
  """A network as the proxies see it. ``apply(params, x, bn: bool, taps: dict | None) -> logits``;
  ``kernels(params) -> {name: kernel}`` (HWIO conv or (in, out) linear kernels, output channels last; a tree
  like params gives the same names, e.g. its gradient); a tap ``taps[name]`` of shape (N, C_out) multiplies
  that kernel's layer output; ``is_kernel(params)``: a tree like params, True at the leaves holding kernels."""
  apply: Callable[..., jax.Array]
  kernels: Callable[[Any], Dict[str, jax.Array]]
  is_kernel: Callable[[Any], Any]


def _cross_entropy(logits, labels):
  logp = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)))
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=-1))


def _sum_over(tree_a, tree_b, fn) -> jax.Array:
  return sum(jnp.sum(fn(tree_a[k], tree_b[k])) for k in tree_a)


def synflow(net: ProxyNet, params, x_shape: Sequence[int], dtype=jnp.float64) -> jax.Array:
  """SynFlow of `params` for inputs of shape `x_shape` (one all-ones example). float64 needs
  ``jax.enable_x64(True)`` around the call; under float32 it is computed in float32."""
  p = jax.tree.map(lambda a: jnp.abs(a).astype(dtype), params)
  ones = jnp.ones((1, *x_shape[1:]), dtype)
  g = jax.grad(lambda q: jnp.sum(net.apply(q, ones, False, None)))(p)
  return _sum_over(net.kernels(p), net.kernels(g), lambda w, d: jnp.abs(w * d))


def _taps(net: ProxyNet, params, n: int):
  return {k: jnp.ones((n, w.shape[-1]), w.dtype) for k, w in net.kernels(params).items()}


def data_scores(net: ProxyNet, params, x, y, names: Sequence[str] = DATA_PROXIES) -> Dict[str, jax.Array]:
  """The data-dependent proxies `names` of one network on one batch (x, y), BatchNorm on batch statistics."""
  unknown = set(names) - set(DATA_PROXIES)
  if unknown:
    raise ValueError(f"unknown data-dependent proxies {sorted(unknown)}; choose from {', '.join(DATA_PROXIES)}")
  out = {}
  loss = lambda p, t: _cross_entropy(net.apply(p, x, True, t), y)
  w = net.kernels(params)
  if {"snip", "grasp", "grad_norm", "fisher"} & set(names):
    taps = _taps(net, params, x.shape[0]) if "fisher" in names else None
    g, g_taps = jax.grad(loss, argnums=(0, 1))(params, taps)
    gw = net.kernels(g)
    if "snip" in names:
      out["snip"] = _sum_over(w, gw, lambda a, b: jnp.abs(a * b))
    if "grad_norm" in names:
      out["grad_norm"] = sum(jnp.sqrt(jnp.sum(jnp.square(b))) for b in gw.values())
    if "fisher" in names:
      out["fisher"] = sum(0.5 * jnp.sum(jnp.mean(jnp.square(g_taps[k]), 0)) * (w[k].size // w[k].shape[-1])
                          for k in w)
    if "grasp" in names:
      # H g restricted to the kernels: the kernels' gradient differentiated along g (zero on other leaves).
      v = jax.tree.map(lambda m, d: lax.stop_gradient(d) if m else jnp.zeros_like(d), net.is_kernel(params), g)
      hg = jax.jvp(lambda p: jax.grad(lambda q: loss(q, None))(p), (params,), (v,))[1]
      out["grasp"] = _sum_over(w, net.kernels(hg), lambda a, b: -a * b)
  if "jacob_cov" in names:
    jac = jax.grad(lambda xx: jnp.sum(net.apply(params, xx, True, None)))(x)
    out["jacob_cov"] = jacob_cov_score(jac.reshape(jac.shape[0], -1))
  return out


def jacob_cov_score(jac: jax.Array) -> jax.Array:
  """-Σ log(λ + k) + 1/(λ + k) over the eigenvalues λ of the correlation matrix of the rows of `jac` (N, D)."""
  jac = jac.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
  c = jac - jnp.mean(jac, axis=1, keepdims=True)
  norm = jnp.sqrt(jnp.sum(c * c, axis=1))
  corr = (c @ c.T) / (norm[:, None] * norm[None, :])
  v = jnp.linalg.eigvalsh(jnp.where(jnp.isfinite(corr).all(), corr, jnp.nan))
  return -jnp.sum(jnp.log(v + JACOB_K) + 1.0 / (v + JACOB_K))


def scores(net: ProxyNet, params, x=None, y=None, names: Sequence[str] = PROXIES,
           x_shape: Optional[Sequence[int]] = None) -> Dict[str, float]:
  """The proxies `names` of one network as floats (synflow in float64; the others need a batch x, y)."""
  unknown = set(names) - set(PROXIES)
  if unknown:
    raise ValueError(f"unknown proxies {sorted(unknown)}; choose from {', '.join(PROXIES)}")
  out = {}
  if "synflow" in names:
    shape = x_shape if x_shape is not None else (None if x is None else x.shape)
    if shape is None:
      raise ValueError("synflow needs the input shape: pass x or x_shape")
    with jax.enable_x64(True):
      out["synflow"] = float(jax.jit(lambda p: synflow(net, p, shape))(params))
  data = [n for n in names if n != "synflow"]
  if data:
    if x is None or y is None:
      raise ValueError(f"{', '.join(data)} need a batch of inputs and labels (x, y)")
    out.update({k: float(v) for k, v in jax.jit(lambda p, a, b: data_scores(net, p, a, b, data))(params, x,
                                                                                                     y).items()})
  return out


# --------------------------------------------------------------------------------------------------------
# The NAS-Bench-201 network of zero-cost-nas (foresight/models/nasbench2.py), every op's weights present.


def _conv_init(key, k, c_in, c_out, bias):
  kw, kb = jax.random.split(key)
  p = {"w": ops.conv_init(kw, k, k, c_in, c_out)}
  if bias:
    p["b"] = ops._uniform(kb, (c_out,), k * k * c_in)
  return p


def _bn_init(c):
  return {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)}


def nb201_init(key, C: int = 16, N: int = 5, num_classes: int = 10, in_channels: int = 3):
  """Weights of the zero-cost-nas NB201 network with every op of every edge (PyTorch's default init).

  Cells: per edge a 1×1 and a 3×3 conv with bias (the reference's non-affine cells build convs with
  ``bias=not affine``), stacked over a stage's N cells; residual blocks: two 3×3 convs with affine BatchNorm
  and a 1×1 shortcut; an affine BatchNorm after the stem and before pooling; a linear classifier.
  """
  params = {"stem": _conv_init(jax.random.fold_in(key, 0), 3, in_channels, C, False), "stem_bn": _bn_init(C)}
  stages, c = [], C
  for s in range(3):
    ks = jax.random.split(jax.random.fold_in(key, 1 + s), (N, NUM_EDGES, 2))
    stages.append([{"c1": jax.vmap(lambda k: _conv_init(k, 1, c, c, True))(ks[:, e, 0]),
                    "c3": jax.vmap(lambda k: _conv_init(k, 3, c, c, True))(ks[:, e, 1])} for e in range(NUM_EDGES)])
    if s < 2:
      kr = jax.random.split(jax.random.fold_in(key, 10 + s), 3)
      params[f"reduce{s}"] = {"a": _conv_init(kr[0], 3, c, 2 * c, False), "a_bn": _bn_init(2 * c),
                              "b": _conv_init(kr[1], 3, 2 * c, 2 * c, False), "b_bn": _bn_init(2 * c),
                              "short": _conv_init(kr[2], 1, c, 2 * c, False)}
      c *= 2
  params["cells"] = stages
  kc = jax.random.fold_in(key, 20)
  params["last_bn"] = _bn_init(c)
  params["classifier"] = {"w": ops._uniform(kc, (c, num_classes), c),
                          "b": ops._uniform(jax.random.fold_in(kc, 1), (num_classes,), c)}
  return params


def _cell_kernel_names(s: int, i: int, e: int):
  return f"cell{s}.{i}.e{e}.c1", f"cell{s}.{i}.e{e}.c3"


def nb201_kernels(params) -> Dict[str, jax.Array]:
  """The conv and linear kernels of `nb201_init`'s params (or of a tree like them) by name, one per cell."""
  out = {"stem": params["stem"]["w"], "classifier": params["classifier"]["w"]}
  for s, edges in enumerate(params["cells"]):
    for e, edge in enumerate(edges):
      for i in range(edge["c1"]["w"].shape[0]):
        n1, n3 = _cell_kernel_names(s, i, e)
        out[n1], out[n3] = edge["c1"]["w"][i], edge["c3"]["w"][i]
  for s in range(2):
    for k in ("a", "b", "short"):
      out[f"reduce{s}.{k}"] = params[f"reduce{s}"][k]["w"]
  return out


def nb201_is_kernel(params):
  """True at the leaves of `nb201_init`'s params that hold kernels (``w``), False at biases and BatchNorms."""
  return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "w", params)


def _bn(x, p, on: bool):
  if not on:
    return x
  axes = tuple(range(x.ndim - 1))
  mean = jnp.mean(x, axes)
  var = jnp.mean(jnp.square(x - mean), axes)
  y = (x - mean) * lax.rsqrt(var + ops.BN_EPS)
  return y if p is None else y * p["scale"].astype(x.dtype) + p["bias"].astype(x.dtype)


def _conv(x, p, stride, pad, tap):
  y = _conv_as_matmul(x, p["w"].astype(x.dtype), stride, pad)
  if "b" in p:
    y = y + p["b"].astype(x.dtype)
  return y if tap is None else y * tap[:, None, None, :].astype(x.dtype)


def _conv_as_matmul(x, w, stride: int, pad: int):
  """`lax.conv_general_dilated` (NHWC, HWIO) as one matmul over the k×k shifted copies of x. On XLA:CPU a
  float64 convolution, or any convolution inside a `lax.switch` branch, runs several times slower than this
  matmul (benchmarks/README.md); every convolution of `nb201_program` is one or the other."""
  k = w.shape[0]
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  h = (x.shape[1] + 2 * pad - k) // stride + 1
  v = (x.shape[2] + 2 * pad - k) // stride + 1
  cols = [xp[:, i:i + stride * (h - 1) + 1:stride, j:j + stride * (v - 1) + 1:stride, :]
          for i in range(k) for j in range(k)]
  return jnp.concatenate(cols, -1) @ w.reshape(-1, w.shape[-1])


def nb201_apply(params, x, arch_codes, bn: bool, taps=None):
  """Logits of the NB201 cell `arch_codes` ((6,) int32 op indices into `NB201_PRIMITIVES`) on `x` (NHWC).

  The codes are data, so one traced program serves every cell (`_edge`). ``bn=False`` drops the stem's, the
  cells' and the last BatchNorm; the residual blocks keep theirs, as the reference's ``reduction`` block has no
  switch for it. BatchNorm uses batch statistics (training mode).
  """
  tap = (lambda name: None) if taps is None else (lambda name: taps[name])
  h = _bn(_conv(x, params["stem"], 1, 1, tap("stem")), params["stem_bn"], bn)
  for s, edges in enumerate(params["cells"]):
    n_cells = edges[0]["c1"]["w"].shape[0]
    for i in range(n_cells):
      nodes = [h]
      for n in range(1, NB201_CELL.num_nodes + 1):
        ins = []
        for e, edge in enumerate(NB201_CELL.edges):
          if edge.dst == n:
            cell_edge = jax.tree.map(lambda a: a[i], edges[e])
            ins.append(_edge(cell_edge, nodes[edge.src], arch_codes[e], bn,
                             *(tap(name) for name in _cell_kernel_names(s, i, e))))
        nodes.append(sum(ins[1:], ins[0]))
      h = nodes[-1]
    if s < 2:
      r = params[f"reduce{s}"]
      a = _bn(_conv(jax.nn.relu(h), r["a"], 2, 1, tap(f"reduce{s}.a")), r["a_bn"], True)
      b = _bn(_conv(jax.nn.relu(a), r["b"], 1, 1, tap(f"reduce{s}.b")), r["b_bn"], True)
      n_, hh, ww, c = h.shape
      pooled = h.reshape(n_, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))
      h = b + _conv(pooled, r["short"], 1, 0, tap(f"reduce{s}.short"))
  h = jnp.mean(jax.nn.relu(_bn(h, params["last_bn"], bn)), axis=(1, 2))
  logits = h @ params["classifier"]["w"].astype(h.dtype) + params["classifier"]["b"].astype(h.dtype)
  return logits if taps is None else logits * taps["classifier"].astype(h.dtype)


def _edge(p, x, code, bn: bool, tap1, tap3):
  """The op `code` of an edge on x (`lax.switch`: only that op runs, and only its kernel gets a gradient)."""
  conv = lambda q, k, tap: lambda h: _bn(_conv(jax.nn.relu(h), q, 1, k // 2, tap), None, bn)
  branches = {"none": jnp.zeros_like, "skip_connect": lambda h: h, "nor_conv_1x1": conv(p["c1"], 1, tap1),
              "nor_conv_3x3": conv(p["c3"], 3, tap3), "avg_pool_3x3": lambda h: ops.avg_pool(h, 3, 1, 1)}
  return lax.switch(code, [branches[name] for name in NB201_PRIMITIVES], x)


def arch_codes(arch) -> np.ndarray:
  """(6,) int32 op indices of an NB201 architecture."""
  return np.asarray([NB201_PRIMITIVES.index(o) for o in as_arch(arch)], np.int32)


def nb201_net(codes) -> ProxyNet:
  """The `ProxyNet` of the NB201 cell `codes` (`arch_codes`)."""
  return ProxyNet(lambda p, x, bn, taps: nb201_apply(p, x, codes, bn, taps), nb201_kernels, nb201_is_kernel)


def nb201_program(names: Sequence[str], x_shape: Sequence[int], devices: Optional[Sequence[Any]] = None
                  ) -> Callable:
  """One jitted program ``(params, codes (K, 6), x, y) -> {proxy: (K,)}`` scoring K NB201 cells one after
  another (`lax.map`) with the same weights; x, y: the batch of the data-dependent proxies (ignored by
  synflow, which uses one all-ones input of `x_shape`'s size). Call it under ``jax.enable_x64(True)`` when
  synflow is among `names` (it runs in float64, the others in float32). With several `devices` the cells are
  split over them (`jax.shard_map` on a ``cells`` mesh axis; K must be a multiple of their number), each device
  scoring its share."""
  names = tuple(names)
  data = tuple(n for n in names if n != "synflow")

  def one(params, codes, x, y):
    net = nb201_net(codes)
    out = {}
    if "synflow" in names:
      out["synflow"] = synflow(net, params, x_shape)
    if data:
      p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
      out.update({k: v.astype(jnp.float64 if jax.config.jax_enable_x64 else jnp.float32)
                  for k, v in data_scores(net, p32, x.astype(jnp.float32), y, data).items()})
    return out

  def cells(params, codes, x, y):
    return lax.map(lambda c: one(params, c, x, y), codes)

  if devices is None or len(devices) < 2:
    return jax.jit(cells)
  mesh = jax.sharding.Mesh(np.asarray(devices), ("cells",))
  rep, split = jax.sharding.PartitionSpec(), jax.sharding.PartitionSpec("cells")
  return jax.jit(jax.shard_map(cells, mesh=mesh, in_specs=(rep, split, rep, rep), out_specs=split))
