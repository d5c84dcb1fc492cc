"""FairDARTS' final networks (triple-form genotypes, its `DCOCell`) load the released code's weights and
reproduce its outputs.

Fixtures: tests/fixtures/networks/fairdarts_<name>.npz, written by third_party/fairdarts_reference/make_fixtures.py
from the unmodified FairDARTS model.py (`NetworkCIFAR(..., parse_method='threshold_sparse')`, C=8, auxiliary
head, random BatchNorm parameters and statistics), in the layout of the eval_cifar fixtures; tolerances as in
test_interop_registry. `fairdarts_a` is the released FairDARTS_a (the normal cell's node 3 has no edge);
`fairdarts_sparse_edges` adds edges from absent nodes (which `DCOCell` builds but skips) and two ops on one
(node, input), so the logits check the node order, the concatenation and which edges are dropped.
"""
import collections
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import genotypes, interop, networks
from darts_jax.networks import NetworkConfig
from test_networks import assert_matches_reference  # pylint: disable=g-import-not-at-top

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "networks"
FILES = sorted(FIXTURES.glob("fairdarts_*.npz"))
RELEASED_GENOTYPES = ROOT / "third_party" / "fairdarts_reference" / "genotypes.py"


def _config(f, **kw):
  return NetworkConfig(str(f["genotype"]), C=int(f["C"]), num_classes=int(f["num_classes"]),
                       layers=int(f["layers"]), auxiliary=bool(f["auxiliary"]), **kw)


def test_fixtures_present():
  assert {p.stem for p in FILES} >= {"fairdarts_a", "fairdarts_sparse_edges"}


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_fixture_matches_reference(path):
  f = np.load(path)
  assert genotypes.is_sparse(genotypes.parse(str(f["genotype"])))
  assert_matches_reference(f)


def test_sparse_edges_state_dict_strictness():
  """Weights of the edges DCOCell skips are accepted and ignored; nothing else may be missing or left over."""
  f = np.load(FIXTURES / "fairdarts_sparse_edges.npz")
  state = interop.fixture_state_dict(f)
  cfg = _config(f)
  skipped = [k for k in state if k.startswith(("cells.0._ops.4.3.", "cells.2._ops.5.4."))]
  assert skipped  # normal cell: sep_conv_5x5 3 -> 4; reduction cell: sep_conv_3x3 4 -> 5
  params, _ = interop.load_network_params(state, cfg)
  with_skipped = int(f["out/num_params_with_skipped"])
  assert networks.count_params(params) == int(f["out/num_params"]) < with_skipped
  # The skipped edges' weights make no difference: zeroing them loads the same network.
  zeroed, _ = interop.load_network_params({k: (0 * v if k in skipped else v) for k, v in state.items()}, cfg)
  assert all(bool(jnp.all(a == b)) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(zeroed)))
  # Both ops on (5, 1) of the normal cell are loaded, from their own ModuleList slots.
  lay = networks.layout(cfg)
  e0, e1 = [e for e, (name, j, _) in enumerate(lay.cells[0].ops) if j == 1 and lay.cells[0].nodes[e] == 5]
  assert lay.cells[0].ops[e0][0] == "sep_conv_3x3" and lay.cells[0].ops[e1][0] == "dil_conv_5x5"
  np.testing.assert_array_equal(params["cells"][0]["ops"][e1]["pw"],
                                interop.pointwise_weight(state["cells.0._ops.5.1.1.op.2.weight"]))
  np.testing.assert_array_equal(params["cells"][0]["ops"][e0]["pw2"],
                                interop.pointwise_weight(state["cells.0._ops.5.1.0.op.6.weight"]))
  # A used entry missing, or an entry of no edge, is an error.
  used = "cells.0._ops.5.1.1.op.2.weight"
  with pytest.raises(interop.InteropError, match="no entry"):
    interop.load_network_params({k: v for k, v in state.items() if k != used}, cfg)
  with pytest.raises(interop.InteropError, match="not used"):
    interop.load_network_params({**state, "cells.0._ops.5.3.0.op.1.weight": state[used]}, cfg)
  # The triple-form names are not the pair form's: the same weights under DARTS' `_ops.{e}` names do not load.
  with pytest.raises(interop.InteropError):
    interop.load_network_params({k.replace("cells.0._ops.2.0.0.", "cells.0._ops.0."): v
                                 for k, v in state.items()}, cfg)


def _released_sparse_genotypes():
  spec = importlib.util.spec_from_file_location("_fairdarts_released_genotypes", RELEASED_GENOTYPES)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  out = {}
  for name, g in vars(mod).items():
    if isinstance(g, mod.Genotype) and all(len(e) == 3 for e in list(g.normal) + list(g.reduce)):
      out[name] = g
  return out


def _dco_cell(entries):
  """What DCOCell computes, transliterated from the released model.py: nodes in the order of their first
  entry (nn.ModuleDict insertion order), per node its inputs in first-entry order, each with its ops in
  entry order; an input not computed yet is skipped; the output concatenates the nodes in computation
  order. Returns ([(node, [(input, op), ...]), ...], concat)."""
  table = collections.OrderedDict()
  for name, to, frm in entries:
    table.setdefault(to, collections.OrderedDict()).setdefault(frm, []).append(name)
  states, nodes = [0, 1], []
  for to, inputs in table.items():
    nodes.append((to, [(frm, name) for frm, names in inputs.items() if frm in states for name in names]))
    states.append(to)
  return nodes, states[2:]


def test_layout_follows_dcocell_for_released_genotypes():
  """For every triple-form genotype in FairDARTS' genotypes.py (and the fixtures' own), darts_jax's cells
  compute DCOCell's nodes in its order, with the same edges per node, and concatenate the same states."""
  gs = _released_sparse_genotypes()
  assert {"FairDARTS_a", "FairDARTS_b", "FairDARTS_g", "DCO_EDGE_BS_64"} <= set(gs)
  gs.update({p.stem: genotypes.parse(str(np.load(p)["genotype"])) for p in FILES})
  for name, g in gs.items():
    cfg = NetworkConfig(genotypes.make_genotype(*g), C=4, num_classes=10, layers=3)
    for spec in networks.layout(cfg).cells:
      raw = g.reduce if spec.reduction else g.normal
      want_nodes, want_concat = _dco_cell(raw)
      got_order = list(dict.fromkeys(spec.nodes))
      assert got_order == [n for n, edges in want_nodes if edges], name
      for n, edges in want_nodes:
        got = [(j, op) for (op, j, _), m in zip(spec.ops, spec.nodes) if m == n]
        assert sorted(got) == sorted(edges), (name, n)
        for j, op in got:
          want_stride = 2 if spec.reduction and j < 2 else 1
          assert (op, j, want_stride) in spec.ops
      assert list(spec.concat) == want_concat, name
      # DCOCell's multiplier (len(_ops)) sets the next cell's input channels.
      assert len(spec.concat) == len({n for _, n, _ in raw})


def test_drop_path_on_node_sums():
  """DCOCell drops each node's sum as a whole (an Identity-only node too), not each edge (DARTS' Cell)."""
  f = np.load(FIXTURES / "fairdarts_sparse_edges.npz")
  cfg = _config(f)
  spec = networks.layout(cfg).cells[0]  # normal: nodes 2 (two convs), 4 (Identity of input 1), 5
  assert spec.node_drop_path and list(spec.concat) == [2, 4, 5]
  params, stats = networks.init(jax.random.PRNGKey(0), cfg)
  k0, k1 = jax.random.split(jax.random.PRNGKey(1))
  n = 16
  s0 = jax.random.normal(k0, (n, 8, 8, spec.c_prev_prev))
  s1 = jax.random.normal(k1, (n, 8, 8, spec.c_prev))
  cell = networks.Cell(spec, params["cells"][0], stats["cells"][0])
  full = cell(s0, s1, train=True, drop_prob=0.5, key=None)
  dropped = cell(s0, s1, train=True, drop_prob=0.5, key=jax.random.PRNGKey(2))
  c = spec.c
  for slot in (0, 1):  # nodes 2 and 4 (node 5 reads node 2's dropped sum)
    a = np.asarray(full[..., slot * c:(slot + 1) * c]).reshape(n, -1)
    b = np.asarray(dropped[..., slot * c:(slot + 1) * c]).reshape(n, -1)
    kept = np.array([np.allclose(bi, 2 * ai, rtol=1e-5, atol=1e-5) for ai, bi in zip(a, b)])
    zero = np.all(b == 0, axis=1)
    assert np.all(kept | zero), slot
    assert kept.any() and zero.any(), slot
