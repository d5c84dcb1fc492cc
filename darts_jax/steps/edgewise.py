"""The ``edgewise`` step backend: the per-pass step with the supernet's gradients as a chain of small programs.

`cellwise_grads` and `cellwise_grads_and_hvp` compute what differentiating `supernet.apply`'s cross-entropy
gives (and the exact second order's Hessian-vector term), as one program per distinct unit (stem,
preprocessing, an edge's mixed op, a state's shared weight-free ops, the head) chained in Python. XLA compiles
each distinct unit once, which takes far less than one program for a step, and on a CPU the chain runs faster
(benchmarks/README.md). `gradients` packs them as `formula.NetworkGradients` and `make_step` runs
`per_pass.PerPassStep` on them. Memory options (`supernet.SupernetConfig.remat`) apply per unit as in
`supernet.apply`.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import ops
from darts_jax.bilevel import SearchHParams, SearchProblem
from darts_jax.search_space import SearchSpace
from darts_jax.steps import formula
from darts_jax.steps import per_pass
# The model's building blocks, which the chain runs unit by unit.
from darts_jax import supernet
from darts_jax.supernet import SupernetConfig, cell_waves, search_op


def _stem_fwd(stem_params, x, ctx, dtype="float32", remat=None):
  stem = supernet.checkpointed(lambda p, x: supernet.stem(p, x, ctx, dtype), remat)
  return jax.vjp(lambda p: stem(p, x), stem_params)


def _preprocess_fwd(pre_params, s0, s1, reduction_prev, ctx, remat=None):
  """The forward program of a unit: its output and its VJP, whose residuals are what the backward program
  needs (under ``remat``, a `remat_policy` name, only the unit's inputs and what the policy saves: the
  backward program recomputes the rest)."""
  return jax.vjp(supernet.checkpointed(lambda p, a, b: supernet.preprocess(p, a, b, reduction_prev, ctx), remat),
                 pre_params, s0, s1)


def _shared_names(space: SearchSpace, stride: int) -> Tuple[str, ...]:
  """The weight-free ops other than identity and `none` (pooling + non-affine BatchNorm): they give the same
  result on every edge leaving a state, so the chain computes them once per state."""
  return tuple(n for n in space.primitives if ops.is_weight_free(n, stride) and n not in ("none", "skip_connect"))


def _shared(x, space, stride, ctx, partial_channels):
  c = x.shape[-1] // partial_channels
  return {n: search_op(n, space, stride).apply({}, {}, x[..., :c], stride, ctx)[0]
          for n in _shared_names(space, stride)}


def _shared_fwd(x, space, stride, ctx, partial_channels, remat=None):
  return jax.vjp(supernet.checkpointed(lambda x: _shared(x, space, stride, ctx, partial_channels), remat), x)


def _edge(edge_params, x, shared, row, scale, space, stride, ctx, partial_channels):
  """One edge's share of its node: Σ_o a_o · o(x) with a = row · scale, as in `mixed_cell_apply`, taking the
  weight-free ops' outputs from `shared` (`_shared` of x). With partial channels the bypassed channels come
  along (scaled, max-pooled at stride 2) and the result is channel-shuffled: both are linear, so a node is
  the plain sum of its edges' shares."""
  a = (row if scale is None else row * scale).astype(x.dtype)
  c = x.shape[-1] // partial_channels
  out = None
  for o, name in enumerate(space.primitives):
    if name != "none":
      y = shared[name] if name in shared else search_op(name, space, stride).apply(
          edge_params.get(name, {}), {}, x[..., :c], stride, ctx)[0]
      out = a[o] * y if out is None else out + a[o] * y
  if out is None:   # a space of `none` alone
    out = ops.get_op("none", search=True).apply({}, {}, x[..., :c], stride, ctx)[0]
  if partial_channels > 1:
    rest = ops.max_pool_2x2(x[..., c:]) if stride > 1 else x[..., c:]
    rest = rest if scale is None else scale.astype(rest.dtype) * rest
    out = supernet.channel_shuffle(jnp.concatenate([out, rest], -1), partial_channels)
  return out


def _edge_fwd(edge_params, x, shared, row, scale, space, stride, ctx, partial_channels, remat=None):
  f = lambda p, x, h, r, s: _edge(p, x, h, r, s, space, stride, ctx, partial_channels)
  return jax.vjp(supernet.checkpointed(f, remat), edge_params, x, shared, row, scale)


def _split_params(body, space, reduction):
  """A cell body's wave-stacked op weights (`mixed_cell_init`) as one tree per edge, in the space's order."""
  edges = [None] * space.num_edges
  for wave, wave_params in zip(cell_waves(space, reduction), body["waves"]):
    for (s_i, d_i), e in np.ndenumerate(wave.edge_ids):
      edges[int(e)] = jax.tree.map(lambda a: a[s_i, d_i], wave_params)
  return tuple(edges)


def _merge_params(edges, space, reduction):
  """The inverse of `_split_params` (for gradients)."""
  waves = []
  for wave in cell_waves(space, reduction):
    waves.append(supernet.stack_trees([supernet.stack_trees([edges[int(e)] for e in row]) for row in wave.edge_ids]))
  return {"waves": waves}


def _split_arch(weights, edge_scale):
  rows = tuple(weights[e] for e in range(weights.shape[0]))
  return rows, (None,) * len(rows) if edge_scale is None else tuple(edge_scale[e] for e in range(len(rows)))


def _merge_arch(rows, scales):
  return jnp.stack(rows), None if scales[0] is None else jnp.stack(scales)


def _concat(states):
  return jnp.concatenate(states, axis=-1)


def _split_out(ct, n):
  return tuple(jnp.split(ct, n, axis=-1))


def _head_grads(classifier, s, labels):
  (loss, acc), (g_cls, g_s) = jax.value_and_grad(supernet.head, argnums=(0, 1), has_aux=True)(classifier, s, labels)
  return loss, acc, g_cls, g_s


def _pullback(vjp_fn, cotangent):
  return vjp_fn(cotangent)


def _pullback_inputs(vjp_fn, cotangent):
  """The VJP without its first argument's cotangent (a cell's weights): XLA drops the kernel gradients."""
  return vjp_fn(cotangent)[1:]


def _stem_jvp(stem_params, x, v, ctx, dtype="float32"):
  return jax.jvp(lambda p: supernet.stem(p, x, ctx, dtype), (stem_params,), (v,))[1]


def _preprocess_dd(pre_params, s0, s1, ct, v, lam0, lam1, reduction_prev, ctx):
  """Second-order sweep of a cell's preprocessing (see `cellwise_grads_and_hvp`): the gradient with respect to its
  inputs and its output cotangent of ⟨its VJP(ct), (v, λ0, λ1)⟩."""
  def phi(a, b, c):
    g_p, g_a, g_b = jax.vjp(lambda p, a, b: supernet.preprocess(p, a, b, reduction_prev, ctx), pre_params, a, b)[1](c)
    return optax.tree_utils.tree_vdot((g_p, g_a, g_b), (v, lam0, lam1))
  return jax.grad(phi, argnums=(0, 1, 2))(s0, s1, ct)


def _shared_dd(x, ct, lam, space, stride, ctx, partial_channels):
  """`_preprocess_dd` for a state's weight-free ops: ((the direct term of the state, the ops' λ), the ops'
  outputs, which the edges' double backward takes as inputs)."""
  def phi(x, c):
    out, vjp_fn = jax.vjp(lambda x: _shared(x, space, stride, ctx, partial_channels), x)
    return optax.tree_utils.tree_vdot(vjp_fn(c), (lam,)), out
  return jax.grad(phi, argnums=(0, 1), has_aux=True)(x, ct)


def _edge_dd(edge_params, x, shared, row, scale, ct, v, lam, lam_shared, space, stride, ctx, partial_channels):
  """`_preprocess_dd` for one edge, whose op weights (and edge factor) get their second-order term too:
  (the direct terms of x, of the shared ops' outputs, of the op weights and edge factor, the edge's λ)."""
  def phi(x, h, r, s, c):
    f = lambda p, x, h: _edge(p, x, h, r, s, space, stride, ctx, partial_channels)
    return optax.tree_utils.tree_vdot(jax.vjp(f, edge_params, x, h)[1](c), (v, lam, lam_shared))
  return jax.grad(phi, argnums=(0, 1, 2, 3, 4))(x, shared, row, scale, ct)


def _head_hvp(classifier, s, labels, v, lam):
  def phi(s):
    g_cls, g_s = jax.grad(lambda c, s: supernet.head(c, s, labels)[0], argnums=(0, 1))(classifier, s)
    return optax.tree_utils.tree_vdot((g_cls, g_s), (v, lam))
  return jax.grad(phi)(s)


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


class _CellPrograms(NamedTuple):
  stem_fwd: Any
  preprocess_fwd: Any
  shared_fwd: Any
  edge_fwd: Any
  head_grads: Any
  pullback: Any
  pullback_inputs: Any
  add: Any
  split_params: Any
  merge_params: Any
  split_arch: Any
  merge_arch: Any
  concat: Any
  split_out: Any
  stem_jvp: Any
  preprocess_dd: Any
  shared_dd: Any
  edge_dd: Any
  head_hvp: Any


@functools.lru_cache(maxsize=None)
def _cell_programs(opt_level: Optional[int]) -> _CellPrograms:
  """The chain's jitted programs, one set per XLA backend optimization level (None: XLA's default), shared by
  every `cellwise_grads` that uses it so that their compiled programs are too."""
  options = None if opt_level is None else {"xla_backend_optimization_level": opt_level}
  jit = lambda f, static=(): jax.jit(f, static_argnums=static, compiler_options=options)
  return _CellPrograms(jit(_stem_fwd, (2, 3, 4)), jit(_preprocess_fwd, (3, 4, 5)),
                       jit(_shared_fwd, (1, 2, 3, 4, 5)), jit(_edge_fwd, (5, 6, 7, 8, 9)), jit(_head_grads),
                       jit(_pullback), jit(_pullback_inputs), jit(_add), jit(_split_params, (1, 2)),
                       jit(_merge_params, (1, 2)), jit(_split_arch), jit(_merge_arch), jit(_concat),
                       jit(_split_out, (1,)), jit(_stem_jvp, (3, 4)), jit(_preprocess_dd, (7, 8)),
                       jit(_shared_dd, (3, 4, 5, 6)), jit(_edge_dd, (9, 10, 11, 12)), jit(_head_hvp))


def _dag(space: SearchSpace, reduction: bool):
  """(edge index, source, destination, stride) of every edge, in the space's order (destinations ascending)."""
  return [(e, edge.src, edge.dst, 2 if reduction and edge.src < space.num_inputs else 1)
          for e, edge in enumerate(space.edges)]


def _outputs(cfg: SupernetConfig, states: Dict[int, Any]) -> Tuple:
  """The states a cell concatenates into its output: its last `multiplier` nodes."""
  n = cfg.space.num_inputs + cfg.space.num_nodes
  return tuple(states[s] for s in range(n - cfg.multiplier, n))


class _BodyVJPs(NamedTuple):
  edges: List           # per edge, in the space's order
  shared: Dict[int, Any]  # per source state with weight-free ops to share


def _body_forward(prog: _CellPrograms, cfg: SupernetConfig, ctx: ops.Ctx, body, p0, p1, weights, edge_scale,
                  reduction: bool, keep_vjps: bool = True):
  """A cell body edge by edge: (its output, `_BodyVJPs`, every state of the cell by index). Without
  ``keep_vjps`` each VJP is dropped as soon as it is made (a forward pass only, ``remat="cell"``)."""
  space, pc = cfg.space, cfg.partial_channels
  remat = cfg.remat_for("op", chain=True)
  edge_params = prog.split_params(body, space, reduction)
  rows, scales = prog.split_arch(weights, edge_scale)
  states, shared, vjps = {0: p0, 1: p1}, {}, _BodyVJPs([], {})
  for e, src, dst, stride in _dag(space, reduction):
    if src not in shared:
      shared[src] = {}
      if _shared_names(space, stride):
        shared[src], vjp = prog.shared_fwd(states[src], space, stride, ctx, pc, remat)
        if keep_vjps:
          vjps.shared[src] = vjp
    y, vjp = prog.edge_fwd(edge_params[e], states[src], shared[src], rows[e], scales[e], space, stride, ctx, pc,
                           remat)
    vjps.edges.append(vjp if keep_vjps else None)
    del vjp
    _accumulate(prog, states, dst, y)
  return prog.concat(_outputs(cfg, states)), vjps, states


def _body_backward(prog: _CellPrograms, cfg: SupernetConfig, vjps: _BodyVJPs, ct, reduction: bool,
                   wrt_params: bool, arch_only_programs: bool = True, extra: Optional[Dict] = None,
                   extra_shared: Optional[Dict] = None):
  """The backward pass of `_body_forward`: (∂body or None, the cotangents of every state of the cell and of
  its shared ops' outputs, ∂weights, ∂edge_scale). `extra` and `extra_shared` add cotangents to states and
  shared outputs (`_chain_hvp`'s second-order terms). Frees each edge's residuals once its backward has run."""
  space = cfg.space
  n = space.num_inputs + space.num_nodes
  cts = dict(zip(range(n - cfg.multiplier, n), prog.split_out(ct, cfg.multiplier)))
  ct_shared = {}
  for into, more in ((cts, extra), (ct_shared, extra_shared)):
    for s, d in (more or {}).items():
      _accumulate(prog, into, s, d)

  def finish(s):   # every edge leaving state s has run backward: add its shared ops' share
    if s in vjps.shared:
      (g_x,) = prog.pullback(vjps.shared.pop(s), ct_shared[s])
      _accumulate(prog, cts, s, g_x)

  g_params, g_rows, g_scales = ([None] * space.num_edges for _ in range(3))
  last_dst = None
  for e, src, dst, _ in reversed(_dag(space, reduction)):
    if dst != last_dst:
      finish(dst)
      last_dst = dst
    vjp, vjps.edges[e] = vjps.edges[e], None
    if wrt_params or not arch_only_programs:
      g_params[e], g_x, g_h, g_rows[e], g_scales[e] = prog.pullback(vjp, cts[dst])
    else:   # no weight cotangents: the programs leave out the kernel gradients
      g_x, g_h, g_rows[e], g_scales[e] = prog.pullback_inputs(vjp, cts[dst])
    _accumulate(prog, cts, src, g_x)
    if g_h:
      _accumulate(prog, ct_shared, src, g_h)
  for s in range(space.num_inputs):
    finish(s)
  g_body = prog.merge_params(tuple(g_params), space, reduction) if wrt_params else None
  return (g_body, [cts[s] for s in range(n)], ct_shared, *prog.merge_arch(tuple(g_rows), tuple(g_scales)))


def _body_dd(prog: _CellPrograms, cfg: SupernetConfig, ctx: ops.Ctx, body, states, weights, edge_scale, cts,
             ct_shared, v, lam0, lam1, reduction: bool):
  """The second-order sweep of a cell body (see `cellwise_grads_and_hvp`), edge by edge: (the direct terms of
  every state of the cell, of its shared ops' outputs, of the op weights and of the edge factors, the cell
  output's λ)."""
  space, pc = cfg.space, cfg.partial_channels
  edge_params = prog.split_params(body, space, reduction)
  v_edges = prog.split_params(v, space, reduction)
  rows, scales = prog.split_arch(weights, edge_scale)
  lam, shared, lam_shared, d_states, d_shared = {0: lam0, 1: lam1}, {}, {}, {}, {}
  d_rows, d_scales = [None] * space.num_edges, [None] * space.num_edges
  for e, src, dst, stride in _dag(space, reduction):
    if src not in shared:
      shared[src] = lam_shared[src] = {}
      if _shared_names(space, stride):
        (d_x, lam_shared[src]), shared[src] = prog.shared_dd(states[src], ct_shared[src], lam[src], space, stride,
                                                             ctx, pc)
        _accumulate(prog, d_states, src, d_x)
    d_x, d_h, d_rows[e], d_scales[e], lam_y = prog.edge_dd(
        edge_params[e], states[src], shared[src], rows[e], scales[e], cts[dst], v_edges[e], lam[src],
        lam_shared[src], space, stride, ctx, pc)
    _accumulate(prog, d_states, src, d_x)
    if d_h:
      _accumulate(prog, d_shared, src, d_h)
    _accumulate(prog, lam, dst, lam_y)
  return d_states, d_shared, *prog.merge_arch(tuple(d_rows), tuple(d_scales)), prog.concat(_outputs(cfg, lam))


class _Taped(NamedTuple):
  """One cell of a forward pass run program by program: its inputs, its states (the preprocessed inputs and
  the intermediate nodes) and VJPs."""
  kind: str
  reduction_prev: bool
  s0: jax.Array
  s1: jax.Array
  states: Dict[int, jax.Array]
  pre_vjp: Any
  body_vjps: List


def _forward_tape(prog: _CellPrograms, cfg: SupernetConfig, ctx: ops.Ctx, params, arch_weights, images,
                  keep_inputs: bool = False):
  """The forward pass cell by cell: (the stem's VJP, one `_Taped` per cell, the last cell's output). The
  cells' inputs and states are kept only if asked (the VJPs hold what the backward pass needs). With
  ``remat="cell"`` each cell keeps its two inputs and no VJPs (`_cell_vjps` recomputes them)."""
  remat_cells = cfg.remat == "cell"
  stem_out, stem_vjp = prog.stem_fwd(params["stem"], images, ctx, cfg.compute_dtype,
                                     cfg.remat_for("op", chain=True))
  s0 = s1 = stem_out
  tape = []
  reduction_prev = False
  for i, cell in enumerate(params["cells"]):
    reduction = i in cfg.reduction_layers
    kind = "reduce" if reduction else "normal"
    pre, body = _split_cell(cell)
    (p0, p1), pre_vjp = prog.preprocess_fwd(pre, s0, s1, reduction_prev, ctx, cfg.remat_for("op", chain=True))
    if remat_cells:
      pre_vjp = None
    out, body_vjps, states = _body_forward(prog, cfg, ctx, body, p0, p1, arch_weights[kind],
                                           arch_weights.get(kind + "_edge"), reduction, not remat_cells)
    inputs = (s0, s1, states) if keep_inputs else (s0, s1, None) if remat_cells else (None,) * 3
    tape.append(_Taped(kind, reduction_prev, *inputs, pre_vjp, None if remat_cells else body_vjps))
    del body_vjps, pre_vjp
    s0, s1 = s1, out
    reduction_prev = reduction
  return stem_vjp, tape, s1


def _cell_vjps(prog: _CellPrograms, cfg: SupernetConfig, ctx: ops.Ctx, params, arch_weights, i: int, t: _Taped):
  """(preprocessing VJP, `_BodyVJPs`) of cell i of a tape: the recorded ones, or with ``remat="cell"`` the
  cell's forward programs run again from its inputs."""
  if t.body_vjps is not None:
    return t.pre_vjp, t.body_vjps
  pre, body = _split_cell(params["cells"][i])
  (p0, p1), pre_vjp = prog.preprocess_fwd(pre, t.s0, t.s1, t.reduction_prev, ctx, None)
  _, body_vjps, _ = _body_forward(prog, cfg, ctx, body, p0, p1, arch_weights[t.kind],
                                  arch_weights.get(t.kind + "_edge"), t.kind == "reduce")
  return pre_vjp, body_vjps


def _split_cell(cell):
  pre = {"pre0": cell["pre0"], "pre1": cell["pre1"]}
  return pre, {k: v for k, v in cell.items() if k not in pre}


def cellwise_grads(cfg: SupernetConfig, ctx: ops.Ctx = ops.Ctx(), cpu_opt_level: Optional[int] = 1,
                   arch_only_programs: bool = True):
  """The supernet's loss gradient as a chain of small compiled programs, one per distinct edge shape.

  Returns ``grads(params, arch_weights, batch, wrt_params=True) -> (loss, accuracy, ∂params, ∂arch_weights)``,
  the same numbers as differentiating the cross-entropy of `apply` (up to float rounding). XLA compiles a
  network's cells, and a cell's edges, one by one when they are one program, although they repeat the same
  shapes. Here the units of the network are programs of their own, cached by shape and run from Python: the
  stem, each cell's preprocessing, each edge's mixed op, each state's weight-free ops (pooling + non-affine
  BatchNorm, shared by the edges leaving the state, as in `apply`), the head. Each unit's forward program
  returns its VJP with the residuals and a backward program applies it. At 8 layers XLA compiles 5 mixed-op
  edges (stride 1 at each of the 3 resolutions, stride 2 into each reduction) where one program per cell
  compiled 5 cell bodies of 14 edges each; every pass of a search step reuses them. Used by
  by the ``edgewise`` step backend (`make_step`; ``step_backend="edgewise"`` in the search configs). The chain
  cannot itself be traced by `jax.grad` or `jax.jit`.

  Measure it with `python benchmarks/search_step.py --step_backend=edgewise` (figures in `benchmarks/README.md`).

  wrt_params=False: ∂params is None; for the passes that only need ∂arch_weights (the α pass of first order,
  the two perturbed passes of finite differences). With arch_only_programs, such passes run backward programs
  without the weights' cotangents, which leave out the kernel gradients: faster passes, but programs of
  their own to compile (`benchmarks/search_step.py --noarch_only_programs` measures the alternative).

  cpu_opt_level: XLA's backend optimization level for these programs on a CPU (None: XLA's default). Level 1
  compiles a little longer for faster steps (`benchmarks/search_step.py --cpu_opt_level=-1` compares).
  """
  ctx = supernet.network_ctx(cfg, ctx)
  prog = _cell_programs(cpu_opt_level if jax.default_backend() == "cpu" else None)

  def grads(params, arch_weights, batch, wrt_params=True):
    return _chain_grads(prog, cfg, ctx, params, arch_weights, batch, wrt_params, arch_only_programs)[:4]

  return grads


def cellwise_grads_and_hvp(cfg: SupernetConfig, ctx: ops.Ctx = ops.Ctx(), cpu_opt_level: Optional[int] = 1):
  """`cellwise_grads` at a point, plus the second-order term of the exact DARTS hypergradient there.

  Returns ``fn(params, arch_weights, batch) -> (loss, accuracy, ∂params, ∂arch_weights, hvp)`` where
  ``hvp(v) = ∇_{arch_weights} ⟨∇_params L(params, arch_weights), v⟩``, the mixed second derivative ∇²_{α,w}L·v
  of the hypergradient through the unrolled weight step. The gradient pass is the one the exact hypergradient
  needs anyway (∇w L_train for the unrolled step), so `hvp` starts from what it recorded: the cells' inputs
  and states and their cotangents, a few tensors per cell. Its results equal reverse-over-reverse differentiation of
  `apply` up to float rounding, without the whole network's double-backward program or its memory.

  Reverse over reverse, unit by unit (stem, each cell's preprocessing, each edge, each state's shared
  weight-free ops, the head): with the
  forward pass x′ = F(x, p, a) and the backward pass's cotangents c, ⟨∇_p L, v⟩ is a sum of one term per
  unit, ⟨VJP_F(c′), (v, λ)⟩, where λ is the adjoint of c. Differentiating that term gives λ′ = J_x λ + J_p v
  with respect to c′ (so λ travels forwards, like a tangent), and direct second-order terms with respect to x
  and a. The x-terms are then carried back to the op weights by an ordinary backward pass. So `hvp` runs a
  forward sweep of one double-backward program per distinct unit shape (`_preprocess_dd`, `_edge_dd`,
  `_shared_dd`), then a forward and a backward pass (without weight gradients). Peak memory is that of the
  gradient pass, or of one edge's double backward plus the recorded tensors, whichever is larger: each
  edge's residuals are freed once its backward has run. Measure the exact second-order step with
  `python benchmarks/search_step.py --step_backend=edgewise --modes=second_order_exact`.
  """
  ctx = supernet.network_ctx(cfg, ctx)
  prog = _cell_programs(cpu_opt_level if jax.default_backend() == "cpu" else None)

  def fn(params, arch_weights, batch):
    loss, acc, g_params, g_arch, record = _chain_grads(prog, cfg, ctx, params, arch_weights, batch, True, True,
                                                       record=True)
    return loss, acc, g_params, g_arch, functools.partial(_chain_hvp, prog, cfg, ctx, params, arch_weights,
                                                           batch, record)

  return fn


class _Record(NamedTuple):
  """What `_chain_hvp` needs of a gradient pass: per cell, its inputs and states and their cotangents."""
  cells: List[_Taped]             # without the VJPs
  cts: List[List[jax.Array]]      # the cotangent of each state of each cell
  ct_shared: List[Dict]           # ... and of its states' shared weight-free ops


def _accumulate(prog: _CellPrograms, into: Dict, key, value):
  if value is not None:
    into[key] = value if key not in into else prog.add(into[key], value)


def _chain_grads(prog: _CellPrograms, cfg: SupernetConfig, ctx: ops.Ctx, params, arch_weights, batch,
                 wrt_params: bool, arch_only_programs: bool, record: bool = False):
  """`cellwise_grads`' pass; with ``record``, also returns the `_Record` of it (else None)."""
  stem_vjp, tape, s1 = _forward_tape(prog, cfg, ctx, params, arch_weights, batch["image"], keep_inputs=record)
  loss, acc, g_cls, g_out = prog.head_grads(params["classifier"], s1, batch["label"])
  n = len(tape)
  # cts[j]: cotangent of cell j's output (-1: the stem), summed over the (at most two) cells reading it
  cts = {n - 1: g_out}
  g_cells = [None] * n
  g_arch = {}
  rec = _Record([t._replace(pre_vjp=None, body_vjps=None) for t in tape], [None] * n, [None] * n) if record else None
  pull = prog.pullback if wrt_params or not arch_only_programs else (
      lambda vjp_fn, ct: (None, *prog.pullback_inputs(vjp_fn, ct)))
  for i in reversed(range(n)):
    kind, (pre_vjp, body_vjps) = tape[i].kind, _cell_vjps(prog, cfg, ctx, params, arch_weights, i, tape[i])
    tape[i] = None   # frees the cell's residuals as its backward programs run
    g_body, g_states, g_shared, g_w, g_e = _body_backward(prog, cfg, body_vjps, cts.pop(i), kind == "reduce",
                                                          wrt_params, arch_only_programs)
    if record:
      rec.cts[i], rec.ct_shared[i] = g_states, g_shared
    g_s0 = g_s1 = None
    if wrt_params or i >= 1:   # cell 0's inputs are the stem's output, whose cotangent only ∂params needs
      g_pre, g_s0, g_s1 = pull(pre_vjp, tuple(g_states[:2]))
    if wrt_params:
      g_cells[i] = {**g_body, **g_pre}
    _accumulate(prog, g_arch, kind, g_w)
    _accumulate(prog, g_arch, kind + "_edge", g_e)
    for j, g in ((max(i - 2, -1), g_s0), (max(i - 1, -1), g_s1)):
      if j >= 0 or wrt_params:
        _accumulate(prog, cts, j, g)
  g_arch = {k: g_arch[k] if k in g_arch else jnp.zeros_like(v) for k, v in arch_weights.items()}
  if not wrt_params:
    return loss, acc, None, g_arch, rec
  (g_stem,) = prog.pullback(stem_vjp, cts.pop(-1))
  return loss, acc, {"stem": g_stem, "cells": g_cells, "classifier": g_cls}, g_arch, rec


def _chain_hvp(prog: _CellPrograms, cfg: SupernetConfig, ctx: ops.Ctx, params, arch_weights, batch,
               rec: _Record, v):
  """`cellwise_grads_and_hvp`'s hvp(v), from the `_Record` of the gradient pass at the same point."""
  images, labels = batch["image"], batch["label"]
  n = len(rec.cells)
  # Forward sweep: λ of every cell output (-1: the stem) and the direct second-order terms.
  lam = {-1: prog.stem_jvp(params["stem"], images, v["stem"], ctx, cfg.compute_dtype)}
  mu, d_states, d_shared, out = {}, [None] * n, [None] * n, {}
  for i, t in enumerate(rec.cells):
    pre, body = _split_cell(params["cells"][i])
    v_pre, v_body = _split_cell(v["cells"][i])
    j0, j1 = max(i - 2, -1), i - 1
    d_s0, d_s1, (lam_p0, lam_p1) = prog.preprocess_dd(pre, t.s0, t.s1, tuple(rec.cts[i][:2]), v_pre, lam[j0],
                                                      lam[j1], t.reduction_prev, ctx)
    for j, d in ((j0, d_s0), (j1, d_s1)):
      if j >= 0:
        _accumulate(prog, mu, j, d)
    d_states[i], d_shared[i], d_w, d_e, lam[i] = _body_dd(
        prog, cfg, ctx, body, t.states, arch_weights[t.kind], arch_weights.get(t.kind + "_edge"), rec.cts[i],
        rec.ct_shared[i], v_body, lam_p0, lam_p1, t.kind == "reduce")
    _accumulate(prog, out, t.kind, d_w)
    _accumulate(prog, out, t.kind + "_edge", d_e)
    lam.pop(i - 2, None)
  # The head's term needs the last cell's output, which the record does not hold: the forward pass below
  # recomputes it along with the residuals of the backward sweep.
  _, tape, s_last = _forward_tape(prog, cfg, ctx, params, arch_weights, images)
  _accumulate(prog, mu, n - 1, prog.head_hvp(params["classifier"], s_last, labels, v["classifier"], lam[n - 1]))
  del lam, s_last
  # Backward sweep: the second-order terms of the cells' states, carried back to the op weights.
  for i in reversed(range(n)):
    t = tape[i]
    tape[i] = None
    kind, (pre_vjp, body_vjps) = t.kind, _cell_vjps(prog, cfg, ctx, params, arch_weights, i, t)
    del t
    _, g_states, _, g_w, g_e = _body_backward(prog, cfg, body_vjps, mu.pop(i), kind == "reduce", False,
                                              extra=d_states[i], extra_shared=d_shared[i])
    del body_vjps
    _accumulate(prog, out, kind, g_w)
    _accumulate(prog, out, kind + "_edge", g_e)
    if i >= 1:
      g_s0, g_s1 = prog.pullback_inputs(pre_vjp, tuple(g_states[:2]))
      for j, g in ((i - 2, g_s0), (i - 1, g_s1)):
        if j >= 0:
          _accumulate(prog, mu, j, g)
  return {k: out[k] if k in out else jnp.zeros_like(w) for k, w in arch_weights.items()}


def supports(cfg) -> bool:
  """Whether the chain computes the network of `cfg` (the DARTS supernet's configs)."""
  return isinstance(cfg, SupernetConfig)


def gradients(cfg: SupernetConfig, ctx: ops.Ctx = ops.Ctx(), cpu_opt_level: Optional[int] = 1,
              arch_only_programs: bool = True) -> formula.NetworkGradients:
  """`cellwise_grads` and `cellwise_grads_and_hvp` of one supernet as the step's `NetworkGradients`."""
  return formula.NetworkGradients(cellwise_grads(cfg, ctx, cpu_opt_level, arch_only_programs),
                             cellwise_grads_and_hvp(cfg, ctx, cpu_opt_level))


def make_step(problem: SearchProblem, hp: SearchHParams, net: formula.NetworkGradients, update_alphas: bool = True,
              donate: bool = True) -> per_pass.PerPassStep:
  """The edgewise step `(state, train_batch, val_batch) -> (state, metrics)` of a problem whose network is
  the supernet of `net` (`gradients(cfg)`)."""
  return per_pass.PerPassStep(problem, hp, update_alphas, donate, gradients=net, name="edgewise")
