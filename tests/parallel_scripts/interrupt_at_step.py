"""Every process of a data-parallel run is interrupted (Ctrl-C) at one step (tests/test_parallel.py).

``mpiexec -n 2 python interrupt_at_step.py OUT STEP CHECKPOINT_EVERY``: a tiny
run of 2 epochs of 4 steps (32 images, batch 8) that writes its checkpoint
every CHECKPOINT_EVERY steps and raises KeyboardInterrupt on every process
after step STEP; the run then ends every process (status 130), and the test
resumes it from the checkpoint on disk.
"""

import sys

from miniran.train import trainer

out, stop, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def on_step(step):
    if step == stop:
        raise KeyboardInterrupt


config = trainer.TrainConfig(dataset="cifar10-sample", subset=32, test_subset=10, batch_size=8, epochs=2,
                             schedule="cosine", checkpoint_every=every, seed=3, out=out)
trainer.train(config, progress=False, log=lambda *args, **kwargs: None, on_step=on_step)
print("the run ended normally, which it should not")
