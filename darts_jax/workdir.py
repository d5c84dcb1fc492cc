"""The work directory of a run: its config, metrics log, checkpoints and exports, all written atomically.

Layout (search and retrain alike)::

  workdir/config.json        the resolved config; a re-run with a different config is refused
  workdir/metrics.jsonl      one JSON object per logged step/epoch (truncated to the checkpoint on resume)
  workdir/tensorboard/       TensorBoard event files of the same scalars
  workdir/checkpoints/<step> orbax checkpoints of the whole training state (the newest two are kept)
  workdir/...                exports (genotype.json, genotype.txt, cells.png/.svg, alphas.png, summary.json)

Re-running the same command on the same workdir resumes from the newest checkpoint.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np


class WorkdirError(ValueError):
  """A work directory that cannot be used for this run (a one-line message says why and what to do)."""


class Diverged(RuntimeError):
  """Training produced NaN/Inf; the last good checkpoint is kept."""


class Preempted(RuntimeError):
  """The run was asked to stop (SIGTERM) and saved a checkpoint of its current step."""


class TerminationWatch:
  """Turns SIGTERM into a request to stop at the next step boundary, so the loop can checkpoint first.

  Use as a context manager around a training loop and poll `requested()` after each step; outside the main
  thread (where Python cannot install signal handlers) it never fires. With several processes `requested()`
  is a collective (every process must poll it each step): all stop at the same step when any was signalled.
  """

  def __init__(self, signals=None):
    import signal  # pylint: disable=g-import-not-at-top
    self._signals = (signal.SIGTERM,) if signals is None else tuple(signals)
    self._old = {}
    self._flag = False
    self.signal_name = None

  def _handle(self, signum, frame):
    del frame
    import signal  # pylint: disable=g-import-not-at-top
    self._flag = True
    self.signal_name = signal.Signals(signum).name

  def __enter__(self):
    import signal  # pylint: disable=g-import-not-at-top
    import threading  # pylint: disable=g-import-not-at-top
    if threading.current_thread() is threading.main_thread():
      for s in self._signals:
        self._old[s] = signal.signal(s, self._handle)
    return self

  def __exit__(self, *exc):
    import signal  # pylint: disable=g-import-not-at-top
    for s, old in self._old.items():
      signal.signal(s, old)
    self._old = {}
    return False

  def requested(self) -> bool:
    from darts_jax import parallel  # pylint: disable=g-import-not-at-top
    return parallel.any_process(self._flag)


def atomic_write(path: str, data: str | bytes) -> None:
  """Writes `data` to `path` through a temporary file and a rename, so readers never see half a file."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data.encode() if isinstance(data, str) else data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def _jsonable(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, jax.Array)):
    x = np.asarray(x)
    return x.item() if x.ndim == 0 else x.tolist()
  if isinstance(x, (np.floating, float)):
    x = float(x)
    return x if math.isfinite(x) else str(x)
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def prepare(workdir: str, config_dict: Mapping[str, Any], ignore: Iterable[str] = (), write: bool = True) -> bool:
  """Creates `workdir` and records the config; returns True if the workdir already holds this run.

  Raises `WorkdirError` when the workdir holds a run with a different config (keys in `ignore`, e.g. the
  number of epochs to go on for, may differ). ``write=False`` (the other processes of a multi-process run)
  only checks.
  """
  path = os.path.join(workdir, "config.json")
  config_dict = _jsonable(config_dict)
  if os.path.exists(path):
    with open(path) as f:
      try:
        old = json.load(f)
      except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}); use another --workdir") from None
    strip = lambda d: {k: v for k, v in d.items() if k not in set(ignore)}
    if strip(old) != strip(config_dict):
      diff = sorted(k for k in set(old) | set(config_dict) if k not in set(ignore) and
                    old.get(k) != config_dict.get(k))
      raise WorkdirError(f"{workdir} holds a run with a different config (differs in: {', '.join(diff)}); "
                         "use a new --workdir or the same config to resume")
    if write:
      atomic_write(path, json.dumps(config_dict, indent=2, sort_keys=True))
    return True
  os.makedirs(workdir, exist_ok=True)
  if write:
    atomic_write(path, json.dumps(config_dict, indent=2, sort_keys=True))
  return False


class MetricsLog:
  """A JSON-lines metrics log beside TensorBoard event files of the same scalars."""

  def __init__(self, workdir: str, resume_step: Optional[int] = None, tensorboard: bool = True,
               enabled: bool = True):
    """``enabled=False`` (the other processes of a multi-process run) writes nothing."""
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._file = self._tb = None
    if not enabled:
      return
    if os.path.exists(self.path):
      # Entries logged after the checkpoint we resume from are replayed by the resumed run: drop them.
      keep = [r for r in read_metrics(self.path) if resume_step is not None and r.get("step", 0) <= resume_step]
      atomic_write(self.path, "".join(json.dumps(r) + "\n" for r in keep))
    self._file = open(self.path, "a")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, record: Mapping[str, Any]) -> None:
    if self._file is None:
      return
    record = {"step": int(step), **_jsonable(dict(record))}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    if self._tb is not None:
      for k, v in record.items():
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[Dict[str, Any]]:
  """The records of a metrics.jsonl file (a torn last line from a killed run is ignored)."""
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        break
  return out


class Checkpoints:
  """Orbax checkpoints of a training-state pytree under ``workdir/checkpoints`` (atomic; newest two kept).

  With several processes every process calls every method: orbax writes replicated arrays once and
  coordinates the processes itself."""

  def __init__(self, workdir: str, max_to_keep: int = 2):
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    self._ocp = ocp
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def save(self, step: int, tree: Any) -> None:
    self._manager.save(int(step), args=self._ocp.args.StandardSave(tree))
    self._manager.wait_until_finished()

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    step = self.latest_step() if step is None else step
    return self._manager.restore(step, args=self._ocp.args.StandardRestore(target))

  def restore_or_init(self, state: Any, rebuild: Callable[[Any], Any] = lambda s: s) -> Tuple[Any, int, float]:
    """(state, step, elapsed seconds) of the newest checkpoint, else (`state`, 0, 0.0). `rebuild` turns the
    restored state back into its type (a NamedTuple comes back as a tuple)."""
    start = self.latest_step() or 0
    if not start:
      return state, 0, 0.0
    extra = {"elapsed": np.zeros((), np.float64)}
    restored = self.restore({"state": state, "extra": extra}, start)
    return rebuild(restored["state"]), start, float(restored["extra"]["elapsed"])

  def save_with_elapsed(self, step: int, state: Any, elapsed: float) -> None:
    """Saves `state` and the run's elapsed seconds (read back by `restore_or_init`)."""
    self.save(step, {"state": state, "extra": {"elapsed": np.asarray(elapsed, np.float64)}})

  def close(self) -> None:
    self._manager.close()


def fetch_finite(pending: Sequence[Mapping[str, Any]], step: int, last_good: int, directory: str,
                 phase: str, advice: str) -> list:
  """The per-step metrics `pending` (device values; the last one is of `step`) on the host. Raises `Diverged`
  naming the first step whose ``finite`` flag is false and the last good checkpoint, which stays in place."""
  from darts_jax import parallel  # pylint: disable=g-import-not-at-top
  fetched = [parallel.host(m) for m in pending]
  for i, m in enumerate(fetched):
    if not bool(m["finite"]):
      bad = step - len(fetched) + i + 1
      raise Diverged(f"non-finite loss or {phase} step {bad}; the last good checkpoint (step {last_good}) "
                     f"is kept in {directory}; {advice}")
  return fetched


class LoopCheckpoints:
  """What a training loop does between its steps besides training, for search and retrain alike.

  It keeps the steps' metrics on the device until `fetch` (which raises `Diverged` naming the first non-finite
  step and the last good checkpoint), checkpoints through `save_fn(step, seconds)` at epoch ends (`save`) and
  every `every` steps, and, when a stop was requested (SIGTERM, `TerminationWatch`), checkpoints the current
  step and raises `Preempted` saying how to resume. Use as a context manager around the loop.

  check_fn: (pending metrics, step, last good step) -> the metrics on the host (e.g. `fetch_finite`).
  """

  def __init__(self, save_fn: Callable[[int, float], None], check_fn: Callable[..., list], start: int,
               total_steps: int, directory: str, every: int = 0):
    self._save_fn, self._check_fn = save_fn, check_fn
    self.total_steps, self.directory, self.every = total_steps, directory, int(every or 0)
    self.last_good = start
    self._pending: list = []
    self._watch = TerminationWatch()

  def __enter__(self):
    self._watch.__enter__()
    return self

  def __exit__(self, *exc):
    return self._watch.__exit__(*exc)

  def record(self, metrics) -> None:
    self._pending.append(metrics)

  def fetch(self, step: int) -> list:
    fetched = self._check_fn(self._pending, step, self.last_good)
    self._pending = []
    return fetched

  def save(self, step: int, seconds: float) -> None:
    self.fetch(step)
    self._save_fn(step, seconds)
    self.last_good = step

  def between_steps(self, step: int, seconds: Callable[[], float]) -> None:
    """After `step` (and its epoch-end work): the periodic checkpoint, and the stop if one was requested."""
    if self.every and step % self.every == 0 and self.last_good != step:
      self.save(step, seconds())
    if self._watch.requested() and step < self.total_steps:
      if self.last_good != step:
        self.save(step, seconds())
      raise Preempted(f"stopped by {self._watch.signal_name or 'a signal to another process'} at step {step} "
                      f"of {self.total_steps}; its checkpoint is in {self.directory}; re-run the same command "
                      "to resume from it")


def write_json(path: str, obj: Any) -> None:
  atomic_write(path, json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def code_version() -> str:
  """The git commit of the darts_jax checkout running this code, with ``+dirty`` if its tracked files have
  uncommitted changes; "unknown" outside a git checkout."""
  import subprocess  # pylint: disable=g-import-not-at-top
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10,
                          check=False)
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                            capture_output=True, text=True, timeout=10, check=False)
  except (OSError, subprocess.SubprocessError):
    return "unknown"
  commit = head.stdout.strip()
  if head.returncode != 0 or not commit:
    return "unknown"
  return commit + ("+dirty" if status.returncode == 0 and status.stdout.strip() else "")

