"""Sync batch norm in float64: N processes compute what one process computes (run by tests/test_parallel.py).

``python sync_bn_float64.py OUT.npz STEPS`` (or under ``mpiexec -n N``):
Attention-56 in float64, one fixed global batch of 8 images, STEPS steps of
Nesterov SGD with weight decay, each process on its shard, gradients averaged
with miniran's all-reduce and batch norm synchronised over the processes.
Rank 0 saves the model's parameters and running statistics in OUT.npz and
prints the global batch's loss of every step.
"""

import sys

import numpy as np

import miniran.functional as F
from miniran import Tensor, models, optim
from miniran.distributed import world
from miniran.train import parallel

out, steps = sys.argv[1], int(sys.argv[2])
comm = world()
net = models.attention56(num_classes=10, seed=1)
net.astype(np.float64)
if comm.size > 1:
    parallel.use_sync_batch_norm(net, comm)
opt = optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, flat=True)
rng = np.random.default_rng(0)
x, y = rng.standard_normal((8, 3, 32, 32)), rng.integers(0, 10, 8)
for step in range(steps):
    xs, ys = parallel.shard(x, comm), parallel.shard(y, comm)
    opt.zero_grad()
    loss = F.cross_entropy(net(Tensor(xs)), ys)
    loss.backward()
    parallel.average_gradients(opt, comm)
    opt.step()
    global_loss = comm.sum_values([float(loss.data) * len(ys)])[0] / len(y)
    if comm.is_root:
        print(f"step {step + 1} loss {global_loss!r}")
if comm.is_root:
    np.savez(out, **{name: np.asarray(value) for name, value in net.state_dict().items()})
