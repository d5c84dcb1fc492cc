"""Tests for the supernet: shapes, input checks and the mixed-op semantics."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import bilevel
from darts_jax import ops
from darts_jax import steps
from darts_jax.steps import edgewise
from darts_jax import supernet
from darts_jax.search_space import DARTS_SPACE, SearchSpace

TINY = supernet.SupernetConfig(C=4, layers=3, num_classes=3, in_channels=1)
# a cut-down DARTS space (2 nodes, 4 primitives) for tests that compile several networks
SMALL_SPACE = SearchSpace(name="small", primitives=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
                          num_inputs=2, num_nodes=2)


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


def _partial_channel_problem(layers):
  """A tiny supernet with PC-DARTS' partial channels, random op weights and edge factors, and a batch."""
  cfg = supernet.SupernetConfig(C=4, layers=layers, num_classes=3, in_channels=1, partial_channels=2,
                                space=SMALL_SPACE, multiplier=2)
  key = jax.random.PRNGKey(0)
  params = supernet.init(key, cfg)
  weights = supernet.softmax_weights(jax.tree.map(lambda a: 300.0 * a, supernet.init_alphas(key, cfg)))
  weights["normal_edge"] = jax.random.uniform(jax.random.PRNGKey(1), (SMALL_SPACE.num_edges,))
  weights["reduce_edge"] = jax.random.uniform(jax.random.PRNGKey(2), (SMALL_SPACE.num_edges,))
  batch = {"image": jax.random.normal(key, (4, 8, 8, 1)), "label": jnp.array([0, 1, 2, 0])}
  return cfg, params, weights, batch


def test_cellwise_grads_equal_the_network_gradient_and_share_cell_programs():
  """`edgewise.cellwise_grads` chains one forward and one backward program per distinct unit shape: it gives
  `jax.grad`'s numbers through `apply` for the weights and the op weights (here with PC-DARTS' partial
  channels and edge factors), the edges of one stride and resolution run the same compiled mixed op, and with
  wrt_params=False it gives the same op-weight gradients without the weights' backward programs."""
  cfg, params, weights, batch = _partial_channel_problem(layers=6)

  def loss(p, w):
    logits = supernet.apply(p, batch["image"], w, cfg)
    return bilevel.cross_entropy(logits, batch["label"]), jnp.mean(jnp.argmax(logits, -1) == batch["label"])

  (want_loss, want_acc), want = jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))(params, weights)
  edge_fwd = edgewise._cell_programs(None).edge_fwd
  edges = edge_fwd._cache_size()
  got_loss, got_acc, *got = edgewise.cellwise_grads(cfg, cpu_opt_level=None)(params, weights, batch)
  # 6 cells: normal, normal | reduce, normal | reduce, normal -> stride-1 edges at 3 resolutions, stride-2
  # edges into 2 reductions
  assert edge_fwd._cache_size() - edges == 5
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  assert float(got_acc) == float(want_acc)
  assert jax.tree.structure(tuple(got)) == jax.tree.structure(want)
  for g, w in zip(jax.tree.leaves(tuple(got)), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(w))))
  assert float(np.max(np.abs(got[1]["normal_edge"]))) > 0
  # Passes that need only ∂arch_weights (the α pass, finite differences) skip the weights' backward programs.
  pullbacks = edgewise._cell_programs(None).pullback._cache_size()
  arch_loss, _, no_params, arch = edgewise.cellwise_grads(cfg, cpu_opt_level=None)(params, weights, batch,
                                                                                   wrt_params=False)
  assert no_params is None and edgewise._cell_programs(None).pullback._cache_size() == pullbacks
  np.testing.assert_allclose(arch_loss, got_loss, rtol=1e-6)
  for g, w in zip(jax.tree.leaves(arch), jax.tree.leaves(got[1])):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7 * float(np.max(np.abs(w))))
  # ...unless told to reuse the full backward programs (fewer programs to compile).
  inputs_only = edgewise._cell_programs(None).pullback_inputs._cache_size()
  reused = edgewise.cellwise_grads(cfg, cpu_opt_level=None, arch_only_programs=False)(params, weights, batch,
                                                                                      wrt_params=False)
  assert reused[2] is None and edgewise._cell_programs(None).pullback_inputs._cache_size() == inputs_only
  for g, w in zip(jax.tree.leaves(reused[3]), jax.tree.leaves(got[1])):
    np.testing.assert_array_equal(g, w)


@pytest.mark.slow   # about 90 s on 2 busy cores, most of it compiling the whole-network double backward
def test_cellwise_hvp_equals_reverse_over_reverse_through_the_network():
  """`edgewise.cellwise_grads_and_hvp` gives the network gradient and, from what that pass recorded,
  double-backward programs per distinct edge chained forwards then backwards give the mixed second
  derivative ∇_{op weights}⟨∇_params L, v⟩ of differentiating `apply` twice; here with partial channels and
  edge factors, max pooling, a separable convolution and both kinds of preprocessing (after a normal cell
  and after a reduction)."""
  cfg, params, weights, batch = _partial_channel_problem(layers=3)
  leaves, tree = jax.tree.flatten(params)
  v = jax.tree.unflatten(tree, [jax.random.normal(jax.random.PRNGKey(i), x.shape) for i, x in enumerate(leaves)])

  def loss(p, w):
    return bilevel.cross_entropy(supernet.apply(p, batch["image"], w, cfg), batch["label"])

  want = jax.jit(jax.grad(lambda w: optax.tree_utils.tree_vdot(jax.grad(loss)(params, w), v)))(weights)
  want_loss, (want_p, want_w) = jax.value_and_grad(loss, argnums=(0, 1))(params, weights)
  got_loss, _, got_p, got_w, hvp = edgewise.cellwise_grads_and_hvp(cfg, cpu_opt_level=None)(params, weights, batch)
  np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
  for g, w in zip(jax.tree.leaves((got_p, got_w)), jax.tree.leaves((want_p, want_w))):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.max(np.abs(w))))
  got = hvp(v)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for k in want:
    assert float(np.max(np.abs(want[k]))) > 0, k
    np.testing.assert_allclose(got[k], want[k], rtol=1e-4, atol=1e-4 * float(np.max(np.abs(want[k]))),
                               err_msg=k)


@pytest.mark.parametrize("hypergradient", ["first_order", "second_order_fd",
                                           pytest.param("second_order_exact", marks=pytest.mark.slow)])
def test_edgewise_step_equals_the_per_pass_step(hypergradient):
  """The edgewise backend runs the per-pass step on the edge chain's gradients (and its Hessian-vector term
  for the exact second order): a DARTS step (first order, finite differences with
  its five passes, the exact second order) equals the one-program gradient's, without host transfers."""
  cfg = supernet.SupernetConfig(C=2, layers=3, num_classes=3, in_channels=1, space=SMALL_SPACE, multiplier=2)
  hp = bilevel.SearchHParams(epochs=2, steps_per_epoch=2, hypergradient=hypergradient)
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  once = steps.make_search_step(problem, hp, donate=False, backend="per_pass")
  cells = steps.make_search_step(problem, hp, donate=False, backend="edgewise",
                                 gradients=edgewise.gradients(cfg, cpu_opt_level=None))
  key = jax.random.PRNGKey(3)
  init = lambda: bilevel.init_state(supernet.init(key, cfg), supernet.init_alphas(key, cfg), hp, key)
  a, b = init(), init()
  for i in range(2):
    tb = {"image": jax.random.normal(jax.random.PRNGKey(10 + i), (4, 8, 8, 1)), "label": jnp.arange(4) % 3}
    vb = {"image": jax.random.normal(jax.random.PRNGKey(20 + i), (4, 8, 8, 1)), "label": jnp.arange(4) % 3}
    a, ma = once(a, tb, vb)
    b, mb = cells(b, tb, vb)
    for k in ma:
      np.testing.assert_allclose(ma[k], mb[k], rtol=2e-5, atol=1e-6, err_msg=f"step {i} {k}")
  # The chain runs from Python but never moves data between host and device.
  c, tb = init(), {"image": jax.random.normal(jax.random.PRNGKey(12), (4, 8, 8, 1)), "label": jnp.arange(4) % 3}
  with jax.transfer_guard("disallow"):
    jax.block_until_ready(cells(c, tb, tb))
  # The chain sums a node's edges one by one where `apply` sums vmapped waves: after two steps on this tiny
  # network (BatchNorm over 4 images) rounding reaches about 1.5e-5 of a leaf's largest entry.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=3e-5 * float(np.max(np.abs(x))))
  assert not np.allclose(b.alphas["normal"], init().alphas["normal"])
