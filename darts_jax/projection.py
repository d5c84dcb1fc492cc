"""DARTS-PT's perturbation-based architecture selection, for every method and space (``--config.selection``).

Wang, Cheng, Chen, Tang, Hsieh. Rethinking Architecture Selection in Differentiable NAS. ICLR 2021; released
code github.com/ruocwang/darts-pt, ``nasbench201/projection.py`` and ``sota/cnn/projection.py``. Instead of
α's argmax, the trained supernet decides:

* Edges are decided one at a time, in a random order. For each candidate op of the edge, that op's weight is
  set to 0 (no renormalization; undecided edges keep the method's op weights, decided edges are one-hot) and
  the supernet's accuracy on the validation split is measured (batch-statistics BatchNorm, as the released
  ``infer(..., eval=False)``; the supernet here has no running statistics). The op whose removal hurts most is
  kept and the edge frozen one-hot (ties: the first such op, as released).
* Between decisions the supernet is fine-tuned: the search step with the decided edges one-hot, a fresh SGD
  at a constant tenth of the search's weight lr (released ``reset_optimizer(learning_rate / 10)``; the
  DARTS-space code also builds a cosine schedule but never steps it), α still updated by the method's α step
  (``selection="pt"``) or held fixed (``"pt_fixed"``, the released ``blank`` method).
* NAS-Bench-201: one edge per decision every ``proj_intv`` = 5 epochs, 5·(6 − 1) = 25 tune epochs, decisions
  at the start of epochs 0, 5, 10, 15, 20 and 24.
* DARTS space: one normal and one reduce edge per decision (14 decisions), then the topology step: per node
  with more inputs than it keeps (a random node of each cell kind per decision, 3 decisions), input edges
  are masked whole (weight row 0) and the one whose removal hurts least is dropped (ties: the last, as
  released) until 2 remain; 5·(14 + 3 − 1) + 1 = 81 tune epochs, decisions at the start of epochs 0, 5, ...,
  80.

The core (`make_plan`, `Decisions`, `choose_op`, `choose_inputs`, `run_plan`) is pure: it takes a scorer
``op weights -> accuracy`` and a ``tune(from_epoch, to_epoch)`` callback, so it runs without training. `select`
runs it on a finished search (`darts_jax.search` builds its `Context`): it fine-tunes with the search's step
backend, checkpoints the tuning under ``workdir/projection/checkpoints`` (metrics in
``workdir/projection/metrics.jsonl``), writes every decision to ``workdir/projection.json`` as it is taken, and
resumes from both; without them it starts again from the search's final state.

Where this differs from the released code: the candidates are the ops a discrete architecture of the space
can use (`SearchSpace.arch_ops`: NB201's five, ``none`` included; DARTS' seven without ``none``, which the
released DARTS space ``s5`` does not have); the scores use the method's deterministic op weights
(`Method.op_weights`: softmax(α), DrNAS' Dirichlet mean, FairDARTS' sigmoids, PC-DARTS' softmax times the
edge weight), the tuning steps the method's own (sampled, perturbed) op weights with decided rows replaced
(PC-DARTS' edge weight 1 there), with the method's schedules (GDAS' τ, SDARTS' ε, β-DARTS' λ, DARTS-' β) held
at their end-of-search values; the weight optimizer keeps the method's momentum, Nesterov flag, weight decay
and clipping; the edge order is a random permutation per cell kind drawn from the run's seed up front (the
released code draws each next edge uniformly among the undecided ones: the same distribution). The
architecture is the space's discretization of the decided weights (`SearchSpace.derive`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import bilevel, loop, parallel, steps
from darts_jax import workdir as wd
from darts_jax.search_space import SearchSpace

SELECTIONS = ("argmax", "pt", "pt_fixed")
RECORD_FILE = "projection.json"
DIRECTORY = "projection"
OP, TOPOLOGY = "op", "topology"

Params = Dict[str, Any]
Scorer = Callable[[Params], float]


# --------------------------------------------------------------------------------------------------------
# Settings.


class Settings(NamedTuple):
  """A run's selection settings (config fields ``selection``, ``pt_tune_epochs``, ``pt_edges_per_decision``,
  ``pt_tune_lr``, ``pt_eval_examples``)."""
  selection: str = "argmax"
  tune_epochs: int = 5            # fine-tuning epochs between two decisions (released proj_intv)
  edges_per_decision: int = 1     # edges decided per cell kind at each decision
  tune_lr: Optional[float] = None  # None: a tenth of the search's weight lr
  eval_examples: int = 0          # validation examples each score uses (0: the whole α half)

  @property
  def active(self) -> bool:
    return self.selection != "argmax"

  @property
  def update_alphas(self) -> bool:
    return self.selection == "pt"


def settings(config) -> Settings:
  """The config's `Settings` (absent fields: the defaults); one-line ValueError on a bad value."""
  get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
  name = get("selection", "argmax") or "argmax"
  if name not in SELECTIONS:
    raise ValueError(f"unknown selection {name!r}; choose one of {', '.join(SELECTIONS)}")
  d = Settings()
  tune = get("pt_tune_epochs", d.tune_epochs)
  per = get("pt_edges_per_decision", d.edges_per_decision)
  lr = get("pt_tune_lr", None)
  examples = get("pt_eval_examples", d.eval_examples) or 0
  if tune is None or int(tune) != tune or tune < 0:
    raise ValueError(f"pt_tune_epochs={tune!r} must be a non-negative integer (0: no fine-tuning between "
                     "decisions)")
  if per is None or int(per) != per or per < 1:
    raise ValueError(f"pt_edges_per_decision={per!r} must be a positive integer (edges per cell kind)")
  if lr is not None and not (lr > 0 and math.isfinite(lr)):
    raise ValueError(f"pt_tune_lr={lr!r} must be a positive number, or unset for a tenth of the search's w_lr")
  if int(examples) != examples or examples < 0:
    raise ValueError(f"pt_eval_examples={examples!r} must be a non-negative integer (0: the whole α half)")
  return Settings(name, int(tune), int(per), None if lr is None else float(lr), int(examples))


# --------------------------------------------------------------------------------------------------------
# The plan: which edges and nodes are decided at the start of which tune epoch.


class Event(NamedTuple):
  """One decision: at the start of tune epoch `epoch`, decide `targets` in order, each (cell kind, edge) for
  an op decision or (cell kind, node state index) for a topology decision."""
  epoch: int
  kind: str
  targets: Tuple[Tuple[str, int], ...]


class Plan(NamedTuple):
  events: Tuple[Event, ...]
  tune_epochs: int                  # epochs of fine-tuning in all
  edge_order: Dict[str, List[int]]  # per cell kind, the order its edges are decided in
  node_order: Dict[str, List[int]]  # per cell kind, the order its nodes' inputs are decided in


def node_inputs(space: SearchSpace) -> Dict[int, List[int]]:
  """{node state index: its input edges} of the nodes with more inputs than a discrete architecture keeps
  (none in NAS-Bench-201, whose edges all stay)."""
  if space.inputs_per_node is None:
    return {}
  out: Dict[int, List[int]] = {}
  for e, edge in enumerate(space.edges):
    out.setdefault(edge.dst, []).append(e)
  return {n: es for n, es in out.items() if len(es) > space.inputs_per_node}


def make_plan(space: SearchSpace, seed: int, tune_epochs: int = 5, edges_per_decision: int = 1) -> Plan:
  """The released schedule (module docstring) for `space`: op decisions of `edges_per_decision` edges per cell
  kind, then topology decisions of one node per cell kind, `tune_epochs` epochs apart; the edge and node
  orders are random permutations from `seed`."""
  if tune_epochs < 0 or edges_per_decision < 1:
    raise ValueError(f"tune_epochs={tune_epochs} must be >= 0 and edges_per_decision={edges_per_decision} >= 1")
  rng = np.random.default_rng(seed)
  cells = space.cell_names
  edge_order = {c: [int(e) for e in rng.permutation(space.num_edges)] for c in cells}
  nodes = sorted(node_inputs(space))
  node_order = {c: [nodes[i] for i in rng.permutation(len(nodes))] for c in cells}
  k = edges_per_decision
  kinds = [(OP, tuple((c, e) for c in cells for e in edge_order[c][i * k:(i + 1) * k]))
           for i in range(-(-space.num_edges // k))]
  kinds += [(TOPOLOGY, tuple((c, node_order[c][j]) for c in cells)) for j in range(len(nodes))]
  n = len(kinds)
  # NB201's release tunes proj_intv·(edges - 1) epochs and takes its last decision at the start of the last;
  # the DARTS-space release tunes proj_intv·(decisions - 1) + 1 and takes its last at the start of the last.
  total = tune_epochs * (n - 1) + (1 if nodes and tune_epochs else 0)
  epochs = [i * tune_epochs for i in range(n - 1)] + [max(total - 1, 0)]
  events = tuple(Event(min(ep, max(total - 1, 0)), kind, targets)
                 for ep, (kind, targets) in zip(epochs, kinds))
  return Plan(events, total, edge_order, node_order)


# --------------------------------------------------------------------------------------------------------
# Decisions and the scores that take them.


class Decisions:
  """What has been decided: per cell kind, which edges are frozen and their fixed op weights (one-hot, or a
  row of zeros for an input the topology step dropped)."""

  def __init__(self, space: SearchSpace):
    self.space = space
    self.decided = {c: np.zeros(space.num_edges, bool) for c in space.cell_names}
    self.fixed = {c: np.zeros(space.alpha_shape, np.float32) for c in space.cell_names}

  def set_op(self, cell: str, edge: int, op: int) -> None:
    self.decided[cell][edge] = True
    self.fixed[cell][edge] = 0.0
    self.fixed[cell][edge, op] = 1.0

  def keep_inputs(self, cell: str, node: int, kept: Sequence[int]) -> None:
    for e in node_inputs(self.space)[node]:
      if e not in kept:
        self.decided[cell][e] = True
        self.fixed[cell][e] = 0.0

  @property
  def complete(self) -> bool:
    return all(d.all() for d in self.decided.values())

  def project(self, op_weights: Params) -> Params:
    """`op_weights` (per cell kind (E, O), numpy) with the decided rows replaced by their fixed weights."""
    out = {k: np.asarray(v, np.float32) for k, v in op_weights.items()}
    for c in self.space.cell_names:
      out[c] = np.where(self.decided[c][:, None], self.fixed[c], out[c]).astype(np.float32)
    return out

  def arrays(self) -> Tuple[Params, Params]:
    """(decided as 0/1 floats, fixed weights) per cell kind, the form a traced step takes them in."""
    return ({c: d.astype(np.float32) for c, d in self.decided.items()},
            {c: f.copy() for c, f in self.fixed.items()})


def candidate_ops(space: SearchSpace) -> List[int]:
  """The op indices an edge can be decided to (`SearchSpace.arch_ops`)."""
  return [space.primitive_index(p) for p in space.arch_ops]


def _masked(weights: Params, cell: str, row: int, col: Optional[int] = None) -> Params:
  out = dict(weights)
  out[cell] = np.array(weights[cell], copy=True)
  if col is None:
    out[cell][row] = 0.0
  else:
    out[cell][row, col] = 0.0
  return out


def choose_op(space: SearchSpace, weights: Params, cell: str, edge: int,
              scorer: Scorer) -> Tuple[int, Dict[str, float]]:
  """(the op of `edge` whose masking gives the lowest score, {op name: score with it masked}); `weights` are the
  projected op weights (`Decisions.project`). Ties: the first of the space's order."""
  best, best_score, scores = None, None, {}
  for o in candidate_ops(space):
    s = float(scorer(_masked(weights, cell, edge, o)))
    scores[space.primitives[o]] = s
    if best_score is None or s < best_score:
      best, best_score = o, s
  return best, scores


def choose_inputs(space: SearchSpace, weights: Params, cell: str, node: int,
                  scorer: Scorer) -> Tuple[List[int], List[Dict[str, Any]]]:
  """(the input edges of `node` kept, the rounds): each round masks each remaining input edge whole, scores it,
  and drops the one whose masking gives the highest score (ties: the last), until ``inputs_per_node`` remain.
  Every round scores `weights` as given (the released code keeps the dropped edges in until the node is
  decided)."""
  eids = list(node_inputs(space)[node])
  rounds = []
  while len(eids) > space.inputs_per_node:
    scores, drop, top = {}, None, None
    for e in eids:
      s = float(scorer(_masked(weights, cell, e)))
      scores[e] = s
      if top is None or s >= top:
        drop, top = e, s
    eids.remove(drop)
    rounds.append({"scores": {str(e): s for e, s in scores.items()}, "dropped": drop})
  return eids, rounds


def decide(event: Event, space: SearchSpace, decisions: Decisions, op_weights: Params,
           scorer: Scorer) -> List[Dict[str, Any]]:
  """Takes `event`'s decisions in order (each scored with the ones before it applied); returns their records."""
  out = []
  for cell, target in event.targets:
    w = decisions.project(op_weights)
    if event.kind == OP:
      op, scores = choose_op(space, w, cell, target, scorer)
      decisions.set_op(cell, target, op)
      out.append({"cell": cell, "edge": target, "op": space.primitives[op], "masked_accuracy": scores})
    else:
      kept, rounds = choose_inputs(space, w, cell, target, scorer)
      decisions.keep_inputs(cell, target, kept)
      out.append({"cell": cell, "node": target, "kept_edges": kept, "rounds": rounds})
  return out


def replay(event: Event, records: Sequence[Dict[str, Any]], space: SearchSpace, decisions: Decisions) -> None:
  """Applies recorded decisions of `event` (a resumed run), checking they are the plan's."""
  got = [(r["cell"], r["edge"] if event.kind == OP else r["node"]) for r in records]
  if got != [tuple(t) for t in event.targets]:
    raise ValueError(f"{RECORD_FILE} holds decisions {got} where the plan has {list(event.targets)}; delete "
                     f"{RECORD_FILE} and {DIRECTORY}/ in the workdir to select again from the search's end")
  for r in records:
    if event.kind == OP:
      decisions.set_op(r["cell"], r["edge"], space.primitive_index(r["op"]))
    else:
      decisions.keep_inputs(r["cell"], r["node"], r["kept_edges"])


def run_plan(plan: Plan, space: SearchSpace, decisions: Decisions, op_weights: Callable[[], Params],
             scorer: Scorer, tune: Callable[[int, int], None] = lambda a, b: None, done: int = 0,
             on_event: Callable[[int, Event, List[Dict[str, Any]]], None] = lambda i, ev, recs: None) -> None:
  """Runs `plan` from its event `done` on: ``tune(a, b)`` fine-tunes epochs a..b-1 up to each event, the event's
  decisions are taken on ``op_weights()`` (the method's current op weights) with `scorer`, then
  ``on_event(index, event, records)``; after the last, ``tune`` to the plan's end."""
  at = plan.events[done - 1].epoch if done else 0
  for i in range(done, len(plan.events)):
    ev = plan.events[i]
    tune(at, ev.epoch)
    at = ev.epoch
    on_event(i, ev, decide(ev, space, decisions, op_weights(), scorer))
  tune(at, plan.tune_epochs)


def select_offline(space: SearchSpace, op_weights: Params, scorer: Scorer, seed: int = 0,
                   edges_per_decision: int = 1) -> Tuple[Any, Decisions, List[Dict[str, Any]]]:
  """PT without fine-tuning on fixed op weights: (architecture, decisions, event records)."""
  plan = make_plan(space, seed, 0, edges_per_decision)
  decisions, records = Decisions(space), []
  run_plan(plan, space, decisions, lambda: op_weights, scorer,
           on_event=lambda i, ev, recs: records.append({"index": i, "kind": ev.kind, "decisions": recs}))
  return space.derive(decisions.project(op_weights)), decisions, records


# --------------------------------------------------------------------------------------------------------
# Fine-tuning between decisions.


def tune_hparams(hp: bilevel.SearchHParams, plan: Plan, lr: Optional[float] = None) -> bilevel.SearchHParams:
  """The tuning's hyperparameters: the search's, with `plan.tune_epochs` epochs and a constant weight lr `lr`
  (None: a tenth of the search's)."""
  lr = hp.w_lr / 10.0 if lr is None else float(lr)
  return dataclasses.replace(hp, epochs=max(plan.tune_epochs, 1), w_lr=lr, w_lr_min=lr)


def project_arch_weights(arch_weights: Params, decided: Params, fixed: Params) -> Params:
  """What `SearchProblem.arch_weights` returns, with the decided rows (``decided[cell]`` (E,) 0/1) replaced by
  their fixed weights (traceable: `decided` and `fixed` may be step inputs); a decided edge also gets
  PC-DARTS' edge weight 1 and GDAS' zero-valued offset 0."""
  out = dict(arch_weights)
  for c, d in decided.items():
    d = jnp.asarray(d) > 0.5
    out[c] = jnp.where(d[:, None], jnp.asarray(fixed[c], out[c].dtype), out[c])
    if out.get(c + "_edge") is not None:
      out[c + "_edge"] = jnp.where(d, jnp.ones_like(out[c + "_edge"]), out[c + "_edge"])
    if out.get(c + "_offset") is not None:
      out[c + "_offset"] = jnp.where(d, jnp.zeros_like(out[c + "_offset"]), out[c + "_offset"])
  return out


def tuning_problem(problem: bilevel.SearchProblem, decided: Params, fixed: Params,
                   at_step: int) -> bilevel.SearchProblem:
  """`problem` with the decided edges' op weights fixed in every pass (`project_arch_weights`; SDARTS-ADV's
  attack sees them fixed too) and the method's schedules read at `at_step` (the search's last step)."""
  at = jnp.asarray(at_step, jnp.int32)
  proj = lambda w: project_arch_weights(w, decided, fixed)
  base_weight_pass, base_regularizer = problem.weight_arch_weights, problem.regularizer

  def weight_pass(alphas, rng, step, loss_fn):
    return proj(base_weight_pass(alphas, rng, at, lambda w: loss_fn(proj(w))))
  return bilevel.SearchProblem(
      apply=problem.apply, arch_weights=lambda alphas, rng, step: proj(problem.arch_weights(alphas, rng, at)),
      regularizer=None if base_regularizer is None else (lambda alphas, w, step: base_regularizer(alphas, w, at)),
      weight_arch_weights=None if base_weight_pass is None else weight_pass)


class TuneState(NamedTuple):
  """The fine-tuning's state: the search state and the decisions as arrays (`Decisions.arrays`)."""
  search: bilevel.SearchState
  decided: Params
  fixed: Params


def tune_step_maker(backend: str, problem: bilevel.SearchProblem, hp: bilevel.SearchHParams,
                    update_alphas: bool, at_step: int, gradients=None, shardings=None):
  """``decisions -> step(TuneState, train_batch, val_batch)``. The fused backend compiles one program that
  takes the decisions as inputs, for every decision; the pass-by-pass backends rebuild their small programs
  per decision around the network gradients they share (`gradients`: the edge chain's; None: one jitted
  autodiff program, made here once)."""
  if backend == "fused":
    def fn(ts: TuneState, tb, vb):
      p = tuning_problem(problem, ts.decided, ts.fixed, at_step)
      state, metrics = steps.search_step(p, hp, ts.search, tb, vb, update_alphas)
      return ts._replace(search=state), metrics
    compiled = parallel.jit_step(fn, shardings, batches=2)
    return lambda decisions: compiled
  if gradients is None:
    gradients = steps.per_pass.jitted_gradients(problem)

  def make(decisions: Decisions):
    inner = steps.make_search_step(tuning_problem(problem, *decisions.arrays(), at_step), hp, update_alphas,
                                   backend=backend, gradients=gradients)

    def step(ts: TuneState, tb, vb):
      state, metrics = inner(ts.search, tb, vb)
      return ts._replace(search=state), metrics
    return step
  return make


class Context(NamedTuple):
  """What a finished search gives `select`.

  backend: the search's step backend ("fused", "per_pass" or "edgewise"); gradients: the edge chain's
    `steps.NetworkGradients` (edgewise), else None; shardings: the fused step's on a mesh, else None.
  batches: ``position -> iterator of (train, val) batches`` from data position `position` (in steps) on.
  score: ``(state, op weights) -> validation accuracy`` on the rows PT scores on.
  derive_key: the key of the method's own `derive` (its architecture is recorded beside PT's).
  """
  space: SearchSpace
  method: Any
  problem: bilevel.SearchProblem
  hp: bilevel.SearchHParams
  backend: str
  batches: Callable[[int], Iterator]
  score: Callable[[Any, Params], float]
  gradients: Any = None
  shardings: Any = None
  derive_key: Any = None
  put_state: Callable[[Any], Any] = lambda s: s
  is_main: bool = True
  progress: Optional[str] = None
  log_every: int = 10
  checkpoint_every: int = 0
  tensorboard: bool = False


def _read_record(path: str) -> Optional[Dict[str, Any]]:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _as_json(x: Any) -> Any:
  return json.loads(json.dumps(x))


def select(config, workdir: str, ctx: Context, state: bilevel.SearchState) -> Tuple[Any, Dict[str, Any]]:
  """DARTS-PT on the finished search `state`: (the architecture, summary fields). Resumes from
  ``workdir/projection/`` and ``workdir/projection.json`` when they hold a run of this config."""
  st = settings(config)
  space, hp = ctx.space, ctx.hp
  plan = make_plan(space, int(config.seed), st.tune_epochs, st.edges_per_decision)
  thp = tune_hparams(hp, plan, st.tune_lr)
  spe, search_steps = hp.steps_per_epoch, hp.epochs * hp.steps_per_epoch
  directory = os.path.join(workdir, DIRECTORY)
  record_path = os.path.join(workdir, RECORD_FILE)
  argmax = space.arch_text(ctx.method.derive(parallel.host(state.alphas), space, key=ctx.derive_key))
  update_alphas = st.update_alphas and ctx.method.update_alphas
  header = {"selection": st.selection, "settings": st._asdict(), "tune_epochs": plan.tune_epochs,
            "tune_lr": thp.w_lr,
            "steps_per_epoch": spe, "edge_order": plan.edge_order,
            "node_order": {c: [int(n) for n in v] for c, v in plan.node_order.items()},
            "candidate_ops": list(space.arch_ops), "genotype_argmax": argmax,
            "plan": [{"epoch": ev.epoch, "kind": ev.kind, "targets": [list(t) for t in ev.targets]}
                     for ev in plan.events]}

  ckpt = wd.Checkpoints(directory)
  # Copies: the tuning step donates its state, and the search's final state is still exported.
  fresh = jax.tree.map(jnp.copy, state._replace(w_opt=bilevel.weight_optimizer(thp).init(state.params),
                                                step=jnp.zeros((), jnp.int32)))
  tstate, start, elapsed = ckpt.restore_or_init(ctx.put_state(TuneState(fresh, *Decisions(space).arrays())),
                                                lambda t: TuneState(bilevel.SearchState(*t[0]), t[1], t[2]))
  old = _read_record(record_path) or {}
  if old and any(old.get(k) != _as_json(header[k]) for k in ("settings", "plan", "edge_order", "tune_epochs")):
    raise ValueError(f"{record_path} is of another selection than this config's; delete it and {directory}/ "
                     "to select again from the search's end")
  events = [e for e in old.get("events", []) if e["epoch"] * spe <= start]
  decisions = Decisions(space)
  for e in events:
    replay(plan.events[e["index"]], e["decisions"], space, decisions)
  done = len(events)
  if done < len(plan.events) and plan.events[done].epoch * spe < start:
    raise ValueError(f"the checkpoints in {directory} are past the next decision {RECORD_FILE} lacks; delete "
                     f"both to select again from the search's end")

  def write_record(final: Optional[Dict[str, Any]] = None):
    if ctx.is_main:
      wd.write_json(record_path, {**header, "events": events, "tune_seconds": current["elapsed"], **(final or {})})

  log = wd.MetricsLog(directory, resume_step=start, tensorboard=ctx.tensorboard, enabled=ctx.is_main)
  current = {"state": tstate, "elapsed": elapsed, "step": start}
  op_weights = lambda: {k: np.asarray(v, np.float32) for k, v in parallel.host(
      ctx.method.op_weights(current["state"].search.alphas, space)).items()}
  score = lambda w: ctx.score(current["state"].search, w)
  make_step = tune_step_maker(ctx.backend, ctx.problem, thp, update_alphas, search_steps, ctx.gradients,
                              ctx.shardings)

  def tune(a: int, b: int):
    first, last = max(a * spe, current["step"]), b * spe
    if last <= first:
      return
    current["state"] = current["state"]._replace(**dict(zip(("decided", "fixed"), ctx.put_state(
        decisions.arrays()))))
    step = make_step(decisions)

    def on_epoch(at, epoch, s, seconds, epoch_steps, total):
      current["state"] = s
      log.write(at, {"phase": "pt_epoch", "epoch": epoch, "val_acc": score(decisions.project(op_weights())),
                     "decided_edges": int(sum(d.sum() for d in decisions.decided.values())),
                     "seconds_per_step": seconds / max(epoch_steps, 1), "elapsed": total})

    hooks = loop.Hooks(ckpt.save_with_elapsed,
                       lambda pending, at, good: wd.fetch_finite(pending, at, good, ckpt.directory,
                                                                 "parameters at PT fine-tuning"),
                       lambda at, f: log.write(at, loop.step_record(f, "pt_tune", (at - 1) // spe)), on_epoch)
    current["state"], current["elapsed"] = loop.run(
        current["state"], lambda s, i, batch: step(s, *batch), ctx.batches(search_steps + first), hooks,
        start=first, total_steps=last, steps_per_epoch=spe, log_every=ctx.log_every,
        elapsed=current["elapsed"], checkpoint_every=ctx.checkpoint_every, directory=ckpt.directory,
        progress=ctx.progress)
    current["step"] = last

  def on_event(i: int, ev: Event, records: List[Dict[str, Any]]):
    events.append({"index": i, "epoch": ev.epoch, "kind": ev.kind, "decisions": records})
    write_record()

  try:
    run_plan(plan, space, decisions, op_weights, score, tune, done, on_event)
  finally:
    log.close()
    ckpt.close()
  final = decisions.project(op_weights())
  arch = space.derive(final)
  alpha_change = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in zip(
      jax.tree.leaves(parallel.host(current["state"].search.alphas)), jax.tree.leaves(parallel.host(state.alphas))))
  result = {"genotype": space.arch_text(arch), "op_weights": {k: v.tolist() for k, v in final.items()},
            "alpha_change": alpha_change, "complete": decisions.complete}
  write_record(result)
  summary = {"selection": st.selection, "genotype_argmax": argmax, "pt_tune_epochs_total": plan.tune_epochs,
             "pt_decisions": len(plan.events), "pt_tune_seconds": current["elapsed"], "pt_record": RECORD_FILE}
  return arch, summary
