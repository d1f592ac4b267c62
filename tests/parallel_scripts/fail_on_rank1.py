"""Rank 1 of a data-parallel run raises in ``on_step`` at step 2 (tests/test_parallel.py).

``mpiexec -n 2 python fail_on_rank1.py OUT``: a tiny run of one step per
epoch (8 images, batch 8), so the checkpoint of epoch 1 (step 1) is on disk
when rank 1 fails; every process must end within seconds, with one line.
"""

import sys

from miniran.distributed import world
from miniran.train import trainer


def on_step(step):
    if step == 2 and world().rank == 1:
        raise RuntimeError("a failure made up by the test on rank 1")


config = trainer.TrainConfig(dataset="cifar10-sample", subset=8, test_subset=10, batch_size=8, max_steps=4,
                             seed=3, out=sys.argv[1])
trainer.train(config, progress=False, log=lambda *args, **kwargs: None, on_step=on_step)
print(f"rank {world().rank}: the run ended normally, which it should not")
