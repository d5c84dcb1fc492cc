"""Tests for darts_jax.genotypes: text/JSON forms, validation, the DARTS discretization rule, the registry."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from darts_jax import genotypes as G
from darts_jax.search_space import DARTS_PRIMITIVES, DARTS_SPACE

DARTS_V2_TEXT = (
    "Genotype(normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1), "
    "('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)], "
    "normal_concat=[2, 3, 4, 5], reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), "
    "('max_pool_3x3', 1), ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), "
    "('max_pool_3x3', 1)], reduce_concat=[2, 3, 4, 5])")


def _reference_dir() -> Path:
  env = os.environ.get("DARTS_JAX_REFERENCE_DIR")
  return Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared" / "reference"


def _reference_file(name: str) -> Path:
  path = _reference_dir() / name
  if not path.is_file():
    if os.environ.get("CI"):
      pytest.fail(f"reference fixture {path} is missing (set DARTS_JAX_REFERENCE_DIR)")
    pytest.skip(f"reference fixture {path} not found")
  return path


def _one_hot_alphas(choices: dict[int, tuple[str, float]], num_edges: int = 14, base: float = 0.0,
                    primitives=DARTS_PRIMITIVES) -> np.ndarray:
  a = np.full((num_edges, len(primitives)), base)
  for e, (op, value) in choices.items():
    a[e, primitives.index(op)] = value
  return a


# --- text form -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(G.PUBLISHED))
def test_text_and_json_round_trip_every_registry_genotype(name):
  g = G.PUBLISHED[name]
  assert G.parse(G.to_text(g)) == g
  assert G.from_json(G.to_json(g)) == g
  assert G.from_dict(json.loads(json.dumps(G.to_dict(g)))) == g
  assert str(g) == G.to_text(g)


def test_darts_v2_text_is_reproduced_exactly():
  g = G.parse(DARTS_V2_TEXT)
  assert G.to_text(g) == DARTS_V2_TEXT
  assert g == G.PUBLISHED["DARTS_V2"] == G.get_genotype("DARTS")
  assert g.normal[7] == ("dil_conv_3x3", 2)
  assert g.reduce_concat == [2, 3, 4, 5]


def test_parse_range_quotes_whitespace_prefix_and_assignment():
  g = G.PUBLISHED["DARTS_V2"]
  text = DARTS_V2_TEXT.replace("[2, 3, 4, 5]", "range(2, 6)")
  assert "range(2, 6)" in text
  assert G.parse(text) == g
  assert G.parse(text.replace("'", '"')) == g
  assert G.parse("genotypes." + text) == g
  assert G.parse("DARTS_V2 = " + text) == g
  spread = text.replace(", ", ",\n    ").replace("(normal=", "(\n  normal = ")
  assert G.parse("\n  " + spread + "\n") == g
  assert G.parse(text.replace("range(2, 6)", "list(range(2, 6))")) == g
  assert G.parse("Genotype([('skip_connect', 0), ('skip_connect', 1)], range(2, 3), "
                 "[('max_pool_3x3', 0), ('max_pool_3x3', 1)], [2])").normal_concat == [2]


@pytest.mark.parametrize("text, words", [
    ("", "expected Genotype(normal=..."),
    ("Genotype(normal=[('sep_conv_3x3', 0)]", "malformed genotype text"),
    ("Foo(normal=[], normal_concat=[], reduce=[], reduce_concat=[])", "expected Genotype("),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[2], reduce=[])", "missing field(s) reduce_concat"),
    ("Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[], extra=1)", "unknown field 'extra'"),
    ("Genotype(normal=[('a', 0)], normal=[('a', 0)], normal_concat=[], reduce=[], reduce_concat=[])",
     "given twice"),
    ("Genotype(normal=[('sep_conv_3x3', x)], normal_concat=[2], reduce=[], reduce_concat=[2])",
     "must be an integer literal"),
    ("Genotype(normal=[('sep_conv_3x3', 2, 0, 1)], normal_concat=[2], reduce=[], reduce_concat=[2])",
     "('op_name', input)"),
    ("Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=__import__('os').getcwd(), reduce=[], "
     "reduce_concat=[2])", "list of ints or range"),
    ("Genotype(normal=[], normal_concat=range(2, n), reduce=[], reduce_concat=[])", "range() arguments"),
    ("import os; Genotype()", "expected Genotype("),
    ("Genotype(normal=[], normal_concat=[], reduce=[], reduce_concat=[2, 'x'])", "integer literal"),
])
def test_parse_rejects_malformed_text_with_one_line_message(text, words):
  with pytest.raises(G.GenotypeError) as info:
    G.parse(text)
  msg = str(info.value)
  assert words in msg
  assert "\n" not in msg
  assert isinstance(info.value, ValueError)


def test_parse_does_not_evaluate_code(tmp_path):
  marker = tmp_path / "pwned"
  text = (f"Genotype(normal=[('sep_conv_3x3', 0)], normal_concat=[open({str(marker)!r}, 'w')], "
          "reduce=[], reduce_concat=[2])")
  with pytest.raises(G.GenotypeError):
    G.parse(text)
  assert not marker.exists()


def test_json_and_dict_errors():
  with pytest.raises(G.GenotypeError, match="malformed genotype JSON"):
    G.from_json("{not json")
  with pytest.raises(G.GenotypeError, match="missing keys"):
    G.from_dict({"normal": []})
  d = G.to_dict(G.PUBLISHED["DARTS_V2"])
  d["normal"][0] = ["sep_conv_3x3", "0"]
  with pytest.raises(G.GenotypeError, match="malformed edge"):
    G.from_dict(d)
  assert json.loads(G.to_json(G.PUBLISHED["DARTS_V2"]))["normal"][0] == ["sep_conv_3x3", 0]


def test_make_genotype_canonicalizes_tuples_ranges_and_numpy_ints():
  g = G.make_genotype(((("sep_conv_3x3", np.int64(0))), ["skip_connect", 1]), range(2, 3),
                      [("max_pool_3x3", 0), ("max_pool_3x3", 1)], (np.int32(2),))
  assert g == G.Genotype([("sep_conv_3x3", 0), ("skip_connect", 1)], [2],
                         [("max_pool_3x3", 0), ("max_pool_3x3", 1)], [2])
  assert all(type(j) is int for _, j in g.normal) and type(g.reduce_concat[0]) is int


# --- validate ---------------------------------------------------------------------------------------------


def _replace_edge(g: G.Genotype, cell: str, e: int, edge) -> G.Genotype:
  ops = list(getattr(g, cell))
  ops[e] = edge
  return g._replace(**{cell: ops})


@pytest.mark.parametrize("name", sorted(G.PUBLISHED))
def test_every_registry_genotype_validates(name):
  g = G.PUBLISHED[name]
  assert G.validate(g) is g
  assert name in G.SOURCES and len(G.SOURCES[name]) > 20


def test_validate_steps_and_nasnet_sizes():
  G.validate(G.PUBLISHED["DARTS_V2"], primitives=DARTS_PRIMITIVES, steps=4)
  G.validate(G.PUBLISHED["NASNet"], steps=5)
  assert G.PUBLISHED["AmoebaNet"].steps == 5
  with pytest.raises(G.GenotypeError, match="expected 2 \\* steps = 10"):
    G.validate(G.PUBLISHED["DARTS_V2"], steps=5)
  with pytest.raises(G.GenotypeError, match="unknown op 'sep_conv_7x7'"):
    G.validate(G.PUBLISHED["NASNet"], primitives=DARTS_PRIMITIVES)


@pytest.mark.parametrize("mutate, words", [
    (lambda g: _replace_edge(g, "normal", 3, ("conv_9x9", 1)), ["unknown op 'conv_9x9'", "sep_conv_3x3",
                                                                "normal cell edge 3"]),
    (lambda g: _replace_edge(g, "reduce", 0, ("none", 0)), ["'none'", "reduce cell edge 0"]),
    (lambda g: _replace_edge(g, "normal", 0, ("sep_conv_3x3", 2)), ["takes input 2", "node 0",
                                                                    "inputs 0..1"]),
    (lambda g: _replace_edge(g, "reduce", 7, ("skip_connect", 5)), ["takes input 5", "node 3",
                                                                    "inputs 0..4"]),
    (lambda g: _replace_edge(g, "normal", 2, ("skip_connect", -1)), ["takes input -1"]),
    (lambda g: g._replace(normal=g.normal[:7]), ["normal cell has 7 edges", "2 per intermediate node"]),
    (lambda g: g._replace(reduce=[]), ["reduce cell has 0 edges"]),
    (lambda g: g._replace(normal_concat=[2, 3, 4, 6]), ["normal_concat index 6 out of range", "2..5"]),
    (lambda g: g._replace(reduce_concat=[0, 1, 2, 3]), ["reduce_concat index 0 out of range"]),
    (lambda g: g._replace(reduce_concat=[]), ["reduce_concat is empty"]),
    (lambda g: g._replace(normal_concat=[2, 2, 3]), ["repeats"]),
])
def test_validate_rejects_invalid_genotypes(mutate, words):
  g = mutate(G.get_genotype("DARTS_V2"))
  with pytest.raises(G.GenotypeError) as info:
    G.validate(g)
  for w in words:
    assert w in str(info.value)


# --- derive_genotype ------------------------------------------------------------------------------------------


def test_derive_genotype_matches_reference_fixture():
  f = np.load(_reference_file("search_c8_l5.npz"))
  expected = G.parse(str(f["out/genotype"]))
  got = G.derive_genotype(f["alphas_normal"], f["alphas_reduce"], DARTS_PRIMITIVES, steps=4, k=2,
                          multiplier=4)
  assert got == expected
  assert G.to_text(got) == G.to_text(expected)
  G.validate(got, steps=4)


def test_derive_genotype_hand_made_alphas_ranked_order_and_none_excluded():
  # Node 0 (edges 0, 1): the edge from input 1 is stronger, so it is listed first (reference order).
  # Node 1 (edges 2-4): 'none' dominates edge 2 but only non-'none' weights rank edges.
  # Node 2 (edges 5-8), node 3 (edges 9-13).
  choices = {
      0: ("sep_conv_3x3", 2.0), 1: ("skip_connect", 3.0),
      2: ("none", 9.0), 3: ("dil_conv_5x5", 1.0), 4: ("max_pool_3x3", 2.0),
      5: ("avg_pool_3x3", 1.5), 6: ("sep_conv_5x5", 1.0), 7: ("dil_conv_3x3", 2.5), 8: ("skip_connect", 0.5),
      9: ("sep_conv_3x3", 0.1), 10: ("sep_conv_3x3", 0.2), 11: ("sep_conv_3x3", 0.3),
      12: ("sep_conv_5x5", 4.0), 13: ("max_pool_3x3", 3.5),
  }
  a = _one_hot_alphas(choices)
  a[2, DARTS_PRIMITIVES.index("sep_conv_3x3")] = 0.5
  g = G.derive_genotype(a, a)
  assert g.normal == [("skip_connect", 1), ("sep_conv_3x3", 0),
                      ("max_pool_3x3", 2), ("dil_conv_5x5", 1),
                      ("dil_conv_3x3", 2), ("avg_pool_3x3", 0),
                      ("sep_conv_5x5", 3), ("max_pool_3x3", 4)]
  assert g.reduce == g.normal
  assert g.normal_concat == g.reduce_concat == [2, 3, 4, 5]
  assert all(op != "none" for op, _ in g.normal)


def test_derive_genotype_never_picks_none_even_when_it_dominates_everywhere():
  a = _one_hot_alphas({e: ("none", 10.0) for e in range(14)})
  g = G.derive_genotype(a, a)
  assert all(op != "none" for op, _ in g.normal + g.reduce)
  # All non-'none' weights tie: first op wins, lowest inputs win (stable sort).
  assert g.normal == [("max_pool_3x3", 0), ("max_pool_3x3", 1)] * 4


def test_derive_genotype_k1_k3_multiplier_and_weights_fn():
  rng = np.random.default_rng(3)
  a = rng.normal(size=DARTS_SPACE.alpha_shape)
  b = rng.normal(size=DARTS_SPACE.alpha_shape)
  g2 = G.derive_genotype(a, b)
  g1 = G.derive_genotype(a, b, k=1)
  g3 = G.derive_genotype(a, b, k=3)
  assert len(g1.normal) == 4 and g1.normal == [g2.normal[2 * i] for i in range(4)]
  assert len(g3.normal) == 2 + 3 * 3
  assert g3.normal[:2] == g2.normal[:2]
  assert g3.normal[2:4] == g2.normal[2:4]
  assert G.derive_genotype(a, b, multiplier=2).normal_concat == [4, 5]
  # Sigmoid weights (FairDARTS) rank by raw α rather than by the softmax.
  sig = G.derive_genotype(a, b, weights_fn=lambda x: 1 / (1 + np.exp(-x)))
  G.validate(sig, steps=4)

  # k=1 on a hand-made α: node i keeps only its strongest edge.
  h = _one_hot_alphas({0: ("sep_conv_3x3", 1.0), 1: ("skip_connect", 2.0), 4: ("dil_conv_3x3", 3.0),
                       5: ("avg_pool_3x3", 3.0), 11: ("sep_conv_5x5", 3.0)})
  assert G.derive_genotype(h, h, k=1).normal == [("skip_connect", 1), ("dil_conv_3x3", 2),
                                                 ("avg_pool_3x3", 0), ("sep_conv_5x5", 2)]
  # k=3: node 0 has only two edges; node 1 keeps all three, ranked.
  g = G.derive_genotype(h, h, k=3)
  assert g.normal[:5] == [("skip_connect", 1), ("sep_conv_3x3", 0),
                          ("dil_conv_3x3", 2), ("max_pool_3x3", 0), ("max_pool_3x3", 1)]


def test_derive_genotype_without_none_and_shape_errors():
  prims = ("skip_connect", "sep_conv_3x3")
  a = np.zeros((5, 2))
  a[:, 1] = 1.0
  g = G.derive_genotype(a, a, primitives=prims, steps=2, multiplier=2)
  assert g.normal == [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1)]
  assert g.normal_concat == [2, 3]
  with pytest.raises(ValueError, match="expected \\(14, 8\\)"):
    G.derive_genotype(np.zeros((14, 7)), np.zeros((14, 8)))


# --- random genotypes ---------------------------------------------------------------------------------


def test_random_genotype_validates_and_is_reproducible():
  seen = set()
  for seed in range(50):
    g = G.random_genotype(np.random.default_rng(seed))
    G.validate(g, primitives=DARTS_PRIMITIVES, steps=4)
    assert g == G.random_genotype(np.random.default_rng(seed))
    for cell in (g.normal, g.reduce):
      for i in range(4):
        (_, a), (_, b) = cell[2 * i:2 * i + 2]
        assert a != b
    seen.add(G.to_text(g))
  assert len(seen) == 50
  g5 = G.random_genotype(np.random.default_rng(0), steps=5)
  G.validate(g5, steps=5)
  assert g5.normal_concat == [2, 3, 4, 5, 6]


def test_random_genotype_uses_every_op_and_input():
  rng = np.random.default_rng(0)
  ops, inputs = set(), set()
  for _ in range(40):
    g = G.random_genotype(rng)
    ops.update(op for op, _ in g.normal + g.reduce)
    inputs.update(j for _, j in g.normal[6:])
  assert ops == set(DARTS_PRIMITIVES) - {"none"}
  assert inputs == {0, 1, 2, 3, 4}


# --- registry -----------------------------------------------------------------------------------------------


def test_registry_contents_and_aliases():
  for name in ("NASNet", "AmoebaNet", "DARTS_V1", "DARTS_V2", "DARTS", "PC_DARTS", "PDARTS", "GDAS_V1"):
    assert name in G.PUBLISHED
  assert G.PUBLISHED["DARTS"] == G.PUBLISHED["DARTS_V2"]
  assert G.PUBLISHED["GDAS"] == G.PUBLISHED["GDAS_V1"]
  assert G.get_genotype("pc-darts") == G.PUBLISHED["PC_DARTS"]
  assert G.PUBLISHED["PC_DARTS"].normal[:2] == [("sep_conv_3x3", 1), ("skip_connect", 0)]
  assert G.PUBLISHED["PC_DARTS"].reduce[-1] == ("sep_conv_3x3", 2)
  assert G.PUBLISHED["PDARTS"].normal[-1] == ("dil_conv_5x5", 4)
  assert G.PUBLISHED["NASNet"].reduce_concat == [4, 5, 6]
  assert G.PUBLISHED["AmoebaNet"].reduce[-2:] == [("conv_7x1_1x7", 0), ("sep_conv_3x3", 5)]
  assert "ICLR 2019" in G.SOURCES["DARTS_V2"]
  assert "PC-DARTS" in G.SOURCES["PC_DARTS"]


def test_get_genotype_returns_copy_and_unknown_name_lists_known():
  g = G.get_genotype("DARTS_V2")
  g.normal.append(("skip_connect", 0))
  assert len(G.PUBLISHED["DARTS_V2"].normal) == 8
  with pytest.raises(G.GenotypeError) as info:
    G.get_genotype("ENAS_V9")
  assert "unknown genotype 'ENAS_V9'" in str(info.value)
  assert "DARTS_V2" in str(info.value) and "NASNet" in str(info.value)


def test_resolve_genotype_name_files_and_text(tmp_path):
  g = G.PUBLISHED["PDARTS"]
  assert G.resolve_genotype("PDARTS") == g
  assert G.resolve_genotype("p-darts") == g
  json_path = tmp_path / "arch.json"
  json_path.write_text(G.to_json(g, indent=2))
  assert G.resolve_genotype(str(json_path)) == g
  assert G.resolve_genotype(json_path) == g
  txt_path = tmp_path / "arch.txt"
  txt_path.write_text("PDARTS = " + G.to_text(g).replace("[2, 3, 4, 5]", "range(2, 6)") + "\n")
  assert G.resolve_genotype(str(txt_path)) == g
  assert G.resolve_genotype(DARTS_V2_TEXT) == G.PUBLISHED["DARTS_V2"]
  assert G.resolve_genotype(g) is g
  with pytest.raises(G.GenotypeError, match="cannot resolve genotype 'nope'"):
    G.resolve_genotype("nope")
  bad = tmp_path / "bad.json"
  bad.write_text("{}")
  with pytest.raises(G.GenotypeError, match="bad.json"):
    G.resolve_genotype(str(bad))
  with pytest.raises(G.GenotypeError, match="malformed genotype text"):
    G.resolve_genotype("Genotype(normal=[")


# --------------------------------------------------------------------------------------------------------
# FairDARTS' triple form and threshold parse.

FAIRDARTS_A = ("Genotype(normal=[('sep_conv_3x3', 2, 0), ('sep_conv_5x5', 2, 1), ('max_pool_3x3', 4, 0), "
               "('sep_conv_3x3', 5, 0)], normal_concat=range(2, 6), reduce=[('max_pool_3x3', 2, 0), "
               "('avg_pool_3x3', 2, 1), ('avg_pool_3x3', 3, 0), ('dil_conv_5x5', 3, 1), ('avg_pool_3x3', 4, 0), "
               "('sep_conv_5x5', 4, 1), ('skip_connect', 5, 0), ('skip_connect', 5, 1)], "
               "reduce_concat=range(2, 6))")   # FairDARTS fairdarts/genotypes.py, FairDARTS_a


def _released_parse(weights, ops, threshold, method, steps=4):
  """FairDARTS' utils.parse, transcribed from the released code (its space has no 'none')."""
  gene, n, start = [], 2, 0
  for i in range(steps):
    W = weights[start:start + n]
    if "edge" in method:
      edges = list(range(i + 2))
    else:
      edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x]))))[:2]
    for j in edges:
      if "edge" in method:
        for k, v in sorted(enumerate(W[j]), key=lambda x: x[1])[-2:]:
          if W[j][k] >= threshold:
            gene.append((ops[k], i + 2, j))
      else:
        k_best = None
        for k in range(len(W[j])):
          if k_best is None or W[j][k] > W[j][k_best]:
            k_best = k
        if W[j][k_best] >= threshold:
          gene.append((ops[k_best], i + 2, j))
    start += n
    n += 1
  return gene


@pytest.mark.parametrize("parse", G.THRESHOLD_PARSES)
def test_derive_threshold_is_the_released_parse(parse):
  prims = list(G.DARTS_PRIMITIVES)
  no_none = [p for p in prims if p != "none"]
  for seed in range(20):
    rng = np.random.default_rng(seed)
    w_n, w_r = rng.uniform(0.5, 1.0, (2, 14, len(prims)))
    g = G.derive_threshold(w_n, w_r, prims, threshold=0.85, parse=parse)
    # The released space is ours without 'none': drop its column and compare.
    keep = [i for i, p in enumerate(prims) if p != "none"]
    assert g.normal == _released_parse(w_n[:, keep], no_none, 0.85, parse)
    assert g.reduce == _released_parse(w_r[:, keep], no_none, 0.85, parse)
    assert g.normal_concat == [2, 3, 4, 5]
  # Weights all below the threshold keep nothing; all above keep DARTS' two edges per node.
  low = G.derive_threshold(np.full((14, 8), 0.5), np.full((14, 8), 0.5), prims)
  assert low.normal == [] and low.reduce == []
  high = np.random.default_rng(0).uniform(0.9, 1.0, (14, 8))
  dense = G.derive_threshold(high, high, prims, parse="threshold_sparse")
  pairs = G.derive_genotype(high, high, prims, weights_fn=lambda a: a)
  assert [(op, j) for op, _, j in dense.normal] == pairs.normal


def test_triple_form_round_trips_and_computes_only_reachable_edges():
  g = G.parse(FAIRDARTS_A)
  assert G.is_sparse(g) and g.steps == 4
  assert G.parse(G.to_text(g)) == g and G.from_json(G.to_json(g)) == g
  G.validate(g)
  assert G.cell_nodes(g, "normal") == [2, 4, 5]           # node 3 has no edge
  # An edge from an absent node is not computed (FairDARTS' DCOCell skips it), nor are nodes fed only by it.
  h = G.make_genotype([("sep_conv_3x3", 2, 0), ("skip_connect", 4, 3), ("max_pool_3x3", 5, 4),
                       ("dil_conv_3x3", 5, 1), ("dil_conv_3x3", 5, 1)], range(2, 6),
                      [("skip_connect", 2, 0)], range(2, 6))
  assert G.cell_edges(h, "normal") == [("sep_conv_3x3", 2, 0), ("dil_conv_3x3", 5, 1), ("dil_conv_3x3", 5, 1)]
  assert G.cell_nodes(h, "normal") == [2, 5]
  # The pair form reads as triples with two edges per node.
  d = G.get_genotype("DARTS_V2")
  assert G.cell_edges(d, "reduce")[:3] == [("max_pool_3x3", 2, 0), ("max_pool_3x3", 2, 1), ("skip_connect", 3, 2)]
  assert G.cell_nodes(d, "normal") == d.normal_concat


@pytest.mark.parametrize("normal,words", [
    ([("sep_conv_3x3", 6, 0)], "goes to state 6"),
    ([("sep_conv_3x3", 3, 3)], "takes input 3"),
    ([("none", 2, 0)], "'none'"),
    ([("skip_connect", 3, 2)], "no edge from the cell inputs"),
    ([("sep_conv_3x3", 2, 0), ("skip_connect", 3)], "mixes"),
    ([("sep_conv_3x3", 3, 0), ("sep_conv_3x3", 2, 0)], "out of node order"),
])
def test_triple_form_validation(normal, words):
  with pytest.raises(G.GenotypeError) as info:
    G.validate(G.make_genotype(normal, [2, 3, 4, 5], [("skip_connect", 2, 0)], [2, 3, 4, 5]), steps=4)
  assert words in str(info.value) and "\n" not in str(info.value)
