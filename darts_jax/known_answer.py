"""Tasks whose right architecture is known by construction: which ops answer them, the check that each op
alone does what its construction says, and the chance that random sampling finds the answer.

A task is a `darts_jax.data.synthetic` dataset searched in the single-edge space (`darts_jax.single_edge`). Its
answer is derived from the candidate ops themselves, not typed in:

* ``receptive_field``: the ops with weights (the others commute with the mirror that maps one class onto the
  other) whose centre output depends on two input pixels `distance` apart on both axes. Which pixels an op's
  output depends on is read from the gradient of its final-network version (BatchNorm with running
  statistics, so that it stays local) on random positive inputs.
* ``dark_pixels``: the ops whose output changes when a dark pixel's normalized value changes from one class's
  to the other's on the normalized background.

`check_task` trains each op alone (its weight fixed at 1) and reports its test accuracy: the answer's ops must
reach `ANSWER_ACCURACY`, every other op at most the cue's accuracy plus `CUE_SLACK` (chance, 0.5, without a
cue). A task that fails this is not a known-answer task. `random_chance` is the exact probability that uniform
random sampling picks an answer op on at least k of n seeds. `misleading_alpha_selection` pits α's argmax against
DARTS-PT's perturbation selection (`darts_jax.projection`) on a trained supernet whose α points at a wrong op.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from darts_jax import bilevel, compare, ops, parallel, projection, single_edge
from darts_jax import methods as methods_lib
from darts_jax import search as search_lib
from darts_jax import workdir as wd
from darts_jax import data as data_lib
from darts_jax.data import synthetic
from darts_jax.search_space import SINGLE_EDGE_SPACE

ANSWER_ACCURACY = 0.97   # test accuracy an answer op must reach alone
CUE_SLACK = 0.05         # how far above the cue's accuracy another op may get (sampling noise of the test split)


def _final_op(name: str, C: int, key):
  op = ops.get_op(name)
  params, stats = op.init(key, C, 1, True, True)
  return lambda x: op.apply(params, stats, x, 1, ops.Ctx(train=False))[0]


@functools.lru_cache(maxsize=None)
def dependency_offsets(name: str, C: int = 4, size: int = 21, draws: int = 3) -> frozenset:
  """The input offsets (dy, dx) the centre output of op `name` depends on (union over `draws` random
  initializations and positive inputs, so that no ReLU hides a tap)."""
  c = size // 2
  mask = np.zeros((size, size), bool)
  for i in range(draws):
    k_op, k_x = jax.random.split(jax.random.PRNGKey(i))
    f = _final_op(name, C, k_op)
    x = jax.random.uniform(k_x, (1, size, size, C), minval=0.1, maxval=1.0)
    g = jax.jit(jax.grad(lambda x: jnp.sum(f(x)[0, c, c])))(x)
    mask |= np.asarray(jnp.any(g[0] != 0, axis=-1))
  return frozenset((int(y) - c, int(x) - c) for y, x in zip(*np.nonzero(mask)))


def sees_pair(name: str, distance: int) -> bool:
  """Whether one output of op `name` depends on two pixels `distance` apart on both axes."""
  offsets = dependency_offsets(name, size=2 * distance + 3)
  return any((dy + distance, dx + distance) in offsets for dy, dx in offsets)


def normalized_values(task: str, params: synthetic.TaskParams) -> Dict[str, float]:
  """The background's and each class's signal value after the train split's per-channel normalization."""
  images, _ = synthetic.generate(task, params, "train")
  mean, std = data_lib.channel_stats(images)
  norm = lambda v: float((v / 255.0 - mean[0]) / std[0])
  if task == "receptive_field":
    return {"background": norm(0), "signal": norm(255)}
  return {"background": norm(200), "class_0": norm(0), "class_1": norm(100)}


def sees_dark_value(name: str, values: Mapping[str, float], C: int = 4) -> bool:
  """Whether op `name`'s output changes when a pixel on the background changes from class 0's value to
  class 1's (values as `normalized_values` gives them)."""
  f = _final_op(name, C, jax.random.PRNGKey(0))
  x = jnp.full((2, 9, 9, C), values["background"], jnp.float32)
  x = x.at[0, 4, 4].set(values["class_0"]).at[1, 4, 4].set(values["class_1"])
  y = f(x)
  return bool(jnp.max(jnp.abs(y[0] - y[1])) > 1e-6)


def answer(task: str, primitives: Sequence[str], params: Optional[synthetic.TaskParams] = None) -> Tuple[str, ...]:
  """The candidate ops that solve `task` by construction (module docstring), in `primitives`' order."""
  params = params or synthetic.TaskParams()
  params.check(task)
  if task == "receptive_field":
    return tuple(p for p in primitives if not ops.is_weight_free(p, 1) and sees_pair(p, params.distance))
  values = normalized_values(task, params)
  return tuple(p for p in primitives if sees_dark_value(p, values))


def check_answer(task: str, primitives: Sequence[str], params: synthetic.TaskParams) -> Tuple[str, ...]:
  """`answer`, with a one-line ValueError when it is empty or holds every choosable op (no known answer)."""
  ans = answer(task, primitives, params)
  choosable = [p for p in primitives if p != "none"]
  if not ans:
    raise ValueError(f"no op of {', '.join(primitives)} solves synthetic:{task} with these parameters "
                     f"(receptive_field: lower synthetic.distance, or add larger kernels to model.primitives)")
  if set(ans) >= set(choosable):
    raise ValueError(f"every op of {', '.join(choosable)} solves synthetic:{task}: the task has no wrong answer")
  return ans


def cue_accuracy(params: synthetic.TaskParams) -> float:
  """The accuracy that reading the cue alone gives (0.5 without a cue)."""
  return max(params.cue, 1.0 - params.cue) if params.cue > 0 else 0.5


def random_chance(num_answer: int, num_choices: int, seeds: int = 3, at_least: int = 2) -> float:
  """P(uniform random sampling of `num_choices` ops picks one of `num_answer` on >= `at_least` of `seeds`)."""
  p = num_answer / num_choices
  return float(sum(math.comb(seeds, k) * p ** k * (1 - p) ** (seeds - k) for k in range(at_least, seeds + 1)))


class TaskCheck(NamedTuple):
  task: str
  answer: Tuple[str, ...]
  accuracies: Dict[str, float]    # test accuracy of each op trained alone
  cue_accuracy: float
  passed: bool
  failures: List[str]             # one line per op that contradicts the construction


def _single_op_network(op: str, C: int, in_channels: int, stem: str):
  space = dataclasses.replace(SINGLE_EDGE_SPACE, primitives=(op,))
  cfg = single_edge.SingleEdgeConfig(C=C, num_classes=2, in_channels=in_channels, space=space, stem=stem)
  return cfg, {"normal": jnp.ones((1, 1), jnp.float32)}


def train_op_alone(op: str, train, test, *, C: int = 8, stem: str = "tile", steps: int = 1000,
                   batch_size: int = 64, lr: float = 0.05, seed: int = 0) -> float:
  """Test accuracy of the single-edge network with op `op` alone (weight 1), trained `steps` steps of SGD
  with momentum 0.9 and a cosine learning rate from `lr` (DARTS' weight optimizer)."""
  cfg, w = _single_op_network(op, C, train.image_shape[-1], stem)
  mean, std = data_lib.channel_stats(train.images)
  hp = bilevel.SearchHParams(epochs=1, steps_per_epoch=steps, w_lr=lr, w_lr_min=0.0)
  tx = optax.chain(optax.clip_by_global_norm(hp.grad_clip), optax.add_decayed_weights(hp.w_weight_decay),
                   optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=hp.w_momentum))
  params = single_edge.init(jax.random.PRNGKey(seed), cfg)
  opt = tx.init(params)

  def loss_fn(p, batch):
    return bilevel.cross_entropy(single_edge.apply(p, batch["image"], w, cfg), batch["label"])

  @jax.jit
  def step(p, o, batch):
    g = jax.grad(loss_fn)(p, batch)
    u, o = tx.update(g, o, p)
    return optax.apply_updates(p, u), o

  batches = data_lib.BatchIterator(train, batch_size, seed=seed, mean=mean, std=std)
  for _ in range(steps):
    params, opt = step(params, opt, next(batches))
  correct = jax.jit(lambda p, b: jnp.sum((jnp.argmax(single_edge.apply(p, b["image"], w, cfg), -1)
                                          == b["label"]) * b["mask"]))
  total = sum(float(correct(params, b)) for b in data_lib.eval_batches(test, 256, mean=mean, std=std))
  return total / len(test)


def check_task(task: str, primitives: Sequence[str], params: Optional[synthetic.TaskParams] = None, *,
               C: int = 8, stem: str = "tile", steps: int = 1000, seed: int = 0) -> TaskCheck:
  """Trains every op of `primitives` alone on `task` and compares with `answer`: the answer's ops must reach
  `ANSWER_ACCURACY`, the others at most `cue_accuracy` + `CUE_SLACK`."""
  params = params or synthetic.TaskParams()
  ans = answer(task, primitives, params)
  train = synthetic.load(synthetic.PREFIX + task, "train", dataclasses.asdict(params))
  test = synthetic.load(synthetic.PREFIX + task, "test", dataclasses.asdict(params))
  cue = cue_accuracy(params)
  accs, failures = {}, []
  for op in primitives:
    accs[op] = train_op_alone(op, train, test, C=C, stem=stem, steps=steps, seed=seed)
    if op in ans and accs[op] < ANSWER_ACCURACY:
      failures.append(f"{op} answers {task} by construction but reached {accs[op]:.3f} < {ANSWER_ACCURACY}")
    if op not in ans and accs[op] > cue + CUE_SLACK:
      failures.append(f"{op} should not answer {task} but reached {accs[op]:.3f} > {cue:.2f} + {CUE_SLACK}")
  return TaskCheck(task, ans, accs, cue, not failures, failures)


# --------------------------------------------------------------------------------------------------------
# DARTS-PT against a misleading α.


def misleading_alpha_selection(config, workdir: str, wrong_op: str, margin: float = 0.5) -> Dict[str, Any]:
  """α's argmax against DARTS-PT's selection (`darts_jax.projection`) when α misleads: the config's search with
  α held at its start (``warmup_epochs`` = ``epochs``: the weights train under near-uniform op weights), then α
  set to 0 but `margin` on `wrong_op`, so that its argmax is `wrong_op`; PT masks each op on the trained
  supernet (``pt_eval_examples`` validation rows). Returns {"answer": the task's answer ops, "argmax", "pt":
  the ops each selection picks, "masked_accuracy": {op: accuracy with it masked}, "op_weights"}."""
  cfg = config.copy_and_resolve_references()
  cfg.warmup_epochs, cfg.selection = cfg.epochs, "argmax"
  search_lib.search(cfg, workdir)
  method = methods_lib.get_method(cfg.method, **dict(cfg.get("method_kwargs", {}) or {})).for_space(cfg.space)
  train, mean, std, w_idx, a_idx = search_lib.load_search_data(cfg)
  model = search_lib.build_model(cfg, method, train.num_classes, train.image_shape)
  hp, _, _, _ = search_lib._schedule(cfg, method, len(w_idx))  # pylint: disable=protected-access
  k_w, k_a, k_state, _ = jax.random.split(jax.random.PRNGKey(cfg.seed), 4)
  template = bilevel.init_state(model.init(k_w), method.init_alphas(k_a, model.space), hp, k_state)
  ckpt = wd.Checkpoints(workdir)
  restored = ckpt.restore({"state": template, "extra": {"elapsed": np.zeros((), np.float64)}})["state"]
  ckpt.close()
  state = bilevel.SearchState(*restored)
  space = model.space
  alphas = np.zeros(space.alpha_shape, np.float32)
  alphas[:, space.primitive_index(wrong_op)] = margin
  alphas = {"normal": jnp.asarray(alphas)}
  weights = {k: np.asarray(v) for k, v in method.op_weights(alphas, space).items()}
  pt = projection.settings(cfg)
  rows = a_idx[:pt.eval_examples] if pt.eval_examples else a_idx
  score = search_lib.val_scorer(cfg, model, train, mean, std, rows, parallel.make_layout(1))
  arch, _, records = projection.select_offline(space, weights, lambda w: score(state, w), seed=int(cfg.seed))
  task = cfg.dataset[len(synthetic.PREFIX):]
  return {"answer": answer(task, space.primitives, synthetic.params_from(cfg.get("synthetic"))),
          "argmax": method.derive(alphas, space), "pt": arch,
          "masked_accuracy": records[0]["decisions"][0]["masked_accuracy"],
          "op_weights": weights["normal"].tolist()}


# --------------------------------------------------------------------------------------------------------
# The suite: every method × seed on every task, after checking each task op by op.


def _answer_weight(op_weights: Sequence[float], primitives: Sequence[str], ans: Sequence[str]) -> float:
  """The answer ops' share of the edge's op weights (rows of FairDARTS' sigmoids and PC-DARTS' scaled softmax
  are normalized first)."""
  w = np.asarray(op_weights, np.float64)
  w = w / max(w.sum(), 1e-12)
  return float(sum(w[primitives.index(a)] for a in ans))


def _final_op_weights(run_dir: str) -> Optional[List[float]]:
  records = [r for r in wd.read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r.get("phase") == "epoch"]
  return records[-1]["op_weights"]["normal"][0] if records else None


def run_suite(config, workdir: str) -> Dict[str, Any]:
  """Checks every task of ``config.tasks`` op by op (``config.check_steps`` > 0), searches it with every
  ``config.methods`` × ``config.seeds`` (``config.search`` with ``dataset``, ``method`` and ``seed`` set; each
  run its own resumable work directory ``runs/<task>/<method>/seed<k>``), and writes ``report.json`` /
  ``report.md``: per task and method, on how many seeds the search found the answer, its search minutes,
  and what α did (each seed's op and the answer ops' final weight share)."""
  os.makedirs(workdir, exist_ok=True)
  params = synthetic.params_from(config.search.get("synthetic"))
  model = dict(config.search.model)
  primitives = single_edge.parse_primitives(model.get("primitives"))
  seeds = [int(s) for s in config.seeds]
  tasks: Dict[str, Any] = {}
  for task in config.tasks:
    ans = check_answer(task, primitives, params)
    entry: Dict[str, Any] = {"answer": list(ans), "methods": {},
                             "random_chance": random_chance(len(ans), len([p for p in primitives if p != "none"]),
                                                            len(seeds), min(2, len(seeds)))}
    if config.get("check_steps"):
      path = os.path.join(workdir, "checks", f"{task}.json")
      key = {"params": dataclasses.asdict(params), "primitives": list(primitives), "C": model["C"],
             "stem": model.get("stem") or "tile", "steps": int(config.check_steps)}
      old = compare.read_json(path)
      if old is None or old.get("key") != key:
        t0 = time.perf_counter()
        chk = check_task(task, primitives, params, C=model["C"], stem=key["stem"], steps=key["steps"])
        old = {"key": key, "accuracies": chk.accuracies, "cue_accuracy": chk.cue_accuracy, "passed": chk.passed,
               "failures": chk.failures, "seconds": time.perf_counter() - t0}
        wd.write_json(path, old)
      entry["check"] = old
    for method in config.methods:
      runs = []
      for seed in seeds:
        run_dir = os.path.join(workdir, "runs", task, method, f"seed{seed}")
        cfg = compare.run_config(config.search, dataset=synthetic.PREFIX + task, method=method, seed=seed)
        summary = compare.finished_summary(run_dir, cfg.to_dict(), search_lib.RESUMABLE_KEYS)
        if summary is None:
          summary = search_lib.search(cfg, run_dir)
        weights = _final_op_weights(run_dir)
        runs.append({"seed": seed, "op": summary["genotype"], "found": summary["genotype"] in ans,
                     "search_seconds": summary["search_seconds"], "val_acc": summary["val_acc"],
                     "op_weights": weights,
                     "answer_weight": _answer_weight(weights, primitives, ans) if weights else None,
                     "alpha_entropy": summary["alpha_entropy"]})
      entry["methods"][method] = {"found": sum(r["found"] for r in runs), "seeds": len(runs),
                                  "minutes": sum(r["search_seconds"] for r in runs) / 60, "runs": runs}
    tasks[task] = entry
  report = {"tasks": tasks, "primitives": list(primitives), "synthetic": dataclasses.asdict(params),
            "search": config.search.to_dict(), "seeds": seeds, "hardware": compare.hardware_info(),
            "code_version": wd.code_version(), "versions": wd.versions()}
  wd.write_json(os.path.join(workdir, "report.json"), report)
  wd.atomic_write(os.path.join(workdir, "report.md"), report_markdown(report))
  return report


def report_markdown(report: Mapping[str, Any]) -> str:
  """The suite's tables: each task's op-by-op check, then per method how often it found the answer."""
  p = report["synthetic"]
  lines = ["# Known-answer tasks", "",
           f"Single-edge space over {', '.join(report['primitives'])}; synthetic parameters {p}; "
           f"seeds {report['seeds']}. Search protocol: `report.json` \"search\".", ""]
  for task, entry in report["tasks"].items():
    lines += [f"## {task}: answer {', '.join(entry['answer'])}", ""]
    chk = entry.get("check")
    if chk:
      lines += [f"Each op trained alone ({chk['key']['steps']} steps), test accuracy; the cue alone gives "
                f"{chk['cue_accuracy']:.2f}. Check {'passed' if chk['passed'] else 'FAILED'}"
                + (": " + "; ".join(chk["failures"]) if chk["failures"] else "") + ".", "",
                "| op | " + " | ".join(chk["accuracies"]) + " |", "|---|" + "---|" * len(chk["accuracies"]),
                "| test acc | " + " | ".join(f"{v:.3f}" for v in chk["accuracies"].values()) + " |", ""]
    lines += [f"Random sampling finds it on >= 2 of {len(report['seeds'])} seeds with probability "
              f"{entry['random_chance']:.3f}.", "",
              "| method | found | minutes | op per seed | answer ops' weight share per seed | α entropy | "
              "supernet val acc |", "|---|---|---|---|---|---|---|"]
    for method, m in entry["methods"].items():
      ops_ = ", ".join(r["op"] for r in m["runs"])
      share = ", ".join("—" if r["answer_weight"] is None else f"{r['answer_weight']:.2f}" for r in m["runs"])
      ent = ", ".join(f"{r['alpha_entropy']:.3f}" for r in m["runs"])
      acc = ", ".join(f"{r['val_acc']:.2f}" for r in m["runs"])
      lines.append(f"| {method} | {m['found']}/{m['seeds']} | {m['minutes']:.1f} | {ops_} | {share} | {ent} | {acc} |")
    lines.append("")
    missed = {method: m for method, m in entry["methods"].items() if 2 * m["found"] <= m["seeds"]}
    if missed:
      lines += ["What α did where a method missed the answer on most seeds (final op weights: softmax, "
                "FairDARTS' sigmoids):", "", "| method | seed | " + " | ".join(report["primitives"]) + " |",
                "|---|---|" + "---|" * len(report["primitives"])]
      for method, m in missed.items():
        for r in m["runs"]:
          w = r.get("op_weights") or []
          lines.append(f"| {method} | {r['seed']} | " + " | ".join(f"{v:.3f}" for v in w) + " |")
      lines.append("")
  return "\n".join(lines)
