"""The ``miniran`` command line: ``train``, ``eval``, ``plot`` and ``demo``.

``python -m miniran train --help`` lists every option.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading

from miniran.train.trainer import SCHEDULES, TrainConfig, TrainingDiverged

DEMO_ARGS = ["--model", "attention56", "--dataset", "cifar10-sample", "--subset", "2000",
             "--epochs", "3", "--batch-size", "64", "--schedule", "cosine", "--out", "runs/demo"]


def _add_train_options(p):
    d = TrainConfig()
    p.add_argument("--model", default=d.model, help="a network of the model zoo (default %(default)s)")
    p.add_argument("--dataset", default=d.dataset, choices=["cifar10", "cifar100", "cifar10-sample"])
    p.add_argument("--data-dir", default=None, help="folder holding the dataset (else $MINIRAN_DATA, else the cache)")
    p.add_argument("--epochs", type=int, default=None, help="epochs to train")
    p.add_argument("--max-steps", type=int, default=None, help="iterations to train (the paper: 160000)")
    p.add_argument("--subset", type=int, default=None, help="train on N images, balanced per class")
    p.add_argument("--test-subset", type=int, default=None, help="evaluate on N test images, balanced per class")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--schedule", default=d.schedule, choices=list(SCHEDULES),
                   help="paper: /10 at 40%% and 60%% of the run; cosine: cosine decay to 0; onecycle: linear "
                        "warm-up from lr/10 over 20%% of the run, then cosine decay to 0 (for short runs)")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                   help="target 1-EPS on the label and EPS spread over all classes (default 0: one-hot)")
    p.add_argument("--init", default=None, metavar="WEIGHTS",
                   help="start from these weights (fine-tuning): a pretrained name such as attention56_cifar10, "
                        "or a .npz written by miniran train or tools/export_pretrained.py")
    p.add_argument("--attention", default=d.attention, choices=["mixed", "channel", "spatial"])
    p.add_argument("--nal", action="store_true", help="naive attention learning M*T instead of (1+M)*T")
    p.add_argument("--mask", default=d.mask, choices=["encoder_decoder", "local_conv"])
    p.add_argument("--mask-bn", action="store_true", help="batch norm right before the mask activation")
    p.add_argument("--label-noise", type=float, default=0.0, help="fraction of corrupted training labels, 1 - r (Table 5)")
    p.add_argument("--normalize", default=d.normalize, choices=["pixel", "channel"],
                   help="pixel: subtract the mean image (paper); channel: per-channel standardisation")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="no padding/crop/flip")
    p.add_argument("--device", default=None, choices=["cpu", "gpu"],
                   help="cpu (default) or gpu; with --resume, the saved run's device unless given")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--out", default=d.out, help="output folder: metrics.jsonl, checkpoint.npz, curves.png")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.npz")
    p.add_argument("--checkpoint-every", type=int, default=None, metavar="N",
                   help="also write OUT/checkpoint.npz every N steps within an epoch, so that an interruption "
                        "loses at most N steps (default: at the end of each epoch only)")
    p.add_argument("--force", action="store_true",
                   help="start over in an OUT folder that holds a run (its metrics and checkpoint are replaced)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    p.add_argument("--cuda-graph", action="store_true",
                   help="with --device gpu: capture one training step as a CUDA graph and replay it for every "
                        "batch (one launch per step; proven only on the CuPy stand-in, see docs/gpu.md)")
    p.add_argument("--sync-bn", action="store_true",
                   help="under mpiexec -n N: batch-norm statistics over the global batch (default: each process's)")


def _config_from_args(args) -> TrainConfig:
    if args.seed < 0:  # NumPy's own message ("expected non-negative integer") does not name the option
        raise ValueError(f"--seed must be >= 0, got {args.seed}")
    fields = TrainConfig.__dataclass_fields__
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in fields})


def _log(message):
    """Progress to stdout, warnings to stderr."""
    print(message, file=sys.stderr if message.startswith("warning:") else sys.stdout)


def _stop_like_ctrl_c(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def _sigterm_as_ctrl_c():
    """SIGTERM (``timeout``, a scheduler) and SIGHUP (a closed terminal) stop training the way Ctrl-C does.

    The KeyboardInterrupt they raise goes through the same clean-up: the
    temporary file of a write in progress is removed, the checkpoint on disk is
    kept, and the command ends with status 130 and its hint. A signal the
    caller ignores (``nohup``) stays ignored.
    """
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for name in ("SIGTERM", "SIGHUP"):
            number = getattr(signal, name, None)
            if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
                previous[number] = signal.signal(number, _stop_like_ctrl_c)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)


def _run_training(args) -> int:
    from miniran.train.plot import plot_curves
    from miniran.train.trainer import train

    config = _config_from_args(args)
    try:
        with _sigterm_as_ctrl_c():
            train(config, resume=args.resume, progress=args.progress, force=getattr(args, "force", False),
                  log=_log)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if os.path.exists(os.path.join(config.out, "checkpoint.npz")):
            print(f"\ninterrupted; resume with the same --out and --resume ({config.out})", file=sys.stderr)
        else:
            print(f"\ninterrupted before the first epoch ended: nothing was saved in {config.out}; "
                  "run the same command again to start over", file=sys.stderr)
        return 130
    from miniran.distributed import world

    if not world().is_root:  # rank 0 writes the pictures and says where the files are
        return 0
    curves = plot_curves(config.out)
    print(f"learning curves: {curves}")
    print(f"checkpoint:      {os.path.join(config.out, 'checkpoint.npz')}")
    print(f"metrics:         {os.path.join(config.out, 'metrics.jsonl')}")
    return 0


def _cmd_train(args) -> int:
    return _run_training(args)


def _cmd_demo(args) -> int:
    parser = argparse.ArgumentParser()
    _add_train_options(parser)
    demo_args = parser.parse_args(DEMO_ARGS + (["--no-progress"] if not args.progress else []))
    demo_args.resume, demo_args.force = False, args.force
    print("miniran demo: Attention-56 on 2,000 real CIFAR-10 images shipped with the package "
          "(3 epochs, a few minutes on a laptop CPU)")
    print("equivalent command: miniran train " + " ".join(DEMO_ARGS))
    status = _run_training(demo_args)
    from miniran.distributed import world

    if status != 0 or not world().is_root:
        return status
    masks = _demo_masks(demo_args.out)
    if masks is not None:
        print(f"attention masks: {masks}  (the shipped Attention-56, trained on all of CIFAR-10: single "
              "mask channels, alone beside each image)")
    return 0


DEMO_MASK_CLASSES = (0, 2, 7, 8)  # airplane, bird, horse, ship: one test image of each from the embedded sample


def _demo_masks(out):
    """Draw the masks of the pretrained Attention-56 on a few embedded test images to ``out/masks.png``.

    The demo's own run is far too short for its masks to learn anything; the
    shipped network's masks are what the paper is about. Returns the path, or
    None (with a note) when this copy of miniran has no pretrained weights.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt
    import numpy as np

    from miniran import data, models, viz

    if not models.pretrained_available():
        print("no attention masks: this copy of miniran has no pretrained weights")
        return None
    net = models.attention56(pretrained=True)
    images, labels = data.load_cifar10_sample(train=False)
    idx = [int(np.flatnonzero(labels == c)[1]) for c in DEMO_MASK_CLASSES]
    maps = viz.attention_maps(net, images[idx])
    names = [f"{data.CIFAR10_CLASSES[labels[i]]} (pred. {data.CIFAR10_CLASSES[k]})"
             for i, k in zip(idx, maps.logits.argmax(axis=1))]
    fig = viz.plot_channel_masks(None, maps, channels=3, labels=names,
                                 title="Attention-56 trained on CIFAR-10: the 3 most varying mask channels of "
                                       "each stage (0 = feature kept as it is, 1 = doubled by (1 + M)·T)")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "masks.png")
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def _cmd_eval(args) -> int:
    import numpy as np

    from miniran import data
    from miniran.train.checkpoint import Checkpoint
    from miniran.train.trainer import TrainConfig, build_model, evaluate

    ckpt = Checkpoint(args.checkpoint)
    config = TrainConfig.from_dict(ckpt.config, source=f"the configuration in {args.checkpoint}").validate()
    dataset = args.dataset or config.dataset
    images, labels = data.load_dataset(dataset, args.data_dir or config.data_dir, train=False)
    k = data.num_classes(dataset)
    model = build_model(config, k)
    try:
        model.load_state_dict(ckpt.model)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{args.checkpoint}: the weights do not fit its {config.model} configuration "
                         f"({exc.args[0]})") from exc
    if args.device == "gpu":
        model.to("gpu")
    result = evaluate(model, images, labels, ckpt.mean, ckpt.std, batch_size=500, device=args.device, num_classes=k)
    names = data.class_names(dataset)
    print(f"{config.model} from {args.checkpoint} (step {ckpt.step}, epoch {ckpt.epoch})")
    print(f"test accuracy on {dataset} ({result['count']} images): {100 * result['acc']:.2f}%  loss {result['loss']:.4f}")
    for name, acc in zip(names, result["per_class"]):
        print(f"  {name:<14} {'n/a' if np.isnan(acc) else f'{100 * acc:6.2f}%'}")
    return 0


def _cmd_plot(args) -> int:
    from miniran.train.plot import plot_curves

    print(plot_curves(args.run_dir, args.output))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="miniran", description="Residual Attention Networks on NumPy/CuPy")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a network of the model zoo on CIFAR")
    _add_train_options(p)
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("eval", help="test accuracy (overall and per class) of a checkpoint")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", default=None, help="default: the dataset the checkpoint was trained on")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu", choices=["cpu", "gpu"])
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("plot", help="draw the learning curves of a run to a PNG")
    p.add_argument("run_dir")
    p.add_argument("--output", default=None, help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(func=_cmd_plot)
    p = sub.add_parser("demo", help="train Attention-56 on the embedded CIFAR-10 sample for a few minutes, "
                                     "then draw the shipped network's attention masks (runs/demo/masks.png)")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--force", action="store_true", help="run again over an earlier demo in runs/demo")
    p.set_defaults(func=_cmd_demo)
    return parser


def _missing_dataset_line(exc):
    """One line for a dataset that is neither on disk nor downloadable, else None.

    The loader's message lists every folder searched and the steps to get the
    data, over several lines: the command line says what failed and what to
    do, and leaves the rest to docs/data.md.
    """
    from miniran import data
    from miniran.data.cifar import SPECS
    from miniran.data.download import default_data_dir

    if not isinstance(exc, data.DatasetNotFoundError):
        return None
    for key, spec in SPECS.items():
        if str(exc).startswith(spec.name + " "):
            break
    else:
        return None
    cause = exc.__cause__
    why = "" if cause is None else f", and downloading it failed ({getattr(cause, 'reason', None) or cause})"
    return (f"--dataset {key}: {spec.name} was not found{why}: put {spec.archive} ({spec.url}), or its "
            f"unpacked files, in the folder given by --data-dir, else $MINIRAN_DATA, else {default_data_dir()} "
            "(details: docs/data.md)")


def main(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        # bad options, missing data or checkpoints, files that cannot be written:
        # one clear line, no traceback
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        message = _missing_dataset_line(exc) or message
        # one write call: under mpiexec the lines of several processes share one pipe
        sys.stderr.write(f"miniran {args.command}: error: {' '.join(str(message).split())}\n")
        return 2
