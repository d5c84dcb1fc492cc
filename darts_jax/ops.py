"""Candidate operations of the DARTS and NAS-Bench-201 spaces, as pure functions over explicit parameters.

Every primitive is an `OpDef` with `init(key, C, stride, affine, track_stats) -> (params, stats)` and
`apply(params, stats, x, stride, ctx) -> (y, new_stats)`. Tensors are NHWC. Semantics follow the reference
DARTS code (`operations.py`): ReLU-Conv-BN order, separable convolutions applied twice, dilated convolutions
with dilation 2, average pooling that does not count padding, `skip_connect` as a factorized reduce at
stride 2, `none` as zeros of the stride's shape.

`params` holds trainable arrays; `stats` holds BatchNorm running statistics (empty dicts when statistics are
not tracked, as in the search network, where BatchNorm always normalizes with the batch's statistics).

Depthwise convolutions have several implementations with the same numbers: XLA's grouped convolution ("xla",
fast on GPU/TPU) and sums of k² shifted multiply-adds with hand-written VJPs, unrolled ("shift"), as a loop
over the taps ("loop") or as a loop over cache-sized chunks of images with the taps unrolled inside
("chunked"); XLA's CPU grouped convolution is slow, see `benchmarks/`. `Ctx.dw_impl` picks one; "auto" is
"xla" off CPU and "loop" on CPU (the supernet resolves its own "auto" to "chunked" on CPU).

Ops compute in their input's dtype: a bfloat16 input (`supernet.SupernetConfig.compute_dtype`) runs the
convolutions on bfloat16 operands with float32 weights cast at use (so their gradients are float32) and
returns a bfloat16 output, while the dense and 1×1 convolutions accumulate into float32 for the BatchNorm after
them, BatchNorm computes its statistics and normalization in float32, and the depthwise kernel gradients
accumulate in float32. A float32 input computes exactly as before.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Dict, NamedTuple, Tuple

import jax
from jax.ad_checkpoint import checkpoint_name
import jax.numpy as jnp
from jax import lax
import numpy as np

Params = Dict[str, Any]
BN_EPS = 1e-5
BN_MOMENTUM = 0.1
# The names of the dense and 1x1 convolutions' outputs and of the depthwise convolutions' outputs
# (`jax.ad_checkpoint.checkpoint_name`), for rematerialization policies that save them and recompute the rest
# (`supernet.SupernetConfig.remat_policy`).
CONV_NAME = "conv"
DEPTHWISE_NAME = "depthwise"


class Ctx(NamedTuple):
  """How to run operations: `train` selects batch statistics (and updates running statistics when they are
  tracked); `dw_impl` is "auto", "xla", "shift", "loop" or "chunked" (see module docstring)."""
  train: bool = True
  dw_impl: str = "auto"


# --------------------------------------------------------------------------------------------------------
# Initializers (PyTorch's defaults, so that a run starts from the same distribution as the reference).


def _uniform(key, shape, fan_in):
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def conv_init(key, kh, kw, c_in, c_out):
  return _uniform(key, (kh, kw, c_in, c_out), kh * kw * c_in)


def dw_init(key, k, c):
  return _uniform(key, (k, k, c), k * k)


def pw_init(key, c_in, c_out):
  return _uniform(key, (c_in, c_out), c_in)


def bn_init(c, affine, track):
  params = {"scale": jnp.ones((c,), jnp.float32), "bias": jnp.zeros((c,), jnp.float32)} if affine else {}
  stats = {"mean": jnp.zeros((c,), jnp.float32), "var": jnp.ones((c,), jnp.float32)} if track else {}
  return params, stats


# --------------------------------------------------------------------------------------------------------
# Layers.


def batch_norm(x, params, stats, ctx: Ctx):
  """BatchNorm over N, H, W. Uses batch statistics in training mode or when no running statistics are
  tracked; updates tracked statistics like PyTorch (momentum 0.1, unbiased variance)."""
  dtype = x.dtype
  x = x.astype(jnp.promote_types(dtype, jnp.float32))   # statistics and normalization in float32
  if ctx.train or not stats:
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean(jnp.square(x - mean), axes)
    if stats and ctx.train:
      n = x.size // x.shape[-1]
      stats = {"mean": (1 - BN_MOMENTUM) * stats["mean"] + BN_MOMENTUM * mean,
               "var": (1 - BN_MOMENTUM) * stats["var"] + BN_MOMENTUM * var * (n / max(n - 1, 1))}
  else:
    mean, var = stats["mean"], stats["var"]
  y = (x - mean) * lax.rsqrt(var + BN_EPS)
  if params:
    y = y * params["scale"] + params["bias"]
  return y.astype(dtype), stats


def conv(x, w, stride=1, padding=0, dilation=1):
  """Dense convolution, NHWC input and HWIO kernel, in the input's dtype, accumulating and returning float32 for
  a bfloat16 input (a convolution's output goes into BatchNorm, whose statistics it keeps exact)."""
  if w.shape[0] == 1 and w.shape[1] == 1 and padding == 0:
    if stride > 1:
      x = x[:, ::stride, ::stride, :]
    return _pointwise(x, w[0, 0])
  pad = padding if isinstance(padding, tuple) else ((padding, padding), (padding, padding))
  return checkpoint_name(lax.conv_general_dilated(x, w.astype(x.dtype),
                                                  (stride, stride) if isinstance(stride, int) else stride, pad,
                                                  rhs_dilation=(dilation, dilation),
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                                  preferred_element_type=_acc_dtype(x.dtype)), CONV_NAME)


def _pointwise(x, w):
  """1×1 convolution (`w`: C_in×C_out) in the input's dtype, with `conv`'s float32 output."""
  return checkpoint_name(jnp.matmul(x, w.astype(x.dtype), preferred_element_type=_acc_dtype(x.dtype)), CONV_NAME)


def _out_size(size, k, stride, dilation, pad):
  return (size + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def _shifted_sum(xp, w, stride, dilation, ho, wo):
  n, _, _, c = xp.shape
  w = w.astype(xp.dtype)
  out = None
  for i in range(w.shape[0]):
    for j in range(w.shape[1]):
      sl = lax.slice(xp, (0, i * dilation, j * dilation, 0),
                     (n, i * dilation + stride * (ho - 1) + 1, j * dilation + stride * (wo - 1) + 1, c),
                     (1, stride, stride, 1))
      term = sl * w[i, j]
      out = term if out is None else out + term
  return out


def _padded_input(x, k, stride, dilation, pad):
  """The zero-padded input of a k×k depthwise convolution and its output size (ho, wo)."""
  ho = _out_size(x.shape[1], k, stride, dilation, pad)
  wo = _out_size(x.shape[2], k, stride, dilation, pad)
  return jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0))), ho, wo


def _input_grad_operand(g, x_shape, k, stride, dilation, pad):
  """The output gradient dilated by the stride and padded so that a stride-1 depthwise convolution of it with
  the flipped kernel is the input gradient."""
  _, h, wd, _ = x_shape
  ho, wo = g.shape[1], g.shape[2]
  lo = dilation * (k - 1) - pad
  return lax.pad(g, jnp.zeros((), g.dtype),
                 ((0, 0, 0), (lo, h + pad - stride * (ho - 1) - 1, stride - 1),
                  (lo, wd + pad - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def depthwise_conv_shift(x, w, stride, dilation, pad):
  """Depthwise convolution (`w`: k×k×C) as k² shifted multiply-adds, with a VJP that is again a shifted
  depthwise convolution, so XLA fuses forward and backward into a few loops."""
  xp, ho, wo = _padded_input(x, w.shape[0], stride, dilation, pad)
  return _shifted_sum(xp, w, stride, dilation, ho, wo)


def _dw_fwd(x, w, stride, dilation, pad):
  return depthwise_conv_shift(x, w, stride, dilation, pad), (x, w)


def _dw_bwd(stride, dilation, pad, res, g):
  x, w = res
  k = w.shape[0]
  n, _, _, c = x.shape
  dx = depthwise_conv_shift(_input_grad_operand(g, x.shape, k, stride, dilation, pad), w[::-1, ::-1], 1,
                            dilation, 0)
  xp, ho, wo = _padded_input(x, k, stride, dilation, pad)
  taps = []
  for i in range(k):
    for j in range(k):
      sl = lax.slice(xp, (0, i * dilation, j * dilation, 0),
                     (n, i * dilation + stride * (ho - 1) + 1, j * dilation + stride * (wo - 1) + 1, c),
                     (1, stride, stride, 1))
      # A dot over (N, H, W) per channel: faster on XLA:CPU than a multiply-and-reduce fusion.
      taps.append(jnp.einsum("nhwc,nhwc->c", sl, g, preferred_element_type=_acc_dtype(x.dtype)))
  dw = jnp.stack(taps).reshape(k, k, c).astype(w.dtype)
  return dx, dw


depthwise_conv_shift.defvjp(_dw_fwd, _dw_bwd)


def _tap_slice(xp, t, k, stride, dilation, ho, wo):
  """The input window that multiplies kernel tap `t` (a traced index), strided like the output."""
  n, _, _, c = xp.shape
  i, j = lax.div(t, k), lax.rem(t, k)  # t >= 0: no floor-division sign fix-ups in the program
  win = lax.dynamic_slice(xp, (0, i * dilation, j * dilation, 0),
                          (n, stride * (ho - 1) + 1, stride * (wo - 1) + 1, c))
  return win[:, ::stride, ::stride] if stride > 1 else win


# Output elements per edge in one chunk of `dw_impl="chunked"` (64 KB of float32 per edge of a vmapped wave).
CHUNK_ELEMENTS = 16384


def _batch_chunk(n, ho, wo, c, chunk):
  """Images per step of the depthwise loops: a divisor of n with about `chunk` output elements (0: all n)."""
  if not chunk:
    return n
  want = max(1, chunk // max(1, ho * wo * c))
  return max(d for d in range(1, min(n, want) + 1) if n % d == 0)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6))
def _looped_sum(xp, w, stride, dilation, ho, wo, chunk):
  """Σ_taps shifted input × kernel tap, as a loop over the taps, or (`chunk` > 0 and a batch larger than one
  chunk) as a loop over chunks of images with the k² taps unrolled and fused inside. Jitted so that tracing
  the unrolled taps happens once per shape, not at every call site."""
  n, c = xp.shape[0], xp.shape[-1]
  w = w.astype(xp.dtype)
  nb = _batch_chunk(n, ho, wo, c, chunk)
  if nb == n:
    k = w.shape[0]
    wf = w.reshape(k * k, -1)
    body = lambda t, acc: acc + (_tap_slice(xp, t, k, stride, dilation, ho, wo)
                                 * lax.dynamic_index_in_dim(wf, t, keepdims=False))
    return lax.fori_loop(0, k * k, body, jnp.zeros((n, ho, wo, c), xp.dtype))

  def step(i, out):
    xc = lax.dynamic_slice_in_dim(xp, i * nb, nb, 0)
    return lax.dynamic_update_slice_in_dim(out, _shifted_sum(xc, w, stride, dilation, ho, wo), i * nb, 0)

  return lax.fori_loop(0, n // nb, step, jnp.zeros((n, ho, wo, c), xp.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def depthwise_conv_loop(x, w, stride, dilation, pad, chunk=0):
  """Depthwise convolution as a loop: one small loop body in the program instead of k² unrolled multiply-adds,
  so a supernet with hundreds of depthwise convolutions compiles several times faster (the backward pass is
  again such loops).

  chunk: 0 loops over the k² taps, each streaming the whole batch. > 0 loops over chunks of images of about
  `chunk` output elements with the taps unrolled and fused inside, so each chunk stays in cache across its
  taps: faster for a vmapped wave of edges (the supernet), slower for one convolution of a final network (no
  edge axis); figures in `benchmarks/README.md`.
  """
  xp, ho, wo = _padded_input(x, w.shape[0], stride, dilation, pad)
  return _looped_sum(xp, w, stride, dilation, ho, wo, chunk)


def _dwl_fwd(x, w, stride, dilation, pad, chunk):
  return depthwise_conv_loop(x, w, stride, dilation, pad, chunk), (x, w)


def _dwl_input_grad(g, w, x_shape, stride, dilation, pad, chunk):
  """The input gradient of `depthwise_conv_loop`: a stride-1 depthwise convolution of the dilated, padded
  output gradient with the flipped kernel."""
  return depthwise_conv_loop(_input_grad_operand(g, x_shape, w.shape[0], stride, dilation, pad), w[::-1, ::-1],
                             1, dilation, 0, chunk)


def _dwl_bwd(stride, dilation, pad, chunk, res, g):
  x, w = res
  return (_dwl_input_grad(g, w, x.shape, stride, dilation, pad, chunk),
          depthwise_kernel_grad(x, g, w.shape[0], stride, dilation, pad, chunk).astype(w.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6))
def depthwise_kernel_grad(x, g, k, stride, dilation, pad, chunk=0):
  """The kernel gradient of `depthwise_conv_loop`: per tap, Σ over (N, H, W) of input window × output gradient.

  A primitive of its own (bilinear in x and g, with a VJP made of depthwise convolutions) so that second-order
  derivatives never differentiate through its tap loop: JAX would store every iteration's input window, k²
  activation-sized buffers per convolution (the exact second-order step ran out of memory that way).
  Accumulates, and returns, float32 for bfloat16 inputs."""
  n, c = x.shape[0], x.shape[-1]
  xp, ho, wo = _padded_input(x, k, stride, dilation, pad)
  nb = _batch_chunk(n, ho, wo, c, chunk)

  def step(i, dw):  # chunks of images outside, taps inside: each chunk is read from cache k² times
    xc = lax.dynamic_slice_in_dim(xp, i * nb, nb, 0)
    gc = lax.dynamic_slice_in_dim(g, i * nb, nb, 0)

    def tap(t, dw):
      return dw.at[t].add(jnp.sum(_tap_slice(xc, t, k, stride, dilation, ho, wo) * gc, axis=(0, 1, 2),
                                  dtype=acc))
    return lax.fori_loop(0, k * k, tap, dw)

  acc = _acc_dtype(x.dtype)
  return lax.fori_loop(0, n // nb, step, jnp.zeros((k * k, c), acc)).reshape(k, k, c)


def _acc_dtype(dtype):
  """The accumulation dtype of a kernel gradient: float32 for bfloat16 (and float16) activations."""
  return jnp.promote_types(dtype, jnp.float32)


def _kg_fwd(x, g, k, stride, dilation, pad, chunk):
  return depthwise_kernel_grad(x, g, k, stride, dilation, pad, chunk), (x, g)


def _kg_bwd(k, stride, dilation, pad, chunk, res, dw_bar):
  # dw[t] = Σ x_t · g, so x̄ = Σ_t shiftᵀ(g · dw̄[t]) (the input gradient of a convolution with kernel dw̄ at
  # output gradient g) and ḡ = Σ_t x_t · dw̄[t] (the convolution of x with kernel dw̄).
  x, g = res
  return (_dwl_input_grad(g, dw_bar, x.shape, stride, dilation, pad, chunk),
          depthwise_conv_loop(x, dw_bar, stride, dilation, pad, chunk))


depthwise_kernel_grad.defvjp(_kg_fwd, _kg_bwd)


depthwise_conv_loop.defvjp(_dwl_fwd, _dwl_bwd)


def depthwise_conv_xla(x, w, stride, dilation, pad):
  return lax.conv_general_dilated(x, w.astype(x.dtype)[:, :, None, :], (stride, stride), ((pad, pad), (pad, pad)),
                                  rhs_dilation=(dilation, dilation),
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  feature_group_count=x.shape[-1])


def _choose_dw_impl(ctx: Ctx, k: int, stride: int) -> str:
  if ctx.dw_impl != "auto":
    return ctx.dw_impl
  if jax.default_backend() != "cpu":
    return "xla"
  # On a CPU the tap loop beats XLA's grouped convolution and compiles faster than unrolled taps
  # (benchmarks/README.md, "Depthwise convolutions on a CPU").
  del k, stride
  return "loop"


def depthwise_conv(x, w, stride, dilation, pad, ctx: Ctx):
  return checkpoint_name(_depthwise_conv(x, w, stride, dilation, pad, ctx), DEPTHWISE_NAME)


def _depthwise_conv(x, w, stride, dilation, pad, ctx: Ctx):
  impl = _choose_dw_impl(ctx, w.shape[0], stride)
  if impl == "shift":
    return depthwise_conv_shift(x, w, stride, dilation, pad)
  if impl == "xla":
    return depthwise_conv_xla(x, w, stride, dilation, pad)
  if impl == "loop":
    return depthwise_conv_loop(x, w, stride, dilation, pad, 0)
  if impl == "chunked":
    return depthwise_conv_loop(x, w, stride, dilation, pad, CHUNK_ELEMENTS)
  raise ValueError(f"unknown depthwise implementation {impl!r}; use 'auto', 'shift', 'loop', 'chunked' or 'xla'")


def _pool_windows(x, k, stride, pad, fill):
  n, h, w, c = x.shape
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=fill)
  ho, wo = _out_size(h, k, stride, 1, pad), _out_size(w, k, stride, 1, pad)
  return [lax.slice(xp, (0, i, j, 0), (n, i + stride * (ho - 1) + 1, j + stride * (wo - 1) + 1, c),
                    (1, stride, stride, 1)) for i in range(k) for j in range(k)]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool_3x3(x, stride):
  """3×3 max pooling, padding 1. The VJP routes the gradient to the first maximal element of each window,
  as PyTorch does, with one comparison per tap (JAX's VJP of a `maximum` chain is several times larger)."""
  out = None
  for sl in _pool_windows(x, 3, stride, 1, -jnp.inf):
    out = sl if out is None else jnp.maximum(out, sl)
  return out


def _max_pool_fwd(x, stride):
  out = max_pool_3x3(x, stride)
  return out, (x, out)


def _max_pool_bwd(stride, res, g):
  x, out = res
  n, h, w, c = x.shape
  ho, wo = out.shape[1], out.shape[2]
  taken = jnp.zeros(out.shape, bool)
  dxp = jnp.zeros((n, h + 2, w + 2, c), g.dtype)
  for t, sl in enumerate(_pool_windows(x, 3, stride, 1, -jnp.inf)):
    i, j = divmod(t, 3)
    hit = (sl == out) & ~taken
    taken = taken | hit
    contrib = jnp.where(hit, g, 0.0)
    dxp = dxp + lax.pad(contrib, jnp.zeros((), g.dtype),
                        ((0, 0, 0), (i, h + 2 - i - stride * (ho - 1) - 1, stride - 1),
                         (j, w + 2 - j - stride * (wo - 1) - 1, stride - 1), (0, 0, 0)))
  return (dxp[:, 1:h + 1, 1:w + 1],)


max_pool_3x3.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_2x2(x):
  """2×2 max pooling with stride 2 (PC-DARTS' bypass at stride 2); odd sizes are padded like the convs."""
  n, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
  return x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


def avg_pool(x, k, stride, pad, count_include_pad=False):
  """k×k average pooling; with ``count_include_pad=False`` (DARTS) padded positions are not counted."""
  _, h, w, _ = x.shape
  total = None
  for sl in _pool_windows(x, k, stride, pad, 0.0):
    total = sl if total is None else total + sl
  if count_include_pad:
    return total / (k * k)
  ones = np.pad(np.ones((h, w), np.float32), pad)
  count = sum(ones[i:i + stride * (total.shape[1] - 1) + 1:stride, j:j + stride * (total.shape[2] - 1) + 1:stride]
              for i in range(k) for j in range(k))
  return total * jnp.asarray(1.0 / count, x.dtype)[None, :, :, None]


# --------------------------------------------------------------------------------------------------------
# Primitives.


class OpDef(NamedTuple):
  init: Callable[..., Tuple[Params, Params]]
  apply: Callable[..., Tuple[jax.Array, Params]]
  weight_free: bool  # True if the op has no parameters at the given stride (then it is shared by edges).


def _none_init(key, c, stride, affine, track):
  return {}, {}


def _none_apply(p, s, x, stride, ctx):
  if stride > 1:
    n, h, w, c = x.shape
    return jnp.zeros((n, -(-h // stride), -(-w // stride), c), x.dtype), s
  return jnp.zeros_like(x), s


def _pool_init(key, c, stride, affine, track):
  bn_p, bn_s = bn_init(c, affine=False, track=track)
  return {}, ({"bn": bn_s} if track else {})


def _make_pool_apply(kind: str, with_bn: bool):
  def apply(p, s, x, stride, ctx):
    y = max_pool_3x3(x, stride) if kind == "max" else avg_pool(x, 3, stride, 1)
    if with_bn:
      y, bn_s = batch_norm(y, {}, s.get("bn", {}), ctx)
      s = {"bn": bn_s} if bn_s else {}
    return y, s
  return apply


def relu_conv_bn_init(key, c_in, c_out, k, affine, track):
  bn_p, bn_s = bn_init(c_out, affine, track)
  p = {"conv": conv_init(key, k, k, c_in, c_out)}
  if bn_p:
    p["bn"] = bn_p
  return p, ({"bn": bn_s} if bn_s else {})


def relu_conv_bn_apply(p, s, x, stride, padding, ctx):
  y = conv(jax.nn.relu(x), p["conv"], stride, padding)
  y, bn_s = batch_norm(y, p.get("bn", {}), s.get("bn", {}), ctx)
  return y.astype(x.dtype), ({"bn": bn_s} if bn_s else {})


def factorized_reduce_init(key, c_in, c_out, affine, track):
  if c_out % 2:
    raise ValueError(f"factorized reduce needs an even number of output channels, got {c_out}")
  k1, k2 = jax.random.split(key)
  bn_p, bn_s = bn_init(c_out, affine, track)
  p = {"conv1": pw_init(k1, c_in, c_out // 2), "conv2": pw_init(k2, c_in, c_out // 2)}
  if bn_p:
    p["bn"] = bn_p
  return p, ({"bn": bn_s} if bn_s else {})


def factorized_reduce_apply(p, s, x, ctx):
  x = jax.nn.relu(x)
  a = x[:, ::2, ::2, :]
  b = x[:, 1::2, 1::2, :]
  # Odd sizes: the reference would fail to concatenate; pad the shifted path so both have ceil(H/2).
  b = jnp.pad(b, ((0, 0), (0, a.shape[1] - b.shape[1]), (0, a.shape[2] - b.shape[2]), (0, 0)))
  y = jnp.concatenate([_pointwise(a, p["conv1"]), _pointwise(b, p["conv2"])], axis=-1)
  y, bn_s = batch_norm(y, p.get("bn", {}), s.get("bn", {}), ctx)
  return y.astype(x.dtype), ({"bn": bn_s} if bn_s else {})


def _skip_init(key, c, stride, affine, track):
  if stride == 1:
    return {}, {}
  return factorized_reduce_init(key, c, c, affine, track)


def _skip_apply(p, s, x, stride, ctx):
  if stride == 1:
    return x, s
  return factorized_reduce_apply(p, s, x, ctx)


def _bn_entry(p, s, name, c, affine, track):
  bn_p, bn_s = bn_init(c, affine, track)
  if bn_p:
    p[name] = bn_p
  if bn_s:
    s[name] = bn_s


def _make_sep_conv(k: int):
  pad = k // 2

  def init(key, c, stride, affine, track):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    p = {"dw1": dw_init(k1, k, c), "pw1": pw_init(k2, c, c), "dw2": dw_init(k3, k, c), "pw2": pw_init(k4, c, c)}
    s = {}
    _bn_entry(p, s, "bn1", c, affine, track)
    _bn_entry(p, s, "bn2", c, affine, track)
    return p, s

  def apply(p, s, x, stride, ctx):
    y = _pointwise(depthwise_conv(jax.nn.relu(x), p["dw1"], stride, 1, pad, ctx), p["pw1"])
    y, s1 = batch_norm(y, p.get("bn1", {}), s.get("bn1", {}), ctx)
    y = _pointwise(depthwise_conv(jax.nn.relu(y.astype(x.dtype)), p["dw2"], 1, 1, pad, ctx), p["pw2"])
    y, s2 = batch_norm(y, p.get("bn2", {}), s.get("bn2", {}), ctx)
    return y.astype(x.dtype), ({"bn1": s1, "bn2": s2} if s1 else {})

  return OpDef(init, apply, weight_free=False)


def _make_dil_conv(k: int, dilation: int = 2):
  pad = dilation * (k - 1) // 2

  def init(key, c, stride, affine, track):
    k1, k2 = jax.random.split(key)
    p = {"dw": dw_init(k1, k, c), "pw": pw_init(k2, c, c)}
    s = {}
    _bn_entry(p, s, "bn", c, affine, track)
    return p, s

  def apply(p, s, x, stride, ctx):
    y = _pointwise(depthwise_conv(jax.nn.relu(x), p["dw"], stride, dilation, pad, ctx), p["pw"])
    y, bn_s = batch_norm(y, p.get("bn", {}), s.get("bn", {}), ctx)
    return y.astype(x.dtype), ({"bn": bn_s} if bn_s else {})

  return OpDef(init, apply, weight_free=False)


def _conv_7x1_1x7_init(key, c, stride, affine, track):
  k1, k2 = jax.random.split(key)
  p = {"conv1": conv_init(k1, 1, 7, c, c), "conv2": conv_init(k2, 7, 1, c, c)}
  s = {}
  _bn_entry(p, s, "bn", c, affine, track)
  return p, s


def _conv_7x1_1x7_apply(p, s, x, stride, ctx):
  y = conv(jax.nn.relu(x), p["conv1"], (1, stride), ((0, 0), (3, 3))).astype(x.dtype)
  y = conv(y, p["conv2"], (stride, 1), ((3, 3), (0, 0)))
  y, bn_s = batch_norm(y, p.get("bn", {}), s.get("bn", {}), ctx)
  return y.astype(x.dtype), ({"bn": bn_s} if bn_s else {})


def _make_nor_conv(k: int):
  def init(key, c, stride, affine, track):
    return relu_conv_bn_init(key, c, c, k, affine, track)

  def apply(p, s, x, stride, ctx):
    return relu_conv_bn_apply(p, s, x, stride, k // 2, ctx)

  return OpDef(init, apply, weight_free=False)


# Final-network versions (pooling without BatchNorm, as in the reference's `OPS`).
OPS: Dict[str, OpDef] = {
    "none": OpDef(_none_init, _none_apply, weight_free=True),
    "max_pool_3x3": OpDef(lambda *a: ({}, {}), _make_pool_apply("max", with_bn=False), weight_free=True),
    "avg_pool_3x3": OpDef(lambda *a: ({}, {}), _make_pool_apply("avg", with_bn=False), weight_free=True),
    "skip_connect": OpDef(_skip_init, _skip_apply, weight_free=False),
    "sep_conv_3x3": _make_sep_conv(3),
    "sep_conv_5x5": _make_sep_conv(5),
    "sep_conv_7x7": _make_sep_conv(7),
    "dil_conv_3x3": _make_dil_conv(3),
    "dil_conv_5x5": _make_dil_conv(5),
    "conv_7x1_1x7": OpDef(_conv_7x1_1x7_init, _conv_7x1_1x7_apply, weight_free=False),
    "nor_conv_1x1": _make_nor_conv(1),
    "nor_conv_3x3": _make_nor_conv(3),
}

# Inside the search network, pooling is followed by a non-affine BatchNorm (`MixedOp` in the reference).
SEARCH_OPS: Dict[str, OpDef] = dict(
    OPS,
    max_pool_3x3=OpDef(_pool_init, _make_pool_apply("max", with_bn=True), weight_free=True),
    avg_pool_3x3=OpDef(_pool_init, _make_pool_apply("avg", with_bn=True), weight_free=True),
)


def get_op(name: str, search: bool = False) -> OpDef:
  table = SEARCH_OPS if search else OPS
  try:
    return table[name]
  except KeyError:
    raise ValueError(f"unknown operation {name!r}; known operations: {', '.join(sorted(table))}") from None


def is_weight_free(name: str, stride: int) -> bool:
  """Whether `name` at `stride` has no parameters (skip_connect has some at stride 2)."""
  if name == "skip_connect":
    return stride == 1
  return get_op(name).weight_free


def drop_path(x, drop_prob: float, key):
  """Zeroes whole examples with probability `drop_prob` and rescales the rest (the reference's drop_path)."""
  keep = 1.0 - drop_prob
  mask = jax.random.bernoulli(key, keep, (x.shape[0], 1, 1, 1)).astype(x.dtype)
  return x / keep * mask


def check_images(x_shape, in_channels: int, min_size: int = 1, multiple: int = 1, network: str = "the network",
                 reason: str = "its downsampling"):
  """Raises a one-line ValueError when an image batch of shape `x_shape` cannot go through `network`: NHWC,
  `in_channels` channels, at least `min_size` pixels and a multiple of `multiple` per side (for `reason`)."""
  if len(x_shape) != 4:
    raise ValueError(f"expected an NHWC image batch, got an array of shape {tuple(x_shape)}")
  _, h, w, c = x_shape
  if c != in_channels:
    raise ValueError(f"input has {c} channels but {network} was built for in_channels={in_channels}")
  if h < min_size or w < min_size:
    raise ValueError(f"input {h}x{w} is too small for {network} ({reason}); use images of at least "
                     f"{min_size}x{min_size}")
  if h % multiple or w % multiple:
    raise ValueError(f"image size {h}x{w} must be a multiple of {multiple} for {network} ({reason})")
