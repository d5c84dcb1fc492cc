"""Known-answer tasks from the command line: `run_suite` of darts_jax.known_answer.

  python experiments/known_answer.py --config=experiments/configs/known_answer.py:suite --workdir=/tmp/ka_suite

Checks each synthetic task op by op, searches it with every method × seed in
workdir/runs/<task>/<method>/seed<k>/, then writes report.md and report.json into the workdir: per task and
method, on how many seeds the search found the answer, in how many minutes, and what α did. Re-running the
same command skips finished runs and resumes unfinished ones.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from darts_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "suite config file (path[:arg])", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (created; finished runs in it are reused)")
flags.mark_flags_as_required(["config", "workdir"])


def _suite_and_report(config, workdir):
  import os  # pylint: disable=g-import-not-at-top
  from darts_jax import known_answer  # pylint: disable=g-import-not-at-top
  report = known_answer.run_suite(config, workdir)
  for task, entry in report["tasks"].items():
    found = ", ".join(f"{m} {r['found']}/{r['seeds']}" for m, r in entry["methods"].items())
    print(f"{task} (answer {', '.join(entry['answer'])}): {found}")
  print(f"report: {os.path.join(workdir, 'report.md')}, report.json")
  return report


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  return cli.run(lambda: _suite_and_report(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  sys.exit(app.run(main, flags_parser=cli.parse_flags))
