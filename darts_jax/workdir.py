"""The work directory of a run: its config, metrics log, checkpoints and exports, all written atomically.

Layout (search and retrain alike)::

  workdir/config.json        the resolved config; a re-run with a different config is refused
  workdir/metrics.jsonl      one JSON object per logged step/epoch (truncated to the checkpoint on resume)
  workdir/tensorboard/       TensorBoard event files of the same scalars
  workdir/checkpoints/<step> orbax checkpoints of the whole training state (the newest two are kept)
  workdir/checkpoints_damaged/<step>  a checkpoint that failed to restore, moved aside (the run resumed
                             from the previous one)
  workdir/diverged.json      after a NaN/Inf stop: the learning-rate keys the next re-run may change
  workdir/config_changes.jsonl  what a re-run changed in config.json (resumable keys), and from what
  workdir/.lock              held by the one process that runs in the workdir (`lock`), with its pid and host
  workdir/...                exports (genotype.json, genotype.txt, cells.png/.svg, alphas.png, summary.json)

Re-running the same command on the same workdir resumes from the newest checkpoint that restores. One run
at a time: a second process started on a workdir in use is refused in one line naming the first.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import socket
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import jax
import numpy as np

from darts_jax import parallel

DIVERGED_FILE = "diverged.json"   # beside checkpoints/: which config keys a re-run after NaN/Inf may change
LOCK_FILE = ".lock"
_held_locks: Dict[str, int] = {}


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


def _flatten(d: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
  """``{"hparams": {"a_lr": 1}}`` -> ``{"hparams.a_lr": 1}`` (an empty mapping stays a value)."""
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping) and v:
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def lock(workdir: str) -> None:
  """Makes this process the one that runs in `workdir` until it exits or calls `unlock`.

  An exclusive `flock` on ``workdir/.lock``: the kernel drops it when the process ends, however it ends
  (SIGKILL included), so a lock left by a killed run never blocks the re-run that resumes it. The file records
  the holder's pid, host and command for the refusal message. Taking it again in the same process is a no-op.
  Raises `WorkdirError` (one line, naming the holder) when another process holds it.
  """
  path = os.path.abspath(workdir)
  if path in _held_locks:
    return
  os.makedirs(path, exist_ok=True)
  fd = os.open(os.path.join(path, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    try:
      holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
      holder = {}
    os.close(fd)
    who = (f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (started {holder.get('started', '?')}: "
           f"{holder.get('command', '?')})")
    raise WorkdirError(f"{workdir} is in use by {who}; wait for it to finish or use another --workdir") from None
  record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))[:300]}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(record).encode(), 0)
  _held_locks[path] = fd


def unlock(workdir: str) -> None:
  """Releases `lock` (a no-op if this process does not hold it)."""
  fd = _held_locks.pop(os.path.abspath(workdir), None)
  if fd is not None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def prepare(workdir: str, config_dict: Mapping[str, Any], ignore: Iterable[str] = (), write: bool = True) -> bool:
  """Creates `workdir` and records the config; returns True if the workdir already holds this run.

  Raises `WorkdirError` when the workdir holds a run with a different config (keys in `ignore`, e.g. the
  number of epochs to go on for, may differ; a dotted key such as ``hparams.a_lr`` names a nested field).
  After a NaN/Inf stop the learning-rate keys `fetch_finite` recorded in ``diverged.json`` may differ too,
  once. What changed, and from what, is appended to ``config_changes.jsonl``. ``write=False`` (the other
  processes of a multi-process run) only checks. The writing process first takes the workdir's `lock`, which
  it keeps until it exits: one run per workdir, however many processes it has.
  """
  if write:
    lock(workdir)
  path = os.path.join(workdir, "config.json")
  config_dict = _jsonable(config_dict)
  marker = os.path.join(workdir, DIVERGED_FILE)
  diverged = None
  if os.path.exists(marker):   # read before config.json: process 0 rewrites that first, then removes this
    try:
      with open(marker) as f:
        diverged = json.load(f)
    except (OSError, json.JSONDecodeError):
      diverged = None
  if os.path.exists(path):
    with open(path) as f:
      try:
        old = json.load(f)
      except json.JSONDecodeError as e:
        raise WorkdirError(f"{path} is not valid JSON ({e}); use another --workdir") from None
    ignore = set(ignore) | set((diverged or {}).get("may_change", ()))
    skip = lambda k: any(k == i or k.startswith(i + ".") for i in ignore)
    old_flat, new_flat = _flatten(old), _flatten(config_dict)
    changed = sorted(k for k in set(old_flat) | set(new_flat) if old_flat.get(k) != new_flat.get(k))
    diff = [k for k in changed if not skip(k)]
    if diff:
      raise WorkdirError(f"{workdir} holds a run with a different config (differs in: {', '.join(diff)}); "
                         "use a new --workdir or the same config to resume")
    if write:
      if changed:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S"),
                  "changed": {k: [old_flat.get(k), new_flat.get(k)] for k in changed}}
        with open(os.path.join(workdir, "config_changes.jsonl"), "a") as f:
          f.write(json.dumps(record) + "\n")
      atomic_write(path, json.dumps(config_dict, indent=2, sort_keys=True))
      if diverged is not None:
        os.remove(marker)   # this re-run goes on; another NaN/Inf writes it again
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


def _first_line(e: object, limit: int = 160) -> str:
  line = next((l.strip() for l in str(e).splitlines() if l.strip()), type(e).__name__)
  return line if len(line) <= limit else line[:limit - 3] + "..."


class _quiet_orbax:  # pylint: disable=invalid-name
  """Silences what a failing orbax restore prints besides its exception: absl ERROR lines, asyncio's
  "exception was never retrieved" tracebacks of the other arrays' reads, "never awaited" warnings and
  TensorStore's callbacks into the closed event loop (`_drop_closed_loop_callbacks`)."""

  def __enter__(self):
    import logging  # pylint: disable=g-import-not-at-top
    import warnings  # pylint: disable=g-import-not-at-top
    self._loggers = [logging.getLogger(n) for n in ("absl", "asyncio")]
    self._levels = [l.level for l in self._loggers]
    for l in self._loggers:
      l.setLevel(logging.CRITICAL)
    self._warnings = warnings.catch_warnings()
    self._warnings.__enter__()
    warnings.simplefilter("ignore", RuntimeWarning)
    self._hook = sys.unraisablehook
    sys.unraisablehook = _drop_closed_loop_callbacks(self._hook)
    return self

  def __exit__(self, *exc):
    import gc  # pylint: disable=g-import-not-at-top
    if exc[0] is not None:
      exc[1].__traceback__ = None   # drop the failed reads' frames, then collect their futures while quiet
      gc.collect()
      # The rest of the failed reads end later: the hook stays, and asyncio's logger drops what they log.
      asyncio_log = self._loggers[1]
      if not any(isinstance(f, _UnretrievedReads) for f in asyncio_log.filters):
        asyncio_log.addFilter(_UnretrievedReads())
    else:
      sys.unraisablehook = self._hook
    self._warnings.__exit__(None, None, None)
    for l, level in zip(self._loggers, self._levels):
      l.setLevel(level)
    return False


class _UnretrievedReads:
  """A filter of the asyncio logger: drops "Task/Future exception was never retrieved" of the reads of a failed
  orbax restore (the restore itself has raised and been reported)."""

  def filter(self, record) -> bool:
    text = record.getMessage()
    return not ("exception was never retrieved" in text and
                any(w in text for w in ("deserialize", "OCDBT", "tensorstore")))


def _drop_closed_loop_callbacks(previous):
  """An unraisable-exception hook that drops what a failed orbax restore leaves behind and passes the rest to
  `previous`: TensorStore still finishes the reads of the other arrays on its threads and calls back into the
  restore's event loop, closed by then, each callback printing a "RuntimeError: Event loop is closed"
  traceback (hundreds for a search state)."""
  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == "Event loop is closed":
      return
    previous(unraisable)
  return hook


def _restore_error(e: BaseException) -> str:
  """What a failed restore says, short: TensorStore's innermost file and reason when it names one."""
  msg = str(e)
  at = msg.rfind('local file "')
  if at >= 0:
    path, _, reason = msg[at + len('local file "'):].partition('": ')
    return _first_line(f"{path}: {reason.split(' [tensorstore_spec')[0]}", 300)
  return _first_line(f"{type(e).__name__}: {msg}" if msg else type(e).__name__)


class Checkpoints:
  """Orbax checkpoints of a training-state pytree under ``workdir/checkpoints`` (atomic; the newest
  `max_to_keep` kept, None: all).

  With several processes every process calls every method: orbax writes replicated arrays once and
  coordinates the processes itself."""

  def __init__(self, workdir: str, max_to_keep: Optional[int] = 2):
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
    """(state, step, elapsed seconds) of the newest checkpoint that restores, else (`state`, 0, 0.0). `rebuild`
    turns the restored state back into its type (a NamedTuple comes back as a tuple).

    A newer checkpoint that fails to restore (truncated or corrupted files) is reported in one ``warning:``
    line and moved to ``workdir/checkpoints_damaged/<step>``, so the run goes on from the previous one and can
    save that step again; when none restores, `WorkdirError` says so and nothing is moved. With several
    processes every process takes the same decision (a checkpoint is damaged if it failed on any of them)."""
    extra = {"elapsed": np.zeros((), np.float64)}
    damaged = []   # (step, why)
    for step in sorted(self._manager.all_steps(), reverse=True):
      why = None
      try:
        with _quiet_orbax():
          restored = self.restore({"state": state, "extra": extra}, step)
      except Exception as e:  # pylint: disable=broad-except  # orbax/TensorStore raise many kinds
        why = _restore_error(e)
      if not parallel.any_process(why is not None):
        if damaged:
          self._set_aside([s for s, _ in damaged])
          if parallel.is_main():
            steps = " and ".join(str(s) for s, _ in damaged)
            print(f"warning: the checkpoint of step {steps} in {self.directory} is damaged ({damaged[0][1]}); "
                  f"moved it to {self.damaged_directory}, resuming from step {step}", file=sys.stderr)
        return rebuild(restored["state"]), step, float(restored["extra"]["elapsed"])
      damaged.append((step, why or "failed to restore on another process"))
    if damaged:
      steps = ("steps " if len(damaged) > 1 else "step ") + " and ".join(str(s) for s, _ in damaged)
      raise WorkdirError(f"no usable checkpoint in {self.directory}: {steps} failed to restore "
                         f"({damaged[0][1]}); delete {self.directory} to start this run over, or use a new "
                         "--workdir")
    return state, 0, 0.0

  @property
  def damaged_directory(self) -> str:
    return os.path.join(os.path.dirname(self.directory), "checkpoints_damaged")

  def _set_aside(self, steps: Sequence[int]) -> None:
    """Moves the checkpoints of `steps` out of orbax's directory (process 0; all processes wait for it)."""
    if parallel.is_main():
      os.makedirs(self.damaged_directory, exist_ok=True)
      for step in steps:
        target = os.path.join(self.damaged_directory, str(step))
        n = 1
        while os.path.exists(target):
          target, n = os.path.join(self.damaged_directory, f"{step}.{n}"), n + 1
        os.replace(os.path.join(self.directory, str(step)), target)
    parallel.any_process(False)   # a barrier: the move is done before any process reloads the step list
    self._manager.reload()

  def delete_after(self, step: int) -> None:
    """Deletes the checkpoints after `step`, newest first, so that a kill midway leaves the newest remaining
    one to resume from (a run that returns to an earlier step, as DARTS-ADA)."""
    for s in sorted(self._manager.all_steps(), reverse=True):
      if s > step:
        self._manager.delete(s)
    self._manager.reload()

  def save_with_elapsed(self, step: int, state: Any, elapsed: float) -> None:
    """Saves `state` and the run's elapsed seconds (read back by `restore_or_init`)."""
    self.save(step, {"state": state, "extra": {"elapsed": np.asarray(elapsed, np.float64)}})

  def close(self) -> None:
    self._manager.close()


def fetch_finite(pending: Sequence[Mapping[str, Any]], step: int, last_good: int, directory: str,
                 phase: str, advice: str = "", lower: Optional[Mapping[str, float]] = None) -> list:
  """The per-step metrics `pending` (device values; the last one is of `step`) on the host. Raises `Diverged`
  naming the first step whose ``finite`` flag is false and the last good checkpoint (`last_good`, 0: none
  saved yet), which stays in `directory` (the run's ``workdir/checkpoints``).

  lower: the config keys of the learning rates and their values (``{"hparams.a_lr": 3e-4}``): the message
  suggests a tenth of each, and ``workdir/diverged.json`` lets a re-run change exactly these keys (`prepare`)
  to resume from the last good checkpoint.
  """
  fetched = [parallel.host(m) for m in pending]
  for i, m in enumerate(fetched):
    if not bool(m["finite"]):
      bad = step - len(fetched) + i + 1
      kept = (f"the last good checkpoint (step {last_good}) is kept in {directory}" if last_good else
              "no checkpoint was saved before it")
      then = f"to resume from step {last_good}" if last_good else "to start over"
      if lower:
        now = ", ".join(f"{k.rsplit('.', 1)[-1]}={float(v):g}" for k, v in lower.items())
        tenth = lambda v: f"{v / 10:g}" if math.isfinite(v) and v > 0 else "<a finite value>"
        flags_ = " ".join(f"--config.{k}={tenth(float(v))}" for k, v in lower.items())
        what = "lower learning rates" if len(lower) > 1 else "a lower learning rate"
        advice = f"re-run with {what} {then}, e.g. {flags_} (now {now})"
        if parallel.is_main():
          write_json(os.path.join(os.path.dirname(directory), DIVERGED_FILE),
                     {"step": bad, "last_good": last_good, "may_change": list(lower), "values": dict(lower)})
      raise Diverged(f"non-finite loss or {phase} step {bad}; {kept}; {advice or 'lower the learning rates'}")
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


def versions() -> Dict[str, str]:
  """The versions a run's summary records: Python, the libraries, the platform, the JAX devices and backend."""
  import platform  # pylint: disable=g-import-not-at-top
  out = {"python": platform.python_version(), "jax": jax.__version__, "numpy": np.__version__}
  for name in ("jaxlib", "flax", "optax", "orbax.checkpoint", "ml_collections", "matplotlib"):
    try:
      out[name] = str(getattr(__import__(name, fromlist=["__version__"]), "__version__", "?"))
    except ImportError:
      out[name] = "not installed"
  out.update(platform=platform.platform(), devices=", ".join(sorted({d.device_kind for d in jax.devices()})),
             backend=jax.default_backend())
  return out


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

