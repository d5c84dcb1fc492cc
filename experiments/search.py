"""Architecture search from the command line: `search(config, workdir)` of darts_jax.search.

  python experiments/search.py --config=experiments/configs/fashion_search.py --workdir=/tmp/run

Re-running the same command resumes from the workdir's last checkpoint (also after SIGTERM, which saves the
current step first). All visible devices search data-parallel (`--config.num_devices` to use fewer). Several
hosts: start one process per host with the same command plus

  --coordinator_address=HOST0:PORT --num_processes=N --process_id=I

(the workdir on a filesystem every host sees); process 0 writes the logs and exports.
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from darts_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "search config file (path[:arg])", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (created; resumed if it holds this run)")
flags.mark_flags_as_required(["config", "workdir"])
_PROCESSES = cli.add_process_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  rc = cli.initialize(_PROCESSES)   # before any other JAX call
  return rc or cli.run(lambda: cli.search_and_report(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  sys.exit(app.run(main, flags_parser=cli.parse_flags))
