"""Zero-cost proxies over NAS-Bench-201's cells from the command line: `score_cells` of darts_jax.zero_cost.

  python experiments/zero_cost.py --config=experiments/configs/nb201_zero_cost.py --workdir=/tmp/zc

Writes scores.csv (arch, then one column per proxy), correlations.json and report.md into the workdir;
re-running the same command resumes after the last cell written.
"""
import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from darts_jax import cli
from darts_jax import zero_cost

_CONFIG = config_flags.DEFINE_config_file("config", None, "zero-cost config file (path[:arg])", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (created; resumed if it holds this run)")
flags.mark_flags_as_required(["config", "workdir"])


def _score_and_report(config, workdir):
  summary = zero_cost.score_cells(config, workdir)
  print(zero_cost.report_markdown(summary))
  print(f"scores: {os.path.join(workdir, zero_cost.SCORES)}; report.md, correlations.json")
  return summary


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(lambda: _score_and_report(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  sys.exit(app.run(main, flags_parser=cli.parse_flags))
