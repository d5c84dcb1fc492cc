"""The dominant eigenvalue of the α Hessian (power iteration on exact Hessian-vector products) against a full
Hessian of a small supernet, and DARTS-ES' stopping rule on given eigenvalue sequences."""
import jax
from jax import flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import bilevel, hessian, supernet
from darts_jax.search_space import SearchSpace

SMALL = SearchSpace(name="small", primitives=("none", "skip_connect", "sep_conv_3x3"), num_inputs=2, num_nodes=2)


@pytest.fixture(scope="module")
def small():
  """(HVP function, α, hparams, full Hessian) of a small supernet, made once for the tests that need them."""
  cfg = supernet.SupernetConfig(C=4, layers=3, in_channels=1, num_classes=3, space=SMALL, multiplier=2)
  key = jax.random.PRNGKey(0)
  hp = bilevel.SearchHParams()
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  alphas = jax.tree.map(lambda a: 300.0 * a, supernet.init_alphas(jax.random.PRNGKey(1), cfg))   # off uniform
  state = bilevel.init_state(supernet.init(key, cfg), alphas, hp, key)
  batches = [{"image": jax.random.normal(jax.random.PRNGKey(10), (6, 8, 8, 1)), "label": jnp.arange(6) % 3}]
  hvp_fn = hessian.make_hvp(hessian.alpha_objective(problem, hp, state, batches))
  return hvp_fn, alphas, hp, hessian.hessian_matrix(hvp_fn, alphas)


def test_power_iteration_finds_the_largest_eigenvalue_of_the_full_hessian(small):
  hvp_fn, alphas, _, H = small
  assert H.shape == (30, 30)
  np.testing.assert_allclose(H, H.T, atol=1e-4 * np.abs(H).max())
  eig = np.linalg.eigvalsh((H + H.T) / 2)
  dominant = eig[np.argmax(np.abs(eig))]
  got = hessian.dominant_eigenvalue(hvp_fn, alphas, jax.random.PRNGKey(3), max_iters=1000, tol=1e-8)
  assert abs(got.value - dominant) <= 1e-3 * abs(dominant), (got.value, eig[:2], eig[-2:])
  flat_v = np.asarray(flatten_util.ravel_pytree(got.vector)[0])
  np.testing.assert_allclose(H @ flat_v, dominant * flat_v, atol=2e-2 * abs(dominant))   # H v = λ v
  # RobustDARTS' figure is the largest eigenvalue, which the shift finds when the dominant one is negative.
  top = hessian.largest_eigenvalue(hvp_fn, alphas, jax.random.PRNGKey(4), max_iters=1000, tol=1e-8)
  assert abs(top.value - eig[-1]) <= 1e-3 * np.abs(eig).max(), (top.value, eig[-2:])


def test_hvp_is_the_full_hessian_times_the_vector(small):
  hvp_fn, alphas, _, H = small
  flat, unravel = flatten_util.ravel_pytree(alphas)
  v = jax.random.normal(jax.random.PRNGKey(7), flat.shape)
  got = flatten_util.ravel_pytree(hvp_fn(alphas, unravel(v)))[0]
  np.testing.assert_allclose(np.asarray(got), H @ np.asarray(v), rtol=1e-4, atol=1e-5 * np.abs(H).max())


def test_darts_es_stops_where_the_released_rule_does():
  # Every epoch measured (ev_freq=1): local averages are centred 2 epochs back; at epoch 21 the average of
  # epochs 17..21, (1+1+1+2+2)/5 = 1.4, exceeds 1.3 x the one 4 averages earlier (1.0); the kept architecture
  # is that earlier average's epoch, 21 - 2 - 4 = 15. At epoch 20 the ratio is 1.2, no stop.
  evs = [(e, 1.0 if e < 20 else 2.0) for e in range(50)]
  assert hessian.darts_es(evs, 50, ev_freq=1) == (21, 15)
  # The released default, every 2 epochs: averages 4 epochs back, comparisons 8 epochs further back; the jump
  # at epoch 30 gives (1+1+1+1+3)/5 = 1.4 > 1.3 at once, keeping epoch 30 - 4 - 8 = 18.
  evs = [(e, 1.0 if e < 30 else 3.0) for e in list(range(0, 50, 2)) + [49]]
  assert hessian.darts_es(evs, 50) == (30, 18)
  # No rise, no stop; a rise before the start epoch's reach does not count.
  assert hessian.darts_es([(e, 1.0) for e in range(50)], 50, ev_freq=1) is None
  assert hessian.darts_es([(e, 1.0 if e < 5 else 4.0) for e in range(50)], 50, ev_freq=1) is None
  # Epoch-denominated parameters for short runs.
  assert hessian.darts_es([(e, 1.0 if e < 6 else 2.0) for e in range(12)], 12, ev_freq=1, start_epoch=0,
                          window=3, delta=2) == (6, 3)


def test_darts_es_local_averages_cover_every_measurement_at_the_end():
  es = hessian.EarlyStop(total_epochs=50, ev_freq=1)
  for e in range(50):
    es.update(e, float(e))
  assert len(es.local_averages) == len(es.eigenvalues) == 50
  # From the third measurement on: growing windows, then sliding ones centred 2 epochs back, then shrinking.
  assert es.local_averages[0] == pytest.approx(1.0) and es.local_averages[1] == pytest.approx(1.5)
  assert es.local_averages[2] == pytest.approx(2.0) and es.local_averages[10] == pytest.approx(10.0)
  assert es.local_averages[-1] == pytest.approx(np.mean([47, 48, 49]))
