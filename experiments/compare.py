"""Comparing search methods under one protocol from the command line: `run_comparison` of darts_jax.compare.

  python experiments/compare.py --config=experiments/configs/fashion_compare.py --workdir=/tmp/compare
  python experiments/compare.py --config=experiments/configs/fashion_compare.py:smoke --workdir=/tmp/cmp_smoke

Runs every (space, method, seed) in workdir/runs/<space>/<method>/seed<k>/, then writes report.md,
report.json and accuracy_over_time.png into the workdir. Re-running the same command skips finished runs and
resumes unfinished ones from their last checkpoint.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from darts_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "comparison config file (path[:arg])", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (created; finished runs in it are reused)")
flags.mark_flags_as_required(["config", "workdir"])


def _compare_and_report(config, workdir):
  import os  # pylint: disable=g-import-not-at-top
  from darts_jax import compare  # pylint: disable=g-import-not-at-top
  report = compare.run_comparison(config, workdir)
  ran = report["executed_this_call"]
  print(f"ran {len(ran)} stage(s) this call ({len(report['runs'])} runs in all); total search time "
        f"{report['reproducibility']['total_search_seconds']:.1f} s")
  print(f"report: {os.path.join(workdir, 'report.md')}, report.json, {report['plot']}")
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(lambda: _compare_and_report(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  sys.exit(app.run(main, flags_parser=cli.parse_flags))
