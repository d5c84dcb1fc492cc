"""Step time and compile time of a comparison's searches, read from their metrics (no new runs).

  python benchmarks/protocol_step_times.py runs/nb201_protocol

For every run under ``WORKDIR/runs/<space>/<method>/seed<k>/search``: seconds per step (median over the epochs
after the first two, whose times include compilation), the first α epoch's extra seconds (its time minus its
steps at that rate: compilation of the α step, or its load from the compile cache when an earlier run of the
same program filled it), α steps, and the run's wall time. Prints one Markdown row per method (mean over
seeds). The searches must have run alone on the machine for the figures to mean anything.
"""
import glob
import json
import os
import statistics
import sys


def _epochs(path):
  with open(path) as f:
    recs = [json.loads(l) for l in f if l.strip()]
  return [r for r in recs if r.get("phase") == "epoch" and r.get("seconds_per_step") is not None]


def run_times(search_dir):
  """{s_per_step, alpha_compile_s, alpha_steps, wall_s} of one search directory."""
  epochs = _epochs(os.path.join(search_dir, "metrics.jsonl"))
  summary = json.load(open(os.path.join(search_dir, "summary.json")))
  frozen = set(summary.get("alpha_frozen_epochs", []))
  steps_per_epoch = summary["hparams"]["steps_per_epoch"]
  rate = statistics.median(r["seconds_per_step"] for r in epochs[2:]) if len(epochs) > 2 else float("nan")
  compile_of = lambda r: r["seconds_per_step"] * steps_per_epoch - rate * steps_per_epoch
  return {"s_per_step": rate,
          "alpha_compile_s": compile_of(next(r for r in epochs if r["epoch"] not in frozen)),
          "alpha_steps": (len(epochs) - len(frozen)) * steps_per_epoch, "wall_s": summary["search_seconds"]}


def main(workdir):
  rows = {}
  for d in sorted(glob.glob(os.path.join(workdir, "runs", "*", "*", "seed*", "search"))):
    if os.path.exists(os.path.join(d, "summary.json")) and os.path.exists(os.path.join(d, "metrics.jsonl")):
      method = d.split(os.sep)[-3]
      try:
        rows.setdefault(method, []).append(run_times(d))
      except (KeyError, StopIteration):
        continue   # the random baseline: no steps
  print("| method | seeds | s/step | first α epoch's extra s | α steps | wall min per run |")
  print("|---|---|---|---|---|---|")
  for method, rs in rows.items():
    m = lambda k: statistics.mean(r[k] for r in rs)
    print(f"| {method} | {len(rs)} | {m('s_per_step'):.3f} | {m('alpha_compile_s'):.1f} "
          f"| {int(m('alpha_steps'))} | {m('wall_s') / 60:.1f} |")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    sys.exit("usage: python benchmarks/protocol_step_times.py WORKDIR (a compare.py work directory)")
  main(sys.argv[1])
