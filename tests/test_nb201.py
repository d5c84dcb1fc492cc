"""Tests for darts_jax.nb201: architecture strings, the tabular benchmark, and the NB201 networks."""
from __future__ import annotations

import csv
import itertools
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import nb201 as B
from darts_jax import nb201_arch
from darts_jax import ops, supernet
from darts_jax.search_space import NB201_PRIMITIVES, NB201_SPACE

EXAMPLE = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
ALL_SKIP = "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|skip_connect~0|skip_connect~1|skip_connect~2|"
TINY = B.NB201Config(C=4, N=1, num_classes=10)


def _benchmark_file() -> Path:
  env = os.environ.get("DARTS_JAX_BENCHMARK_DIR")
  root = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "benchmarks"
  path = root / "nats_tss_200ep.csv"
  if not path.is_file():
    if os.environ.get("CI"):
      pytest.fail(f"benchmark table {path} is missing (set DARTS_JAX_BENCHMARK_DIR)")
    pytest.skip(f"benchmark table {path} is not available")
  return path


@pytest.fixture(scope="module")
def bench() -> B.Benchmark:
  return B.load_benchmark(_benchmark_file())


# --------------------------------------------------------------------------------------------------------
# Architecture strings.


def test_parse_example():
  arch = B.parse_arch(EXAMPLE)
  # Edge order (0->1),(0->2),(1->2),(0->3),(1->3),(2->3).
  assert arch == ("nor_conv_3x3", "nor_conv_3x3", "avg_pool_3x3", "skip_connect", "nor_conv_3x3",
                  "skip_connect")
  assert B.arch_to_string(arch) == EXAMPLE
  assert B.parse_arch(" " + EXAMPLE.replace("|+|", "| + |") + "\n") == arch


def test_round_trip_table_rows():
  with open(_benchmark_file(), newline="") as f:
    rows = list(itertools.islice(csv.DictReader(f), 200))
  assert len(rows) == 200
  for row in rows:
    assert B.arch_to_string(B.parse_arch(row["arch"])) == row["arch"]


def test_enumerate_round_trip():
  archs = B.enumerate_archs()
  assert len(archs) == 5 ** 6 == len(set(archs))
  assert archs == B.enumerate_archs()
  strings = {B.arch_to_string(a) for a in archs}
  assert len(strings) == len(archs)
  assert all(B.parse_arch(B.arch_to_string(a)) == a for a in archs)


@pytest.mark.parametrize("text, needle", [
    (EXAMPLE.replace("avg_pool_3x3", "max_pool_3x3"), "unknown op 'max_pool_3x3'"),
    (EXAMPLE.replace("avg_pool_3x3~1", "avg_pool_3x3~2"), "'avg_pool_3x3~2' must read 'op~1'"),
    (EXAMPLE.replace("skip_connect~0|nor", "skip_connect~1|nor"), "must read 'op~0'"),
    ("|nor_conv_3x3~0|+|nor_conv_3x3~0|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|", "node 2 has 1 entries"),
    ("|none~0|+|none~0|none~1|+|none~0|none~1|none~2|none~3|", "node 3 has 4 entries"),
    ("|none~0|+|none~0|none~1|", "2 nodes"),
    ("|none0|+|none~0|none~1|+|none~0|none~1|none~2|", "entry 'none0'"),
    ("none~0+|none~0|none~1|+|none~0|none~1|none~2|", "node 1"),
    ("", "1 nodes"),
])
def test_parse_errors(text, needle):
  with pytest.raises(ValueError) as err:
    B.parse_arch(text)
  assert needle in str(err.value)
  assert "\n" not in str(err.value)


def test_as_arch_validates():
  with pytest.raises(ValueError, match="6 ops, got 5"):
    B.as_arch(("none",) * 5)
  with pytest.raises(ValueError, match="unknown NB201 op 'conv'"):
    B.as_arch(("none",) * 5 + ("conv",))
  assert B.as_arch(["none"] * 6) == ("none",) * 6


def test_arch_from_alphas_keeps_none():
  alphas = np.zeros((6, 5))
  choice = [0, 3, 1, 0, 4, 2]
  alphas[np.arange(6), choice] = 1.0
  arch = B.arch_from_alphas(jnp.asarray(alphas))
  assert arch == tuple(NB201_PRIMITIVES[i] for i in choice)
  assert arch[0] == arch[3] == "none"
  with pytest.raises(ValueError, match="shape"):
    B.arch_from_alphas(np.zeros((6, 4)))


def test_random_arch():
  a = B.random_arch(np.random.default_rng(0))
  assert B.as_arch(a) == a
  assert B.random_arch(7) == B.random_arch(7)
  seen = {B.random_arch(np.random.default_rng(s)) for s in range(50)}
  assert len(seen) > 40


# --------------------------------------------------------------------------------------------------------
# Benchmark table.


def _write_table(path: Path, rows) -> Path:
  with open(path, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["arch", "cifar10_test_acc", "cifar100_test_acc", "imagenet16_120_test_acc"])
    w.writerows(rows)
  return path


def test_load_small_table(tmp_path):
  path = _write_table(tmp_path / "t.csv", [[EXAMPLE, 93.5, 70.0, 44.0], [ALL_SKIP, 54.3, 15.6, 16.3]])
  b = B.load_benchmark(path)
  assert len(b) == 2
  assert b.query(EXAMPLE.replace("|+|", "| + |")) == 93.5
  assert b.query(B.parse_arch(ALL_SKIP), "cifar100") == pytest.approx(15.6)
  assert b.query(ALL_SKIP, "imagenet16_120_test_acc") == pytest.approx(16.3)
  assert b.best("imagenet16_120") == (B.parse_arch(EXAMPLE), 44.0)
  np.testing.assert_allclose(b.accuracies("cifar10"), [93.5, 54.3])
  with pytest.raises(ValueError, match="not in the benchmark"):
    b.query(("none",) * 6)
  with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
    b.query(EXAMPLE, "svhn")


def test_load_rejects_bad_tables(tmp_path):
  dup = _write_table(tmp_path / "dup.csv", [[EXAMPLE, 1, 2, 3], [" " + EXAMPLE, 4, 5, 6]])
  with pytest.raises(ValueError, match="duplicate architecture"):
    B.load_benchmark(dup)
  bad = _write_table(tmp_path / "bad.csv", [[EXAMPLE.replace("~2", "~1"), 1, 2, 3]])
  with pytest.raises(ValueError, match="must read 'op~2'"):
    B.load_benchmark(bad)
  with pytest.raises(ValueError, match="does not exist"):
    B.load_benchmark(tmp_path / "missing.csv")


def test_expected_best_of_n_exact_with_ties():
  acc = np.array([3.0, 1.0, 3.0, 2.0, 1.0])
  for n in (1, 2, 3):
    brute = np.mean([max(draw) for draw in itertools.product(acc, repeat=n)])
    assert B.expected_best_of_n(acc, n) == pytest.approx(brute, abs=1e-12)
  assert B.expected_best_of_n(acc, 1) == pytest.approx(acc.mean())
  curve = B.random_search_curve(acc, [1, 2, 5, 10, 100, 1000])
  assert np.all(np.diff(curve) >= 0)
  assert curve[-1] == pytest.approx(3.0)
  with pytest.raises(ValueError):
    B.expected_best_of_n(acc, 0)


def test_real_benchmark_facts(bench):
  assert len(bench) == 15_625
  assert set(bench.archs) == set(B.enumerate_archs())
  assert all(bench.index[a] == i for i, a in enumerate(bench.archs))
  best_arch, best = bench.best("cifar10")
  assert round(best, 2) == 94.37
  assert bench.query(best_arch) == best
  assert round(bench.query(ALL_SKIP, "cifar10"), 2) == 54.30
  for dataset in B.DATASETS:
    assert bench.accuracies(dataset).shape == (15_625,)


def test_real_benchmark_random_search(bench):
  acc = bench.accuracies("cifar10")
  assert B.expected_best_of_n(acc, 1) == pytest.approx(acc.mean(), abs=1e-9)
  ns = [1, 2, 3, 5, 10, 30, 100, 1000, 10_000, 1_000_000]
  curve = B.random_search_curve(acc, ns)
  assert np.all(np.diff(curve) > 0)
  assert curve[-1] == pytest.approx(acc.max(), abs=1e-6)
  draws = np.random.default_rng(0).choice(acc, size=(20_000, 10), replace=True).max(axis=1)
  assert abs(draws.mean() - B.expected_best_of_n(acc, 10)) < 0.1


def test_default_benchmark_path(monkeypatch, tmp_path):
  monkeypatch.setenv("DARTS_JAX_BENCHMARK_DIR", str(tmp_path))
  assert B.default_benchmark_path() is None
  _write_table(tmp_path / "nats_tss_200ep.csv", [])
  assert B.default_benchmark_path() == tmp_path / "nats_tss_200ep.csv"


# --------------------------------------------------------------------------------------------------------
# Networks.


def test_config_validation():
  for kwargs in ({"N": 0}, {"C": 0}, {"num_classes": 0}, {"in_channels": 0}, {"dw_impl": "gpu"}):
    with pytest.raises(ValueError) as err:
      B.NB201Config(**kwargs)
    assert "\n" not in str(err.value)
  assert [r for _, r in B.NB201Config(N=2).layers] == [False, False, True, False, False, True, False, False]
  with pytest.raises(ValueError, match="multiple of 4"):
    B.check_input(TINY, (2, 18, 18, 3))


def test_final_network_params_match_arch():
  cfg = B.NB201Config(C=4, N=2)
  count = lambda arch: B.count_params(jax.eval_shape(lambda k: B.init_network(k, arch, cfg)[0],
                                                     jax.random.PRNGKey(0)))
  chans = (cfg.C, 2 * cfg.C, 4 * cfg.C)
  per_cell_3x3 = [6 * (9 * c * c + 2 * c) for c in chans]
  per_cell_1x1 = [6 * (c * c + 2 * c) for c in chans]
  base = count(("none",) * 6)
  assert count(("skip_connect",) * 6) == count(("avg_pool_3x3",) * 6) == base
  assert count(("nor_conv_3x3",) * 6) - base == cfg.N * sum(per_cell_3x3)
  assert count(("nor_conv_1x1",) * 6) - base == cfg.N * sum(per_cell_1x1)
  # A single 3x3 edge per cell, the rest weight-free.
  one = ("none", "skip_connect", "avg_pool_3x3", "nor_conv_3x3", "none", "skip_connect")
  assert count(one) - base == cfg.N * sum(9 * c * c + 2 * c for c in chans)
  for arch in (B.parse_arch(EXAMPLE), one, B.random_arch(3)):
    params, _ = jax.eval_shape(lambda k: B.init_network(k, arch, cfg), jax.random.PRNGKey(1))
    assert B.arch_to_string(B.network_arch(params)) == B.arch_to_string(arch)


def test_final_network_forward_and_stats():
  arch = B.parse_arch(EXAMPLE)
  params, stats = B.init_network(jax.random.PRNGKey(0), arch, TINY)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  f = jax.jit(B.apply_network, static_argnums=(3, 4, 5))
  logits, new = f(params, stats, x, arch, TINY, True)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  assert jax.tree.structure(new) == jax.tree.structure(stats)
  assert not np.allclose(new["stem"]["bn"]["mean"], stats["stem"]["bn"]["mean"])
  _, same = f(params, new, x, arch, TINY, False)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), same, new))
  with pytest.raises(ValueError, match="parameters were built for"):
    B.apply_network(params, stats, x, ("none",) * 6, TINY, True)


def test_init_alphas():
  a = B.init_alphas(jax.random.PRNGKey(0))
  assert set(a) == {"normal"} and a["normal"].shape == (6, 5)
  assert 0 < float(jnp.abs(a["normal"]).max()) < 1e-2


@pytest.fixture(scope="module")
def tiny_supernet():
  params = B.init_supernet(jax.random.PRNGKey(0), TINY)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))

  @jax.jit
  def logits_and_grad(weights, edge):
    loss = lambda w: (lambda y: (jnp.sum(y * jnp.arange(10.0)), y))(
        B.apply_supernet(params, x, {"normal": w, "normal_edge": edge}, TINY))
    (_, logits), grad = jax.value_and_grad(loss, has_aux=True)(weights)
    return logits, grad

  return params, x, logits_and_grad


def test_supernet_forward_and_arch_gradient(tiny_supernet):
  _, _, f = tiny_supernet
  weights = jax.nn.softmax(B.init_alphas(jax.random.PRNGKey(2))["normal"])
  logits, grad = f(weights, jnp.ones(6))
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
  # Every op on edge 0->1 except `none` changes the logits.
  assert float(jnp.abs(grad[0, 1:]).min()) > 0
  scaled, _ = f(weights, jnp.array([1.0, 1.0, 1.0, 0.5, 1.0, 1.0]))
  assert not np.allclose(scaled, logits)


def test_one_hot_supernet_equals_final_network(tiny_supernet):
  """Average pooling included: NB201's search cell has no BatchNorm after it, as the final network."""
  params, x, f = tiny_supernet
  arch = ("nor_conv_3x3", "avg_pool_3x3", "nor_conv_1x1", "none", "avg_pool_3x3", "skip_connect")
  one_hot = jax.nn.one_hot(jnp.array([NB201_PRIMITIVES.index(o) for o in arch]), 5)
  logits, _ = f(one_hot, jnp.ones(6))
  net_params, net_stats = B.network_from_supernet(params, arch, TINY)
  assert B.network_arch(net_params) == arch
  net_logits, _ = B.apply_network(net_params, net_stats, x, arch, TINY, train=True)
  np.testing.assert_allclose(logits, net_logits, rtol=1e-4, atol=1e-5)
  other, _ = f(jax.nn.one_hot(jnp.array([3, 1, 2, 0, 2, 1]), 5), jnp.ones(6))
  assert not np.allclose(other, logits, atol=1e-3)


def test_partial_channel_supernet():
  cfg = B.NB201Config(C=4, N=1, num_classes=10, partial_channels=2)
  params = B.init_supernet(jax.random.PRNGKey(0), cfg)
  full = B.init_supernet(jax.random.PRNGKey(0), TINY)
  conv = lambda p: p["layers"][0]["waves"][0]["nor_conv_3x3"]["conv"]
  assert conv(params).shape[-2:] == (2, 2) and conv(full).shape[-2:] == (4, 4)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  w = jax.nn.softmax(B.init_alphas(jax.random.PRNGKey(2))["normal"])
  logits = jax.jit(lambda p, w: B.apply_supernet(p, x, {"normal": w}, cfg))(params, w)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  with pytest.raises(ValueError, match="divisible by partial_channels"):
    B.NB201Config(C=6, partial_channels=4)


def test_none_into_last_node_zeroes_cell():
  cell = supernet.mixed_cell_init(jax.random.PRNGKey(0), NB201_SPACE, 4, False)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 4))
  weights = jnp.full((6, 5), 0.2)
  into_3 = [NB201_SPACE.edge_index(s, 3) for s in range(3)]
  weights = weights.at[jnp.array(into_3)].set(jax.nn.one_hot(0, 5))
  nodes = jax.jit(lambda c, x, w: supernet.mixed_cell_apply(c, [x], w, NB201_SPACE, False, ops.Ctx()))(
      cell, x, weights)
  assert float(jnp.abs(nodes[1]).max()) > 0
  assert float(jnp.abs(nodes[-1]).max()) == 0.0


def test_disconnected_cells_are_exactly_the_chance_level_cells_of_the_table():
  bench = B.load_benchmark(_benchmark_file())
  acc = bench.accuracies("cifar10")
  connected = np.array([B.is_connected(a) for a in bench.archs])
  assert (~connected).sum() > 0
  np.testing.assert_allclose(acc[~connected], 10.0)
  assert acc[connected].min() > 40.0
  assert not B.is_connected("|none~0|+|none~0|nor_conv_3x3~1|+|none~0|nor_conv_3x3~1|nor_conv_3x3~2|")
  assert B.is_connected(EXAMPLE) and B.is_connected(ALL_SKIP)



def test_zero_input_convs_are_the_conv_edges_whose_source_no_path_reaches():
  z = nb201_arch.zero_input_convs
  assert z("|none~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|avg_pool_3x3~1|nor_conv_1x1~2|") == (2, 5)
  assert z("|none~0|+|nor_conv_1x1~0|nor_conv_3x3~1|+|none~0|avg_pool_3x3~1|nor_conv_1x1~2|") == (2,)
  assert z("|nor_conv_3x3~0|+|none~0|none~1|+|nor_conv_3x3~0|nor_conv_1x1~1|nor_conv_3x3~2|") == (5,)
  assert z("|none~0|+|none~0|avg_pool_3x3~1|+|none~0|skip_connect~1|skip_connect~2|") == ()
  assert z(EXAMPLE) == () and z(ALL_SKIP) == ()
