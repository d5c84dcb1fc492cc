"""The architecture-search run: `search(config, workdir)` trains a supernet bilevel and exports the genotype.

One loop serves every method of `darts_jax.methods` and both search spaces. A run writes into its work
directory (see `darts_jax.workdir`): the resolved config, a JSON-lines metrics log (losses, accuracies,
learning rate, α entropy, the genotype after every epoch, seconds per step), TensorBoard events, orbax
checkpoints of the whole state (weights, α, both optimizer states, step, rng; the data position is the step),
and at the end ``alphas.json`` (the final α), ``genotype.json``, ``genotype.txt`` (DARTS text or the NB201
string), ``cells_normal.png/.svg`` and ``cells_reduce.png/.svg`` (pictures of the cells), ``alphas.png/.svg``
(op weights over the epochs) and ``summary.json``. Re-running on the same workdir resumes; NaN/Inf stops the
run and keeps the last good checkpoint. ``hessian_every`` adds the α Hessian's largest eigenvalue to the epoch
records and ``hessian.png/.svg``; ``early_stop="darts_es"`` stops the run by RobustDARTS' rule on it.
``selection="pt"`` / ``"pt_fixed"`` picks the architecture by DARTS-PT's perturbation selection after the
search (`darts_jax.projection`: ``projection.json``, ``projection/``); the method's own architecture is kept in
``summary.json`` as ``genotype_argmax``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from darts_jax import bilevel
from darts_jax import data as data_lib
from darts_jax import exports
from darts_jax import hessian
from darts_jax import loop
from darts_jax import methods as methods_lib
from darts_jax import models
from darts_jax import parallel
from darts_jax import nb201_arch
from darts_jax import projection
from darts_jax import ranking
from darts_jax import steps
from darts_jax import visualize
from darts_jax import workdir as wd
from darts_jax.search_space import get_space

# Config fields a resumed run may change (e.g. a longer log interval). step_backend: every backend computes
# the same step (up to float rounding).
RESUMABLE_KEYS = ("progress", "log_every", "checkpoint_every", "num_devices", "step_backend")


def build_model(config, method: methods_lib.Method, num_classes: int, image_shape,
                mesh_devices: int = 1):
  """The `models.SearchModel` of the config's space (`models.build_supernet`)."""
  return models.build_supernet(get_space(config.space), dict(config.model), num_classes, image_shape,
                                                method.supernet_kwargs, mesh_devices)


def _entropy(op_weights) -> float:
  ent = []
  for v in op_weights.values():
    p = np.asarray(v, np.float64)
    p = p / np.maximum(p.sum(-1, keepdims=True), 1e-12)
    ent.append(-(p * np.log(np.maximum(p, 1e-12))).sum(-1).mean())
  return float(np.mean(ent))


def load_search_data(config):
  """The train split (resized to ``config.image_size`` when set), its per-channel statistics and the train/val
  halves of the paper's search protocol."""
  train = data_lib.load_dataset(config.dataset, "train", config.get("data_dir") or None,
                                synthetic_params=config.get("synthetic"))
  if config.get("subset"):
    train = data_lib.subset(train, int(config.subset), seed=config.seed)
  if config.get("image_size"):
    train = dataclasses.replace(train, images=data_lib.resize_images(train.images, int(config.image_size)))
  mean, std = data_lib.channel_stats(train.images)
  w_idx, a_idx = data_lib.search_split(train, config.train_portion, seed=config.seed)
  if len(w_idx) < config.batch_size or len(a_idx) < config.batch_size:
    raise data_lib.DataError(f"the search split has {len(w_idx)}/{len(a_idx)} train/val examples, fewer than "
                             f"batch_size={config.batch_size}; lower batch_size or use more data")
  return train, mean, std, w_idx, a_idx


STEP_BACKENDS = ("auto", "fused", "per_pass", "edgewise")


def step_backend(config, model, problem, hp, layout) -> str:
  """How the search step runs, from ``config.step_backend``: "fused" (the whole step as one program),
  "per_pass" (one compiled network gradient called for every pass, `steps.per_pass`) or "edgewise"
  (the same with one small program per distinct edge, chained: `steps.edgewise`). "auto": edgewise
  on a CPU, where the chain compiles and runs faster (benchmarks/README.md), fused on GPUs and TPUs and on a
  mesh of several devices; a method whose weight pass perturbs α (SDARTS) runs fused."""
  name = config.get("step_backend") or "auto"
  if name not in STEP_BACKENDS:
    raise ValueError(f"unknown step_backend {name!r}; choose one of {', '.join(STEP_BACKENDS)}")
  passes = steps.supports("per_pass", problem)
  if name == "auto":
    edgewise = jax.default_backend() == "cpu" and steps.edgewise.supports(model.config)
    return "edgewise" if edgewise and passes and layout.num_devices == 1 else "fused"
  if name != "fused":
    if layout.num_devices > 1:
      raise ValueError(f"step_backend={name!r} runs on one device but this run has {layout.num_devices}; "
                       "use 'fused' or 'auto' (the fused step runs on the mesh) or --config.num_devices=1")
    if not passes:
      raise ValueError(f"step_backend={name!r} cannot run a method that perturbs the weight pass's α (SDARTS); "
                       "use 'fused' or 'auto'")
    if name == "edgewise" and not steps.edgewise.supports(model.config):
      raise ValueError(f"step_backend='edgewise' needs the DARTS supernet's edge programs, which the "
                       f"{model.space.name} space has not; use 'per_pass', 'fused' or 'auto'")
  return name


@functools.lru_cache(maxsize=4)
def edge_gradients(cfg):
  """`steps.edgewise.gradients` of a supernet config, made once per config: the steps of one search (with and
  without the α update) share its compiled edge programs."""
  return steps.edgewise.gradients(cfg)


def make_step(backend: str, model, problem, hp, update_alphas: bool = True, shardings=None):
  """The search step of `backend` (a `step_backend` result) for `model` (`build_model`): the edgewise one runs
  the model's edge programs, the others their own gradients."""
  gradients = edge_gradients(model.config) if backend == "edgewise" else None
  return steps.make_search_step(problem, hp, update_alphas=update_alphas, backend=backend, gradients=gradients,
                                shardings=shardings)


class _Batches:
  """The (train, val) batch pairs of the search loop from `start` on: each process reads its own rows of
  every global batch and gets them back as arrays on the mesh."""

  def __init__(self, config, train, mean, std, w_idx, a_idx, start: int, layout, put=None):
    rows = layout.rows(config.batch_size) if jax.process_count() > 1 else None
    make = lambda idx, seed: data_lib.BatchIterator(train, config.batch_size, idx, augment=config.augment,
                                                    seed=seed, mean=mean, std=std, start=(0, start), rows=rows)
    if put is None:
      put = layout.put_batch if layout.num_devices > 1 else True
    self._it = data_lib.prefetch(zip(make(w_idx, 2 * config.seed), make(a_idx, 2 * config.seed + 1)), size=2,
                                 device_put=put)

  def __iter__(self):
    return self

  def __next__(self):
    return next(self._it)

  def close(self):
    self._it.close()


def _schedule(config, method, num_weight_examples: int):
  """(hparams, steps per epoch, total steps, (epochs,) bool: the epochs whose steps leave α untouched) of a
  search; `method` is already `Method.for_space`'s."""
  steps_per_epoch = config.get("steps_per_epoch") or num_weight_examples // config.batch_size
  hp = method.search_hparams(epochs=config.epochs, steps_per_epoch=steps_per_epoch,
                             **bilevel.hparams_overrides(config.get("hparams")))
  warmup = method.warmup_epochs if config.get("warmup_epochs") is None else config.warmup_epochs
  frozen = methods_lib.frozen_epochs(hp.epochs, warmup, method.warmup_stages)
  if not method.update_alphas:
    frozen[:] = True
  return hp, steps_per_epoch, hp.epochs * steps_per_epoch, frozen


def _recorded(hp, frozen) -> Dict[str, Any]:
  """What `summary.json` records of the optimization: every resolved hyperparameter and the frozen-α epochs."""
  return {"hparams": dataclasses.asdict(hp), "alpha_frozen_epochs": [int(e) for e in np.flatnonzero(frozen)]}


def _method(config) -> methods_lib.Method:
  return methods_lib.get_method(config.method, **dict(config.get("method_kwargs", {}) or {})).for_space(
      config.get("space", "darts"))


def _init_state(config, model, method, hp):
  """A seed's initial `SearchState` and the key of its `derive` (RS-WS' and random's derive sample)."""
  k_w, k_a, k_state, k_derive = jax.random.split(jax.random.PRNGKey(config.seed), 4)
  return bilevel.init_state(model.init(k_w), method.init_alphas(k_a, model.space), hp, k_state), k_derive


def _check_finite(ckpt_dir: str, hp, what: str = "parameters at search"):
  return lambda pending, at, good: wd.fetch_finite(pending, at, good, ckpt_dir, what,
                                                   lower={"hparams.w_lr": hp.w_lr, "hparams.a_lr": hp.a_lr})


def _epoch_record(method, space, alphas, key, epoch, val, seconds_per_step, elapsed) -> Dict[str, Any]:
  """The search's per-epoch metrics record: validation loss and accuracy, α's op weights, their entropy and
  the architecture they derive."""
  opw = jax.device_get(method.op_weights(alphas, space))
  return {"phase": "epoch", "epoch": epoch, "val_loss": val[0], "val_acc": val[1], "alpha_entropy": _entropy(opw),
          "genotype": space.arch_text(method.derive(alphas, space, key=key)),
          "op_weights": {k: np.asarray(v).tolist() for k, v in opw.items()},
          "seconds_per_step": seconds_per_step, "elapsed": elapsed}


def curvature_problem(problem, method: methods_lib.Method, space):
  """The problem whose α Hessian `_Curvature` measures: α enters through the method's deterministic op weights
  (`Method.op_weights`: softmax for DARTS, as RobustDARTS; DrNAS' Dirichlet mean, whose samples come from a
  rejection loop with no second derivative; GDAS' softmax, not its hard sample)."""
  return problem._replace(arch_weights=lambda a, rng, step: method.op_weights(a, space))


class _Curvature:
  """Every ``config.hessian_every`` epochs (0: never), the largest eigenvalue of the α Hessian of the validation
  objective (`hessian.largest_eigenvalue`) on the first ``hessian_batches`` validation batches, as the epoch
  record's ``hessian_eigenvalue`` (with ``hessian_iterations`` and ``hessian_converged``). `hvp`: a
  `hessian.make_state_hvp` function to share (the seeds of a multi-seed run share one compiled program); None
  makes one."""

  def __init__(self, config, problem, hp, train, mean, std, val_idx, put, key, hvp=None):
    self.every, self.key = int(config.get("hessian_every") or 0), key
    self.iters = int(config.get("hessian_iters") or 20)
    if self.every:
      it = data_lib.eval_batches(train, config.batch_size, mean=mean, std=std, indices=val_idx)
      self.batches = [put(b) for b, _ in zip(it, range(int(config.get("hessian_batches") or 1)))]
      self.hvp = hvp or hessian.make_state_hvp(problem, hp)

  def __call__(self, epoch: int, state) -> Dict[str, Any]:
    if not self.every or (epoch + 1) % self.every:
      return {}
    top = hessian.largest_eigenvalue(lambda a, v: self.hvp(a, v, state, self.batches), state.alphas,
                                     jax.random.fold_in(self.key, epoch), max_iters=self.iters, tol=1e-3)
    return {"hessian_eigenvalue": top.value, "hessian_iterations": top.iterations,
            "hessian_converged": top.converged}


EARLY_STOPS = ("", "darts_es", "darts_ada")
EARLY_STOP_KEYS = ("window", "delta", "factor", "start_epoch", "ev_freq")
# DARTS-ADA's fields of early_stop_kwargs and the released defaults (RobustDARTS src/search/args.py).
ADA_DEFAULTS = {"mul_factor": 3.0, "max_weight_decay": 243e-4, "extra_rollback_epochs": 0}


def early_stop_settings(config, method: methods_lib.Method) -> Optional[Dict[str, Any]]:
  """`hessian.EarlyStop`'s settings from ``config.early_stop`` ("darts_es", "darts_ada", or "" for none) and
  ``config.early_stop_kwargs`` (window, delta, factor, start_epoch, ev_freq; ev_freq 0 means hessian_every),
  or None without an early stop; a one-line ValueError for settings that cannot run. DARTS-ADA's own fields
  are `ada_settings`'."""
  name = config.get("early_stop") or ""
  if name not in EARLY_STOPS:
    raise ValueError(f"unknown early_stop {name!r}; use 'darts_es' (RobustDARTS' DARTS-ES), 'darts_ada' "
                     "(DARTS-ADA) or '' (none)")
  if not name:
    return None
  every = int(config.get("hessian_every") or 0)
  if every <= 0:
    raise ValueError(f"early_stop={name!r} acts on the α Hessian's eigenvalue, which hessian_every=0 never "
                     "measures; set --config.hessian_every=N (epochs between measurements, e.g. 1)")
  if not method.update_alphas or method.select is not None:
    raise ValueError(f"early_stop={name!r} acts on the architecture α gives, and method {config.method!r} does "
                     "not learn α; drop early_stop or use a gradient method")
  if name == "darts_es" and (config.get("selection") or "argmax") != "argmax":
    raise ValueError(f"early_stop='darts_es' exports an earlier epoch's α, whose weights selection="
                     f"{config.selection!r} would need but the run does not keep; use one of the two")
  kw = {k: v for k, v in dict(config.get("early_stop_kwargs") or {}).items() if v is not None}
  allowed = EARLY_STOP_KEYS + (tuple(ADA_DEFAULTS) if name == "darts_ada" else ())
  unknown = sorted(set(kw) - set(allowed))
  if unknown:
    raise ValueError(f"unknown early_stop_kwargs {', '.join(unknown)} for early_stop={name!r}; use "
                     f"{', '.join(allowed)}")
  return early_stop_rule(kw, every)


def early_stop_rule(kwargs: Dict[str, Any], hessian_every: int) -> Dict[str, Any]:
  """`hessian.EarlyStop`'s settings from early_stop_kwargs-like fields (window, delta, factor, start_epoch,
  ev_freq; None: the rule's default; ev_freq 0: `hessian_every`); a one-line ValueError for ones that cannot
  run. Other fields are ignored."""
  kw = {k: v for k, v in dict(kwargs).items() if k in EARLY_STOP_KEYS and v is not None}
  kw["ev_freq"] = int(kw.get("ev_freq") or hessian_every)
  if kw["ev_freq"] % hessian_every:
    raise ValueError(f"early_stop_kwargs.ev_freq={kw['ev_freq']} is not a multiple of hessian_every="
                     f"{hessian_every}; DARTS-ES reads an eigenvalue every ev_freq epochs, so set ev_freq to "
                     "k·hessian_every")
  if int(kw.get("window", 1)) < 1 or int(kw.get("delta", 1)) < 1 or int(kw.get("start_epoch", 0)) < 0:
    raise ValueError("early_stop_kwargs.window and .delta must be at least 1, start_epoch at least 0")
  return kw


def ada_settings(config) -> Optional[Dict[str, float]]:
  """DARTS-ADA's mul_factor, max_weight_decay and extra_rollback_epochs (``config.early_stop_kwargs`` over the
  released defaults) when ``config.early_stop="darts_ada"``, else None."""
  if (config.get("early_stop") or "") != "darts_ada":
    return None
  kw = {k: v for k, v in dict(config.get("early_stop_kwargs") or {}).items() if v is not None}
  out = {k: type(d)(kw.get(k, d)) for k, d in ADA_DEFAULTS.items()}
  if out["mul_factor"] <= 1 or out["max_weight_decay"] <= 0 or out["extra_rollback_epochs"] < 0:
    raise ValueError("DARTS-ADA needs early_stop_kwargs.mul_factor > 1, max_weight_decay > 0 and "
                     "extra_rollback_epochs >= 0")
  return out


def _without(d: Dict[str, Any], keys: Sequence[str]) -> Dict[str, Any]:
  return {k: v for k, v in d.items() if k not in keys}


def ada_events(records: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """The DARTS-ADA roll-backs of a run's metrics records, oldest first: the last ``ada`` record with the earlier
  ones it carries (a later roll-back may return to an earlier step, whose later records are dropped)."""
  last = [r for r in records if r.get("phase") == "ada"][-1:]
  return [*last[0]["history"], _without(last[0], ("history", "step"))] if last else []


class _Adaptive:
  """DARTS-ADA (RobustDARTS' ``--early_stop 3``): when DARTS-ES fires at epoch t and keeps epoch k, the search
  returns to the state of epoch k - extra_rollback_epochs (its checkpoint, kept for this), multiplies the
  weights' L2 weight decay by mul_factor and goes on from there with the rule as it stood at that epoch; once
  the weight decay has reached max_weight_decay the rule no longer acts and the run ends at its last epoch,
  exporting its final α. Each roll-back is a ``phase: "ada"`` record of metrics.jsonl (the later records of
  the abandoned epochs are dropped, their eigenvalues kept in it), from which a resumed run recovers its
  weight decay.

  The run keeps every checkpoint (a roll-back may return to any epoch). Two departures from the released
  code: it restores a fresh tracker from the roll-back epoch's checkpoint but then keeps feeding the original
  one (a default argument of its recursive ``train_epochs``), where this follows the restore; and its last
  roll-back comes when the weight decay equals max_weight_decay (rounded in log space), where this stops once
  the weight decay reaches it or passes it (a ladder such as 5e-4·3^k never meets 243e-4)."""

  def __init__(self, settings: Dict[str, float], base_weight_decay: float, records: Sequence[Dict[str, Any]]):
    self.settings = settings
    last = [r for r in records if r.get("phase") == "ada"][-1:]
    self.events = ada_events(records)
    self.weight_decay = float(last[0]["weight_decay"]) if last else float(base_weight_decay)
    self.resumed_at = (int(last[0]["step"]), float(last[0]["elapsed"])) if last else None

  @property
  def final(self) -> bool:
    """No further roll-back: the weight decay has reached max_weight_decay."""
    return self.weight_decay >= self.settings["max_weight_decay"] * (1 - 1e-6)

  def rollback_epoch(self, kept_epoch: int) -> int:
    return max(kept_epoch - int(self.settings["extra_rollback_epochs"]), 0)

  def event(self, stop_epoch: int, kept_epoch: int, kept_arch, abandoned: Sequence[Dict[str, Any]],
            elapsed: float) -> Dict[str, Any]:
    """The ``ada`` record of a roll-back (weight decay multiplied), with the earlier ones as its history."""
    self.weight_decay *= self.settings["mul_factor"]
    e = {"phase": "ada", "iteration": len(self.events) + 1, "stop_epoch": stop_epoch, "kept_epoch": kept_epoch,
         "rollback_epoch": self.rollback_epoch(kept_epoch), "weight_decay": self.weight_decay,
         "kept_genotype": kept_arch, "elapsed": elapsed,
         "abandoned_eigenvalues": [[r["epoch"], r.get("hessian_eigenvalue")] for r in abandoned]}
    record = {**e, "history": list(self.events)}
    self.events.append(e)
    return record

  def summary(self) -> Dict[str, Any]:
    return {"ada_settings": dict(self.settings), "ada_rollbacks": [
        {k: e[k] for k in ("iteration", "stop_epoch", "kept_epoch", "rollback_epoch", "weight_decay",
                           "kept_genotype")} for e in self.events],
            "w_weight_decay_final": self.weight_decay}


class _EarlyStopping:
  """DARTS-ES during a search (`hessian.EarlyStop` on `early_stop_settings`; inert when those are None): fed
  each epoch's record (its eigenvalue and genotype) and α, it says when to stop and keeps the α of every
  epoch, so that the export can take the one of the epoch the rule returns. A resumed run `replay`s the
  records of metrics.jsonl (which hold each epoch's α) up to its checkpoint and so reaches the same
  decision."""

  def __init__(self, settings: Optional[Dict[str, Any]], total_epochs: int, name: str = "darts_es"):
    self.settings, self.total_epochs, self.name = settings, total_epochs, name
    self.rule = hessian.EarlyStop(total_epochs=total_epochs, **settings) if settings else None
    self.history: List[Tuple[Dict[str, Any], Any]] = []   # (record, α) of each observed epoch
    self.stop_epoch = None

  @property
  def stopped(self) -> bool:
    return self.stop_epoch is not None

  def annotate(self, record: Dict[str, Any], alphas) -> Dict[str, Any]:
    """`record` with the epoch's α added when an early stop is on (what a resumed run replays)."""
    if self.rule is None:
      return record
    return {**record, "alphas": {k: np.asarray(v).tolist() for k, v in alphas.items()}}

  def observe(self, record: Dict[str, Any], alphas) -> None:
    if self.rule is None or self.stopped:
      return
    epoch, ev = record["epoch"], record.get("hessian_eigenvalue")
    self.history.append((record, alphas))
    if ev is None or (epoch + 1) % self.settings["ev_freq"]:
      return
    self.rule.update(epoch, ev, record["genotype"])
    if epoch != self.rule.total_epochs - 1 and self.rule.check(epoch):
      self.stop_epoch = epoch

  def restart(self, upto_epoch: int) -> None:
    """The rule as it stood after `upto_epoch`, not fired (DARTS-ADA's roll-back)."""
    kept = [(r, a) for r, a in self.history if r["epoch"] <= upto_epoch]
    self.rule = hessian.EarlyStop(total_epochs=self.total_epochs, **self.settings)
    self.history, self.stop_epoch = [], None
    for r, a in kept:
      self.observe(r, a)

  def replay(self, workdir: str, upto_step: int, template) -> None:
    """Observes the epoch records of ``workdir/metrics.jsonl`` logged up to `upto_step`, their α cast to the
    dtypes of `template` (α), and restarts at DARTS-ADA's roll-back records."""
    path = os.path.join(workdir, "metrics.jsonl")
    if self.rule is None or not os.path.exists(path):
      return
    for r in wd.read_metrics(path):
      if r.get("step", 0) > upto_step:
        continue
      if r.get("phase") == "ada":
        self.restart(r["rollback_epoch"])
      elif r.get("phase") == "epoch":
        self.observe(r, {k: np.asarray(v, np.asarray(template[k]).dtype) for k, v in r["alphas"].items()})

  def result(self) -> Optional[Tuple[int, int, Any]]:
    """(the epoch the rule fired at, the epoch whose architecture it keeps, that epoch's α), or None."""
    if not self.stopped:
      return None
    kept = self.rule.stop_epoch
    return self.stop_epoch, kept, next(a for r, a in self.history if r["epoch"] == kept)

  def summary(self) -> Dict[str, Any]:
    if self.rule is None:
      return {}
    if self.name != "darts_es":
      return {"early_stop": self.name, "early_stop_settings": dict(self.settings)}
    stop, kept, _ = self.result() or (None, None, None)
    return {"early_stop": "darts_es", "early_stop_settings": dict(self.settings), "early_stop_epoch": stop,
            "early_stop_kept_epoch": kept}


def ranking_settings(config) -> Optional[Tuple[int, int, Any]]:
  """(cells, top k, the benchmark table's path) of the supernet ranking ``config.ranking_cells`` asks for (0:
  none); a one-line ValueError where it cannot run."""
  n = int(config.get("ranking_cells") or 0)
  if not n:
    return None
  if (config.get("space") or "darts") != "nb201":
    raise ValueError(f"ranking_cells={n} ranks NAS-Bench-201 cells against the benchmark table, but the space is "
                     f"{config.get('space')!r}; set --config.space=nb201 or --config.ranking_cells=0")
  path = nb201_arch.default_benchmark_path()
  if path is None:
    raise ValueError(f"ranking_cells needs the table {nb201_arch.BENCHMARK_FILE}: set DARTS_JAX_BENCHMARK_DIR to "
                     "its folder or --config.ranking_cells=0")
  return n, int(config.get("ranking_top_k") or 0), path


def supernet_ranking(config, workdir, method, model, state, score, is_main: bool = True) -> Dict[str, Any]:
  """The summary's ``ranking`` (`ranking.supernet_ranking` of the final supernet, each cell scored by
  ``score(state, op_weights)``), ``ranking.json`` (every evaluated cell) and ``ranking.png/.svg`` (one-shot
  against table accuracy); {} when not asked for."""
  settings = ranking_settings(config)
  if settings is None:
    return {}
  n, k, path = settings
  bench = nb201_arch.load_benchmark(path)
  opw = np.asarray(jax.device_get(method.op_weights(parallel.host(state.alphas), model.space))["normal"])
  result = ranking.supernet_ranking(lambda w: score(state, w), opw, bench, n, k, config.seed)
  if is_main:
    wd.write_json(os.path.join(workdir, "ranking.json"), result)
    cells, tau = result["cells"], result["sampled"]["kendall_tau"]
    visualize.plot_against_table([visualize.ScatterPanel(
        f"{config.method}: one-shot vs table, τ {tau:.2f} (sampled)" if tau is not None else config.method,
        "supernet one-shot accuracy", [c["one_shot_acc"] * 100 for c in cells], [c["table_acc"] for c in cells],
        [0 if c["sampled"] else 1 for c in cells], ("sampled cells", "α's top k"))],
        os.path.join(workdir, "ranking"), f"{result['dataset']} test accuracy (%)")
  return {"ranking": {key: v for key, v in result.items() if key != "cells"}}


def _ranking_rows(config, a_idx):
  return a_idx[:config.ranking_examples] if config.get("ranking_examples") else a_idx


def search(config, workdir: str) -> Dict[str, Any]:
  """Runs (or resumes) the search `config` describes in `workdir`; returns the summary it exports.

  On several devices (``config.num_devices``, 0: all, over every process) the step runs data-parallel; on
  SIGTERM the run saves a checkpoint of its current step and raises `workdir.Preempted`. With
  ``config.selection`` "pt" or "pt_fixed" the architecture is DARTS-PT's (`projection.select`), not the
  method's derive. With ``config.early_stop="darts_es"`` the run ends when DARTS-ES fires and exports the
  architecture and α of the epoch the rule keeps (`early_stop_settings`)."""
  method = _method(config)
  projection.settings(config)
  ranking_settings(config)
  stop_settings = early_stop_settings(config, method)
  ada_kw = ada_settings(config)
  if (config.get("step_backend") or "auto") not in STEP_BACKENDS:
    raise ValueError(f"unknown step_backend {config.step_backend!r}; choose one of {', '.join(STEP_BACKENDS)}")
  layout = parallel.make_layout(int(config.get("num_devices") or 0))
  layout.check_batch_size(config.batch_size)
  wd.prepare(workdir, config.to_dict(), ignore=RESUMABLE_KEYS, write=layout.is_main)
  try:
    train, mean, std, w_idx, a_idx = load_search_data(config)
    model = build_model(config, method, train.num_classes, train.image_shape, layout.num_devices)
    space, mesh_run = model.space, layout.num_devices > 1
    hp, steps_per_epoch, total_steps, frozen = _schedule(config, method, len(w_idx))
    state, k_derive = _init_state(config, model, method, hp)
    # DARTS-ADA returns to earlier epochs' checkpoints, so it keeps them all.
    ckpt = wd.Checkpoints(workdir, max_to_keep=None if ada_kw else 2)
    state, start, elapsed = ckpt.restore_or_init(layout.put_state(state) if mesh_run else state)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    logged = wd.read_metrics(metrics_path) if ada_kw and os.path.exists(metrics_path) else []
    ada = ada_kw and _Adaptive(ada_kw, hp.w_weight_decay, [r for r in logged if r.get("step", 0) <= start])
    if ada:
      hp = dataclasses.replace(hp, w_weight_decay=ada.weight_decay)
      if ada.resumed_at and ada.resumed_at[0] == start:   # resumed at a roll-back: count the abandoned epochs
        elapsed = max(elapsed, ada.resumed_at[1])
    build_problem = lambda: method.problem(parallel.bn_stats_apply(model.apply, config.get("bn_stats"), layout),
                                           space, hp)
    problem = build_problem()
    program = step_backend(config, model, problem, hp, layout)
    make = lambda problem, update: make_step(program, model, problem, hp, update,
                                             layout.step_shardings() if mesh_run else None)
    put_eval = layout.put_whole_batch if mesh_run else (lambda b: b)
    val_idx = a_idx[:config.eval_examples] if config.get("eval_examples") else a_idx
    stopping = _EarlyStopping(stop_settings, hp.epochs, config.get("early_stop") or "darts_es")
    stopping.replay(workdir, start, parallel.host(state.alphas))

    try:
      while True:   # one pass, or one per DARTS-ADA weight decay
        fns = (make(problem, False) if frozen.any() else None,
               make(problem, True) if not frozen.all() else None)   # by "α steps"
        eval_fn = bilevel.make_eval_step(problem, layout.replicated if mesh_run else None)
        curvature = _Curvature(config, curvature_problem(problem, method, space), hp, train, mean, std, val_idx,
                               put_eval, k_derive)
        log = wd.MetricsLog(workdir, resume_step=start, tensorboard=config.get("tensorboard", True),
                            enabled=layout.is_main)

        def on_epoch(step, epoch, state, seconds, epoch_steps, elapsed, log=log, eval_fn=eval_fn,
                     curvature=curvature):
          val = evaluate(eval_fn, state, train, val_idx, config.batch_size, mean, std, put_eval)
          alphas = parallel.host(state.alphas)
          record = stopping.annotate({**_epoch_record(method, space, alphas, k_derive, epoch, val,
                                                      seconds / max(epoch_steps, 1), elapsed),
                                      **curvature(epoch, state)}, alphas)
          log.write(step, record)
          stopping.observe(record, alphas)

        on_log = lambda step, f, log=log: log.write(step, loop.step_record(f, "search", (step - 1) // steps_per_epoch))
        hooks = loop.Hooks(ckpt.save_with_elapsed, _check_finite(ckpt.directory, hp), on_log, on_epoch)
        acting = lambda: stopping.stopped and not (ada and ada.final)
        state, elapsed = loop.run(
            state, lambda st, i, b, fns=fns: fns[int(not frozen[i // steps_per_epoch])](st, *b),
            _Batches(config, train, mean, std, w_idx, a_idx, start, layout), hooks, start=start,
            total_steps=start if acting() else total_steps, steps_per_epoch=steps_per_epoch,
            log_every=config.log_every, elapsed=elapsed,
            checkpoint_every=int(config.get("checkpoint_every") or 0), directory=ckpt.directory,
            progress=f"search {config.method}" if config.get("progress", True) and layout.is_main else None,
            close=(log.close,) if ada else (log.close, ckpt.close), stop=acting)
        if not (ada and acting()):
          break
        start, state = _roll_back(workdir, ckpt, ada, stopping, state, elapsed, steps_per_epoch, layout)
        hp = dataclasses.replace(hp, w_weight_decay=ada.weight_decay)
        problem = build_problem()
    finally:
      if ada:   # (the loop closes it otherwise)
        ckpt.close()
    early = stopping.result() if not ada else None
    selected, chosen = _pt_select(config, workdir, method, model, problem, hp, state, k_derive, program, layout,
                                  (train, mean, std, w_idx, a_idx), put_eval)
    ranked = supernet_ranking(config, workdir, method, model, state, val_scorer(
        config, model, train, mean, std, _ranking_rows(config, a_idx), layout, put_eval), layout.is_main)
    return export(config, workdir, method, model, Finished(
        state, elapsed, k_derive, program, layout,
        val_scorer(config, model, train, mean, std, val_idx, layout, put_eval),
        {**_recorded(hp, frozen), **chosen, **stopping.summary(), **(ada.summary() if ada else {}), **ranked},
        selected, early))
  finally:
    wd.unlock(workdir)


def _roll_back(workdir, ckpt, ada: _Adaptive, stopping: _EarlyStopping, state, elapsed: float,
               steps_per_epoch: int, layout):
  """DARTS-ADA's roll-back after DARTS-ES fired: (step, state) of the end of the roll-back epoch, whose
  checkpoint is restored. In an order a kill at any point resumes from: the later checkpoints are deleted,
  newest first (a run killed before its ``ada`` record is written retrains from the newest one left and the
  rule fires again), then metrics.jsonl is cut at that step and gets the ``ada`` record (atomic). The rule
  restarts as it stood then; the weight decay is multiplied (`_Adaptive`)."""
  stop, kept, _ = stopping.result()
  back = ada.rollback_epoch(kept)
  at = (back + 1) * steps_per_epoch
  path = os.path.join(workdir, "metrics.jsonl")
  records = wd.read_metrics(path)
  abandoned = [r for r in records if r.get("phase") == "epoch" and r.get("step", 0) > at]
  event = ada.event(stop, kept, stopping.rule.stop_arch, abandoned, elapsed)
  ckpt.delete_after(at)
  if layout.is_main:
    kept_records = [r for r in records if r.get("step", 0) <= at] + [{"step": at, **event}]
    wd.atomic_write(path, "".join(json.dumps(r) + "\n" for r in kept_records))
  restored = ckpt.restore({"state": state, "extra": {"elapsed": np.zeros((), np.float64)}}, at)["state"]
  stopping.restart(back)
  return at, restored if isinstance(restored, bilevel.SearchState) else bilevel.SearchState(*restored)


def _pt_select(config, workdir, method, model, problem, hp, state, derive_key, program, layout, data,
               put_eval=lambda b: b):
  """(architecture, summary fields) of DARTS-PT's selection on the finished search `state` when
  ``config.selection`` asks for it (`projection.select`: fine-tuned with the search's step `program`), else
  (None, {}). `data`: `load_search_data`'s (train, mean, std, weight rows, α rows)."""
  pt = projection.settings(config)
  if not pt.active:
    return None, {}
  train, mean, std, w_idx, a_idx = data
  mesh = layout.num_devices > 1
  ctx = projection.Context(
      space=model.space, method=method, problem=problem, hp=hp, backend=program,
      gradients=edge_gradients(model.config) if program == "edgewise" else None,
      shardings=layout.step_shardings() if mesh else None,
      batches=lambda at: _Batches(config, train, mean, std, w_idx, a_idx, at, layout),
      score=val_scorer(config, model, train, mean, std, a_idx[:pt.eval_examples] if pt.eval_examples else a_idx,
                       layout, put_eval),
      derive_key=derive_key, put_state=layout.put_state if mesh else (lambda s: s), is_main=layout.is_main,
      progress=f"PT {config.method}" if config.get("progress", True) and layout.is_main else None,
      log_every=config.log_every, checkpoint_every=int(config.get("checkpoint_every") or 0),
      tensorboard=config.get("tensorboard", True))
  return projection.select(config, workdir, ctx, state)


def _check_seed_configs(configs):
  """The first of `configs` if they can run as one multi-seed program (one process, the fused step, configs
  that differ in their seed alone); a one-line ValueError otherwise."""
  if jax.process_count() > 1:
    raise ValueError("search_seeds runs in one process; run each seed with search() on a multi-process mesh")
  if any((c.get("step_backend") or "auto") not in ("auto", "fused") for c in configs):
    raise ValueError("search_seeds runs every seed in one fused program; set step_backend to 'auto' or 'fused'")
  base = configs[0]
  if ada_settings(base):
    raise ValueError("early_stop='darts_ada' rolls each run back to its own earlier epochs; run the seeds one by "
                     "one (search(), or compare's multi_seed=False)")
  differ = sorted({k for c in configs for k, v in c.to_dict().items() if base.to_dict().get(k) != v} - {"seed"})
  if differ:
    raise ValueError(f"the seeds' configs differ in {', '.join(differ)}; they may differ in seed alone")
  return base


def _split(tree, n: int):
  """The n seeds' trees of a tree stacked on the seed axis."""
  return [jax.tree.map(lambda x, s=s: x[s], tree) for s in range(n)]


class _SeedHooks:
  """The multi-seed run's `loop.Hooks`: each seed's checkpoints, NaN guard and records in its own workdir, from
  the state stacked on the seed axis. `val(s, state)`: seed s's validation (loss, accuracy); `curvatures`:
  each seed's `_Curvature`, on its own state and validation batches; `stoppings`: each seed's
  `_EarlyStopping`."""

  def __init__(self, configs, ckpts, logs, hp, method, space, steps_per_epoch, derive_keys, val, curvatures,
               stoppings):
    self.configs, self.ckpts, self.logs, self.hp = configs, ckpts, logs, hp
    self.method, self.space, self.steps_per_epoch, self.derive_keys, self.val = (method, space, steps_per_epoch,
                                                                                 derive_keys, val)
    self.curvatures, self.stoppings = curvatures, stoppings

  def seed_states(self, stacked):   # every seed's state on the host, from one transfer of the stacked state
    return [bilevel.SearchState(*t) for t in _split(parallel.host(tuple(stacked)), len(self.configs))]

  def save(self, at_step, stacked, seconds):
    for ck, st in zip(self.ckpts, self.seed_states(stacked)):
      ck.save_with_elapsed(at_step, st, seconds / len(self.configs))

  def check(self, pending, at_step, last_good):
    per_seed = zip(*[_split(parallel.host(m), len(self.configs)) for m in pending])
    return [_check_finite(ck.directory, self.hp, f"parameters at search (seed {c.seed})")(list(ms), at_step,
                                                                                           last_good)
            for ms, ck, c in zip(per_seed, self.ckpts, self.configs)]

  def on_log(self, step, fetched):
    for log, f in zip(self.logs, fetched):
      log.write(step, loop.step_record(f, "search", (step - 1) // self.steps_per_epoch))

  def on_epoch(self, step, epoch, stacked, seconds, epoch_steps, elapsed):
    n = len(self.configs)
    for s, (log, st) in enumerate(zip(self.logs, self.seed_states(stacked))):
      record = self.stoppings[s].annotate({
          **_epoch_record(self.method, self.space, st.alphas, self.derive_keys[s], epoch, self.val(s, st),
                          seconds / max(epoch_steps, 1) / n, elapsed / n),
          **self.curvatures[s](epoch, st)}, st.alphas)
      log.write(step, record)
      self.stoppings[s].observe(record, st.alphas)


def search_seeds(configs: Sequence[Any], workdirs: Sequence[str]) -> List[Dict[str, Any]]:
  """The searches of `configs` (one per seed; they may differ in ``seed`` alone) as one vmapped program
  (`steps.make_multi_seed_step`), the seeds spread over the devices' ``seed`` axis; returns their summaries.

  Each seed gets what `search` would give it: its own data split and order, weights, α and rng, and its own
  work directory with the same files, checkpoints included, so either function can resume it. Seeds resume
  together from checkpoints of one step. Every seed's ``search_seconds`` is its share of the program's time
  (``multi_seed_seconds``: all of it). One process; the fused step (no edge chain). With DARTS-ES each seed
  exports the epoch its rule keeps, as `search` would; the program runs until every seed's rule has fired, so a
  seed that fired early trains on past its stop (its summary's ``steps``).
  """
  base, n = _check_seed_configs(configs), len(configs)
  ranking_settings(base)
  method = _method(base)
  stop_settings = early_stop_settings(base, method)
  layout = parallel.make_layout(int(base.get("num_devices") or 0), seeds=n)
  layout.check_batch_size(base.batch_size)
  for c, d in zip(configs, workdirs):
    wd.prepare(d, c.to_dict(), ignore=RESUMABLE_KEYS)
  try:
    data = [load_search_data(c) for c in configs]
    model = build_model(base, method, data[0][0].num_classes, data[0][0].image_shape, layout.num_devices)
    space = model.space
    hp, steps_per_epoch, total_steps, frozen = _schedule(base, method, len(data[0][3]))
    problem = method.problem(model.apply, space, hp)
    states, derive_keys = zip(*[_init_state(c, model, method, hp) for c in configs])
    ckpts = [wd.Checkpoints(d) for d in workdirs]
    restored = [ck.restore_or_init(st) for ck, st in zip(ckpts, states)]
    if len({r[1] for r in restored}) > 1:
      raise ValueError(f"the seeds' checkpoints are at different steps ({sorted({r[1] for r in restored})}); "
                       "resume them one by one with search()")
    start, elapsed = restored[0][1], sum(r[2] for r in restored)
    stack = lambda trees: jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs]), *trees)
    logs = [wd.MetricsLog(d, resume_step=start, tensorboard=c.get("tensorboard", True))
            for c, d in zip(configs, workdirs)]
    make = lambda update: steps.make_multi_seed_step(problem, hp, update_alphas=update,
                                                     shardings=layout.step_shardings())
    fns = (make(False) if frozen.any() else None, make(True) if not frozen.all() else None)
    eval_fn = bilevel.make_eval_step(problem)
    val_idx = [d[4][:base.eval_examples] if base.get("eval_examples") else d[4] for d in data]
    curved = curvature_problem(problem, method, space)
    hvp = hessian.make_state_hvp(curved, hp) if base.get("hessian_every") else None
    curvatures = [_Curvature(c, curved, hp, train, mean, std, val_idx[s], lambda b: b, derive_keys[s], hvp)
                  for s, (c, (train, mean, std, _, _)) in enumerate(zip(configs, data))]
    stoppings = [_EarlyStopping(stop_settings, hp.epochs) for _ in configs]
    for stopping, d, r in zip(stoppings, workdirs, restored):
      stopping.replay(d, start, parallel.host(r[0].alphas))
    all_stopped = lambda: all(st.stopped for st in stoppings) and stop_settings is not None
    hooks = _SeedHooks(configs, ckpts, logs, hp, method, space, steps_per_epoch, derive_keys,
                       lambda s, st: evaluate(eval_fn, st, data[s][0], val_idx[s], base.batch_size, *data[s][1:3]),
                       curvatures, stoppings)
    iters = [_Batches(c, train, mean, std, w_idx, a_idx, start, layout, put=False)
             for c, (train, mean, std, w_idx, a_idx) in zip(configs, data)]
    batches = ((layout.put_batch(stack([p[0] for p in ps])), layout.put_batch(stack([p[1] for p in ps])))
               for ps in zip(*iters))
    stacked, elapsed = loop.run(
        layout.put_state(stack([r[0] for r in restored])),
        lambda st, i, b: fns[int(not frozen[i // steps_per_epoch])](st, *b), batches,
        loop.Hooks(hooks.save, hooks.check, hooks.on_log, hooks.on_epoch), start=start,
        total_steps=start if all_stopped() else total_steps,
        steps_per_epoch=steps_per_epoch, log_every=base.log_every, elapsed=elapsed,
        checkpoint_every=base.get("checkpoint_every") or 0, directory=", ".join(ck.directory for ck in ckpts),
        close=[it.close for it in iters] + [x.close for x in logs + ckpts], stop=all_stopped)
    finals, one = hooks.seed_states(stacked), parallel.make_layout(1)
    extra = {"multi_seed": n, "multi_seed_seconds": elapsed, "num_devices": layout.num_devices,
             **_recorded(hp, frozen)}
    # DARTS-PT (selection="pt"/"pt_fixed"), seed by seed with the one-device fused step.
    picks = [_pt_select(c, d, method, model, problem, hp, finals[s], derive_keys[s], "fused", one, data[s])
             for s, (c, d) in enumerate(zip(configs, workdirs))]
    ranked = [supernet_ranking(c, d, method, model, finals[s], val_scorer(
        c, model, data[s][0], data[s][1], data[s][2], _ranking_rows(c, data[s][4]), one))
              for s, (c, d) in enumerate(zip(configs, workdirs))]
    return [export(c, d, method, model, Finished(finals[s], elapsed / n, derive_keys[s], "multi_seed", one,
                                                 val_scorer(c, model, train, mean, std, val_idx[s], one),
                                                 {**extra, **stoppings[s].summary(), **picks[s][1], **ranked[s]},
                                                 picks[s][0],
                                                 early_stop=stoppings[s].result()))
            for s, (c, d, (train, mean, std, _, _)) in enumerate(zip(configs, workdirs, data))]
  finally:
    for d in workdirs:
      wd.unlock(d)


def evaluate(eval_fn, state, dataset, indices, batch_size, mean, std, put=lambda b: b):
  """Mean loss and accuracy of the supernet (current α) on `indices` of `dataset`."""
  tot_loss = tot_correct = count = 0.0
  for batch in data_lib.eval_batches(dataset, batch_size, mean=mean, std=std, indices=indices):
    l, c, n = eval_fn(state.params, state.alphas, put(batch), state.rng, state.step)
    tot_loss += float(l)
    tot_correct += float(c)
    count += float(n)
  return tot_loss / max(count, 1), tot_correct / max(count, 1)


class Finished(NamedTuple):
  """A finished search, as `export` reads it: the final state, the search seconds, the key of `derive`, the
  step program's name, the layout it ran on, the extra summary fields, and the supernet's validation
  accuracy under given op weights (``val_score(state, op_weights)``, for methods that select by it);
  `selected`: an architecture chosen otherwise (DARTS-PT's, `projection.select`), exported instead;
  `early_stop`: when DARTS-ES stopped the run, (the stop epoch, the kept epoch, the kept epoch's α), whose α
  and architecture are exported."""
  state: bilevel.SearchState
  elapsed: float
  derive_key: jax.Array
  step_program: str
  layout: Any
  val_score: Callable[[Any, Any], float]
  extra: Dict[str, Any]
  selected: Any = None
  early_stop: Optional[Tuple[int, int, Any]] = None


def val_scorer(config, model, train, mean, std, val_idx, layout, put=lambda b: b):
  """``(state, op_weights) -> accuracy`` of the supernet on the validation rows `val_idx` of `train`."""
  fn = _weights_eval_fn(model.apply, layout.replicated if layout.num_devices > 1 else None)

  def score(state, arch_weights):
    tot = count = 0.0
    for batch in data_lib.eval_batches(train, config.batch_size, mean=mean, std=std, indices=val_idx):
      c, n = fn(state.params, arch_weights, put(batch))
      tot += float(c)
      count += float(n)
    return tot / max(count, 1)
  return score


def export(config, workdir, method, model, run: Finished):
  """Writes the final architecture, its pictures, the α history plot and the summary (process 0 only, after
  checking that every process holds the same α and architecture)."""
  state, layout, key = run.state, run.layout, run.derive_key
  alphas = parallel.host(state.alphas) if run.early_stop is None else run.early_stop[2]
  space = model.space
  if run.selected is not None:
    arch = run.selected
  elif method.select is not None:
    score = lambda w: run.val_score(state, w)
    arch = method.select(key, space, score, config.get("num_candidates", 100)).best
  else:
    arch = method.derive(alphas, space, key=key)
  parallel.check_same_on_all_processes(alphas, space.arch_text(arch), "α or architecture")
  common = {"method": config.method, "space": space.name, "dataset": config.dataset, "seed": config.seed,
            "genotype": space.arch_text(arch), "search_seconds": run.elapsed, "supernet_params": model.num_params,
            # Mean per-edge entropy of the final op weights; ln(num_ops) means α has not moved from uniform.
            "alpha_entropy": _entropy(jax.device_get(method.op_weights(alphas, space))),
            "alpha_entropy_uniform": math.log(space.num_ops),
            "steps": int(parallel.host(state.step)), "step_program": run.step_program,
            "num_devices": layout.num_devices, "num_processes": jax.process_count(),
            "bn_stats": config.get("bn_stats", "global") or "global", **run.extra}
  if not layout.is_main:
    return {**common, "val_acc": None}
  logged = wd.read_metrics(os.path.join(workdir, "metrics.jsonl"))
  records = [r for r in logged if r.get("phase") == "epoch"]
  exports.write_search(workdir, arch, space, alphas, records, run.early_stop and run.early_stop[:2],
                       ada_events(logged))
  if run.early_stop is not None:   # the supernet's accuracy at the kept epoch, as RobustDARTS reports it
    val_acc = next((r["val_acc"] for r in records if r["epoch"] == run.early_stop[1]), None)
  else:
    val_acc = records[-1]["val_acc"] if records else None
  summary = {**common, "val_acc": val_acc,
             "versions": wd.versions(), "code_version": wd.code_version()}
  wd.write_json(os.path.join(workdir, "summary.json"), summary)
  return summary


def _weights_eval_fn(apply, out_sharding=None):
  def fn(params, arch_weights, batch):
    logits = apply(params, batch["image"], arch_weights)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32) * batch["mask"]
    return jnp.sum(correct), jnp.sum(batch["mask"])
  return jax.jit(fn) if out_sharding is None else jax.jit(fn, out_shardings=out_sharding)
