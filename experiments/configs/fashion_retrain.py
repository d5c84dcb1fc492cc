"""Retraining a genotype from scratch on Fashion-MNIST, sized for a 2-core CPU (about an hour).

  python experiments/retrain.py --config=experiments/configs/fashion_retrain.py --workdir=/tmp/fashion_retrain \
      --config.genotype=/tmp/fashion_search/genotype.json
  python experiments/retrain.py --config=experiments/configs/fashion_retrain.py:smoke --workdir=/tmp/smoke_rt

The DARTS protocol scaled down: an 8-cell, C=16 network (auxiliary head, weight 0.4; drop path rising to 0.2)
trained on 10,000 training images (28×28×1, crop + flip, no Cutout) for 10 epochs, batch 64, SGD momentum 0.9,
lr 0.025 cosine-annealed to 0 per epoch, weight decay 3e-4, gradient clipping 5; scored on the full 10,000
image test split after every epoch; under an hour on a 2-core CPU (step times: `benchmarks/retrain_step.py`).
`genotype` defaults to DARTS_V2; pass the searched genotype (``--config.genotype=/path/genotype.json``) or
``random`` (with ``--config.seed``) for the random baseline. With ``--config.subset=0 --config.epochs=4
--config.model.C=12 --config.model.layers=6`` (all 60,000 images), expected: 90.49 % test accuracy for the
README's searched genotype, 90.67 % for ``random`` seed 0, 90.93 % for DARTS_V2 ("Measured results").
`:smoke` is a real run of about a minute on a CPU with every artifact written.
"""
import ml_collections


def get_config(arg: str = "") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.genotype = "DARTS_V2"     # registry name, genotype.json/.txt path, Genotype(...) text, or "random"
  c.dataset = "fashion_mnist"
  c.data_dir = ""
  c.subset = 10_000           # training examples used (0: all 60,000)
  c.test_examples = 0         # test examples scored (0: the whole test split)
  c.augment = True            # random crop (pad 4) + horizontal flip
  c.cutout = 0                # Cutout side length (0: off)
  c.batch_size = 64
  c.eval_batch_size = 256
  c.epochs = 10
  c.steps_per_epoch = 0       # 0: one pass over the training examples
  c.eval_every = 1            # epochs between test evaluations (the last epoch is always scored)
  c.lr = 0.025
  c.lr_min = 0.0
  c.momentum = 0.9
  c.weight_decay = 3e-4
  c.grad_clip = 5.0
  c.auxiliary = True
  c.auxiliary_weight = 0.4
  c.drop_path_prob = 0.2
  c.model = ml_collections.ConfigDict({"C": 16, "layers": 8})
  c.dw_impl = "auto"
  c.seed = 0
  c.num_devices = 0           # devices of the data-parallel mesh (0: all, over every process)
  c.checkpoint_every = 0      # also checkpoint every this many steps (0: at epoch ends only)
  c.log_every = 20
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
