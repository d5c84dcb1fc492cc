"""The DARTS paper's CIFAR-10 evaluation: retraining the searched cell in a 20-cell, C=36 network for 600 epochs.

  python experiments/retrain.py --config=experiments/configs/cifar10_retrain_darts.py --workdir=/tmp/c10_retrain
  python experiments/retrain.py --config=experiments/configs/cifar10_retrain_darts.py:smoke --workdir=/tmp/smoke

Liu et al. (ICLR 2019), Section 3.3 / the released ``cnn/train.py``: the full 50,000-image training set, batch
96, SGD momentum 0.9, lr 0.025 cosine-annealed to 0 over 600 epochs, weight decay 3e-4, gradient clipping 5,
auxiliary tower (weight 0.4), drop path rising linearly to 0.2, Cutout 16, crop (pad 4) + flip. Expected with
the paper's cell (DARTS_V2): 2.76 ± 0.09 % test error (about 97.2 % accuracy), 3.3M parameters; roughly one
GPU-day. Needs the TFDS ``cifar10`` data prepared (``--config.data_dir`` names the TFDS directory). Pass a
searched genotype with ``--config.genotype=/path/genotype.json``. `:smoke` is a tiny real run (a minute on a
CPU).
"""
import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.genotype = "DARTS_V2"     # registry name, genotype.json/.txt path, Genotype(...) text, or "random"
  c.dataset = "cifar10"
  c.data_dir = ""
  c.subset = 0                # 0: all 50,000 training images
  c.test_examples = 0         # 0: the whole 10,000-image test split
  c.augment = True
  c.cutout = 16
  c.batch_size = 96
  c.eval_batch_size = 512   # any size; a multiple of the device count
  c.epochs = 600
  c.steps_per_epoch = 0
  c.eval_every = 1
  c.lr = 0.025
  c.lr_min = 0.0
  c.momentum = 0.9
  c.weight_decay = 3e-4
  c.grad_clip = 5.0
  c.auxiliary = True
  c.auxiliary_weight = 0.4
  c.drop_path_prob = 0.2
  c.model = ml_collections.ConfigDict({"C": 36, "layers": 20})
  c.dw_impl = "auto"
  c.seed = 0
  c.num_devices = 0           # devices of the data-parallel mesh (0: all, over every process)
  c.checkpoint_every = 0      # also checkpoint every this many steps (0: at epoch ends only)
  c.log_every = 50
  c.progress = True
  c.tensorboard = True
  if arg == "smoke":
    c.subset = 256
    c.test_examples = 128
    c.batch_size = 16
    c.eval_batch_size = 64
    c.epochs = 2
    c.steps_per_epoch = 3
    c.model.C = 4
    c.model.layers = 3
    c.log_every = 1
  elif arg:
    raise ValueError(f"unknown config argument {arg!r}; use '' or 'smoke'")
  return c
