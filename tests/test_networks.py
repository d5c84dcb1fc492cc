"""Tests for darts_jax.networks: the final CIFAR/ImageNet networks against the original PyTorch DARTS code.

Reference values come from ../shared/reference/ (tolerances from its README). Each network is compiled once,
evaluation and training mode in one program, since XLA compilation dominates on a CPU.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import genotypes, interop, networks
from darts_jax.networks import NetworkConfig


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _shape_params(cfg):
  return jax.eval_shape(lambda k: networks.init(k, cfg), jax.random.PRNGKey(0))


def _independent_count(genotype, C, num_classes, layers, kind, in_channels=3):
  """Parameter counts (without, of the auxiliary head) of the reference's modules, counted by hand."""
  def op_count(name, c, stride):
    k = int(name[-1]) if name[-1].isdigit() else 0
    if name.startswith("sep_conv"):
      return 2 * (k * k * c + c * c + 2 * c)
    if name.startswith("dil_conv"):
      return k * k * c + c * c + 2 * c
    if name == "skip_connect":
      return 0 if stride == 1 else c * c + 2 * c  # FactorizedReduce: two C×C/2 1×1 convs + BN
    if name == "conv_7x1_1x7":
      return 2 * 7 * c * c + 2 * c
    return 0  # pooling

  conv_bn = lambda k, c_in, c_out: k * k * c_in * c_out + 2 * c_out
  if kind == "cifar":
    total = conv_bn(3, in_channels, 3 * C)
    c_pp, c_p, c_curr = 3 * C, 3 * C, C
  else:
    total = conv_bn(3, in_channels, C // 2) + conv_bn(3, C // 2, C) + conv_bn(3, C, C)
    c_pp, c_p, c_curr = C, C, C
  for i in range(layers):
    reduction = i in (layers // 3, 2 * layers // 3)
    c_curr *= 2 if reduction else 1
    edges, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal,
                                                                                 genotype.normal_concat)
    total += conv_bn(1, c_pp, c_curr) + conv_bn(1, c_p, c_curr)  # ReLUConvBN or FactorizedReduce alike
    total += sum(op_count(name, c_curr, 2 if reduction and j < 2 else 1) for name, j in edges)
    c_pp, c_p = c_p, len(concat) * c_curr
    if i == 2 * layers // 3:
      c_aux = c_p
  total += c_p * num_classes + num_classes
  aux = conv_bn(1, c_aux, 128) + 4 * 128 * 768 + (2 * 768 if kind == "cifar" else 0) + 768 * num_classes \
      + num_classes
  return total, aux


def assert_matches_reference(f):
  """The network an eval fixture describes reproduces its logits (1e-4) and parameter counts; returns the
  fixture's inputs."""
  inputs = {k: f[k] for k in f.files if not k.startswith("out/")}
  out = interop.compute_reference_outputs(inputs)
  for key in ("logits_eval", "logits_train", "logits_aux_train"):
    assert out[key].shape == f[f"out/{key}"].shape, key
    err = _rel(out[key], f[f"out/{key}"])
    assert err <= 1e-4, (key, err)
  assert out["num_params"] == int(f["out/num_params"])
  assert out["num_params_auxiliary"] == int(f["out/num_params_auxiliary"])
  return inputs


def test_cifar_matches_reference(reference_file):
  f = np.load(reference_file("eval_cifar_darts_v2.npz"))
  inputs = assert_matches_reference(f)
  # The weights must match the configuration exactly.
  state = interop.fixture_state_dict(inputs)
  bad = NetworkConfig(str(f["genotype"]), C=8, num_classes=10, layers=5, auxiliary=True)
  with pytest.raises(interop.InteropError):
    interop.load_network_params(state, bad)
  # Without the auxiliary head, its weights are ignored (released checkpoints carry it).
  params, _ = interop.load_network_params(state, NetworkConfig(str(f["genotype"]), C=8, num_classes=10, layers=6))
  assert "aux" not in params and networks.count_params(params) == int(f["out/num_params"])


def test_darts_v2_param_count(reference_file):
  params, _ = _shape_params(NetworkConfig("DARTS_V2", C=36, num_classes=10, layers=20, auxiliary=True))
  assert networks.count_params(params) == 3349342  # the paper's 3.3M, counted by the reference code
  with open(reference_file("param_counts.json")) as fh:
    expected = json.load(fh)["NetworkCIFAR(C=36, num_classes=10, layers=20, auxiliary=True, genotype=DARTS_V2)"]
  assert networks.count_params(params) == expected


@pytest.mark.parametrize("name,kind,C,layers,in_channels", [
    ("DARTS_V2", "cifar", 36, 20, 3), ("DARTS_V2", "imagenet", 48, 14, 3), ("NASNet", "cifar", 10, 7, 1),
    ("NASNet", "imagenet", 12, 5, 3), ("AmoebaNet", "cifar", 8, 4, 3), ("PC_DARTS", "imagenet", 8, 3, 3)])
def test_param_counts_match_independent_count(name, kind, C, layers, in_channels):
  g = genotypes.get_genotype(name)
  cfg = NetworkConfig(name, C=C, num_classes=7, layers=layers, auxiliary=True, kind=kind,
                      in_channels=in_channels)
  params, stats = _shape_params(cfg)
  total, aux = _independent_count(g, C, 7, layers, kind, in_channels)
  assert networks.count_params(params) == total
  assert networks.count_params(params, include_auxiliary=True) - total == aux
  assert ("bn2" in params["aux"]) == (kind == "cifar")  # the reference's ImageNet head has no second BN
  assert jax.tree.structure(stats) == jax.tree.structure(_shape_params(cfg)[1])


def test_imagenet_network_runs():
  # The reference's 224×224: 7×7 at the auxiliary head and before the final AvgPool2d(7).
  cfg = NetworkConfig("DARTS_V2", C=8, num_classes=5, layers=3, auxiliary=True, kind="imagenet")
  params, stats = networks.init(jax.random.PRNGKey(0), cfg)
  total, aux = _independent_count(cfg.genotype, 8, 5, 3, "imagenet")
  assert networks.count_params(params) == total
  assert networks.count_params(params, include_auxiliary=True) == total + aux
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 224, 224, 3))

  @jax.jit
  def run(params, stats, x):
    ev = networks.apply(params, stats, x, cfg, train=False)
    tr = networks.apply(params, stats, x, cfg, train=True)
    return ev, tr

  (logits_e, aux_e, stats_e), (logits_t, aux_t, stats_t) = run(params, stats, x)
  assert logits_e.shape == logits_t.shape == aux_t.shape == (2, 5) and aux_e is None
  assert np.all(np.isfinite(logits_e)) and np.all(np.isfinite(logits_t)) and np.all(np.isfinite(aux_t))
  assert jax.tree.structure(stats_e) == jax.tree.structure(stats_t) == jax.tree.structure(stats)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(stats_e), jax.tree.leaves(stats)))
  m0, m1 = stats["stem1"]["bn"]["mean"], stats_t["stem1"]["bn"]["mean"]
  assert not np.allclose(m0, m1)


def test_drop_path_and_28x28_grayscale():
  # Fashion-MNIST shapes: a 7×7 map reaches the CIFAR auxiliary head (partial last pooling window).
  cfg = NetworkConfig("DARTS_V2", C=4, num_classes=10, layers=3, auxiliary=True, in_channels=1)
  params, stats = networks.init(jax.random.PRNGKey(0), cfg)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 28, 28, 1))

  @jax.jit
  def run(params, stats, x, rng, p):
    dropped, aux, _ = networks.apply(params, stats, x, cfg, train=True, rng=rng, drop_path_prob=p)
    plain, _, _ = networks.apply(params, stats, x, cfg, train=True)
    ev, _, _ = networks.apply(params, stats, x, cfg, train=False, drop_path_prob=p)
    return dropped, aux, plain, ev

  d0, aux0, plain, ev0 = run(params, stats, x, jax.random.PRNGKey(2), 0.0)
  d1, aux1, plain1, ev1 = run(params, stats, x, jax.random.PRNGKey(3), 0.3)
  assert aux0.shape == (2, 10) and np.all(np.isfinite(aux1))
  np.testing.assert_array_equal(d0, plain)  # a traced probability of 0 drops nothing
  assert not np.allclose(d1, plain, rtol=1e-3, atol=1e-3)
  np.testing.assert_array_equal(ev0, ev1)  # evaluation ignores drop path
  np.testing.assert_array_equal(plain, plain1)


def test_triple_form_network():
  """FairDARTS' triple form: the DARTS_V2 cells written as triples build the same network (same parameters,
  same logits); a cell with an absent node outputs only the nodes with edges, and an edge from an absent node
  has no parameters."""
  pairs = genotypes.get_genotype("DARTS_V2")
  triples = genotypes.make_genotype(genotypes.cell_edges(pairs, "normal"), pairs.normal_concat,
                                    genotypes.cell_edges(pairs, "reduce"), pairs.reduce_concat)
  assert genotypes.is_sparse(triples)
  kw = dict(C=4, num_classes=3, layers=3, auxiliary=False, in_channels=1)
  cfg_p, cfg_t = NetworkConfig(pairs, **kw), NetworkConfig(triples, **kw)
  params, stats = networks.init(jax.random.PRNGKey(0), cfg_p)
  assert jax.tree.structure(params) == jax.tree.structure(_shape_params(cfg_t)[0])
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 1))
  run = lambda cfg: networks.apply(params, stats, x, cfg, train=False)[0]
  np.testing.assert_allclose(np.asarray(run(cfg_t)), np.asarray(run(cfg_p)), rtol=1e-6, atol=1e-6)

  sparse = genotypes.make_genotype([("sep_conv_3x3", 2, 0), ("skip_connect", 4, 3), ("dil_conv_3x3", 5, 1),
                                    ("dil_conv_3x3", 5, 1)], range(2, 6),
                                   [("max_pool_3x3", 2, 0), ("sep_conv_3x3", 3, 2)], range(2, 6))
  cfg = NetworkConfig(sparse, **kw)
  cells = networks.layout(cfg).cells
  assert cells[0].concat == (2, 5) and cells[0].nodes == (2, 5, 5) and cells[0].node_drop_path
  assert cells[1].c_prev == 2 * 4 and cells[2].c_prev == 2 * 8       # 2 nodes × C, then 2 × 2C
  p, s = networks.init(jax.random.PRNGKey(0), cfg)
  assert len(p["cells"][0]["ops"]) == 3
  logits = networks.apply(p, s, x, cfg, train=True, rng=jax.random.PRNGKey(2), drop_path_prob=0.3)[0]
  assert logits.shape == (2, 3) and np.all(np.isfinite(np.asarray(logits)))


def test_aux_pool_windows():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 8, 8, 2))
  y = networks._aux_pool(x, 5, 3)  # reference size: floor mode, full windows at 0 and 3
  want = np.stack([np.stack([x[0, i:i + 5, j:j + 5].mean((0, 1)) for j in (0, 3)]) for i in (0, 3)])
  np.testing.assert_allclose(y[0], want, rtol=1e-6)
  x7 = x[:, :7, :7]
  y = networks._aux_pool(x7, 5, 3)  # windows [0, 5) and [3, 7): the last is partial
  want = np.stack([np.stack([x7[0, i:i + 5, j:j + 5].mean((0, 1)) for j in (0, 3)]) for i in (0, 3)])
  np.testing.assert_allclose(y[0], want, rtol=1e-6)


def test_config_errors():
  with pytest.raises(ValueError, match="at least 3 layers"):
    NetworkConfig("DARTS_V2", C=8, layers=2)
  with pytest.raises(ValueError, match="unknown op"):
    NetworkConfig("Genotype(normal=[('conv_9x9', 0), ('sep_conv_3x3', 1)], normal_concat=[2], "
                  "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", C=8, layers=3)
  with pytest.raises(ValueError, match="none"):
    NetworkConfig(genotypes.Genotype([("none", 0), ("sep_conv_3x3", 1)], [2], [("max_pool_3x3", 0),
                                                                                ("max_pool_3x3", 1)], [2]))
  with pytest.raises(ValueError, match="unknown genotype|cannot resolve"):
    NetworkConfig("NO_SUCH_GENOTYPE")
  with pytest.raises(ValueError, match="kind"):
    NetworkConfig(kind="mnist")
  with pytest.raises(ValueError, match="even C"):
    NetworkConfig(C=9, kind="imagenet")
  a = NetworkConfig("DARTS_V2", C=8, layers=3)
  b = NetworkConfig(genotypes.PUBLISHED["DARTS_V2"], C=8, layers=3)
  assert a == b and hash(a) == hash(b)


def test_input_errors():
  def trace(cfg, shape, train=False, **kw):
    params, stats = _shape_params(cfg)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    return jax.eval_shape(lambda p, s, x: networks.apply(p, s, x, cfg, train=train, **kw), params, stats, x)

  cifar = NetworkConfig("DARTS_V2", C=4, layers=3, auxiliary=True)
  with pytest.raises(ValueError, match="too small"):
    trace(cifar, (2, 3, 3, 3))
  with pytest.raises(ValueError, match="channels"):
    trace(cifar, (2, 32, 32, 1))
  with pytest.raises(ValueError, match="too small"):
    trace(NetworkConfig("DARTS_V2", C=4, layers=3, kind="imagenet"), (2, 31, 31, 3))
  with pytest.raises(ValueError, match="auxiliary head"):
    trace(cifar, (2, 20, 20, 3), train=True)  # 5×5 at the head
  trace(cifar, (2, 20, 20, 3), train=False)  # the head does not run in evaluation mode
  with pytest.raises(ValueError, match="rng"):
    trace(cifar, (2, 32, 32, 3), train=True, drop_path_prob=0.2)
  logits, aux, _ = trace(cifar, (2, 32, 32, 3), train=True)
  assert logits.shape == aux.shape == (2, 10)
