"""DARTS-PT's selection (darts_jax.projection): the released schedule, the pure selection on fake scorers (the op
whose masking hurts most, a seeded random edge order, decided edges one-hot, the topology step keeping two inputs
per node), the tuning problem's fixed rows, and searches with ``selection=pt`` / ``pt_fixed`` end to end."""
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from darts_jax import bilevel, genotypes, methods, projection, search
from darts_jax.search_space import get_space

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "experiments", "configs"))
import fashion_search  # pylint: disable=g-import-not-at-top,wrong-import-position
import known_answer as known_answer_config  # pylint: disable=g-import-not-at-top,wrong-import-position

DARTS, NB201 = get_space("darts"), get_space("nb201")


def _random_weights(space, seed):
  rng = np.random.default_rng(seed)
  return {c: rng.dirichlet(np.ones(space.num_ops), space.num_edges).astype(np.float32) for c in space.cell_names}


class AdditiveScorer:
  """A fake supernet accuracy: Σ over cells, edges and ops of weight · value (positive values), so masking op o
  on edge e costs w[e, o]·v[e, o]. Records every weight set it is given."""

  def __init__(self, space, seed):
    rng = np.random.default_rng(seed)
    self.values = {c: rng.uniform(0.1, 1.0, space.alpha_shape) for c in space.cell_names}
    self.calls = []

  def __call__(self, weights):
    self.calls.append({c: np.array(weights[c]) for c in self.values})
    return float(sum(np.sum(np.asarray(weights[c]) * v) for c, v in self.values.items()))


# ------------------------------------------------------------------------------------------------------------
# The plan.


def test_released_schedules():
  """NB201: 6 decisions, 25 tune epochs, at epochs 0, 5, 10, 15, 20, 24. DARTS space: 14 op decisions of one
  normal and one reduce edge, then 3 topology decisions, 81 epochs, every 5 epochs; the lr a constant tenth."""
  p = projection.make_plan(NB201, seed=0)
  assert p.tune_epochs == 25
  assert [e.epoch for e in p.events] == [0, 5, 10, 15, 20, 24] and {e.kind for e in p.events} == {"op"}
  assert sorted(t[1] for e in p.events for t in e.targets) == list(range(6))
  d = projection.make_plan(DARTS, seed=0)
  assert d.tune_epochs == 81
  assert [e.epoch for e in d.events] == list(range(0, 81, 5))
  assert [e.kind for e in d.events] == ["op"] * 14 + ["topology"] * 3
  assert all([c for c, _ in e.targets] == ["normal", "reduce"] for e in d.events)
  for cell in ("normal", "reduce"):
    assert sorted(t for e in d.events[:14] for c, t in e.targets if c == cell) == list(range(14))
    assert sorted(t for e in d.events[14:] for c, t in e.targets if c == cell) == [3, 4, 5]   # 3, 4, 5 inputs
  two = projection.make_plan(DARTS, seed=0, tune_epochs=1, edges_per_decision=2)
  assert [e.kind for e in two.events] == ["op"] * 7 + ["topology"] * 3 and len(two.events[0].targets) == 4
  assert two.tune_epochs == 10 and [e.epoch for e in two.events] == list(range(10))
  assert [e.epoch for e in projection.make_plan(NB201, 0, tune_epochs=0).events] == [0] * 6
  assert projection.make_plan(NB201, 0, tune_epochs=0).tune_epochs == 0
  hp = projection.tune_hparams(bilevel.SearchHParams(w_lr=0.025, w_lr_min=0.001, steps_per_epoch=3), d)
  assert (hp.epochs, hp.w_lr, hp.w_lr_min, hp.steps_per_epoch) == (81, 0.0025, 0.0025, 3)


def test_edge_order_is_a_seeded_random_permutation():
  orders = [projection.make_plan(DARTS, seed=s).edge_order for s in (0, 0, 1)]
  assert orders[0] == orders[1] and orders[0] != orders[2]
  assert orders[0]["normal"] != orders[0]["reduce"] and orders[0]["normal"] != list(range(14))
  firsts = {projection.make_plan(NB201, seed=s).edge_order["normal"][0] for s in range(40)}
  assert len(firsts) == 6   # every edge comes first for some seed


def test_settings_are_checked_with_one_line_errors():
  cfg = fashion_search.get_config("smoke")
  assert projection.settings(cfg) == projection.Settings("argmax", 1, 1, None, 32)
  for field, value, match in [("selection", "pt2", "unknown selection 'pt2'"),
                              ("pt_tune_epochs", -1, "pt_tune_epochs"),
                              ("pt_edges_per_decision", 0, "pt_edges_per_decision"),
                              ("pt_tune_lr", -1.0, "pt_tune_lr"), ("pt_eval_examples", -5, "pt_eval_examples")]:
    c = fashion_search.get_config("smoke")
    c[field] = value
    with pytest.raises(ValueError, match=match) as e:
      projection.settings(c)
    assert "\n" not in str(e.value)



def test_a_bad_selection_stops_the_search_before_it_writes(tmp_path):
  c = fashion_search.get_config("smoke")
  c.selection = "argmin"
  with pytest.raises(ValueError, match="unknown selection 'argmin'; choose one of argmax, pt, pt_fixed"):
    search.search(c, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run")


# ------------------------------------------------------------------------------------------------------------
# The pure selection on fake scorers.


@pytest.mark.parametrize("space_name", ["nb201", "darts"])
def test_pt_keeps_the_op_whose_masking_hurts_most(space_name):
  space = get_space(space_name)
  weights, scorer = _random_weights(space, 1), AdditiveScorer(space, 2)
  arch, decisions, records = projection.select_offline(space, weights, scorer, seed=3)
  allowed = projection.candidate_ops(space)
  chosen = {}
  for rec in (r for r in records if r["kind"] == "op"):
    for d in rec["decisions"]:
      c, e = d["cell"], d["edge"]
      cost = weights[c][e] * scorer.values[c][e]   # what masking each op takes off the score
      chosen[(c, e)] = allowed[int(np.argmax(cost[allowed]))]
      assert d["op"] == space.primitives[chosen[(c, e)]]
      assert min(d["masked_accuracy"].values()) == d["masked_accuracy"][d["op"]]
      assert set(d["masked_accuracy"]) == set(space.arch_ops)
  assert decisions.complete and len(chosen) == space.num_edges * len(space.cell_names)
  for (c, e), o in chosen.items():   # one-hot, or all zeros where the topology step dropped the input
    row = decisions.fixed[c][e].tolist()
    assert row == np.eye(space.num_ops)[o].tolist() or (space_name == "darts" and not any(row))
  if space_name == "nb201":
    ops = [space.primitives[int(np.argmax(decisions.fixed["normal"][e]))] for e in range(6)]
    assert list(arch) == ops
  else:
    assert "none" not in space.arch_text(arch)


def test_scored_weights_keep_the_methods_rows_and_make_decided_edges_one_hot():
  """Every weight set the scorer sees: decided edges one-hot, undecided edges the method's op weights, the
  masked op at 0 without renormalizing the others."""
  space = NB201
  weights, scorer = _random_weights(space, 4), AdditiveScorer(space, 5)
  _, _, records = projection.select_offline(space, weights, scorer, seed=6)
  order = [r["decisions"][0]["edge"] for r in records]
  assert order == projection.make_plan(space, 6, 0).edge_order["normal"]
  calls = iter(scorer.calls)
  for i, rec in enumerate(records):
    edge = rec["decisions"][0]["edge"]
    for op in space.arch_ops:
      w = next(calls)["normal"]
      o = space.primitive_index(op)
      for e in range(space.num_edges):
        if e in order[:i]:
          assert sorted(w[e].tolist()) == [0.0] * 4 + [1.0]
        elif e == edge:
          expect = weights["normal"][e].copy()
          expect[o] = 0.0
          np.testing.assert_array_equal(w[e], expect)
          assert w[e].sum() < 1.0 - 1e-4 or weights["normal"][e][o] < 1e-4
        else:
          np.testing.assert_array_equal(w[e], weights["normal"][e])


def test_darts_topology_step_keeps_two_inputs_per_node():
  """With additive scores, masking a decided input edge costs v[e, op]: each node keeps its two costliest
  inputs; dropped inputs become rows of zeros and the genotype has two inputs per node."""
  space = DARTS
  weights, scorer = _random_weights(space, 7), AdditiveScorer(space, 8)
  arch, decisions, records = projection.select_offline(space, weights, scorer, seed=9)
  topo = [d for r in records if r["kind"] == "topology" for d in r["decisions"]]
  assert sorted((d["cell"], d["node"]) for d in topo) == [(c, n) for c in ("normal", "reduce") for n in (3, 4, 5)]
  for d in topo:
    c = d["cell"]
    inputs = projection.node_inputs(space)[d["node"]]
    chosen = {e: int(np.argmax(decisions.fixed[c][e])) for e in d["kept_edges"]}
    assert len(d["kept_edges"]) == 2 and len(d["rounds"]) == len(inputs) - 2
    ops = {r["edge"]: space.primitive_index(r["op"]) for rr in records if rr["kind"] == "op"
           for r in rr["decisions"] if r["cell"] == c}
    cost = {e: scorer.values[c][e, ops[e]] for e in inputs}
    assert sorted(d["kept_edges"]) == sorted(sorted(inputs, key=cost.get)[-2:])
    for e in inputs:
      assert decisions.fixed[c][e].sum() == (1.0 if e in chosen else 0.0)
  for cell in ("normal", "reduce"):
    edges = genotypes.cell_edges(arch, cell)
    assert len(edges) == 8 and [node for _, node, _ in edges] == [2, 2, 3, 3, 4, 4, 5, 5]
    for op, node, src in edges:   # each kept input with the op PT chose for it
      assert decisions.fixed[cell][space.edge_index(src, node), space.primitive_index(op)] == 1.0


def test_tuning_problem_fixes_decided_rows_for_every_method():
  """In the tuning steps a decided edge is one-hot (a dropped input all zeros) whatever the method samples,
  undecided edges keep the method's weights, and the schedules read the search's last step."""
  space = DARTS
  decisions = projection.Decisions(space)
  decisions.set_op("normal", 0, 4)
  decisions.set_op("reduce", 2, 1)
  decisions.keep_inputs("normal", 4, [5, 7])   # node 4 (inputs: edges 5-8) drops edges 6 and 8
  decided, fixed = decisions.arrays()
  hp = bilevel.SearchHParams(epochs=3, steps_per_epoch=2)
  key = jax.random.PRNGKey(0)
  for name in ("darts", "gdas", "pcdarts", "drnas", "darts_minus"):
    m = methods.get_method(name)
    alphas = m.init_alphas(key, space)
    base = m.problem(lambda p, x, w: x, space, hp)
    # The decisions as step inputs, as the fused tuning step takes them.
    w = jax.jit(lambda a, k, d, f, base=base: projection.tuning_problem(base, d, f, at_step=6).arch_weights(
        a, k, jnp.asarray(0)))(alphas, key, decided, fixed)
    ref = base.arch_weights(alphas, key, jnp.asarray(6))
    assert w["normal"][0].tolist() == np.eye(8)[4].tolist() and w["reduce"][2].tolist() == np.eye(8)[1].tolist()
    assert float(jnp.abs(w["normal"][6]).sum()) == 0.0 and float(jnp.abs(w["normal"][8]).sum()) == 0.0
    np.testing.assert_allclose(w["normal"][1], ref["normal"][1], rtol=1e-6)
    if name == "pcdarts":
      assert float(w["normal_edge"][0]) == 1.0 and float(w["normal_edge"][1]) == float(ref["normal_edge"][1])
    if name == "darts_minus":   # β has decayed to 0 at the search's end: no auxiliary skip on undecided edges
      np.testing.assert_allclose(w["normal"][1], jax.nn.softmax(alphas["normal"][1]), rtol=1e-6)


# ------------------------------------------------------------------------------------------------------------
# Searches.


def _read(path):
  with open(path) as f:
    return json.load(f)


def test_search_with_pt_selection_writes_the_genotype_and_its_record(tmp_path):
  """A tiny single-edge search with selection=pt: the exported op is PT's, projection.json records the edge
  order, every op's masked accuracy and the choice, summary.json the argmax beside it; a re-run on the same
  workdir resumes and selects the same."""
  c = known_answer_config.get_config("smoke")
  c.selection = "pt"
  summary = search.search(c, str(tmp_path))
  record = _read(tmp_path / "projection.json")
  (event,) = record["events"]
  (decision,) = event["decisions"]
  scores = decision["masked_accuracy"]
  assert set(scores) == set(record["candidate_ops"]) and "none" not in scores
  lowest = min(scores.values())   # ties (an untrained smoke supernet) go to the first op in the space's order
  assert decision["op"] == next(op for op in record["candidate_ops"] if scores[op] == lowest)
  text = open(tmp_path / "genotype.txt").read().strip()
  assert text == decision["op"] == summary["genotype"] == record["genotype"]
  assert summary["selection"] == "pt" and summary["genotype_argmax"] == record["genotype_argmax"]
  assert _read(tmp_path / "summary.json")["pt_record"] == "projection.json"
  again = search.search(c, str(tmp_path))
  assert again["genotype"] == summary["genotype"] and _read(tmp_path / "projection.json")["events"] == [event]


@pytest.mark.slow
def test_nb201_search_with_pt_fixed_tuning_end_to_end(tmp_path):
  """NB201 smoke search (the fused step), then PT with α fixed and 1 tune epoch between decisions (6
  decisions, 5 tune epochs at a constant tenth of the search's lr): every edge decided, α left alone. A record
  that lacks decisions its
  checkpoints are past is a one-line error; without both, a re-run selects again from the search's final
  checkpoint, with the same decisions."""
  c = fashion_search.get_config("smoke")
  c.space, c.model.N, c.selection = "nb201", 1, "pt_fixed"
  c.progress = c.tensorboard = False
  summary = search.search(c, str(tmp_path))
  record = _read(tmp_path / "projection.json")
  assert record["tune_epochs"] == 5 and len(record["events"]) == 6 and record["complete"]
  assert sorted(d["edge"] for e in record["events"] for d in e["decisions"]) == list(range(6))
  assert summary["genotype"] == record["genotype"] == open(tmp_path / "genotype.txt").read().strip()
  ops = [d["op"] for e in sorted(record["events"], key=lambda e: e["index"]) for d in e["decisions"]]
  edges = [d["edge"] for e in sorted(record["events"], key=lambda e: e["index"]) for d in e["decisions"]]
  assert summary["genotype"] == get_space("nb201").arch_text(tuple(dict(zip(edges, ops))[e] for e in range(6)))
  assert record["alpha_change"] == 0.0
  tune = [r for r in (json.loads(l) for l in open(tmp_path / "projection" / "metrics.jsonl"))
          if r.get("phase") == "pt_epoch"]
  assert [r["epoch"] for r in tune] == list(range(5)) and tune[-1]["decided_edges"] == 6
  assert all(r["lr"] == pytest.approx(0.0025) for r in (json.loads(l) for l in open(
      tmp_path / "projection" / "metrics.jsonl")) if r.get("phase") == "pt_tune")
  os.remove(tmp_path / "projection.json")
  with pytest.raises(ValueError, match="past the next decision") as e:
    search.search(c, str(tmp_path))
  assert "\n" not in str(e.value)
  shutil.rmtree(tmp_path / "projection")
  again = search.search(c, str(tmp_path))
  assert again["genotype"] == summary["genotype"] and _read(tmp_path / "projection.json")["events"] == record["events"]


@pytest.mark.slow
def test_darts_space_search_with_pt_and_the_topology_step(tmp_path):
  """DARTS-space smoke search (the edgewise step), then PT deciding 7 edges of each cell per decision with a
  tune epoch between decisions (2 op decisions, then 3 topology decisions, 5 tune epochs, α trained on): the
  genotype has two inputs per node, each with the op PT chose for its edge."""
  c = fashion_search.get_config("smoke")
  c.selection, c.pt_tune_epochs, c.pt_edges_per_decision, c.step_backend = "pt", 1, 7, "edgewise"
  c.image_size, c.epochs, c.pt_eval_examples = 16, 1, 16
  c.progress = c.tensorboard = False
  summary = search.search(c, str(tmp_path))
  record = _read(tmp_path / "projection.json")
  assert [e["kind"] for e in record["events"]] == ["op"] * 2 + ["topology"] * 3 and record["complete"]
  assert [len(e["decisions"]) for e in record["events"]] == [14, 14, 2, 2, 2] and record["tune_epochs"] == 5
  assert record["alpha_change"] > 0 and summary["step_program"] == "edgewise"
  for e in record["events"][2:]:
    for d in e["decisions"]:
      assert len(d["kept_edges"]) == 2
  ops = {(d["cell"], d["edge"]): d["op"] for e in record["events"][:2] for d in e["decisions"]}
  kept = {(d["cell"], k) for e in record["events"][2:] for d in e["decisions"] for k in d["kept_edges"]}
  g = genotypes.parse(summary["genotype"])
  for cell in ("normal", "reduce"):
    for op, node, src in genotypes.cell_edges(g, cell):
      e = DARTS.edge_index(src, node)
      assert ops[(cell, e)] == op and (node == 2 or (cell, e) in kept)
  assert open(tmp_path / "genotype.txt").read().strip() == summary["genotype"] == record["genotype"]


def test_multi_seed_search_selects_each_seed_by_pt(tmp_path):
  """search_seeds with selection=pt: every seed's workdir gets its own projection record and PT's op."""
  configs = []
  for seed in (0, 1):
    c = known_answer_config.get_config("smoke")
    c.selection, c.seed = "pt", seed
    configs.append(c)
  dirs = [str(tmp_path / f"s{k}") for k in range(2)]
  summaries = search.search_seeds(configs, dirs)
  for d, s in zip(dirs, summaries):
    record = _read(os.path.join(d, "projection.json"))
    assert s["selection"] == "pt" and s["genotype"] == record["genotype"] == record["events"][0]["decisions"][0]["op"]
    assert open(os.path.join(d, "genotype.txt")).read().strip() == s["genotype"]


@pytest.mark.slow
def test_pt_from_the_command_line_on_a_mesh(tmp_path):
  """`--config.selection=pt` through experiments/search.py on 2 virtual CPU devices (the data-parallel fused
  step, its decisions as step inputs): every edge decided on the mesh, the genotype PT's."""
  env = dict(os.environ, XLA_FLAGS="--xla_backend_optimization_level=0 --xla_force_host_platform_device_count=2",
             PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
  cmd = [sys.executable, os.path.join(ROOT, "experiments", "search.py"),
         f"--config={os.path.join(ROOT, 'experiments', 'configs', 'fashion_search.py')}:smoke",
         f"--workdir={tmp_path}", "--config.progress=False", "--config.tensorboard=False",
         "--config.space=nb201", "--config.model.N=1", "--config.selection=pt"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  summary, record = _read(tmp_path / "summary.json"), _read(tmp_path / "projection.json")
  assert summary["num_devices"] == 2 and summary["step_program"] == "fused" and summary["selection"] == "pt"
  assert record["complete"] and len(record["events"]) == 6 and record["alpha_change"] > 0
  assert open(tmp_path / "genotype.txt").read().strip() == summary["genotype"] == record["genotype"]
  bad = subprocess.run(cmd[:-1] + ["--config.selection=best"], env=env, capture_output=True, text=True,
                       timeout=300, check=False)
  assert bad.returncode == 1 and bad.stderr.startswith("error: ") and bad.stderr.count("\n") == 1
