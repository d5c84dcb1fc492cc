"""Tests for the bilevel search step: it learns, it is reproducible, it compiles once, it follows the paper's
optimizer settings."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from darts_jax import bilevel
from darts_jax import steps
from darts_jax import supernet
from darts_jax.search_space import SearchSpace

TINY = supernet.SupernetConfig(C=4, layers=3, num_classes=2, in_channels=1)
# A cut-down space for checks that do not depend on the DARTS ops (a fraction of TINY's compile time).
SMALL = supernet.SupernetConfig(C=4, layers=3, num_classes=2, in_channels=1, multiplier=2,
                               space=SearchSpace(name="small", primitives=("none", "skip_connect", "sep_conv_3x3"),
                                                 num_inputs=2, num_nodes=2))


def _problem(cfg=TINY):
  return bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                               arch_weights=lambda a, rng, step: supernet.softmax_weights(a))


def _synthetic(key, n):
  """A fixed, learnable problem: the label says whether the left or the right half is brighter."""
  x = jax.random.normal(key, (n, 8, 8, 1))
  y = (jnp.mean(x[:, :, :4], axis=(1, 2, 3)) > jnp.mean(x[:, :, 4:], axis=(1, 2, 3))).astype(jnp.int32)
  return {"image": x, "label": y}


def _run(step, hp, seed, steps, snapshot_at=None):
  key = jax.random.PRNGKey(seed)
  state = bilevel.init_state(supernet.init(key, TINY), supernet.init_alphas(key, TINY), hp, key)
  train, val = _synthetic(jax.random.PRNGKey(100), 16), _synthetic(jax.random.PRNGKey(101), 16)
  history, snapshot = [], None
  for i in range(steps):
    state, m = step(state, train, val)
    history.append(float(m["val_loss"]))
    if i + 1 == snapshot_at:
      snapshot = jax.tree.map(np.asarray, state.alphas)
  return state, history, snapshot


@pytest.fixture(scope="module")
def first_order():
  hp = bilevel.SearchHParams(epochs=20, steps_per_epoch=10, a_lr=3e-2)
  return hp, steps.make_search_step(_problem(), hp)


@pytest.mark.slow
def test_search_learns_and_is_reproducible_and_compiles_once(first_order):
  hp, step = first_order
  alphas0 = supernet.init_alphas(jax.random.PRNGKey(0), TINY)
  state, history, snapshot = _run(step, hp, 0, 200, snapshot_at=30)
  assert np.mean(history[-10:]) < 0.5 * np.mean(history[:10]), (history[:10], history[-10:])
  moved = float(jnp.max(jnp.abs(state.alphas["normal"] - alphas0["normal"])))
  assert moved > 1e-2
  assert int(state.step) == 200
  again, _, _ = _run(step, hp, 0, 30)  # the same seed again: bit-identical α
  for k in ("normal", "reduce"):
    np.testing.assert_array_equal(snapshot[k], np.asarray(again.alphas[k]))
  assert step._cache_size() == 1  # one compilation for 230 calls of the same shapes


def test_alpha_step_comes_first_and_weights_use_new_alphas():
  # The α update happens on the val batch before the weight update: with a zero weight learning rate the
  # weights do not move but α does.
  hp = bilevel.SearchHParams(w_lr=0.0, w_lr_min=0.0, w_weight_decay=0.0)
  step = jax.jit(lambda s, t, v: steps.search_step(_problem(SMALL), hp, s, t, v))
  key = jax.random.PRNGKey(0)
  state = bilevel.init_state(supernet.init(key, SMALL), supernet.init_alphas(key, SMALL), hp, key)
  batch = _synthetic(key, 4)
  new, metrics = step(state, batch, batch)
  assert bool(metrics["finite"])
  leaves = lambda t: jax.tree.leaves(t)
  assert all(np.array_equal(a, b) for a, b in zip(leaves(state.params), leaves(new.params)))
  assert not np.array_equal(state.alphas["normal"], new.alphas["normal"])


def test_optimizer_settings_follow_the_paper():
  hp = bilevel.SearchHParams(epochs=50, steps_per_epoch=10)
  lr = bilevel.cosine_lr(hp.w_lr, hp.w_lr_min, hp.epochs, hp.steps_per_epoch)
  assert float(lr(0)) == pytest.approx(0.025) and float(lr(9)) == pytest.approx(0.025)
  assert float(lr(500)) == pytest.approx(0.001)
  assert float(lr(250)) == pytest.approx(0.013)
  # The α optimizer is Adam(3e-4, betas (0.5, 0.999)) with weight decay 1e-3 added to the gradient: its first
  # update on a gradient g is -lr * sign(g + wd*a) (bias-corrected Adam).
  a = {"x": jnp.array([1.0, -2.0])}
  opt = bilevel.alpha_optimizer(hp)
  upd, _ = opt.update({"x": jnp.array([0.5, 0.5])}, opt.init(a), a)
  np.testing.assert_allclose(upd["x"], -3e-4 * np.sign([0.501, 0.498]), rtol=1e-4)


def test_weight_step_clips_the_global_gradient_norm():
  hp = bilevel.SearchHParams(w_weight_decay=0.0, w_momentum=0.0)
  opt = bilevel.weight_optimizer(hp)
  p = {"w": jnp.zeros((4,))}
  upd, _ = opt.update({"w": jnp.full((4,), 100.0)}, opt.init(p), p)
  assert float(optax.global_norm(upd)) == pytest.approx(0.025 * 5.0, rel=1e-5)


def test_unknown_hypergradient():
  with pytest.raises(ValueError, match="unknown hypergradient"):
    bilevel.SearchHParams(hypergradient="third_order")


@pytest.mark.slow
def test_second_order_modes_run_on_a_tiny_network():
  # Both second-order hypergradients are finite and differ from the first-order one (the second-order term
  # is not zero). How close they are to the reference is checked in test_reference_search.py.
  key = jax.random.PRNGKey(0)
  params = supernet.init(key, TINY)
  alphas = jax.tree.map(lambda a: a * 1000, supernet.init_alphas(key, TINY))
  tb, vb = _synthetic(jax.random.PRNGKey(1), 8), _synthetic(jax.random.PRNGKey(2), 8)
  out = {}
  for mode in bilevel.HYPERGRADIENTS:
    hp = bilevel.SearchHParams(hypergradient=mode, w_lr=0.5)
    w_opt = bilevel.weight_optimizer(hp).init(params)
    fn = jax.jit(lambda p, a, o, t, v, hp=hp: steps.hypergradient(
        _problem(), hp, bilevel.SearchState(p, a, o, None, jnp.zeros((), jnp.int32), jax.random.PRNGKey(0)), t, v)[0])
    out[mode] = np.concatenate([np.ravel(x) for x in jax.tree.leaves(fn(params, alphas, w_opt, tb, vb))])
  assert all(np.all(np.isfinite(v)) for v in out.values())
  diff = np.linalg.norm(out["second_order_exact"] - out["first_order"]) / np.linalg.norm(out["first_order"])
  assert diff > 1e-4
  diff_fd = np.linalg.norm(out["second_order_fd"] - out["first_order"]) / np.linalg.norm(out["first_order"])
  assert diff_fd > 1e-4


@pytest.mark.slow
def test_vmapped_seeds_equal_separate_runs():
  hp = bilevel.SearchHParams(epochs=2, steps_per_epoch=2)
  problem = _problem()
  seeds = (0, 1)
  states = bilevel.init_seeds(lambda k: supernet.init(k, TINY), lambda k: supernet.init_alphas(k, TINY), hp,
                              seeds)
  batches = [[_synthetic(jax.random.PRNGKey(10 * s + t), 8) for t in range(2)] for s in seeds]
  stack = lambda bs: jax.tree.map(lambda *xs: jnp.stack(xs), *bs)
  multi = steps.make_multi_seed_step(problem, hp, donate=False)
  single = jax.jit(lambda st, tb, vb: steps.search_step(problem, hp, st, tb, vb))
  for i in range(3):
    states, _ = multi(states, stack([b[0] for b in batches]), stack([b[1] for b in batches]))
  for j, seed in enumerate(seeds):
    key = jax.random.PRNGKey(seed)
    k_w, k_a, k_s = jax.random.split(key, 3)
    st = bilevel.init_state(supernet.init(k_w, TINY), supernet.init_alphas(k_a, TINY), hp, k_s)
    for i in range(3):
      st, _ = single(st, batches[j][0], batches[j][1])
    for k in ("normal", "reduce"):
      np.testing.assert_allclose(states.alphas[k][j], st.alphas[k], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(states.params["classifier"]["w"][j], st.params["classifier"]["w"],
                               rtol=1e-4, atol=1e-6)
  assert not np.allclose(states.alphas["normal"][0], states.alphas["normal"][1])
  assert multi._cache_size() == 1


def test_hypergradients_equal_the_bilevel_objective_differentiated_directly():
  """`steps.hypergradient` (the step's formula: op-weight gradients carried back through `arch_weights`, the
  exact second order by a Hessian-vector product) equals jax.grad of the objectives as the paper writes them,
  for stochastic op weights (a key of their own for the unrolled training pass), a regularizer and a momentum
  buffer; finite differences equal their definition."""
  cfg = SMALL
  def arch_weights(a, rng, step):
    noise = {k: 0.3 * jax.random.gumbel(jax.random.fold_in(rng, i), v.shape) for i, (k, v) in enumerate(a.items())}
    return {k: jax.nn.softmax(v + noise[k], -1) for k, v in a.items()}
  reg = lambda a, w, step: 0.1 * sum(jnp.sum(w[k] * a[k]) for k in a)
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg), arch_weights=arch_weights,
                                  regularizer=reg)
  key = jax.random.PRNGKey(4)
  params = supernet.init(key, cfg)
  alphas = jax.tree.map(lambda a: 300 * a, supernet.init_alphas(key, cfg))
  tb, vb = _synthetic(jax.random.PRNGKey(5), 8), _synthetic(jax.random.PRNGKey(6), 8)
  rng, step = jax.random.PRNGKey(7), jnp.asarray(3, jnp.int32)
  k_val, k_train = jax.random.split(rng)
  ce = lambda p, w, b: bilevel.cross_entropy(problem.apply(p, b["image"], w), b["label"])
  hp = bilevel.SearchHParams(epochs=4, steps_per_epoch=2, w_lr=0.2)
  w_opt = bilevel.weight_optimizer(hp).init(params)
  _, w_opt = bilevel.weight_optimizer(hp).update(jax.grad(ce)(params, arch_weights(alphas, k_train, step), tb),
                                                 w_opt, params)
  eta = bilevel.cosine_lr(hp.w_lr, hp.w_lr_min, hp.epochs, hp.steps_per_epoch)(step)
  assert 0 < eta < hp.w_lr

  def val_objective(p, a):
    w = arch_weights(a, k_val, step)
    return ce(p, w, vb) + reg(a, w, step)

  def unrolled(a):
    g = jax.grad(ce)(params, arch_weights(a, k_train, step), tb)
    return jax.tree.map(lambda w, gw, m: w - eta * (hp.w_momentum * m + gw + hp.w_weight_decay * w), params, g,
                        bilevel.momentum_buffer(w_opt))

  def fd_reference():
    w2 = unrolled(alphas)
    v = jax.grad(val_objective)(w2, alphas)
    r = hp.fd_r / optax.global_norm(v)
    train_a = lambda p: jax.grad(lambda a: ce(p, arch_weights(a, k_train, step), tb))(alphas)
    plus = train_a(jax.tree.map(lambda w, d: w + r * d, params, v))
    minus = train_a(jax.tree.map(lambda w, d: w - r * d, params, v))
    return jax.tree.map(lambda g, p, m: g - eta * (p - m) / (2 * r), jax.grad(val_objective, 1)(w2, alphas), plus,
                        minus)

  want = {"first_order": jax.jit(lambda: jax.grad(lambda a: val_objective(params, a))(alphas))(),
          "second_order_exact": jax.jit(lambda: jax.grad(lambda a: val_objective(unrolled(a), a))(alphas))(),
          "second_order_fd": jax.jit(fd_reference)()}
  for mode, expected in want.items():
    h = bilevel.SearchHParams(epochs=4, steps_per_epoch=2, w_lr=0.2, hypergradient=mode)
    state = bilevel.SearchState(params, alphas, w_opt, None, step, rng)
    got, _ = jax.jit(lambda: steps.hypergradient(problem, h, state, tb, vb))()
    for k in expected:
      np.testing.assert_allclose(got[k], expected[k], rtol=1e-4, atol=1e-6 * float(jnp.max(jnp.abs(expected[k]))),
                                 err_msg=f"{mode} {k}")
  first = np.concatenate([np.ravel(x) for x in jax.tree.leaves(want["first_order"])])
  exact = np.concatenate([np.ravel(x) for x in jax.tree.leaves(want["second_order_exact"])])
  assert np.linalg.norm(exact - first) > 1e-3 * np.linalg.norm(first)   # the second-order term is not negligible
