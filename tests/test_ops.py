"""Tests for the depthwise-convolution kernels of `darts_jax.ops`: every implementation gives XLA's numbers to
first and second order, and second-order derivatives of the tap loop stay small in memory."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import ops

IMPLS = {"loop": ops.depthwise_conv_loop, "shift": ops.depthwise_conv_shift,
         # chunks of one image: a loop over chunks with the taps unrolled inside
         "chunked": lambda x, w, s, d, p: ops.depthwise_conv_loop(x, w, s, d, p, 1)}


def _second_order(conv, x, w, stride, dilation, pad):
  """∇(x, w) of a function of both first-order gradients (what the exact hypergradient differentiates)."""
  f = lambda x, w: jnp.sum(jnp.sin(conv(x, w, stride, dilation, pad)))

  def g(x, w):
    gx, gw = jax.grad(f, (0, 1))(x, w)
    return jnp.sum(jnp.cos(gx)) + jnp.sum(gw ** 2)

  return jax.grad(g, (0, 1))(x, w)


@pytest.mark.parametrize("impl", sorted(IMPLS))
@pytest.mark.parametrize("k,stride,dilation", [(3, 1, 1), (5, 2, 1), (3, 2, 2), (5, 1, 2)])
def test_depthwise_second_order_matches_xla(impl, k, stride, dilation):
  pad = dilation * (k - 1) // 2
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 9, 8, 4))
  if impl == "chunked":
    assert "dynamic_update_slice" in str(jax.make_jaxpr(lambda x: IMPLS[impl](x, x[0, :k, :k], stride, dilation,
                                                                              pad))(x))
  w = jax.random.normal(jax.random.PRNGKey(1), (k, k, 4))
  want_y = ops.depthwise_conv_xla(x, w, stride, dilation, pad)
  np.testing.assert_allclose(IMPLS[impl](x, w, stride, dilation, pad), want_y, rtol=1e-5, atol=1e-5)
  got = jax.jit(lambda x, w: _second_order(IMPLS[impl], x, w, stride, dilation, pad))(x, w)
  want = jax.jit(lambda x, w: _second_order(ops.depthwise_conv_xla, x, w, stride, dilation, pad))(x, w)
  for a, b in zip(got, want):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(b))))


def test_loop_second_order_does_not_store_every_tap():
  # Differentiating the tap loop's kernel gradient as an ordinary loop stores one input window per tap
  # (about 31x the input for a 5x5 kernel, measured); as its own custom-VJP primitive it needs about 7.5x.
  x = jax.random.normal(jax.random.PRNGKey(0), (8, 32, 32, 16))
  w = jax.random.normal(jax.random.PRNGKey(1), (5, 5, 16))
  f = lambda x, w: jnp.sum(jnp.sin(ops.depthwise_conv_loop(x, w, 1, 1, 2, 16384)))
  h = lambda x, w: jax.grad(lambda x, w: jnp.sum(jax.grad(f, 1)(x, w) ** 2), 0)(x, w)
  temp = jax.jit(h).lower(x, w).compile().memory_analysis().temp_size_in_bytes
  assert temp < 12 * x.nbytes, temp / x.nbytes
