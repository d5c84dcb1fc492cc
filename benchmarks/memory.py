"""Memory of the search step: XLA's compiled memory analysis, peak RSS and seconds per step, per configuration.

  python benchmarks/memory.py                                   # batch 64, 128, 256 x both modes x all options
  python benchmarks/memory.py --batches=64 --modes=first_order  # the issue's target row first
  python benchmarks/memory.py --remats=none,op --dtypes=float32 --policies=nothing,convs
  python benchmarks/memory.py --step_backend=fused              # the fused step (one program per step)

C=16, 8 layers, 32x32x3 unless told otherwise. Each configuration runs in its own subprocess (so that peak RSS,
`ru_maxrss`, is that configuration's), which compiles the step, runs `--steps` timed steps, reads its peak RSS,
then measures XLA's memory analysis. A subprocess that fails or is killed (out of memory, `--timeout`) shows as
"OOM/failed" in the table. Prints one Markdown row per configuration as it finishes, then the whole table.

XLA columns: for the fused step, its program's temporary + argument bytes
(`jax.jit(...).lower(...).compile().memory_analysis()`). For the edge chain (``step_backend=edgewise``, the CPU default)
the step is several hundred program calls: "largest program" is the largest temporary + argument + output
bytes of any one of its programs, and "live peak" is the largest sum, over the step's program calls, of the
bytes of every live array (`jax.live_arrays()`) plus that program's temporary bytes: what the chain holds at its
fullest. Peak RSS includes the compiled programs, the Python process and allocator slack.
"""
import json
import os
import resource
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

_BATCHES = flags.DEFINE_list("batches", ["64", "128", "256"], "batch sizes (train and val)")
_MODES = flags.DEFINE_list("modes", ["first_order", "second_order_exact"], "hypergradient modes")
_REMATS = flags.DEFINE_list("remats", ["none", "op", "cell"], "SupernetConfig.remat values")
_POLICIES = flags.DEFINE_list("policies", ["nothing"], "SupernetConfig.remat_policy values (remat != none)")
_DTYPES = flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "SupernetConfig.compute_dtype values")
_C = flags.DEFINE_integer("C", 16, "initial channels")
_LAYERS = flags.DEFINE_integer("layers", 8, "cells")
_IMAGE = flags.DEFINE_integer("image", 32, "image side")
_IN = flags.DEFINE_integer("in_channels", 3, "image channels")
_STEPS = flags.DEFINE_integer("steps", 2, "timed steps after the first")
_BACKEND = flags.DEFINE_enum("step_backend", "auto", ["auto", "fused", "edgewise"],
                             "as the search config's step_backend (auto: edgewise on a CPU, fused elsewhere)")
_TIMEOUT = flags.DEFINE_integer("timeout", 1800, "seconds per configuration")
_CHILD = flags.DEFINE_string("child", None, "internal: run one configuration (JSON) and print its result")


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _setup(conf):
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from darts_jax import bilevel, steps, supernet  # pylint: disable=g-import-not-at-top
  from darts_jax.steps import edgewise  # pylint: disable=g-import-not-at-top
  cfg = supernet.SupernetConfig(C=conf["C"], layers=conf["layers"], in_channels=conf["in_channels"],
                                remat=conf["remat"], remat_policy=conf["policy"], compute_dtype=conf["dtype"])
  hp = bilevel.SearchHParams(hypergradient=conf["mode"], steps_per_epoch=100)
  cells = conf["edge_chain"]
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  key = jax.random.PRNGKey(0)
  state = bilevel.init_state(supernet.init(key, cfg), supernet.init_alphas(key, cfg), hp, key)
  shape = (conf["batch"], conf["image"], conf["image"], conf["in_channels"])
  batch = {"image": jax.random.normal(key, shape), "label": jnp.arange(conf["batch"]) % 10}
  step = steps.make_search_step(problem, hp, backend="edgewise" if cells else "fused",
                                gradients=edgewise.gradients(cfg) if cells else None)
  return jax, supernet, step, state, batch


class _Recorder:
  """Wraps the edge chain's programs: memory analysis of each distinct call and the peak of live bytes."""

  def __init__(self, jax, programs):
    self.jax, self.programs = jax, programs
    self.analysis = {}    # signature -> (temp, argument, output) bytes
    self.live_peak = 0

  def _signature(self, name, args):
    leaves, tree = self.jax.tree.flatten(args)
    return name, str(tree), tuple((getattr(x, "shape", None), str(getattr(x, "dtype", x))) for x in leaves)

  def wrap(self, name, fn):
    def call(*args):
      key = self._signature(name, args)
      if key not in self.analysis:
        try:
          m = fn.lower(*args).compile().memory_analysis()
          self.analysis[key] = (m.temp_size_in_bytes, m.argument_size_in_bytes, m.output_size_in_bytes)
        except Exception:   # pylint: disable=broad-except
          self.analysis[key] = (0, 0, 0)
      out = fn(*args)
      self.jax.block_until_ready(out)
      live = sum(a.nbytes for a in self.jax.live_arrays())
      self.live_peak = max(self.live_peak, live + self.analysis[key][0])
      return out
    return call


def child(conf):
  jax, supernet, step, state, batch = _setup(conf)
  t0 = time.perf_counter()
  state, metrics = step(state, batch, batch)
  jax.block_until_ready(metrics)
  first = time.perf_counter() - t0
  times = []
  for _ in range(conf["steps"]):
    t = time.perf_counter()
    state, metrics = step(state, batch, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  result = {"s_per_step": statistics.median(times), "compile_s": first - statistics.median(times),
            "rss_gb": _peak_rss_gb()}
  print("RESULT " + json.dumps(result), flush=True)   # in case the analysis below runs out of memory
  del step, state, metrics
  jax.clear_caches()
  if conf["edge_chain"]:
    from darts_jax.steps import edgewise  # pylint: disable=g-import-not-at-top
    programs = edgewise._cell_programs(1)   # pylint: disable=protected-access
    rec = _Recorder(jax, programs)
    wrapped = edgewise._CellPrograms(*[rec.wrap(n, f)   # pylint: disable=protected-access
                                       for n, f in zip(programs._fields, programs)])
    edgewise._cell_programs = lambda level: wrapped   # pylint: disable=protected-access
    # The step's `grads` closed over the programs when it was made: make it again around the wrapped ones.
    jax, supernet, step, state, batch = _setup(conf)
    rec.live_peak = 0
    state, metrics = step(state, batch, batch)
    jax.block_until_ready(metrics)
    largest = max(rec.analysis.values(), key=sum)
    result.update(xla_largest_gb=sum(largest) / 2**30, xla_live_peak_gb=rec.live_peak / 2**30,
                  programs=len(rec.analysis))
  else:
    m = step.lower(state, batch, batch).compile().memory_analysis()
    result.update(xla_temp_gb=m.temp_size_in_bytes / 2**30, xla_arg_gb=m.argument_size_in_bytes / 2**30)
  print("RESULT " + json.dumps(result), flush=True)


def _fmt(x, spec=".2f"):
  return "—" if x is None else format(x, spec)


def _row(conf, res):
  step = "edge chain" if conf["edge_chain"] else "fused"
  policy = conf["policy"] if conf["remat"] != "none" else "—"
  head = f"| {conf['batch']} | {conf['mode']} | {step} | {conf['remat']} | {policy} | {conf['dtype']} |"
  if res is None:
    return head + " OOM/failed | | | |"
  if "xla_live_peak_gb" not in res and "xla_temp_gb" not in res:
    xla = "OOM/failed (analysis)"
  elif conf["edge_chain"]:
    xla = f"{_fmt(res['xla_live_peak_gb'])} live peak (largest program {_fmt(res['xla_largest_gb'], '.3f')})"
  else:
    xla = f"{_fmt(res['xla_temp_gb'] + res['xla_arg_gb'])} (temp {_fmt(res['xla_temp_gb'])})"
  return head + f" {xla} | {res['rss_gb']:.2f} | {res['s_per_step']:.2f} | {res['compile_s']:.1f} |"


def main(argv):
  del argv
  if _CHILD.value:
    child(json.loads(_CHILD.value))
    return
  import jax  # pylint: disable=g-import-not-at-top
  cells = (jax.default_backend() == "cpu") if _BACKEND.value == "auto" else _BACKEND.value == "edgewise"
  print(f"C={_C.value} layers={_LAYERS.value} {_IMAGE.value}x{_IMAGE.value}x{_IN.value} steps={_STEPS.value} "
        f"backend={jax.default_backend()} XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  header = ("| batch | mode | step | remat | policy | compute dtype | XLA GB | peak RSS GB | s/step | compile s |\n"
            "|---|---|---|---|---|---|---|---|---|---|")
  print(header, flush=True)
  rows = []
  for batch in _BATCHES.value:
    for mode in _MODES.value:
      for remat in _REMATS.value:
        for policy in (_POLICIES.value if remat != "none" else ["nothing"]):
          for dtype in _DTYPES.value:
            conf = dict(batch=int(batch), mode=mode, remat=remat, policy=policy, dtype=dtype, C=_C.value,
                        layers=_LAYERS.value, image=_IMAGE.value, in_channels=_IN.value, steps=_STEPS.value,
                        edge_chain=cells)
            res = None
            try:
              proc = subprocess.run([sys.executable, __file__, "--child=" + json.dumps(conf)],
                                    capture_output=True, text=True, timeout=_TIMEOUT.value, check=False)
              for line in proc.stdout.splitlines():
                if line.startswith("RESULT "):
                  res = {**(res or {}), **json.loads(line[len("RESULT "):])}
              if res is None:
                tail = (proc.stderr or "").strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
                print(f"<!-- {conf}: exit status {proc.returncode}: {tail[0][:200]} -->", flush=True)
            except subprocess.TimeoutExpired:
              print(f"<!-- {conf}: timed out after {_TIMEOUT.value} s -->", flush=True)
            rows.append(_row(conf, res))
            print(rows[-1], flush=True)
  print("\n" + header + "\n" + "\n".join(rows))


if __name__ == "__main__":
  app.run(main)
