"""Tests for darts_jax.methods: one test per search mechanism, then every method through `bilevel`'s step.

XLA compile time dominates on CPU, so the mechanisms are checked on their pure functions and the fast
end-to-end test steps a toy network with the supernet's `apply(params, images, arch_weights)` interface; the
same run on the real (tiny) supernet is marked slow (about a minute and a half of compilation per method).
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import bilevel, genotypes, methods as M, nb201, ops, steps, supernet
from darts_jax.steps import edgewise
from darts_jax.search_space import DARTS_SPACE, NB201_SPACE, SearchSpace

KEY = jax.random.PRNGKey(0)
HP = bilevel.SearchHParams(epochs=10, steps_per_epoch=3)  # 30 steps, epochs 0..9


def _batch(key, n=4, classes=3):
  return {"image": jax.random.normal(key, (n, 8, 8, 3)), "label": jnp.arange(n) % classes}


def _toy_init(key, space=DARTS_SPACE, hidden=6, classes=3):
  ks = jax.random.split(key, 4)
  params = {"embed": 0.3 * jax.random.normal(ks[0], (8 * 8 * 3, hidden)),
            "cls": 0.3 * jax.random.normal(ks[1], (hidden, classes))}
  for i, c in enumerate(M.cell_names(space)):
    params[c] = 0.5 * jax.random.normal(ks[2 + i], (space.num_edges, space.num_ops, hidden, hidden))
  return params


def _toy_apply(params, x, arch_weights):
  """A few-kilobyte stand-in for the supernet: every edge mixes its ops' features with the op weights (and the
  edge factor, when given), nonlinearly, so losses depend on the weights as in the real network."""
  f = jnp.tanh(x.reshape(x.shape[0], -1) @ params["embed"])
  h = 0.0
  for c in ("normal", "reduce"):
    if c not in arch_weights:
      continue
    w = arch_weights[c]
    if c + M.EDGE in arch_weights:
      w = w * arch_weights[c + M.EDGE][:, None]
    h = h + jnp.einsum("eo,beok->bk", w, jnp.tanh(jnp.einsum("bh,eohk->beok", f, params[c])))
  return jnp.tanh(f + h) @ params["cls"]


def _rows_on_simplex(w, atol=1e-5):
  w = np.asarray(w)
  return bool(np.all(w >= -atol) and np.allclose(w.sum(-1), 1.0, atol=atol))


# --------------------------------------------------------------------------------------------------------
# Registry.


def test_get_method_names_and_errors():
  assert len(set(M.METHODS)) == len(M.METHODS) >= 13
  for name in M.METHODS:
    m = M.get_method(name)
    assert m.name == name
    m.search_hparams()  # the paper overrides are valid SearchHParams
  assert M.get_method("PCDARTS").name == "pcdarts" and M.get_method("darts-minus").name == "darts_minus"
  assert M.get_method("darts_2nd").search_hparams().hypergradient == "second_order_exact"
  assert M.get_method("darts_2nd_fd").search_hparams().hypergradient == "second_order_fd"
  with pytest.raises(ValueError, match="unknown search method 'enas'.*darts, darts_2nd"):
    M.get_method("enas")
  with pytest.raises(ValueError, match="takes no option.*tau_max"):
    M.get_method("gdas", temperature=3.0)
  assert M.get_method("gdas", tau_min=0.5) is not None


# --------------------------------------------------------------------------------------------------------
# GDAS.


def test_gdas_forward_is_one_hot_and_gradients_reach_alpha():
  m = M.get_method("gdas")
  alphas = m.init_alphas(KEY, DARTS_SPACE)
  prob = m.problem(_toy_apply, DARTS_SPACE, HP)
  w = prob.arch_weights(alphas, jax.random.PRNGKey(1), 0)
  for c in ("normal", "reduce"):
    wc = np.asarray(w[c])
    assert set(np.unique(wc)) <= {0.0, 1.0} and np.all(wc.sum(-1) == 1.0)  # exactly one-hot, not ≈
  w2 = prob.arch_weights(alphas, jax.random.PRNGKey(2), 0)
  assert not np.array_equal(w["normal"], w2["normal"])  # a new sample per step
  probe = jax.random.normal(KEY, DARTS_SPACE.alpha_shape)
  g = jax.grad(lambda a: sum(jnp.sum(v * probe) for v in prob.arch_weights(a, jax.random.PRNGKey(1), 0).values()))(
      alphas)
  assert float(jnp.abs(g["normal"]).sum()) > 0 and float(jnp.abs(g["reduce"]).sum()) > 0


def _gdas_expected_alpha_grad(key, alphas, tau, grad_w, grad_offset=None):
  """The released estimator: ∂probs/∂α applied to the sampled op's ∂L/∂w (and, in NB201, the other ops'
  zero-valued terms' ∂L/∂offset); `gumbel_hard`'s VJP is the one of its softmax."""
  sampled = np.asarray(M.gumbel_hard(key, alphas, tau))
  cot = sampled * grad_w
  if grad_offset is not None:
    cot = cot + (1.0 - sampled) * np.asarray(grad_offset)[:, None]
  return jax.vjp(lambda a: M.gumbel_hard(key, a, tau), alphas)[1](jnp.asarray(cot, jnp.float32))[0]


def test_gdas_alpha_gradient_is_the_released_darts_space_estimator():
  """DARTS space (AutoDL's ``op[index](x) * hardwts[index]``): the α-gradient flows through the sampled op
  alone, so it is ∂probs/∂α applied to ∂L/∂w masked to the sample (every op's ∂L/∂w is a different one)."""
  params = _toy_init(KEY)
  x, y = _batch(jax.random.PRNGKey(3))["image"], _batch(jax.random.PRNGKey(3))["label"]
  loss = lambda w: bilevel.cross_entropy(_toy_apply(params, x, {"normal": w}), y)
  alphas = jax.random.normal(jax.random.PRNGKey(4), DARTS_SPACE.alpha_shape)
  key, tau = jax.random.PRNGKey(5), 2.0
  got = jax.grad(lambda a: loss(M.gdas_arch_weights(key, a, tau, zero_terms=False)["w"]))(alphas)
  one_hot = M.gumbel_hard(key, alphas, tau)
  expected = _gdas_expected_alpha_grad(key, alphas, tau, np.asarray(jax.grad(loss)(one_hot)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
  every_op = jax.grad(lambda a: loss(M.gumbel_hard(key, a, tau)))(alphas)
  assert not np.allclose(got, every_op, atol=1e-4)


def test_gdas_alpha_gradient_is_the_released_nb201_estimator():
  """NB201 (AutoDL's NAS201SearchCell.forward_gdas): the ops not sampled enter as zero-valued scalars whose
  gradient is the sum of the edge's output gradient; the forward value is the one-hot network's."""
  cfg = nb201.NB201Config(C=4, N=1, num_classes=10)
  params = nb201.init_supernet(jax.random.PRNGKey(0), cfg)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  y = jnp.array([1, 7])
  loss = lambda w, off: bilevel.cross_entropy(
      nb201.apply_supernet(params, x, {"normal": w, "normal_offset": off}, cfg), y)
  alphas = jax.random.normal(jax.random.PRNGKey(4), NB201_SPACE.alpha_shape)
  key, tau = jax.random.PRNGKey(5), 2.0
  aw = lambda a: M.gdas_arch_weights(key, a, tau, zero_terms=True)
  got_loss, got = jax.value_and_grad(lambda a: loss(aw(a)["w"], aw(a)["offset"]))(alphas)
  one_hot = M.gumbel_hard(key, alphas, tau)
  zero = jnp.zeros(NB201_SPACE.num_edges)
  g_w, g_off = jax.grad(loss, argnums=(0, 1))(one_hot, zero)
  np.testing.assert_allclose(got_loss, loss(one_hot, zero), rtol=1e-6)
  expected = _gdas_expected_alpha_grad(key, alphas, tau, np.asarray(g_w), g_off)
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
  sampled_only = jax.grad(lambda a: loss(aw(a)["w"], zero))(alphas)
  assert not np.allclose(got, sampled_only, atol=1e-5)
  # The method feeds the NB201 network these terms.
  w = M.get_method("gdas").problem(None, NB201_SPACE, HP).arch_weights({"normal": alphas}, key, 0)
  assert set(w) == {"normal", "normal_offset"} and np.all(np.asarray(w["normal_offset"]) == 0.0)
  assert set(M.get_method("gdas").problem(None, DARTS_SPACE, HP).arch_weights(
      M.get_method("gdas").init_alphas(key, DARTS_SPACE), key, 0)) == {"normal", "reduce"}


def test_gdas_sample_follows_a_large_alpha():
  """With one op's α far above the others on every edge, the hard sample picks it (Gumbel noise rarely
  beats a margin of 12 nats), whatever the temperature."""
  winner = np.arange(DARTS_SPACE.num_edges) % DARTS_SPACE.num_ops
  alphas = 12.0 * jax.nn.one_hot(winner, DARTS_SPACE.num_ops)
  for i, tau in enumerate((10.0, 1.0, 0.1)):
    hard = M.gumbel_hard(jax.random.PRNGKey(i), alphas, tau)
    np.testing.assert_array_equal(np.argmax(np.asarray(hard), -1), winner)
  counts = np.zeros(DARTS_SPACE.num_ops)
  for i in range(200):  # near-uniform α: every op gets sampled
    counts[int(np.argmax(M.gumbel_hard(jax.random.PRNGKey(100 + i), jnp.zeros((1, 8)), 1.0)[0]))] += 1
  assert counts.min() > 5


def test_gdas_temperature_schedule():
  last = HP.epochs * HP.steps_per_epoch - 1
  assert float(M.gdas_tau(0, HP)) == pytest.approx(10.0, rel=1e-5)
  assert float(M.gdas_tau(HP.steps_per_epoch - 1, HP)) == pytest.approx(10.0, rel=1e-5)  # constant within an epoch
  assert float(M.gdas_tau(last, HP)) == pytest.approx(0.1, rel=1e-5)
  assert float(M.gdas_tau(last + 100, HP)) == pytest.approx(0.1, rel=1e-5)
  taus = [float(M.gdas_tau(s, HP)) for s in range(0, last + 1, HP.steps_per_epoch)]
  assert np.allclose(np.diff(taus), -(10.0 - 0.1) / (HP.epochs - 1))


# --------------------------------------------------------------------------------------------------------
# PC-DARTS.


def test_pcdarts_partial_channels_and_bypass():
  m = M.get_method("pcdarts")
  assert M.supernet_config(m, C=8, layers=3).partial_channels == 4
  # A one-node cell with one parametric op keeps the compiled program tiny.
  space = SearchSpace("one_node", ("none", "skip_connect", "sep_conv_3x3"), num_inputs=2, num_nodes=1)
  C, K = 8, 4
  cell = supernet.mixed_cell_init(KEY, space, C, False, partial_channels=K)
  assert cell["waves"][0]["sep_conv_3x3"]["pw1"].shape[-1] == C // K
  w = jax.random.uniform(KEY, space.alpha_shape)
  f = jax.jit(lambda xs: supernet.mixed_cell_apply(cell, list(xs), w, space, False, ops.Ctx(train=True), K)[0])
  xs = jax.random.normal(KEY, (2, 2, 6, 6, C))
  y = f(xs)
  y_bypass = f(xs.at[..., C // K:].add(1.0))   # change only the channels that bypass the ops
  y_ops = f(xs.at[..., :C // K].multiply(2.0))  # change only the channels that go through the ops
  op_lanes = np.arange(C) % K == 0  # channel shuffle puts the op outputs at channels 0, K, 2K, ...
  np.testing.assert_array_equal(y[..., op_lanes], y_bypass[..., op_lanes])
  assert not np.allclose(y[..., ~op_lanes], y_bypass[..., ~op_lanes])
  np.testing.assert_array_equal(y[..., ~op_lanes], y_ops[..., ~op_lanes])
  assert not np.allclose(y[..., op_lanes], y_ops[..., op_lanes])


def test_pcdarts_edge_normalization_and_derive():
  m = M.get_method("pcdarts")
  alphas = m.init_alphas(KEY, DARTS_SPACE)
  assert alphas["normal_edge"].shape == (14,) and alphas["reduce_edge"].shape == (14,)
  alphas["normal_edge"] = jax.random.normal(KEY, (14,))
  w = m.problem(_toy_apply, DARTS_SPACE, HP).arch_weights(alphas, KEY, 0)
  for s, e in M.node_slices(DARTS_SPACE):
    assert float(jnp.sum(w["normal_edge"][s:e])) == pytest.approx(1.0, abs=1e-6)
  np.testing.assert_allclose(w["normal_edge"][:2], jax.nn.softmax(alphas["normal_edge"][:2]), rtol=1e-6)
  # Node 0: edge 0 has the strongest op (softmax) but edge 1 wins after the edge weights; node 1 (edges 2-4)
  # keeps edges 3 and 4 by their weight although edge 2's op is the strongest.
  a = np.zeros((14, 8), np.float32)
  a[0, 4], a[1, 5] = 3.0, 2.0
  a[2, 6], a[3, 6], a[4, 7] = 3.0, 2.0, 2.0
  beta = np.zeros(14, np.float32)
  beta[1], beta[3], beta[4] = 3.0, 3.0, 3.0
  alphas = {"normal": jnp.asarray(a), "reduce": jnp.asarray(a), "normal_edge": jnp.asarray(beta),
            "reduce_edge": jnp.asarray(beta)}
  g = m.derive(alphas, DARTS_SPACE)
  assert g.normal[0] == ("sep_conv_5x5", 1)  # node 0 keeps both edges; the ranking decides their order
  assert {j for _, j in g.normal[2:4]} == {1, 2}
  plain = M.get_method("darts").derive({"normal": a, "reduce": a}, DARTS_SPACE)
  assert plain.normal[0] == ("sep_conv_3x3", 0) and {j for _, j in plain.normal[2:4]} == {0, 1}
  ow = m.op_weights(alphas, DARTS_SPACE)["normal"]
  expected = jax.nn.softmax(a, -1) * M.edge_softmax(jnp.asarray(beta), DARTS_SPACE)[:, None]
  np.testing.assert_allclose(np.asarray(ow), np.asarray(expected), rtol=1e-6)


# --------------------------------------------------------------------------------------------------------
# DrNAS.


def test_drnas_dirichlet_weights_gradients_and_kl():
  m = M.get_method("drnas")
  alphas = m.init_alphas(KEY, DARTS_SPACE)
  alphas["normal"] = alphas["normal"].at[0].set(jnp.array([-5.0, -1, 0, 1, 2, 3, -3, 0.5]))
  conc = M.dirichlet_concentration(alphas)
  assert all(bool(jnp.all(c > 0)) for c in conc.values())
  prob = m.problem(_toy_apply, DARTS_SPACE, HP)
  w = prob.arch_weights(alphas, jax.random.PRNGKey(3), 0)
  assert _rows_on_simplex(w["normal"]) and _rows_on_simplex(w["reduce"])
  assert not np.allclose(w["normal"], M.dirichlet_mean(alphas)["normal"])  # a sample, not the mean
  probe = jax.random.normal(KEY, DARTS_SPACE.alpha_shape)
  g = jax.grad(lambda a: jnp.sum(prob.arch_weights(a, jax.random.PRNGKey(3), 0)["normal"] * probe))(alphas)
  assert bool(jnp.all(jnp.isfinite(g["normal"]))) and float(jnp.abs(g["normal"]).sum()) > 0
  # The released default, "l2", is α's weight decay; "kl" regularizes toward the flat prior: 0 at
  # concentration 1 (α = 0), positive elsewhere.
  assert prob.regularizer is None and m.search_hparams().a_weight_decay == 1e-3
  prob = M.get_method("drnas", reg_type="kl").problem(_toy_apply, DARTS_SPACE, HP)
  zeros = jax.tree.map(jnp.zeros_like, alphas)
  assert float(prob.regularizer(zeros, None, 0)) == pytest.approx(0.0, abs=1e-5)
  assert float(prob.regularizer(alphas, None, 0)) > 0
  np.testing.assert_allclose(M.dirichlet_kl(jnp.array([2.0, 1.0]), jnp.array([1.0, 1.0])),
                             np.log(2.0) - 0.5, rtol=1e-5)  # Beta(2, 1) vs uniform: log 2 - 1/2
  mean = M.dirichlet_mean(alphas)["normal"]
  assert _rows_on_simplex(mean)
  assert m.derive(alphas, DARTS_SPACE) == genotypes.derive_genotype(
      mean, M.dirichlet_mean(alphas)["reduce"], weights_fn=lambda x: x)


# --------------------------------------------------------------------------------------------------------
# FairDARTS.


def test_fairdarts_sigmoid_weights_and_zero_one_loss():
  m = M.get_method("fairdarts")
  alphas = m.init_alphas(KEY, DARTS_SPACE)
  assert float(jnp.abs(alphas["normal"]).max()) == 0.0  # the reference starts at σ = 0.5
  alphas = {k: jax.random.normal(jax.random.fold_in(KEY, i), v.shape) for i, (k, v) in enumerate(alphas.items())}
  prob = m.problem(_toy_apply, DARTS_SPACE, HP)
  w = prob.arch_weights(alphas, KEY, 0)
  assert bool(jnp.all((w["normal"] > 0) & (w["normal"] < 1)))
  assert not np.allclose(np.asarray(w["normal"]).sum(-1), 1.0)  # no competition between ops
  jac = jax.jacobian(lambda a: prob.arch_weights({"normal": a, "reduce": alphas["reduce"]}, KEY, 0)["normal"][3])(
      alphas["normal"])
  off = np.asarray(jac).copy()
  off[np.arange(8), 3, np.arange(8)] = 0.0
  assert np.all(off == 0.0)  # each weight depends on its own α only
  s = np.concatenate([np.asarray(jax.nn.sigmoid(alphas[k])).ravel() for k in ("normal", "reduce")])
  assert float(prob.regularizer(alphas, w, 0)) == pytest.approx(-10.0 * np.mean((s - 0.5) ** 2), rel=1e-5)
  g = jax.grad(lambda a: prob.regularizer(a, None, 0))(alphas)
  stepped = jax.tree.map(lambda a, ga: a - 1.0 * ga, alphas, g)
  before, after = jax.nn.sigmoid(alphas["normal"]), jax.nn.sigmoid(stepped["normal"])
  assert bool(jnp.all(jnp.abs(after - 0.5) >= jnp.abs(before - 0.5)))  # pushed towards 0 or 1
  assert float(jnp.abs(after - 0.5).mean()) > float(jnp.abs(before - 0.5).mean())


# --------------------------------------------------------------------------------------------------------
# SDARTS.


def _toy_loss_fn(key):
  params, batch = _toy_init(key), _batch(jax.random.fold_in(key, 1))
  return lambda w: bilevel.cross_entropy(_toy_apply(params, batch["image"], w), batch["label"])


def test_sdarts_rs_perturbation_bounded_and_fresh():
  assert float(M.sdarts_epsilon(0, HP)) == pytest.approx(0.03, rel=1e-5)
  assert float(M.sdarts_epsilon(HP.epochs * HP.steps_per_epoch, HP)) == pytest.approx(0.3, rel=1e-5)
  m = M.get_method("sdarts_rs")
  alphas = m.init_alphas(KEY, DARTS_SPACE)
  soft = M.softmax_op_weights(alphas)
  raw = M.random_perturbation(jax.random.PRNGKey(4), soft, 0.03)
  for k in soft:
    d = np.abs(np.asarray(raw[k] - soft[k]))
    assert d.max() <= 0.03 + 1e-7 and d.max() > 0.02
  prob = m.problem(_toy_apply, DARTS_SPACE, HP)
  # The α step sees plain softmax(α); the weight step a projected perturbation that changes every step.
  np.testing.assert_allclose(prob.arch_weights(alphas, KEY, 0)["normal"], soft["normal"])
  w1 = prob.weight_arch_weights(alphas, jax.random.PRNGKey(5), 0, None)
  w2 = prob.weight_arch_weights(alphas, jax.random.PRNGKey(6), 1, None)
  assert _rows_on_simplex(w1["normal"]) and _rows_on_simplex(w2["reduce"])
  assert not np.allclose(w1["normal"], w2["normal"])
  # |δ| <= ε before the per-edge renormalization, whose sum is within 1 ± O·ε.
  o_eps = DARTS_SPACE.num_ops * 0.03
  bound = (0.03 + np.asarray(soft["normal"]) * o_eps) / (1 - o_eps)
  assert np.all(np.abs(np.asarray(w1["normal"] - soft["normal"])) <= bound)


def test_sdarts_adv_perturbation_raises_loss_within_eps():
  loss_fn = _toy_loss_fn(jax.random.PRNGKey(7))
  alphas = M.get_method("sdarts_adv").init_alphas(KEY, DARTS_SPACE)
  soft = M.softmax_op_weights(alphas)
  eps = 0.03
  adv = jax.jit(lambda k: M.pgd_perturbation(loss_fn, soft, k, eps, project=False))(jax.random.PRNGKey(8))
  for k in soft:
    assert float(jnp.abs(adv[k] - soft[k]).max()) <= eps + 1e-6
  assert float(loss_fn(adv)) > float(loss_fn(soft))
  rand = M.random_perturbation(jax.random.PRNGKey(8), soft, eps)
  assert float(loss_fn(adv)) > float(loss_fn(rand))  # the attack beats noise of the same size
  prob = M.get_method("sdarts_adv").problem(_toy_apply, DARTS_SPACE, HP)
  w = jax.jit(lambda k: prob.weight_arch_weights(alphas, k, 0, loss_fn))(jax.random.PRNGKey(9))
  assert _rows_on_simplex(w["normal"]) and float(loss_fn(w)) >= float(loss_fn(soft))


# --------------------------------------------------------------------------------------------------------
# β-DARTS and DARTS-.


def test_beta_darts_regularizer_and_schedule():
  alphas = {k: jax.random.normal(jax.random.fold_in(KEY, i), (14, 8)) for i, k in enumerate(("normal", "reduce"))}
  expected = sum(np.mean(np.log(np.sum(np.exp(np.asarray(alphas[k], np.float64)), -1))) for k in alphas)
  assert float(M.beta_regularizer(alphas)) == pytest.approx(expected, rel=1e-5)
  assert float(M.beta_darts_lambda(0, HP)) == 0.0
  assert float(M.beta_darts_lambda(5 * HP.steps_per_epoch, HP)) == pytest.approx(25.0, rel=1e-5)
  assert float(M.beta_darts_lambda(HP.epochs * HP.steps_per_epoch, HP)) == pytest.approx(50.0, rel=1e-5)
  prob = M.get_method("beta_darts").problem(_toy_apply, DARTS_SPACE, HP)
  step = 4 * HP.steps_per_epoch + 1
  assert float(prob.regularizer(alphas, None, step)) == pytest.approx(20.0 * expected, rel=1e-5)
  g = jax.grad(lambda a: prob.regularizer(a, None, step))(alphas)
  assert float(jnp.sum(g["normal"])) > 0  # decays α (its gradient is λ·softmax(α)/E per edge)


def test_darts_minus_aux_skip_decays_to_zero():
  m = M.get_method("darts_minus")
  alphas = m.init_alphas(KEY, DARTS_SPACE)
  prob = m.problem(_toy_apply, DARTS_SPACE, HP)
  skip = DARTS_SPACE.primitive_index("skip_connect")
  soft = M.softmax_op_weights(alphas)["normal"]
  betas = []
  for step in (0, HP.steps_per_epoch * 5, HP.epochs * HP.steps_per_epoch - 1, HP.epochs * HP.steps_per_epoch):
    extra = prob.arch_weights(alphas, KEY, step)["normal"] - soft
    assert np.allclose(np.delete(np.asarray(extra), skip, axis=1), 0.0, atol=1e-7)
    betas.append(float(extra[0, skip]))
  assert betas == pytest.approx([1.0, 0.5, 0.1, 0.0], abs=1e-6)
  np.testing.assert_allclose(m.op_weights(alphas, DARTS_SPACE)["normal"], soft)  # derive ignores it


# --------------------------------------------------------------------------------------------------------
# RS-WS and the random baseline.


def test_random_path_is_a_discrete_architecture():
  w = M.random_path(KEY, DARTS_SPACE)
  none = DARTS_SPACE.primitive_index("none")
  for c in ("normal", "reduce"):
    wc = np.asarray(w[c])
    for s, e in M.node_slices(DARTS_SPACE):
      assert wc[s:e].sum() == 2.0 and set(wc[s:e].sum(-1)) <= {0.0, 1.0}
    assert wc[:, none].sum() == 0
    genotypes.validate(M.derive_from_weights(w, DARTS_SPACE), DARTS_SPACE.primitives, steps=4)
  wn = M.random_path(KEY, NB201_SPACE)
  assert set(wn) == {"normal"} and np.all(np.asarray(wn["normal"]).sum(-1) == 1.0)


def test_rsws_select_returns_argmax_of_eval_fn():
  probe = {c: jax.random.normal(jax.random.fold_in(KEY, i), (14, 8)) for i, c in enumerate(("normal", "reduce"))}
  eval_fn = lambda w: sum(jnp.sum(w[c] * probe[c]) for c in w)
  res = M.get_method("rsws").select(jax.random.PRNGKey(11), DARTS_SPACE, eval_fn, num_candidates=12)
  assert len(res.scores) == len(res.candidates) == 12
  i = int(np.argmax(res.scores))
  assert res.best == res.candidates[i] and float(eval_fn(res.best_weights)) == pytest.approx(res.scores.max())
  assert len({str(g) for g in res.candidates}) > 1
  assert res.best == M.derive_from_weights(res.best_weights, DARTS_SPACE)
  with pytest.raises(ValueError, match="num_candidates"):
    M.rsws_select(KEY, DARTS_SPACE, eval_fn, 0)


def test_random_baseline_valid_and_key_dependent():
  m = M.get_method("random")
  assert not m.update_alphas
  gs = [m.derive(None, DARTS_SPACE, key=jax.random.PRNGKey(i)) for i in range(4)]
  for g in gs:
    genotypes.validate(g, DARTS_SPACE.primitives, steps=4)
  assert len({str(g) for g in gs}) == 4
  assert m.derive(None, DARTS_SPACE, key=jax.random.PRNGKey(1)) == gs[1]  # deterministic in the key
  archs = {m.derive(None, NB201_SPACE, key=jax.random.PRNGKey(i)) for i in range(4)}
  assert len(archs) == 4 and all(nb201.as_arch(a) == a for a in archs)
  with pytest.raises(ValueError, match="key"):
    m.derive(None, DARTS_SPACE)


def test_darts_family_derive_on_nb201():
  a = np.full(NB201_SPACE.alpha_shape, -1.0, np.float32)
  best = [1, 2, 3, 4, 0, 2]
  a[np.arange(6), best] = 1.0
  expected = tuple(NB201_SPACE.primitives[i] for i in best)
  for name in ("darts", "gdas", "drnas", "fairdarts", "sdarts_rs", "beta_darts", "darts_minus"):
    m = M.get_method(name)
    assert set(m.init_alphas(KEY, NB201_SPACE)) == {"normal"}
    assert m.derive({"normal": jnp.asarray(a)}, NB201_SPACE) == expected, name
  pc = M.get_method("pcdarts")
  alphas = pc.init_alphas(KEY, NB201_SPACE)
  assert set(alphas) == {"normal", "normal_edge"}
  assert pc.derive({"normal": jnp.asarray(a), "normal_edge": alphas["normal_edge"]}, NB201_SPACE) == expected


# --------------------------------------------------------------------------------------------------------
# Every method through bilevel's one search step.


def _run(method, apply_fn, params, space, n_steps=2, batch_size=4):
  hp = method.search_hparams(epochs=2, steps_per_epoch=1)
  params = jax.tree.map(jnp.copy, params)  # the step donates its state
  state = bilevel.init_state(params, method.init_alphas(KEY, space), hp, jax.random.PRNGKey(1))
  alphas0 = jax.tree.map(np.asarray, state.alphas)
  step = steps.make_search_step(method.problem(apply_fn, space, hp), hp, method.update_alphas)
  for i in range(n_steps):
    state, metrics = step(state, _batch(jax.random.PRNGKey(10 + i), batch_size),
                          _batch(jax.random.PRNGKey(20 + i), batch_size))
  return alphas0, state, metrics


def _check_run(method, alphas0, state, metrics):
  assert int(state.step) == 2 and bool(metrics["finite"]), method.name
  moved = any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(alphas0), jax.tree.leaves(state.alphas)))
  assert moved == method.update_alphas, method.name
  assert "val_loss" in metrics if method.update_alphas else "val_loss" not in metrics


def test_every_method_steps_through_bilevel():
  params = _toy_init(KEY)
  for name in M.METHODS:
    m = M.get_method(name)
    alphas0, state, metrics = _run(m, _toy_apply, params, DARTS_SPACE)
    _check_run(m, alphas0, state, metrics)
    arch = m.derive(state.alphas, DARTS_SPACE, key=jax.random.PRNGKey(0))
    genotypes.validate(arch, DARTS_SPACE.primitives, steps=4)


def test_weight_step_perturbation_is_only_in_the_weight_step():
  # SDARTS-RS with ε = 0 must reproduce DARTS exactly: `weight_arch_weights` replaces nothing else.
  params = _toy_init(KEY)
  _, s_darts, m_darts = _run(M.get_method("darts"), _toy_apply, params, DARTS_SPACE)
  _, s_rs, m_rs = _run(M.get_method("sdarts_rs", eps_min=0.0, eps_max=0.0), _toy_apply, params, DARTS_SPACE)
  for a, b in zip(jax.tree.leaves((s_darts.params, s_darts.alphas)), jax.tree.leaves((s_rs.params, s_rs.alphas))):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  assert float(m_darts["train_loss"]) == pytest.approx(float(m_rs["train_loss"]), rel=1e-6)


def test_bilevel_weight_step_uses_weight_arch_weights():
  # Zero op weights in the weight step only: the α step still moves α, the weight step sees h = 0.
  hp = bilevel.SearchHParams(epochs=2, w_weight_decay=0.0)
  problem = bilevel.SearchProblem(
      apply=_toy_apply, arch_weights=lambda a, rng, step: M.softmax_op_weights(a),
      weight_arch_weights=lambda a, rng, step, loss_fn: jax.tree.map(jnp.zeros_like, M.softmax_op_weights(a)))
  params = _toy_init(KEY)
  alphas = M.get_method("darts").init_alphas(KEY, DARTS_SPACE)
  state = bilevel.init_state(jax.tree.map(jnp.copy, params), alphas, hp, KEY)
  tb, vb = _batch(jax.random.PRNGKey(1)), _batch(jax.random.PRNGKey(2))
  state, metrics = steps.make_search_step(problem, hp, donate=False)(state, tb, vb)
  zero = jax.tree.map(jnp.zeros_like, M.softmax_op_weights(alphas))
  expected = bilevel.cross_entropy(_toy_apply(params, tb["image"], zero), tb["label"])
  assert float(metrics["train_loss"]) == pytest.approx(float(expected), rel=1e-6)
  np.testing.assert_array_equal(state.params["normal"], params["normal"])  # no gradient through zero weights
  assert not np.array_equal(state.params["embed"], params["embed"])
  assert not np.array_equal(state.alphas["normal"], alphas["normal"])


@pytest.mark.slow
@pytest.mark.parametrize("name", M.METHODS)
def test_method_on_tiny_supernet(name):
  m = M.get_method(name)
  cfg = M.supernet_config(m, C=4, layers=3, num_classes=3)
  apply_fn = lambda p, x, w: supernet.apply(p, x, w, cfg)
  alphas0, state, metrics = _run(m, apply_fn, supernet.init(KEY, cfg), DARTS_SPACE, batch_size=2)
  _check_run(m, alphas0, state, metrics)
  genotypes.validate(m.derive(state.alphas, DARTS_SPACE, key=KEY), DARTS_SPACE.primitives, steps=4)


@pytest.mark.parametrize("name,hypergradient", [
    ("darts", "first_order"), ("gdas", "first_order"), ("pcdarts", "first_order"), ("drnas", "first_order"),
    ("fairdarts", "first_order"), ("beta_darts", "first_order"), ("darts_minus", "first_order"),
    ("rsws", "first_order"), ("darts", "second_order_fd"), ("darts", "second_order_exact"),
    ("gdas", "second_order_exact"), ("beta_darts", "second_order_fd")])
def test_per_pass_step_equals_fused_step(name, hypergradient):
  """The per-pass backend (one compiled network gradient for every pass) gives the fused step's numbers
  for every method and hypergradient it supports: random op weights (GDAS, DrNAS, RS-WS), regularizers
  (FairDARTS, β-DARTS), edge factors (PC-DARTS), α-independent extras (DARTS-), and both second orders
  (finite differences, and the exact one through a Hessian-vector program)."""
  m = M.get_method(name)
  hp = dataclasses.replace(m.search_hparams(epochs=2, steps_per_epoch=2), hypergradient=hypergradient)
  problem = m.problem(_toy_apply, DARTS_SPACE, hp)
  assert steps.supports("per_pass", problem)
  fused = steps.make_search_step(problem, hp, m.update_alphas, donate=False)
  shared = steps.make_search_step(problem, hp, m.update_alphas, backend="per_pass")
  warm_f = steps.make_search_step(problem, hp, False, donate=False)
  warm_s = steps.make_search_step(problem, hp, False, backend="per_pass")
  init = lambda: bilevel.init_state(_toy_init(KEY), m.init_alphas(KEY, DARTS_SPACE), hp, jax.random.PRNGKey(1))
  a, b = init(), init()
  for i, (fa, fb) in enumerate([(warm_f, warm_s), (fused, shared), (fused, shared)]):
    tb, vb = _batch(jax.random.PRNGKey(10 + i)), _batch(jax.random.PRNGKey(20 + i))
    a, ma = fa(a, tb, vb)
    b, mb = fb(b, tb, vb)
    assert set(ma) == set(mb)
    for k in ma:
      np.testing.assert_allclose(ma[k], mb[k], rtol=2e-5, atol=1e-6, err_msg=f"{name} step {i} {k}")
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6, err_msg=name)
  assert m.update_alphas == (not np.allclose(a.alphas["normal"], init().alphas["normal"]))


def test_pass_by_pass_backends_refuse_weight_pass_hooks():
  for name, hp in (("sdarts_rs", bilevel.SearchHParams()),
                   ("sdarts_rs", bilevel.SearchHParams(hypergradient="second_order_exact"))):
    m = M.get_method(name)
    problem = m.problem(_toy_apply, DARTS_SPACE, hp)
    assert not steps.supports("per_pass", problem) and steps.supports("fused", problem)
    with pytest.raises(ValueError, match="cannot run a method that perturbs"):
      steps.make_search_step(problem, hp, backend="per_pass")


@pytest.mark.slow
@pytest.mark.parametrize("name", M.METHODS)
def test_edgewise_step_equals_per_pass_step_on_the_supernet(name):
  """Searches on a CPU run the edgewise step by default: for every method it serves, on
  the real (tiny) supernet with the method's own settings (PC-DARTS' partial channels), a warm-up step and two
  search steps give the one-program gradient's numbers."""
  m = M.get_method(name)
  cfg = M.supernet_config(m, C=4, layers=3, num_classes=3)
  hp = m.search_hparams(epochs=2, steps_per_epoch=2)
  problem = m.problem(lambda p, x, w: supernet.apply(p, x, w, cfg), DARTS_SPACE, hp)
  if not steps.supports("edgewise", problem):
    pytest.skip("a weight-pass hook needs the fused step")
  net = edgewise.gradients(cfg, cpu_opt_level=None)
  init = lambda: bilevel.init_state(supernet.init(KEY, cfg), m.init_alphas(KEY, DARTS_SPACE), hp,
                                    jax.random.PRNGKey(1))
  a, b = init(), init()
  for i, update in enumerate((False, m.update_alphas, m.update_alphas)):
    once = steps.make_search_step(problem, hp, update, donate=False, backend="per_pass")
    cells = steps.make_search_step(problem, hp, update, donate=False, backend="edgewise", gradients=net)
    tb, vb = _batch(jax.random.PRNGKey(10 + i)), _batch(jax.random.PRNGKey(20 + i))
    a, ma = once(a, tb, vb)
    b, mb = cells(b, tb, vb)
    for k in ma:
      np.testing.assert_allclose(ma[k], mb[k], rtol=1e-4, atol=1e-5, err_msg=f"{name} step {i} {k}")
  # The chain sums a node's edges one by one where `apply` sums vmapped waves. Over three steps (Adam's
  # normalization, GDAS' hard samples) that rounding reached 1.5e-4 of a leaf's largest entry, 3e-4 relative
  # on a one-element leaf; a wrong term would be off by far more.
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=1e-3, atol=5e-4 * float(np.max(np.abs(x))), err_msg=name)


# --------------------------------------------------------------------------------------------------------
# Per-space defaults and α freezing.


def test_frozen_epochs_at_the_start_of_each_stage():
  f = M.frozen_epochs(50, 10, 2)
  assert list(np.flatnonzero(f)) == list(range(10)) + list(range(25, 35))
  assert list(np.flatnonzero(M.frozen_epochs(6, 1))) == [0]
  assert not M.frozen_epochs(6, 0, 2).any()
  assert M.frozen_epochs(5, 10, 2).all()   # a warm-up longer than its stage freezes the stage


def test_released_per_space_defaults():
  drnas = M.get_method("drnas")
  assert (drnas.warmup_epochs, drnas.warmup_stages) == (10, 2)
  hp = drnas.search_hparams()
  assert (hp.w_lr, hp.w_lr_min, hp.a_lr, hp.epochs, hp.a_weight_decay) == (0.1, 0.0, 6e-4, 50, 1e-3)
  nb = drnas.for_space(NB201_SPACE)
  hp = nb.search_hparams()
  assert (hp.w_lr, hp.w_lr_min, hp.a_lr, hp.epochs, hp.a_weight_decay) == (0.025, 0.001, 3e-4, 100, 1e-3)
  assert nb.warmup_epochs == 0 and not M.frozen_epochs(hp.epochs, nb.warmup_epochs, nb.warmup_stages).any()
  assert drnas.for_space("darts").search_hparams() == drnas.search_hparams()
  assert drnas.for_space("darts").warmup_stages == 2
  for name in ("darts", "darts_2nd", "gdas"):
    hp = M.get_method(name).for_space("nb201").search_hparams()
    assert hp.w_nesterov and (hp.w_weight_decay, hp.a_lr, hp.a_weight_decay, hp.w_lr_min) == (5e-4, 3e-4, 1e-3, 1e-3)
  assert M.get_method("gdas").search_hparams().w_nesterov and not M.get_method("darts").search_hparams().w_nesterov
  assert M.get_method("gdas").for_space("nb201").search_hparams().epochs == 250
  kl = M.get_method("drnas", reg_type="kl")
  assert kl.search_hparams().a_weight_decay == 0.0 and kl.for_space("nb201").search_hparams().a_weight_decay == 0.0


def test_nesterov_weight_optimizer_is_torch_sgd_nesterov():
  """torch.optim.SGD(nesterov=True, weight_decay=λ) as documented: g += λw; b = μb + g; w -= lr·(g + μb)."""
  hp = bilevel.SearchHParams(epochs=1, steps_per_epoch=10, w_lr=0.1, w_lr_min=0.1, w_nesterov=True,
                             w_weight_decay=5e-4, grad_clip=1e9)
  opt = bilevel.weight_optimizer(hp)
  w = {"x": jnp.array([1.0, -2.0, 0.5])}
  state = opt.init(w)
  w_ref, buf = np.array([1.0, -2.0, 0.5]), np.zeros(3)
  for i in range(4):
    g = {"x": jnp.sin(w["x"] * (i + 1))}
    upd, state = opt.update(g, state, w)
    w = {"x": w["x"] + upd["x"]}
    g_ref = np.sin(w_ref * (i + 1)) + 5e-4 * w_ref
    buf = 0.9 * buf + g_ref
    w_ref = w_ref - 0.1 * (g_ref + 0.9 * buf)
    np.testing.assert_allclose(w["x"], w_ref, rtol=1e-5)
  plain = bilevel.weight_optimizer(dataclasses.replace(hp, w_nesterov=False))
  upd, _ = plain.update({"x": jnp.ones(3)}, plain.update({"x": jnp.ones(3)}, plain.init(w), w)[1], w)
  nest, _ = opt.update({"x": jnp.ones(3)}, opt.update({"x": jnp.ones(3)}, opt.init(w), w)[1], w)
  assert not np.allclose(upd["x"], nest["x"])


def test_fairdarts_threshold_parse_option():
  space = DARTS_SPACE
  m = M.get_method("fairdarts", parse="threshold_sparse")
  alphas = m.init_alphas(jax.random.PRNGKey(0), space)          # α = 0: σ = 0.5 < 0.85 everywhere
  g = m.derive(alphas, space)
  assert genotypes.is_sparse(g) and g.normal == [] and g.reduce == []
  sep = space.primitive_index("sep_conv_3x3")
  alphas = dict(alphas, normal=alphas["normal"].at[0, sep].set(3.0).at[4, sep].set(1.0))   # σ 0.95, 0.73
  g = m.derive(alphas, space)
  assert g.normal == [("sep_conv_3x3", 2, 0)] and g.reduce == []
  g = M.get_method("fairdarts", parse="threshold_sparse", op_threshold=0.7).derive(alphas, space)
  assert g.normal == [("sep_conv_3x3", 2, 0), ("sep_conv_3x3", 3, 2)]
  dense = M.get_method("fairdarts").derive(alphas, space)
  assert not genotypes.is_sparse(dense) and len(dense.normal) == 8 and dense.normal[0] == ("sep_conv_3x3", 0)
  with pytest.raises(ValueError, match="parse must be one of"):
    M.get_method("fairdarts", parse="bogus")
