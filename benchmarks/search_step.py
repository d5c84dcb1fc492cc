"""Benchmark of the jitted search step: trace+compile seconds, median seconds per step, peak memory.

  python benchmarks/search_step.py                       # the issue's configuration, all modes, default step
  python benchmarks/search_step.py --C=8 --layers=5 --batch=32 --image=28 --in_channels=1 --modes=first_order
  python benchmarks/search_step.py --step_backend=per_pass   # steps.per_pass, every mode
  python benchmarks/search_step.py --step_backend=edgewise   # the same, one program per distinct edge shape
  python benchmarks/search_step.py --step_backend=fused      # one program per step
  python benchmarks/search_step.py --remat=none --compute_dtype=bfloat16   # SupernetConfig's memory options

Without flags it measures the step a search runs by default on this machine (``step_backend=auto``): the
edge chain on a CPU, the fused step elsewhere, with `supernet.SupernetConfig`'s default remat.
  python benchmarks/search_step.py --step_backend=edgewise --noarch_only_programs   # fewer programs

XLA flags are read from the environment as usual (e.g. XLA_FLAGS=--xla_backend_optimization_level=0), so
layouts and flags can be compared with the same script. Prints one Markdown table row per mode.
"""
import os
import resource
import statistics
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from darts_jax import bilevel
from darts_jax import steps
from darts_jax import supernet
from darts_jax.steps import edgewise

_C = flags.DEFINE_integer("C", 16, "initial channels")
_LAYERS = flags.DEFINE_integer("layers", 8, "cells")
_BATCH = flags.DEFINE_integer("batch", 64, "batch size (train and val)")
_IMAGE = flags.DEFINE_integer("image", 32, "image side")
_IN = flags.DEFINE_integer("in_channels", 3, "image channels")
_MODES = flags.DEFINE_list("modes", list(bilevel.HYPERGRADIENTS), "hypergradient modes")
_STEPS = flags.DEFINE_integer("steps", 5, "timed steps after the first")
_DW = flags.DEFINE_string("dw_impl", "auto", "depthwise implementation: auto, shift, loop, chunked or xla")
_BACKEND = flags.DEFINE_enum("step_backend", "auto", ["auto", "fused", "per_pass", "edgewise"],
                             "as the search config's step_backend (auto: edgewise on a CPU, fused elsewhere)")
_REMAT = flags.DEFINE_string("remat", supernet.SupernetConfig.remat, "SupernetConfig.remat")
_POLICY = flags.DEFINE_string("remat_policy", supernet.SupernetConfig.remat_policy, "SupernetConfig.remat_policy")
_DTYPE = flags.DEFINE_string("compute_dtype", supernet.SupernetConfig.compute_dtype, "SupernetConfig.compute_dtype")
_OPT = flags.DEFINE_integer("cpu_opt_level", 1, "edgewise: XLA backend optimization level of the chain's "
                            "programs on a CPU (-1: XLA's default)")
_ARCH_ONLY = flags.DEFINE_bool("arch_only_programs", True, "edgewise: passes that need only the α "
                               "gradient run backward programs without the weight gradients")


def _peak_rss_gb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def backend() -> str:
  if _BACKEND.value == "auto":
    return "edgewise" if jax.default_backend() == "cpu" else "fused"
  return _BACKEND.value


def run_mode(mode: str):
  cfg = supernet.SupernetConfig(C=_C.value, layers=_LAYERS.value, in_channels=_IN.value, dw_impl=_DW.value,
                                remat=_REMAT.value, remat_policy=_POLICY.value, compute_dtype=_DTYPE.value)
  hp = bilevel.SearchHParams(hypergradient=mode, steps_per_epoch=100)
  level = None if _OPT.value < 0 else _OPT.value
  problem = bilevel.SearchProblem(apply=lambda p, x, w: supernet.apply(p, x, w, cfg),
                                  arch_weights=lambda a, rng, step: supernet.softmax_weights(a))
  net = (edgewise.gradients(cfg, cpu_opt_level=level, arch_only_programs=_ARCH_ONLY.value)
         if backend() == "edgewise" else None)
  key = jax.random.PRNGKey(0)
  state = bilevel.init_state(supernet.init(key, cfg), supernet.init_alphas(key, cfg), hp, key)
  shape = (_BATCH.value, _IMAGE.value, _IMAGE.value, _IN.value)
  batch = {"image": jax.random.normal(key, shape), "label": jnp.arange(_BATCH.value) % 10}
  once = backend() != "fused"
  step = steps.make_search_step(problem, hp, backend=backend(), gradients=net)
  t0 = time.perf_counter()
  if once:   # several small programs and one big one: time the first call, less one step, as trace+compile
    state, metrics = step(state, batch, batch)
    jax.block_until_ready(metrics)
    compiled, first = step, time.perf_counter() - t0
  else:
    lowered = step.lower(state, batch, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
  times = []
  for _ in range(_STEPS.value + 1):
    s = time.perf_counter()
    state, metrics = compiled(state, batch, batch)
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - s)
  med = statistics.median(times[1:])
  if once:
    return None, first - med, med, _peak_rss_gb()
  return t1 - t0, t2 - t1, med, _peak_rss_gb()


def main(argv):
  del argv
  print(f"C={_C.value} layers={_LAYERS.value} batch={_BATCH.value} {_IMAGE.value}x{_IMAGE.value}x{_IN.value} "
        f"dw_impl={_DW.value} step_backend={backend()} "
        f"remat={_REMAT.value} remat_policy={_POLICY.value} compute_dtype={_DTYPE.value} "
        f"arch_only_programs={_ARCH_ONLY.value} cpu_opt_level={_OPT.value} "
        f"backend={jax.default_backend()} "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  print("| mode | trace s | compile s | s/step (median) | peak RSS GB |")
  print("|---|---|---|---|---|")
  for mode in _MODES.value:
    tr, co, st, mem = run_mode(mode)
    label = mode if tr is not None else f"{mode} ({backend()})"
    trace = "(in compile)" if tr is None else f"{tr:.1f}"
    print(f"| {label} | {trace} | {co:.1f} | {st:.3f} | {mem:.2f} |", flush=True)


if __name__ == "__main__":
  app.run(main)
