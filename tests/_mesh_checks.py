"""Checks that need several devices, run by tests/test_parallel.py in a subprocess whose XLA_FLAGS give 8
virtual CPU devices (the flag must be set before JAX starts): `python tests/_mesh_checks.py CHECK [ARG]`.

Each check raises AssertionError on failure and prints one line starting with ``ok`` on success.
"""
import sys

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from darts_jax import bilevel
from darts_jax import methods
from darts_jax import parallel
from darts_jax import steps
from darts_jax import supernet

BATCH = 16
CFG = dict(C=4, layers=3, num_classes=3, in_channels=1, dw_impl="loop")


def _problem(method_name: str, hypergradient: str = "first_order", **cfg_overrides):
  method = methods.get_method(method_name)
  cfg = methods.supernet_config(method, **{**CFG, **cfg_overrides})
  hp = method.search_hparams(epochs=4, steps_per_epoch=2, hypergradient=hypergradient)
  problem = method.problem(lambda p, x, w: supernet.apply(p, x, w, cfg), cfg.space, hp)
  key = jax.random.PRNGKey(0)
  k_w, k_a, k_s = jax.random.split(key, 3)
  state = bilevel.init_state(supernet.init(k_w, cfg), method.init_alphas(k_a, cfg.space), hp, k_s)
  return method, cfg, hp, problem, state


def _batches(n: int, seed: int = 0, shape=(8, 8, 1)):
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    mk = lambda: {"image": rng.normal(size=(BATCH,) + shape).astype(np.float32),
                  "label": rng.integers(0, 3, BATCH).astype(np.int32)}
    out.append((mk(), mk()))
  return out


def _close(a, b, what, rtol=2e-5, atol_scale=2e-6):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb), what
  worst = 0.0
  for x, y in zip(la, lb):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    assert x.shape == y.shape, (what, x.shape, y.shape)
    scale = max(float(np.max(np.abs(y))) if y.size else 0.0, 1e-12)
    err = np.max(np.abs(x - y)) if y.size else 0.0
    worst = max(worst, float(err) / scale)
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol_scale * scale, err_msg=what)
  return worst


def step_equality(method_name: str = "darts", hypergradient: str = "first_order", precision: str = "float32"):
  """The data-parallel step on 8 devices equals the one-device step at the same global batch: every state
  leaf and metric of three consecutive steps, each from the same state; inputs and outputs are sharded as the
  layout says, and the step makes no host transfer.

  ``precision="float64"`` runs both steps on float64 state and images (``jax_enable_x64``) at a tolerance of
  1e-9: what the two programs compute differently is then only the order of the global batch's sums, ~1e-16
  relative, which no ReLU at 0, finite difference or Adam normalization can lift to the tolerance, while a
  wrong batch split or BatchNorm statistic still moves results by ~1e-2. In float32 those amplifiers reach
  1e-3 of a leaf (measured on two CPUs for DARTS- and DARTS' finite differences), so float32 is checked
  tightly only for DARTS first order and exact second order, which agree to ~1e-6 of a leaf's maximum.
  """
  assert jax.device_count() == 8, jax.devices()
  if precision == "float64":
    jax.config.update("jax_enable_x64", True)
    tol = {"rtol": 1e-9, "atol_scale": 1e-9}
  elif precision == "float32":
    tight = {("darts", "first_order"), ("darts", "second_order_exact")}
    tol = {} if (method_name, hypergradient) in tight else {"rtol": 1e-3, "atol_scale": 2e-3}
  else:
    raise ValueError(f"precision must be float32 or float64, got {precision!r}")
  dtype = np.dtype(precision)
  cast = lambda tree: jax.tree.map(lambda x: np.asarray(x, dtype) if np.issubdtype(np.asarray(x).dtype, np.floating)
                                   else x, tree)
  method, _, hp, problem, state0 = _problem(method_name, hypergradient, compute_dtype=precision)
  state0 = cast(jax.device_get(state0))
  layout = parallel.make_layout()
  batches = cast(_batches(3))
  one = jax.device_put(state0, jax.devices()[0])
  step_one = steps.make_search_step(problem, hp, method.update_alphas, donate=False)
  step_mesh = steps.make_search_step(problem, hp, method.update_alphas, donate=False,
                                       shardings=layout.step_shardings())
  worst = 0.0
  for i, (tb, vb) in enumerate(batches):
    # Each step starts from the one-device state: the check compares steps, not runs, in which a ReLU input
    # within rounding of 0 can flip and then grow.
    mesh_state = layout.put_state(jax.device_get(one))
    one, m_one = step_one(one, jax.device_put(tb, jax.devices()[0]), jax.device_put(vb, jax.devices()[0]))
    tbm, vbm = layout.put_batch(tb), layout.put_batch(vb)
    assert tbm["image"].sharding.spec == P("data") and len(tbm["image"].sharding.device_set) == 8
    assert tbm["image"].addressable_shards[0].data.shape[0] == BATCH // 8
    with jax.transfer_guard("disallow"):
      mesh_state, m_mesh = step_mesh(mesh_state, tbm, vbm)
    for leaf in jax.tree.leaves((mesh_state, m_mesh)):
      assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8, leaf.sharding
    for leaf in jax.tree.leaves(one.params):
      assert leaf.dtype == dtype, (leaf.dtype, dtype)
    _close(m_mesh, m_one, f"metrics of step {i}", **tol)
    worst = max(worst, _close(parallel.host(mesh_state), jax.device_get(one), f"state after step {i}", **tol))
  print(f"ok {method_name} {hypergradient} {precision}: worst error {worst:.2e} of a leaf's maximum")


def per_device_bn():
  """`parallel.per_device_bn` normalizes with each device's shard: its logits equal the network applied to
  each shard of the batch separately; the default (global statistics) equals one device on the whole batch."""
  _, cfg, _, _, state = _problem("darts")
  layout = parallel.make_layout()
  apply = lambda p, x, w: supernet.apply(p, x, w, cfg)
  weights = supernet.softmax_weights(state.alphas)
  x = _batches(1)[0][0]["image"]
  per_shard = np.concatenate([np.asarray(apply(state.params, x[i:i + 2], weights)) for i in range(0, BATCH, 2)])
  params, w = layout.put_state(state.params), layout.put_state(weights)
  got = jax.jit(parallel.per_device_bn(apply, layout))(params, layout.put_batch({"x": x})["x"], w)
  np.testing.assert_allclose(np.asarray(got), per_shard, rtol=1e-4, atol=1e-5)
  whole = np.asarray(apply(state.params, x, weights))
  glob = jax.jit(apply)(params, layout.put_batch({"x": x})["x"], w)
  np.testing.assert_allclose(np.asarray(glob), whole, rtol=1e-4, atol=1e-5)
  assert np.max(np.abs(per_shard - whole)) > 1e-3, "per-device statistics should change the logits"
  # The gradient of the global batch's mean loss is the mean of the shards' gradients.
  y = np.arange(BATCH) % 3
  loss = lambda f, p, x, w, y: bilevel.cross_entropy(f(p, x, w), y)
  g_mesh = jax.jit(jax.grad(lambda p, x, w, y: loss(parallel.per_device_bn(apply, layout), p, x, w, y),
                            argnums=(0, 2)))(params, layout.put_batch({"x": x})["x"], w, layout.put_batch({"y": y})["y"])
  g_shards = [jax.grad(lambda p, w: loss(apply, p, x[i:i + 2], w, y[i:i + 2]), argnums=(0, 1))(state.params, weights)
              for i in range(0, BATCH, 2)]
  # BatchNorm over 2 images is ill-conditioned (rounding moves these gradients by ~1e-3 relative); a missing or
  # doubled sum over the devices would be off by a factor of 8.
  _close(parallel.host(g_mesh), jax.tree.map(lambda *g: np.mean(np.stack(g), 0), *g_shards), "gradients",
         rtol=1e-2, atol_scale=1e-3)
  print("ok per-device BatchNorm")


def multi_seed(method_name: str = "gdas"):
  """The vmapped multi-seed step with its seed axis sharded over a (seed=2, data=4) mesh equals separate
  one-device runs of each seed, on every state leaf."""
  seeds = (3, 11)
  method = methods.get_method(method_name)
  cfg = methods.supernet_config(method, **CFG)
  hp = method.search_hparams(epochs=4, steps_per_epoch=2)
  problem = method.problem(lambda p, x, w: supernet.apply(p, x, w, cfg), cfg.space, hp)
  init_p = lambda k: supernet.init(k, cfg)
  init_a = lambda k: method.init_alphas(k, cfg.space)
  layout = parallel.make_layout(seeds=2)
  assert layout.seed_size == 2 and layout.data_size == 4
  states = layout.put_state(bilevel.init_seeds(init_p, init_a, hp, seeds))
  step = steps.make_multi_seed_step(problem, hp, donate=False, shardings=layout.step_shardings())
  per_seed = [_batches(2, seed=s) for s in seeds]
  stack = lambda trees: jax.tree.map(lambda *xs: np.stack(xs), *trees)
  for i in range(2):
    tb = layout.put_batch(stack([b[i][0] for b in per_seed]))
    vb = layout.put_batch(stack([b[i][1] for b in per_seed]))
    assert tb["image"].sharding.spec == P("seed", "data")
    states, _ = step(states, tb, vb)
  for leaf in jax.tree.leaves(states):
    assert leaf.sharding.spec == P("seed"), leaf.sharding
  single = steps.make_search_step(problem, hp, donate=False)
  for s_i, seed in enumerate(seeds):
    k_w, k_a, k_s = jax.random.split(jax.random.PRNGKey(seed), 3)   # as a separate run with this seed
    st = bilevel.init_state(init_p(k_w), init_a(k_a), hp, k_s)
    for tb, vb in per_seed[s_i]:
      st, _ = single(st, tb, vb)
    _close(jax.tree.map(lambda x: np.asarray(x)[s_i], states), jax.device_get(st), f"seed {seed}",
           rtol=1e-4, atol_scale=1e-5)
  print(f"ok multi-seed {method_name} over the seed axis")


def retrain_step_equality():
  """The data-parallel retraining step (DARTS_V2, auxiliary head, drop path) on 8 devices equals one device:
  weights, BatchNorm running statistics (of the global batch), optimizer state after two steps."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from darts_jax import networks, retrain  # pylint: disable=g-import-not-at-top
  cfg = networks.NetworkConfig(genotype="DARTS_V2", C=4, num_classes=3, layers=3, auxiliary=True,
                               in_channels=1, kind="cifar", dw_impl="loop")
  params, stats = networks.init(jax.random.PRNGKey(0), cfg)
  import optax  # pylint: disable=g-import-not-at-top
  tx = optax.sgd(0.05, momentum=0.9)
  state = retrain.TrainState(params, stats, tx.init(params), jnp.zeros((), jnp.int32), jax.random.PRNGKey(1))
  kw = dict(epochs=2, steps_per_epoch=1, drop_path_prob=0.2, auxiliary_weight=0.4)
  layout = parallel.make_layout()
  one = retrain.make_train_step(cfg, tx, **kw)
  mesh = retrain.make_train_step(cfg, tx, shardings=layout.step_shardings(), **kw)
  host_state = jax.device_get(state)   # both steps donate their state: no shared buffers
  s_one, s_mesh = jax.device_put(host_state, jax.devices()[0]), layout.put_state(host_state)
  for tb, _ in _batches(2, shape=(32, 32, 1)):
    s_one, m_one = one(s_one, tb)
    with jax.transfer_guard("disallow"):
      s_mesh, m_mesh = mesh(s_mesh, layout.put_batch(tb))
    _close(jax.tree.map(np.asarray, parallel.host(m_mesh)), jax.device_get(m_one), "metrics")
  for leaf in jax.tree.leaves(s_mesh):
    assert leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 8
  worst = _close(parallel.host(s_mesh), jax.device_get(s_one), "state", rtol=1e-4, atol_scale=1e-5)
  print(f"ok retrain step: worst error {worst:.2e} of a leaf's maximum")


def bad_batch():
  """A global batch that does not divide over the data axis is refused in one line."""
  layout = parallel.make_layout()
  try:
    layout.check_batch_size(12)
  except ValueError as e:
    assert "does not divide" in str(e) and "\n" not in str(e), e
    print("ok", e)
    return
  raise AssertionError("batch 12 over 8 devices was accepted")


if __name__ == "__main__":
  globals()[sys.argv[1]](*sys.argv[2:])
