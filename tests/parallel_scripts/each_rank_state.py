"""A data-parallel run through ``miniran.train.trainer.train`` that saves each process's model (test_parallel.py).

``mpiexec -n N python each_rank_state.py OUT [--sync-bn]``: a tiny run
(cifar10-sample, 16 images, batch 8, 2 steps, one epoch); at the end of each
epoch, just before rank 0 writes the checkpoint, every process saves its own
model's parameters and buffers in ``OUT/rank{r}.npz``.
"""

import os
import sys

import numpy as np

from miniran.distributed import world
from miniran.train import trainer

out = sys.argv[1]
save_epoch = trainer._save_epoch


def save_every_rank(run, row, stats):
    os.makedirs(out, exist_ok=True)  # rank 0 made it already; the others must not race it
    np.savez(os.path.join(out, f"rank{world().rank}.npz"),
             **{name: np.asarray(value) for name, value in run.model.state_dict().items()})
    save_epoch(run, row, stats)


trainer._save_epoch = save_every_rank
config = trainer.TrainConfig(dataset="cifar10-sample", subset=16, test_subset=10, batch_size=8, max_steps=2,
                             seed=3, out=out, sync_bn="--sync-bn" in sys.argv)
history = trainer.train(config, progress=False, log=lambda *args, **kwargs: None)
print(f"rank {world().rank}: {len(history)} epoch(s), train loss {history[-1]['train_loss']!r}")
