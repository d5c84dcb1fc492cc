"""Tests for the supernet's memory options: `remat` gives the same numbers, `compute_dtype` bfloat16 numbers
within bfloat16's precision, and rematerialization does reduce what the edge chain keeps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import bilevel, steps
from darts_jax.steps import edgewise
from darts_jax import supernet
from darts_jax.search_space import SearchSpace

# A cut-down DARTS space with every kind of op the chain handles (shared pooling + BN, identity, a separable
# and a dilated convolution, `none`), 2 nodes: small programs to compile.
SPACE = SearchSpace(name="mem", primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"),
                    num_inputs=2, num_nodes=2)
BASE = dict(C=4, layers=3, num_classes=3, in_channels=1, space=SPACE, multiplier=2)


def _problem(batch=4, size=8):
  key = jax.random.PRNGKey(0)
  cfg = supernet.SupernetConfig(**BASE)
  params = supernet.init(key, cfg)
  weights = supernet.softmax_weights(supernet.init_alphas(key, cfg, scale=1.0))
  data = {"image": jax.random.normal(jax.random.PRNGKey(1), (batch, size, size, 1)),
          "label": jnp.arange(batch) % 3}
  return params, weights, data


def _fused_grads(cfg, params, weights, data):
  def loss(p, w):
    return bilevel.cross_entropy(supernet.apply(p, data["image"], w, cfg), data["label"])
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, weights)


def _chain_grads(cfg, params, weights, data):
  loss, _, g_p, g_w = edgewise.cellwise_grads(cfg, cpu_opt_level=None)(params, weights, data)
  return loss, (g_p, g_w)


def _assert_close(got, want, rtol):
  (got_loss, got_g), (want_loss, want_g) = got, want
  np.testing.assert_allclose(got_loss, want_loss, rtol=rtol)
  assert jax.tree.structure(got_g) == jax.tree.structure(want_g)
  for g, w in zip(jax.tree.leaves(got_g), jax.tree.leaves(want_g)):
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol * float(np.max(np.abs(w))))


def test_bad_memory_options_raise():
  for kwargs in ({"remat": "layer"}, {"remat_policy": "everything"}, {"compute_dtype": "float16"}):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
      supernet.SupernetConfig(**kwargs)
  auto = supernet.SupernetConfig()   # the default: remat in the edge chain only, saving the matrix products
  assert auto.remat == "auto" and auto.remat_for("op") is None and auto.remat_for("op", chain=True) == "dots"
  assert supernet.SupernetConfig(remat="none").remat_for("op", chain=True) is None


@pytest.mark.parametrize("remat,policy", [("op", "dots"), ("op", "depthwise"), ("cell", "nothing"),
                                          ("cell", "convs")])
def test_remat_gives_the_same_gradients(remat, policy):
  """Rematerialization recomputes; it does not change the numbers: the loss and the gradients of the weights
  and the op weights equal those without it, through `apply` (one program) and through the edge chain."""
  params, weights, data = _problem()
  cfg = supernet.SupernetConfig(**BASE, remat=remat, remat_policy=policy)
  plain = supernet.SupernetConfig(**BASE, remat="none")
  want = _fused_grads(plain, params, weights, data)
  _assert_close(_fused_grads(cfg, params, weights, data), want, 1e-5)
  want_chain = _chain_grads(plain, params, weights, data)
  _assert_close(_chain_grads(cfg, params, weights, data), want_chain, 1e-5)
  _assert_close(want_chain, want, 1e-5)


@pytest.mark.parametrize("remat", ["op", "cell"])
def test_remat_keeps_the_exact_second_order_term(remat):
  """`cellwise_grads_and_hvp` with remat: the same gradients and the same Hessian-vector term as without."""
  params, weights, data = _problem()
  leaves, tree = jax.tree.flatten(params)
  v = jax.tree.unflatten(tree, [jax.random.normal(jax.random.PRNGKey(i), x.shape) for i, x in enumerate(leaves)])
  outs = []
  for r in ("none", remat):
    loss, _, g_p, g_w, hvp = edgewise.cellwise_grads_and_hvp(supernet.SupernetConfig(**BASE, remat=r),
                                                             cpu_opt_level=None)(params, weights, data)
    outs.append((loss, (g_p, g_w, hvp(v))))
  for k in outs[0][1][2]:
    assert float(np.max(np.abs(outs[0][1][2][k]))) > 0, k
  _assert_close(outs[1], outs[0], 1e-5)


def test_bfloat16_compute_stays_within_its_precision_and_keeps_float32_state():
  """compute_dtype="bfloat16": the loss within 1 %, every gradient leaf (float32, as the weights) close to the
  float32 gradient, and a search step keeps the weights, α and both optimizers' states in float32.

  Gradients are compared as directions (cosine) and by their relative error over the whole leaf: this
  network's gradients are ill-conditioned in its activations (BatchNorm over 4 images of 2x2 after the
  reductions), so that rounding only the *float32* network's input image to bfloat16 already moves some
  leaves by several percent; elementwise rtol=5e-2 would test that, not the implementation."""
  params, weights, data = _problem(batch=8)
  want_loss, want = _fused_grads(supernet.SupernetConfig(**BASE), params, weights, data)
  for cfg_kwargs in ({}, {"remat": "op"}):
    cfg = supernet.SupernetConfig(**BASE, compute_dtype="bfloat16", **cfg_kwargs)
    for got_loss, got in (_fused_grads(cfg, params, weights, data), _chain_grads(cfg, params, weights, data)):
      np.testing.assert_allclose(got_loss, want_loss, rtol=1e-2)
      for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        assert g.dtype == jnp.float32 and g.shape == w.shape
        g, w = np.ravel(g), np.ravel(w)
        assert np.dot(g, w) / (np.linalg.norm(g) * np.linalg.norm(w)) > 0.9
        assert np.linalg.norm(g - w) / np.linalg.norm(w) < 0.45
  # α and the op-weight gradients in particular stay close
  cfg = supernet.SupernetConfig(**BASE, compute_dtype="bfloat16")
  hp = bilevel.SearchHParams(epochs=1, steps_per_epoch=2)
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  key = jax.random.PRNGKey(2)
  state = bilevel.init_state(params, supernet.init_alphas(key, cfg), hp, key)
  step = steps.make_search_step(problem, hp, donate=False, backend="edgewise",
                                gradients=edgewise.gradients(cfg, cpu_opt_level=None))
  state, metrics = step(state, data, data)
  assert np.isfinite(float(metrics["val_loss"]))
  floats = [x for x in jax.tree.leaves((state.params, state.alphas, state.w_opt, state.a_opt))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)


def test_remat_reduces_the_memory_of_the_gradient():
  """What the edge chain keeps between its forward and backward programs: with remat="op" an edge's forward
  program returns its inputs as the only residuals (policy "nothing"), or those and its 1x1 convolutions'
  outputs ("dots", the default), far fewer bytes than the whole op's residuals; with remat="cell" a cell keeps
  no VJPs at all until its backward pass."""
  params, weights, data = _problem(batch=8, size=16)
  prog = edgewise._cell_programs(None)

  def tape(remat, policy="nothing"):
    cfg = supernet.SupernetConfig(**BASE, remat=remat, remat_policy=policy)
    ctx = supernet.network_ctx(cfg, supernet.ops.Ctx())
    return edgewise._forward_tape(prog, cfg, ctx, params, weights, data["image"])[1]

  def residual_bytes(remat, policy="nothing"):
    return sum(x.nbytes for x in jax.tree.leaves(tape(remat, policy)[0].body_vjps.edges))

  none = residual_bytes("none")
  assert residual_bytes("op") < 0.25 * none and residual_bytes("op", "dots") < 0.6 * none
  assert all(t.body_vjps is None and t.pre_vjp is None for t in tape("cell"))
