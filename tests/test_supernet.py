"""Tests for the supernet: shapes, input checks and the mixed-op semantics."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import ops
from darts_jax import supernet
from darts_jax.search_space import DARTS_SPACE

TINY = supernet.SupernetConfig(C=4, layers=3, num_classes=3, in_channels=1)


def test_alpha_shapes_and_edges():
  assert DARTS_SPACE.alpha_shape == (14, 8)
  alphas = supernet.init_alphas(jax.random.PRNGKey(0), TINY)
  assert set(alphas) == {"normal", "reduce"} and alphas["normal"].shape == (14, 8)
  assert float(jnp.max(jnp.abs(alphas["normal"]))) < 1e-2


@pytest.mark.parametrize("size", [8, 9])
def test_forward_shapes_any_input_size(size):
  key = jax.random.PRNGKey(0)
  params = supernet.init(key, TINY)
  x = jax.random.normal(key, (2, size, size, 1))
  apply = jax.jit(lambda p, x, w: supernet.apply(p, x, w, TINY))
  logits = apply(params, x, supernet.softmax_weights(supernet.init_alphas(key, TINY)))
  assert logits.shape == (2, 3) and bool(jnp.all(jnp.isfinite(logits)))


def test_only_none_gives_constant_cell_output():
  # With all weight on `none` every cell outputs zeros, so the logits equal the classifier bias.
  key = jax.random.PRNGKey(1)
  params = supernet.init(key, TINY)
  onehot = jax.nn.one_hot(jnp.zeros((14,), jnp.int32), 8)
  apply = jax.jit(lambda p, x, w: supernet.apply(p, x, w, TINY))
  logits = apply(params, jax.random.normal(key, (2, 8, 8, 1)), {"normal": onehot, "reduce": onehot})
  np.testing.assert_allclose(logits, jnp.broadcast_to(params["classifier"]["b"], (2, 3)), atol=1e-6)


def test_mixed_op_is_the_weighted_sum_of_single_ops():
  # The mixed cell with weights a + b equals the sum of the cells with weights a and b (linearity in α-weights
  # within a cell) — a check that every edge's ops are combined linearly by its weights.
  key = jax.random.PRNGKey(2)
  cell = supernet.mixed_cell_init(key, DARTS_SPACE, 4, False)
  xs = [jax.random.normal(k, (2, 6, 6, 4)) for k in jax.random.split(key, 2)]
  ctx = ops.Ctx(train=True)
  wa = jax.random.uniform(jax.random.PRNGKey(3), (14, 8))
  wb = jax.random.uniform(jax.random.PRNGKey(4), (14, 8))
  only_first_node = lambda w: w.at[2:].set(0.0)
  f = jax.jit(lambda w: supernet.mixed_cell_apply(cell, xs, only_first_node(w), DARTS_SPACE, False, ctx)[0])
  np.testing.assert_allclose(f(wa + wb), f(wa) + f(wb), rtol=1e-4, atol=1e-4)


def test_partial_channels_shapes():
  cfg = supernet.SupernetConfig(C=8, layers=3, num_classes=3, in_channels=1, partial_channels=4)
  key = jax.random.PRNGKey(0)
  params = supernet.init(key, cfg)
  pw = params["cells"][0]["waves"][0]["sep_conv_3x3"]["pw1"]
  assert pw.shape[-1] == 2  # C/K channels go through the ops
  apply = jax.jit(lambda p, x, w: supernet.apply(p, x, w, cfg))
  logits = apply(params, jnp.ones((2, 8, 8, 1)), supernet.softmax_weights(supernet.init_alphas(key, cfg)))
  assert logits.shape == (2, 3)


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match="at least 3 layers"):
    supernet.SupernetConfig(layers=2)
  with pytest.raises(ValueError, match="too small"):
    supernet.check_input(TINY, (2, 3, 3, 1))
  with pytest.raises(ValueError, match="channels"):
    supernet.check_input(TINY, (2, 8, 8, 3))
  with pytest.raises(ValueError, match="unknown"):
    ops.get_op("sep_conv_9x9")
