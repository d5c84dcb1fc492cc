"""Retraining a genotype from scratch from the command line: `train_and_evaluate` of darts_jax.retrain.

  python experiments/retrain.py --config=experiments/configs/fashion_retrain.py --workdir=/tmp/retrain \
      --config.genotype=/tmp/fashion_search/genotype.json

`--config.genotype` takes a registry name (DARTS_V2, ...), a genotype.json/.txt path, Genotype(...) text or
`random` (a uniformly drawn genotype, seeded by --config.seed). Re-running the same command resumes from the
workdir's last checkpoint (also after SIGTERM, which saves the current step first). All visible devices
train data-parallel; several hosts take the same three flags as `experiments/search.py`
(``--coordinator_address``, ``--num_processes``, ``--process_id``).
"""
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from darts_jax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "retrain config file (path[:arg])", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "work directory (created; resumed if it holds this run)")
flags.mark_flags_as_required(["config", "workdir"])
_PROCESSES = cli.add_process_flags()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  rc = cli.initialize(_PROCESSES)   # before any other JAX call
  return rc or cli.run(lambda: cli.retrain_and_report(_CONFIG.value, _WORKDIR.value))


if __name__ == "__main__":
  sys.exit(app.run(main, flags_parser=cli.parse_flags))
