#!/usr/bin/env python3
"""Rebuild miniran/data/sample/cifar10_sample.npz from the official CIFAR-10 binary files.

    python tools/make_cifar10_sample.py --root ../shared/data/cifar-10-batches-bin

The images are chosen by ``miniran.data.balanced_subset`` with a fixed seed, so
the same files and arguments always give the same images (the .npz bytes may
differ, since zip entries carry a timestamp). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from miniran.data.sample import (  # noqa: E402
    SAMPLE_PATH,
    load_cifar10_sample,
    sample_indices,
    write_cifar10_sample,
)

MAX_BYTES = 16 * 1024 * 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT.parent / "shared" / "data" / "cifar-10-batches-bin"),
                        help="folder with the official files, or the one containing cifar-10-batches-bin")
    parser.add_argument("--out", default=str(SAMPLE_PATH), help="the .npz to write")
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = write_cifar10_sample(args.root, args.out, args.train_per_class, args.test_per_class,
                               seed=args.seed)
    size = out.stat().st_size
    for train in (True, False):
        images, labels = load_cifar10_sample(train=train, path=out)
        counts = ", ".join(str(c) for c in np.bincount(labels, minlength=10))
        print(f"{'train' if train else 'test '}: {images.shape} {images.dtype}, per class [{counts}], "
              f"source indices {sample_indices(train, out)[:5]}...")
    print(f"wrote {out} ({size / 1e6:.2f} MB)")
    if size > MAX_BYTES:
        print(f"error: {out} is larger than {MAX_BYTES / 2**20:.0f} MiB; use fewer images", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
