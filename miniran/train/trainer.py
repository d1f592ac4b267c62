"""The training loop behind ``miniran train`` (paper section 4.1).

The paper's CIFAR recipe: Nesterov SGD, momentum 0.9, weight decay 1e-4,
batch 64, learning rate 0.1 divided by 10 at 64k and 96k of 160k iterations,
4-pixel padding + random crop + flip, per-pixel mean subtraction. ``--schedule
paper`` scales those milestones to any run length (40% and 60%).

After every epoch the run evaluates on the test set, appends one JSON line to
``metrics.jsonl``, and writes ``checkpoint.npz`` atomically. ``resume=True``
continues from that checkpoint with the same model, optimiser, schedule and
loader state, so an interrupted run ends with the same weights as an
uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass

import numpy as np

import miniran.functional as F
from miniran import backend, data, models, optim
from miniran.autograd import Tensor, no_grad
from miniran.train.checkpoint import Checkpoint, save_checkpoint

PAPER_STEPS = 160_000


@dataclass
class TrainConfig:
    """Every option of a training run (the command-line flags map one to one)."""

    model: str = "attention56"
    dataset: str = "cifar10"
    data_dir: str | None = None
    epochs: int | None = None
    max_steps: int | None = None
    subset: int | None = None
    test_subset: int | None = None
    batch_size: int = 64
    lr: float = 0.1
    schedule: str = "paper"
    weight_decay: float = 1e-4
    momentum: float = 0.9
    attention: str = "mixed"
    nal: bool = False
    mask: str = "encoder_decoder"
    mask_bn: bool = False
    label_noise: float = 0.0
    normalize: str = "pixel"
    augment: bool = True
    device: str | None = None  # None: the CPU (or, on --resume, the device of the saved run)
    seed: int = 0
    out: str = "runs/run"
    eval_batch_size: int = 500

    def validate(self):
        if self.model not in models.MODELS:
            raise ValueError(f"--model must be one of {', '.join(models.MODELS)}, got {self.model!r}")
        if self.model.endswith("_imagenet"):
            raise ValueError(f"--model {self.model} takes 224x224 images; CIFAR training needs a 32x32 model")
        if self.model == "resnet164" and (self.attention != "mixed" or self.nal or self.mask != "encoder_decoder" or self.mask_bn):
            raise ValueError("resnet164 has no attention modules: --attention, --nal, --mask and --mask-bn do not apply")
        for name in ("epochs", "max_steps", "subset", "test_subset"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.schedule not in ("paper", "cosine"):
            raise ValueError(f"--schedule must be 'paper' or 'cosine', got {self.schedule!r}")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"--label-noise is the fraction of corrupted labels, in [0, 1), got {self.label_noise}")
        backend.normalize_device(self.device)
        return self


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def build_model(config: TrainConfig, num_classes: int):
    options = {}
    if config.model != "resnet164":
        options = dict(attention=config.attention, residual=not config.nal, mask=config.mask, mask_bn=config.mask_bn)
    return models.get_model(config.model, num_classes=num_classes, seed=config.seed, **options)


def load_data(config: TrainConfig):
    """Training and test arrays after subsetting and label noise (host NumPy arrays)."""
    x_train, y_train = data.load_dataset(config.dataset, config.data_dir, train=True)
    x_test, y_test = data.load_dataset(config.dataset, config.data_dir, train=False)
    if config.subset is not None:
        if config.subset > len(y_train):
            raise ValueError(f"--subset {config.subset} is larger than the training set ({len(y_train)} images)")
        idx = data.balanced_subset(y_train, config.subset, seed=config.seed)
        x_train, y_train = x_train[idx], y_train[idx]
    if config.test_subset is not None and config.test_subset < len(y_test):
        idx = data.balanced_subset(y_test, config.test_subset, seed=config.seed)
        x_test, y_test = x_test[idx], y_test[idx]
    if config.label_noise:
        # Table 5 / Eq. 7: clean-label ratio r = 1 - noise level, on the training labels only
        y_train = data.apply_label_noise(y_train, noise_level=config.label_noise,
                                         num_classes=data.num_classes(config.dataset), seed=config.seed)
    return x_train, y_train, x_test, y_test


def evaluate(model, images, labels, mean, std, batch_size=500, device="cpu", num_classes=10):
    """Loss, accuracy and per-class accuracy of ``model`` on uint8 images (evaluation mode)."""
    loader = data.DataLoader(images, labels, batch_size=batch_size, shuffle=False, augment=False,
                             mean=mean, std=std, device=device)
    was_training = model.training
    model.eval()
    xp = np if backend.normalize_device(device) == "cpu" else backend.cupy_module()
    loss_sum = 0.0
    correct = xp.zeros(num_classes, dtype=np.int64)
    total = xp.zeros(num_classes, dtype=np.int64)
    with no_grad():
        for x, y in loader:
            logits = model(Tensor(x))
            loss_sum = loss_sum + F.cross_entropy(logits, y).data * len(y)
            pred = logits.data.argmax(axis=1)
            correct += xp.bincount(y[pred == y], minlength=num_classes)
            total += xp.bincount(y, minlength=num_classes)
    model.train(was_training)
    correct, total = backend.to_numpy(correct), backend.to_numpy(total)
    n = int(total.sum())
    per_class = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
    return {"loss": float(loss_sum) / n, "acc": float(correct.sum()) / n, "per_class": per_class.tolist(), "count": n}


def _read_metrics(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def _write_metrics(path, rows):
    """Rewrite the metrics file atomically (used on resume to drop unfinished epochs)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _append_metrics(path, row):
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def train(config: TrainConfig, resume: bool = False, progress: bool = True, log=print, on_step=None):
    """Run (or resume) a training run; returns the list of per-epoch metrics.

    Args:
        config: the run's options (ignored when resuming, except ``out``,
            ``device``, ``data_dir``, ``epochs`` and ``max_steps``, which may change).
        resume: continue from ``config.out/checkpoint.npz``.
        progress: show a tqdm progress bar.
        log: where one-line messages go.
        on_step: optional ``callback(step)`` after every optimiser step (tests
            use it to interrupt a run).

    Raises:
        TrainingDiverged: when the loss becomes NaN or infinite.
    """
    out = config.out
    ckpt_path = os.path.join(out, "checkpoint.npz")
    metrics_path = os.path.join(out, "metrics.jsonl")
    ckpt = None
    if resume:
        ckpt = Checkpoint(ckpt_path)
        saved = dict(ckpt.config)
        for key in ("out", "device", "data_dir", "epochs", "max_steps"):
            if getattr(config, key) is not None:
                saved[key] = getattr(config, key)
        config = TrainConfig(**saved)
    config.validate()
    device = backend.normalize_device(config.device)
    if device == "gpu":
        backend.check_cuda_available()
    os.makedirs(out, exist_ok=True)

    x_train, y_train, x_test, y_test = load_data(config)
    k = data.num_classes(config.dataset)
    loader = data.DataLoader(x_train, y_train, batch_size=config.batch_size, shuffle=True,
                             augment=config.augment, normalize=config.normalize, seed=config.seed,
                             device=device, mean=None if ckpt is None else ckpt.mean,
                             std=None if ckpt is None else ckpt.std)
    steps_per_epoch = len(loader)
    if config.max_steps is not None:
        total_steps = config.max_steps
    elif config.epochs is not None:
        total_steps = config.epochs * steps_per_epoch
    else:
        total_steps = PAPER_STEPS
    total_epochs = math.ceil(total_steps / steps_per_epoch)

    model = build_model(config, k)
    if device == "gpu":
        model.to("gpu")
    opt = optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                    weight_decay=config.weight_decay)
    if config.schedule == "paper":
        schedule = optim.paper_schedule(opt, total_steps)
    else:
        schedule = optim.CosineLR(opt, total_steps)

    step, history = 0, []
    if ckpt is not None:
        model.load_state_dict(ckpt.model)
        opt.load_state_dict(ckpt.optim)
        schedule.load_state_dict(ckpt.schedule)
        loader.load_state_dict(ckpt.loader)
        step = ckpt.step
        # keep the lines of finished epochs only (a crash may have left one more)
        history = [r for r in _read_metrics(metrics_path) if r["step"] <= step]
        _write_metrics(metrics_path, history)
        log(f"resumed from {ckpt_path} at step {step} (epoch {loader.epoch})")
    elif os.path.exists(metrics_path):
        os.unlink(metrics_path)  # a new run in an old folder starts a new log

    config_dict = dataclasses.asdict(config)
    log(f"training {config.model} on {config.dataset}: {len(y_train)} images, {steps_per_epoch} steps/epoch, "
        f"{total_steps} steps, device {device}, output {out}")
    xp = np if device == "cpu" else backend.cupy_module()
    sync_every = 1 if device == "cpu" else 25  # a float() on the GPU waits for it: do it rarely

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True)

    last_good = step
    try:
        while step < total_steps:
            # the loader counts finished epochs; a run stopped right at an epoch's
            # end (by --max-steps) has a loader still positioned after its last batch
            epoch = loader.epoch + (1 if loader.position < steps_per_epoch else 2)
            model.train()
            loss_sum = xp.zeros((), dtype=np.float64)
            correct = xp.zeros((), dtype=np.int64)
            seen = 0
            t0 = time.perf_counter()
            for x, y in loader:
                logits = model(Tensor(x))
                loss = F.cross_entropy(logits, y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                schedule.step()
                step += 1
                loss_sum += loss.data * len(y)
                correct += (logits.data.argmax(axis=1) == y).sum()
                seen += len(y)
                if step % sync_every == 0 or step == total_steps or loader.position == steps_per_epoch:
                    running_loss = float(loss_sum) / seen
                    if not math.isfinite(running_loss):
                        raise TrainingDiverged(
                            f"the training loss became {running_loss} at step {step} (epoch {epoch}); "
                            f"stopping. The last good checkpoint ({ckpt_path}, step {last_good}) was kept. "
                            f"Try a lower --lr."
                        )
                    if bar is not None:
                        elapsed = time.perf_counter() - t0
                        bar.set_postfix(epoch=epoch, loss=f"{running_loss:.3f}", acc=f"{int(correct) / seen:.3f}",
                                        lr=f"{opt.lr:.4g}", img_s=f"{seen / max(elapsed, 1e-9):.0f}")
                if bar is not None:
                    bar.update(1)
                if on_step is not None:
                    on_step(step)
                if step >= total_steps:
                    break
            train_seconds = time.perf_counter() - t0
            test = evaluate(model, x_test, y_test, loader.mean, loader.std, config.eval_batch_size, device, k)
            row = {
                "epoch": epoch,
                "step": step,
                "train_loss": float(loss_sum) / max(seen, 1),
                "train_acc": int(correct) / max(seen, 1),
                "test_loss": test["loss"],
                "test_acc": test["acc"],
                "lr": opt.lr,
                "seconds": round(time.perf_counter() - t0, 3),
                "train_seconds": round(train_seconds, 3),
                "images_per_second": round(seen / max(train_seconds, 1e-9), 2),
                "test_images": test["count"],
            }
            if not math.isfinite(row["train_loss"]) or not math.isfinite(row["test_loss"]):
                raise TrainingDiverged(
                    f"the loss became non-finite in epoch {epoch} (train {row['train_loss']}, test "
                    f"{row['test_loss']}); stopping. The last good checkpoint ({ckpt_path}, step {last_good}) "
                    f"was kept. Try a lower --lr."
                )
            history.append(row)
            # metrics first: if we die before the checkpoint, resume drops this line and redoes the epoch
            _append_metrics(metrics_path, row)
            save_checkpoint(ckpt_path, model=model, optimizer=opt, schedule=schedule, loader=loader,
                            step=step, epoch=epoch, config=config_dict, mean=loader.mean, std=loader.std)
            last_good = step
            message = (f"epoch {epoch}/{total_epochs}  step {step}  train loss {row['train_loss']:.4f} "
                       f"acc {row['train_acc']:.4f}  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                       f"lr {row['lr']:.4g}  {row['images_per_second']:.1f} img/s")
            if bar is not None:
                bar.write(message)
            else:
                log(message)
    finally:
        if bar is not None:
            bar.close()
    return history
