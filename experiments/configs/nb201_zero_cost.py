"""Zero-cost proxies over NAS-Bench-201's cells and their rank correlation with the benchmark table.

  python experiments/zero_cost.py --config=experiments/configs/nb201_zero_cost.py --workdir=/tmp/zc
  python experiments/zero_cost.py --config=experiments/configs/nb201_zero_cost.py:data --workdir=/tmp/zc_data

The default scores synflow (no data, float64, 32×32×3 input as on CIFAR-10) on all 15,625 cells and prints its
Spearman ρ beside the published 0.737 (experiments/results/nb201_zero_cost/ has the measured table and time).
`:data` adds the five data-dependent proxies on one batch of 64 Fashion-MNIST images, for the first
``data_cells`` (12) of 1,000 cells drawn with the seed. Re-running resumes.
Override fields on the command line, e.g. ``--config.cells=all --config.data_cells=0`` for every proxy on
every cell. The cells are split over the local devices; on CPU, XLA runs each device's share on one core, so
give it one virtual device per core (each holds its own working set, up to about 6.5 GB with the
data-dependent proxies):

  XLA_FLAGS=--xla_force_host_platform_device_count=2 python experiments/zero_cost.py \
      --config=experiments/configs/nb201_zero_cost.py:data --workdir=/tmp/zc_all --config.cells=all \
      --config.data_cells=0

Costs per cell: benchmarks/README.md.
"""
import ml_collections

from darts_jax import proxies


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.proxies = "synflow"         # comma-separated names of darts_jax.proxies.PROXIES
  c.cells = "all"               # "all" or a number of cells drawn with the seed
  c.data_cells = 0              # data-dependent proxies on the first this many cells only (0: all)
  c.dataset = "fashion_mnist"   # the data-dependent proxies' batch
  c.data_dir = ""
  c.batch_size = 64
  c.image_size = 32             # synflow's input side when no data-dependent proxy runs
  c.C = 16                      # the benchmark's network: C=16, N=5
  c.N = 5
  c.seed = 0
  c.chunk = 256                 # cells per program call (and per CSV rewrite)
  c.num_devices = 0             # local devices sharing each chunk (0: all)
  c.benchmark = ""              # NATS-Bench topology CSV ("": ../shared/benchmarks or $DARTS_JAX_NB201)
  c.benchmark_dataset = "cifar10"
  c.best_of_n = (10, 100, 1000)
  c.progress = True
  if arg == "data":
    c.proxies = ",".join(proxies.PROXIES)
    c.cells = "1000"
    c.data_cells = 12
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'data'")
  return c
