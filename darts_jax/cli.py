"""What the `experiments/` entry points share: one-line errors instead of tracebacks, and the final report."""
from __future__ import annotations

import difflib
import os
import re
import sys
from typing import Callable, List, Optional, Sequence

from darts_jax import parallel
from darts_jax import retrain
from darts_jax import search
from darts_jax import workdir as wd
from darts_jax import xla_setup

# Errors a user can fix (bad config/flags, data, genotype, workdir) or must know about (divergence,
# preemption, processes that disagree).
_USER_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, wd.Diverged, wd.Preempted,
                parallel.ProcessMismatch)
PREEMPTED_EXIT = 143   # 128 + SIGTERM, what schedulers expect of a job stopped by SIGTERM


def parse_flags(argv: Sequence[str]) -> List[str]:
  """absl's flag parsing for ``app.run(main, flags_parser=cli.parse_flags)``, with a bad flag as one line
  ``error: ...`` on stderr and exit status 1 instead of a traceback: an unknown config field
  (``--config.nosuchfield=3``, which ml_collections reports as a 50-line AttributeError), a value of the wrong
  type (``--config.epochs=abc``), a config file that cannot be loaded, an unknown or missing flag.

  ``--config.method_kwargs.NAME=VALUE`` sets the search method's option NAME (`methods.get_method`), which the
  config's empty ``method_kwargs`` block cannot declare in advance; VALUE is a Python literal or a string."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  argv, options = _method_options(list(argv))
  saved_argv, sys.argv = sys.argv, argv   # ml_collections reads the config's overrides from sys.argv
  try:
    rest = flags.FLAGS(argv)
    for flag in _config_file_flags(flags.FLAGS):
      config = _loaded(flag.value)
      for name, value in options.get(flag.name, {}).items():
        if "method_kwargs" not in config:
          print(f"error: --{flag.name}.method_kwargs.{name}: {flag.name} has no field 'method_kwargs'",
                file=sys.stderr)
          sys.exit(1)
        with config.unlocked():
          config.method_kwargs[name] = value
    return rest
  except (flags.Error, AttributeError, KeyError, IndexError, OSError) as e:
    msg = _flag_error(flags.FLAGS, argv, e)
    if msg is None:
      raise
  finally:
    sys.argv = saved_argv
  print(f"error: {msg}", file=sys.stderr)
  sys.exit(1)


def _method_options(argv: List[str]):
  """`argv` without its ``--FLAG.method_kwargs.NAME=VALUE`` arguments, and {FLAG: {NAME: value}}."""
  import ast  # pylint: disable=g-import-not-at-top
  rest, options = [], {}
  for arg in argv:
    m = re.match(r"^--?([A-Za-z_]\w*)\.method_kwargs\.([A-Za-z_]\w*)=(.*)$", arg)
    if not m:
      rest.append(arg)
      continue
    try:
      value = ast.literal_eval(m.group(3))
    except (ValueError, SyntaxError):
      value = m.group(3)
    options.setdefault(m.group(1), {})[m.group(2)] = value
  return rest, options


def _config_file_flags(flag_values) -> list:
  """The flags of `flag_values` that ml_collections' DEFINE_config_file defined (``--config``)."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  return [f for name, f in flag_values._flags().items()  # pylint: disable=protected-access
          if name == f.name and isinstance(f.parser, config_flags.ConfigFileFlagParser)]


def _loaded(config):
  """`config` itself; OSError if it stands for a config file that could not be loaded (ml_collections defers
  that error to the config's first use)."""
  from ml_collections.config_flags import config_flags  # pylint: disable=g-import-not-at-top
  if isinstance(config, getattr(config_flags, "_ErrorConfig", ())):
    config.lock()   # any use raises the deferred OSError
  return config


def _last_line(e: BaseException) -> str:
  """A multi-line error message's last line (an embedded traceback's exception) without the exception's type;
  a one-line message as it is."""
  lines = [l.strip() for l in str(e).strip().splitlines() if l.strip()]
  if len(lines) <= 1:
    return lines[0] if lines else type(e).__name__
  return re.sub(r"^[A-Za-z_.]*(Error|Exception): ", "", lines[-1])


def _cli_value(argv: Sequence[str], name: str) -> Optional[str]:
  """The value the last ``--name=V`` or ``--name V`` of `argv` gives, else None."""
  value = None
  for i, arg in enumerate(argv):
    m = re.match(rf"^--?{re.escape(name)}(=(.*))?$", arg)
    if m:
      value = m.group(2) if m.group(1) else (argv[i + 1] if i + 1 < len(argv) else None)
  return value


def _unknown_field(config, name: str, path: str) -> Optional[str]:
  """Why ``--name.path`` (``--config.model.C``) names no field of `config`, else None."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  holder, where = config, name
  for part in path.split("."):
    key, indexed = part.split("[", 1)[0], "[" in part
    if not isinstance(holder, ml_collections.ConfigDict):
      return None   # fields of other objects: left to ml_collections
    if key not in holder:
      keys = sorted(holder.keys())
      close = difflib.get_close_matches(key, keys, n=3)
      if close:
        hint = "; did you mean " + " or ".join(f"--{where}.{k}" for k in close) + "?"
      elif keys:
        hint = f" (its fields: {', '.join(keys)}); fix or drop the flag"
      else:
        hint = (f" (it has none); write --{where}.{key}=VALUE, with '='" if where.endswith(".method_kwargs")
                else f" (it has none); set {where.split('.', 1)[-1]} in the config file")
      return f"--{name}.{path}: {where} has no field {key!r}{hint}"
    if indexed:
      return None   # list entries: left to ml_collections
    holder, where = holder[key], f"{where}.{key}"
  return None


def _flag_error(flag_values, argv: List[str], e: BaseException) -> Optional[str]:
  """The one-line message of a flag-parsing error (None: not one this explains)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections.config_flags import config_path  # pylint: disable=g-import-not-at-top
  for flag in _config_file_flags(flag_values):
    spec = _cli_value(argv, flag.name)
    if spec is None:
      continue
    try:   # the config again (absl keeps no value of a flag whose parsing failed)
      config = _loaded(flag.parser.parse(spec))
    except OSError as load_error:
      return f"--{flag.name}={spec}: cannot load the config file ({_last_line(load_error)}); check the path"
    except (TypeError, ValueError) as load_error:   # get_config's own error
      return f"--{flag.name}={spec}: {_last_line(load_error)}"
    prefix = re.compile(rf"^--?(no)?{re.escape(flag.name)}\.")
    for arg in argv:
      if prefix.match(arg):
        path = arg.split("=", 1)[0].split(".", 1)[1]
        why = _unknown_field(config, flag.name, path)
        if why is not None:
          return why
        if isinstance(e, IndexError) and "[" in path:
          return f"--{flag.name}.{path}: no such list entry ({e}); fix the index"
    first = str(e).splitlines()[0] if str(e) else ""
    m = re.match(rf"^flag --{re.escape(flag.name)}\.(\S+?)=(.*?): (.*)$", first)
    if m and isinstance(e, flags.IllegalFlagValueError):
      try:
        kind = config_path.get_type(m.group(1), config)
        kind = getattr(kind, "__name__", str(kind))
        kind = f"{'an' if kind[:1] in 'aeiou' else 'a'} {kind}"
      except Exception:  # pylint: disable=broad-except
        kind = "a value of the field's type"
      return f"--{flag.name}.{m.group(1)}={m.group(2)}: not {kind} ({m.group(3)}); fix the value"
  if isinstance(e, flags.Error):
    msg = _last_line(e).rstrip(". ")
    return f"{msg[:1].lower()}{msg[1:]}; see --helpshort for the flags"
  return None


def add_process_flags():
  """The absl flags of a multi-process run (unset: one process); pass their values to `initialize`."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  return (flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (multi-process runs)"),
          flags.DEFINE_integer("num_processes", None, "number of processes (multi-process runs)"),
          flags.DEFINE_integer("process_id", None, "this process's index in [0, num_processes)"))


def initialize(process_flags) -> int:
  """Starts `jax.distributed` from `add_process_flags`' values before any other JAX call; 1 on bad flags."""
  try:
    parallel.initialize(*(f.value for f in process_flags))
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


def run(fn: Callable[[], object]) -> int:
  """Runs `fn`; a user-facing error becomes one line on stderr and exit status 1 (2 for divergence, 143 for a
  run stopped by SIGTERM after saving its checkpoint)."""
  xla_setup.enable_compilation_cache()
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint operation at INFO
  try:
    fn()
  except KeyboardInterrupt:
    print("interrupted; re-run the same command to resume from the last checkpoint", file=sys.stderr)
    return 130
  except _USER_ERRORS as e:
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, KeyError):
      msg = f"unknown config field or name {msg}"
    if isinstance(e, wd.Preempted):
      print(msg, file=sys.stderr)
      return PREEMPTED_EXIT
    print(f"error: {msg}", file=sys.stderr)
    return 2 if isinstance(e, wd.Diverged) else 1
  return 0


def search_and_report(config, workdir: str) -> dict:
  summary = search.search(config, workdir)
  if not parallel.is_main():
    return summary
  print(f"genotype: {summary['genotype']}")
  print(f"final α entropy: {summary['alpha_entropy']:.5f} (uniform: {summary['alpha_entropy_uniform']:.5f})")
  print(f"search time: {summary['search_seconds']:.1f} s; supernet val accuracy: {summary['val_acc']}")
  if summary.get("early_stop_epoch") is not None:
    print(f"DARTS-ES stopped the search after epoch {summary['early_stop_epoch']}; exported the architecture "
          f"and α of epoch {summary['early_stop_kept_epoch']}")
  names = [n for n in ("genotype.json", "genotype.txt", "cells_normal.png", "cells_reduce.png", "cell.png",
                        "alphas.png", "hessian.png")
           if os.path.exists(os.path.join(workdir, n))]
  print(f"exports in {workdir}: {', '.join(names)}")
  return summary


def retrain_and_report(config, workdir: str) -> dict:
  summary = retrain.train_and_evaluate(config, workdir)
  if not parallel.is_main():
    return summary
  print(f"test accuracy: {summary['test_acc']:.4f}; parameters: {summary['num_params']:,}; "
        f"train time: {summary['train_seconds']:.1f} s")
  return summary
