"""Retraining genotypes with seeds under one protocol from the command line: `run_retrain_comparison` of
darts_jax.retrain_compare.

  python experiments/retrain_compare.py --config=experiments/configs/fashion_retrain_compare.py \
      --workdir=runs/retrain_compare

Retrains every genotype × seed in workdir/runs/<name>/seed<k>/, then writes report.md and report.json into the
workdir. Re-running the same command skips finished runs and resumes unfinished ones from their last
checkpoint.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from darts_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "retrain comparison config file (path[:arg])", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (created; finished runs in it are reused)")
flags.mark_flags_as_required(["config", "workdir"])


def _compare_and_report(config, workdir):
  import os  # pylint: disable=g-import-not-at-top
  from darts_jax import retrain_compare  # pylint: disable=g-import-not-at-top
  report = retrain_compare.run_retrain_comparison(config, workdir)
  print(f"ran {len(report['executed_this_call'])} retrain(s) this call; {report['verdict']}")
  print(f"report: {os.path.join(workdir, 'report.md')}, report.json")
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(lambda: _compare_and_report(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  sys.exit(app.run(main, flags_parser=cli.parse_flags))
