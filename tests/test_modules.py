"""The Flax NNX layer (`darts_jax.modules`): final networks trained in a user's own optax loop, α as its own
variable type in the supernet, and a candidate op written as an NNX module used by a search step."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from darts_jax import bilevel, genotypes, modules, nb201, networks, ops, steps, supernet
from darts_jax.data import sources
from darts_jax.search_space import SearchSpace

FASHION = os.path.join(sources.FASHION_MNIST_DEFAULT_DIR, "train-images-idx3-ubyte.gz")


@pytest.mark.skipif(not os.path.exists(FASHION), reason="Debian package dataset-fashion-mnist not installed")
def test_from_genotype_trains_in_an_optax_loop_on_fashion_mnist():
  """As a user's own code would: the searched-style network as an NNX module, nnx.Optimizer over its
  nnx.Param, a jitted train step; the loss falls and the running statistics move."""
  train = sources.load_dataset("fashion_mnist", "train")
  x = jnp.asarray(train.images[:128], jnp.float32) / 255.0
  y = jnp.asarray(train.labels[:128])
  model = networks.from_genotype("DARTS_V2", C=4, layers=3, num_classes=10, in_channels=1, auxiliary=True,
                                 drop_path_prob=0.1)
  assert isinstance(model, nnx.Module)
  optimizer = nnx.Optimizer(model, optax.adam(3e-3), wrt=nnx.Param)
  stats_before = [np.asarray(x) for x in jax.tree.leaves(model.trees()[1])]

  @nnx.jit
  def train_step(model, optimizer, xb, yb):
    def loss_fn(model):
      logits, aux = model(xb, train=True)
      ce = lambda z: optax.softmax_cross_entropy_with_integer_labels(z, yb).mean()
      return ce(logits) + 0.4 * ce(aux)
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(train_step(model, optimizer, x[i:i + 32], y[i:i + 32])) for _ in range(4) for i in (0, 32, 64, 96)]
  assert np.all(np.isfinite(losses))
  assert np.mean(losses[-4:]) < 0.8 * np.mean(losses[:4]), losses
  params, stats = model.trees()
  assert any(np.abs(np.asarray(a) - b).max() > 1e-3 for a, b in zip(jax.tree.leaves(stats), stats_before))
  # The module computes the functional network on its own values; nnx.Param holds exactly its weights.
  assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) == len(jax.tree.leaves(params))
  want = networks.apply(params, stats, x[:8], model.cfg, train=False)[0]
  np.testing.assert_allclose(np.asarray(model(x[:8])), np.asarray(want), rtol=1e-5, atol=1e-5)


def test_nb201_network_module_is_the_functional_network():
  arch = nb201.parse_arch("|nor_conv_3x3~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|")
  cfg = nb201.NB201Config(C=4, N=1, num_classes=3, in_channels=1)
  model = nb201.from_arch(arch, cfg, seed=1)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 1))
  params, stats = model.trees()
  np.testing.assert_allclose(np.asarray(model(x)), np.asarray(nb201.apply_network(params, stats, x, arch, cfg, False)[0]),
                             rtol=1e-6, atol=1e-6)


SMALL = SearchSpace(name="small", primitives=("none", "skip_connect", "sep_conv_3x3"), num_inputs=2, num_nodes=2)


def test_supernet_keeps_alpha_in_its_own_variable_type():
  cfg = supernet.SupernetConfig(C=4, layers=3, num_classes=3, in_channels=1, space=SMALL, multiplier=2,
                                dw_impl="loop")
  model = modules.SupernetModule(cfg, rngs=nnx.Rngs(0))
  alphas, weights = model.alphas.value(), model.weights.value()
  assert set(alphas) == {"normal", "reduce"}
  # α is its own variable type: the Alpha state holds exactly α's leaves, the Param state exactly the weights'.
  assert len(jax.tree.leaves(nnx.state(model, modules.Alpha))) == len(jax.tree.leaves(alphas)) == 2
  assert len(jax.tree.leaves(nnx.state(model, nnx.Param))) == len(jax.tree.leaves(weights))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
  np.testing.assert_allclose(np.asarray(model(x)),
                             np.asarray(supernet.apply(weights, x, supernet.softmax_weights(alphas), cfg)),
                             rtol=1e-6, atol=1e-6)
  # Split once into the pure state, step it, write it back.
  hp = bilevel.SearchHParams(epochs=1, steps_per_epoch=1, a_lr=0.1)
  state = modules.search_state(model, hp, jax.random.PRNGKey(2))
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  batch = {"image": x, "label": jnp.arange(4) % 3}
  state, _ = steps.make_search_step(problem, hp, donate=False)(state, batch, batch)
  modules.update_from_state(model, state)
  moved = model.alphas.value()["normal"]
  assert np.abs(np.asarray(moved) - np.asarray(alphas["normal"])).max() > 1e-3


class GatedConv(nnx.Module):
  """A candidate op as a user would write it: ReLU, 3×3 conv at the edge's stride, BatchNorm, sigmoid gate."""

  def __init__(self, c, stride, affine, *, rngs):
    self.conv = nnx.Conv(c, c, (3, 3), strides=stride, padding=1, use_bias=False, rngs=rngs)
    self.gate = nnx.Param(jnp.zeros((c,)))
    self.bn = nnx.BatchNorm(c, use_scale=affine, use_bias=affine, use_running_average=False, rngs=rngs)

  def __call__(self, x):
    return self.bn(self.conv(jax.nn.relu(x))) * jax.nn.sigmoid(self.gate[...])


def test_nnx_candidate_op_in_a_search_step_and_a_final_network():
  modules.register_op("gated_conv_3x3", GatedConv, override=True)
  with pytest.raises(ValueError, match="exists"):
    modules.register_op("gated_conv_3x3", GatedConv)
  space = SearchSpace(name="nnx_op", primitives=("none", "skip_connect", "gated_conv_3x3"), num_inputs=2,
                      num_nodes=2)
  cfg = supernet.SupernetConfig(C=4, layers=3, num_classes=3, in_channels=1, space=space, multiplier=2,
                                dw_impl="loop")
  params = supernet.init(jax.random.PRNGKey(0), cfg)
  alphas = space.init_alphas(jax.random.PRNGKey(1))
  hp = bilevel.SearchHParams(epochs=1, steps_per_epoch=1, a_lr=0.1)
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  state = bilevel.init_state(params, alphas, hp, jax.random.PRNGKey(2))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=(8, 8, 8, 1)), jnp.float32), "label": jnp.arange(8) % 3}
  new, metrics = steps.make_search_step(problem, hp, donate=False)(state, batch, batch)
  assert bool(metrics["finite"])
  # The op's own weights (the conv kernel and the gate) took the weight step; its α moved.
  op_leaves = lambda p: jax.tree.leaves(p["cells"][0]["waves"][0]["gated_conv_3x3"])
  assert op_leaves(params) and all(
      np.abs(np.asarray(a) - np.asarray(b)).max() > 0 for a, b in zip(op_leaves(new.params), op_leaves(params)))
  col = space.primitive_index("gated_conv_3x3")
  assert np.abs(np.asarray(new.alphas["normal"][:, col] - alphas["normal"][:, col])).max() > 1e-3
  # The derived genotype uses it, and builds a final network (affine BatchNorm, tracked statistics).
  g = genotypes.make_genotype([("gated_conv_3x3", 0), ("skip_connect", 1), ("gated_conv_3x3", 2),
                               ("gated_conv_3x3", 0)], [2, 3], [("gated_conv_3x3", 0), ("gated_conv_3x3", 1),
                                                                ("skip_connect", 2), ("gated_conv_3x3", 1)], [2, 3])
  model = networks.from_genotype(g, C=4, layers=3, num_classes=3, in_channels=1)
  logits, _ = model(batch["image"], train=True)
  assert logits.shape == (8, 3) and np.all(np.isfinite(np.asarray(logits)))
  assert ops.get_op("gated_conv_3x3") is ops.get_op("gated_conv_3x3", search=True)


BUILT_IN_OPS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3", "sep_conv_5x5",
                "sep_conv_7x7", "dil_conv_3x3", "dil_conv_5x5", "conv_7x1_1x7", "nor_conv_1x1", "nor_conv_3x3")


def _assert_trees_equal(got, want):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("name", BUILT_IN_OPS)
def test_op_module_is_the_functional_op(name, stride):
  c = 4
  op = modules.Op(name, c, stride, rngs=nnx.Rngs(0))
  opdef = ops.get_op(name)
  params, stats = opdef.init(nnx.Rngs(0).params(), c, stride, True, True)
  _assert_trees_equal(op.trees(), (params, stats))
  # nnx.Param holds exactly the op's weights, nnx.BatchStat its running statistics; weight-free ops hold none.
  n_params = len(jax.tree.leaves(nnx.state(op, nnx.Param)))
  assert n_params == len(jax.tree.leaves(params))
  assert (n_params == 0) == ops.is_weight_free(name, stride)
  assert len(jax.tree.leaves(nnx.state(op, nnx.BatchStat))) == len(jax.tree.leaves(stats))
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 7, 7, c)) + 0.5
  ctx = lambda train: ops.Ctx(train=train, dw_impl=op.dw_impl)
  np.testing.assert_array_equal(np.asarray(op(x)), np.asarray(opdef.apply(params, stats, x, stride, ctx(False))[0]))
  _assert_trees_equal(op.trees()[1], stats)   # evaluation leaves the running statistics alone
  y_train, stats_train = opdef.apply(params, stats, x, stride, ctx(True))
  np.testing.assert_array_equal(np.asarray(op(x, train=True)), np.asarray(y_train))
  _assert_trees_equal(op.trees()[1], stats_train)
  if stats:
    assert max(np.abs(np.asarray(a) - np.asarray(b)).max()
               for a, b in zip(jax.tree.leaves(stats_train), jax.tree.leaves(stats))) > 1e-3
  # Evaluation now normalizes with the updated running statistics.
  np.testing.assert_array_equal(np.asarray(op(x)),
                                np.asarray(opdef.apply(params, stats_train, x, stride, ctx(False))[0]))


def test_op_module_without_affine_batch_norm_and_from_given_trees():
  op = modules.Op("sep_conv_3x3", 4, 1, affine=False, rngs=nnx.Rngs(0))
  params, stats = op.trees()
  assert set(params) == {"dw1", "pw1", "dw2", "pw2"} and set(stats) == {"bn1", "bn2"}
  twin = modules.Op("sep_conv_3x3", 4, 1, trees=(params, stats))
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 5, 5, 4))
  np.testing.assert_array_equal(np.asarray(twin(x, train=True)), np.asarray(op(x, train=True)))
  with pytest.raises(ValueError, match="exactly one"):
    modules.Op("sep_conv_3x3", 4, 1)
  with pytest.raises(ValueError, match="unknown operation"):
    modules.Op("sep_conv_4x4", 4, 1, rngs=nnx.Rngs(0))


def test_optimizer_step_on_an_op_module_changes_its_weights():
  op = modules.Op("dil_conv_3x3", 4, 2, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(op, optax.sgd(0.1), wrt=nnx.Param)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 4))
  target = jax.random.normal(jax.random.PRNGKey(2), (4, 4, 4, 4))
  params_before, stats_before = op.trees()

  @nnx.jit
  def train_step(op, optimizer):
    loss, grads = nnx.value_and_grad(lambda op: jnp.mean((op(x, train=True) - target) ** 2))(op)
    optimizer.update(op, grads)
    return loss

  losses = [float(train_step(op, optimizer)) for _ in range(3)]
  assert losses[-1] < losses[0], losses
  params, stats = op.trees()
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(params_before)):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 0
  assert np.abs(np.asarray(stats["bn"]["mean"]) - np.asarray(stats_before["bn"]["mean"])).max() > 1e-3


def test_network_layers_are_cells_of_op_modules():
  model = networks.from_genotype("DARTS_V2", C=4, layers=3, num_classes=3, in_channels=1, auxiliary=True, seed=2)
  cfg = model.cfg
  params, stats = model.trees()
  # trees() lays the submodules out exactly as networks.init does.
  fresh = networks.init(jax.random.PRNGKey(0), cfg)
  assert jax.tree.structure((params, stats)) == jax.tree.structure(fresh)
  lay = networks.layout(cfg)
  assert len(model.cells) == cfg.layers
  assert [c.spec.reduction for c in model.cells] == [s.reduction for s in lay.cells] == [False, True, True]
  for i, cell in enumerate(model.cells):
    assert [(op.name, op.stride) for op in cell.ops] == [(n, s) for n, _, s in lay.cells[i].ops]
    for e, op in enumerate(cell.ops):
      assert isinstance(op, modules.Op)
      _assert_trees_equal(op.trees(), (params["cells"][i]["ops"][e], stats["cells"][i]["ops"][e]))
  _assert_trees_equal(model.classifier.trees()[0], params["classifier"])
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 28, 28, 1))
  # Training mode: the functional network's logits, and its new statistics written back into the cells' ops.
  logits, aux, new_stats = networks.apply(params, stats, x, cfg, True)
  got_logits, got_aux = model(x, train=True)
  np.testing.assert_array_equal(np.asarray(got_logits), np.asarray(logits))
  np.testing.assert_array_equal(np.asarray(got_aux), np.asarray(aux))
  _assert_trees_equal(model.trees()[1], new_stats)
  _assert_trees_equal(model.cells[0].ops[0].trees()[1], new_stats["cells"][0]["ops"][0])
  # The network reads its weights from the submodules: zeroing one edge's op changes the logits.
  before = np.asarray(model(x))
  edge = model.cells[0].ops[0]
  nnx.update(edge, jax.tree.map(jnp.zeros_like, nnx.state(edge, nnx.Param)))
  assert all(not np.asarray(a).any() for a in jax.tree.leaves(model.trees()[0]["cells"][0]["ops"][0]))
  assert np.abs(np.asarray(model(x)) - before).max() > 1e-6


def _xy(n=8, side=16):
  x = jax.random.normal(jax.random.PRNGKey(1), (n, side, side, 1))
  return x, jnp.arange(n) % 10


def test_replacing_an_op_module_changes_the_network_which_still_trains():
  """A user's edit of the architecture: one edge of one cell becomes a plain ``nnx.Conv``; the logits change
  (the cell runs its children), and the network still trains in an ``nnx.Optimizer`` loop, the new layer
  included."""
  model = networks.from_genotype("DARTS_V2", C=4, layers=3, num_classes=10, in_channels=1, seed=0)
  x, y = _xy()
  before = np.asarray(model(x))
  cell = model.cells[0]
  assert not cell.spec.reduction
  e = next(i for i, (name, _, _) in enumerate(cell.spec.ops) if name.startswith("sep_conv"))
  cell.ops[e] = nnx.Conv(cell.spec.c, cell.spec.c, (3, 3), padding="SAME", rngs=nnx.Rngs(3))
  after = np.asarray(model(x))
  assert np.max(np.abs(after - before)) > 1e-4

  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, xb, yb):
    def loss_fn(model):
      logits, _ = model(xb, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  kernel = np.asarray(model.cells[0].ops[e].kernel[...])
  losses = [float(step(model, optimizer, x, y)) for _ in range(8)]
  assert losses[-1] < losses[0], losses
  assert np.max(np.abs(np.asarray(model.cells[0].ops[e].kernel[...]) - kernel)) > 0
  with pytest.raises(ValueError, match="Conv"):
    model.trees()   # the functional pytrees have no place for the user's layer: one clear error


def test_replacing_a_cell_or_an_nb201_edge_changes_the_network():
  model = networks.from_genotype("DARTS_V2", C=4, layers=3, num_classes=10, in_channels=1, seed=0)
  other = networks.from_genotype("PC_DARTS", C=4, layers=3, num_classes=10, in_channels=1, seed=0)
  x, _ = _xy()
  before = np.asarray(model(x))
  model.cells[0] = other.cells[0]
  assert np.max(np.abs(np.asarray(model(x)) - before)) > 1e-4

  net = nb201.from_arch("|nor_conv_3x3~0|+|nor_conv_3x3~0|skip_connect~1|+|skip_connect~0|none~1|nor_conv_1x1~2|",
                        nb201.NB201Config(C=4, N=1, num_classes=10, in_channels=1))
  before = np.asarray(net(x))
  assert isinstance(net.layers[0], nb201.Cell)
  net.layers[0].edges[1] = modules.Op("avg_pool_3x3", 4, 1, rngs=nnx.Rngs(0))
  assert np.max(np.abs(np.asarray(net(x)) - before)) > 1e-4
