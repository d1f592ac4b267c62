"""The training loop behind ``miniran train`` (paper section 4.1).

The paper's CIFAR recipe: Nesterov SGD, momentum 0.9, weight decay 1e-4,
batch 64, learning rate 0.1 divided by 10 at 64k and 96k of 160k iterations,
4-pixel padding + random crop + flip, per-pixel mean subtraction. ``--schedule
paper`` scales those milestones to any run length (40% and 60%).

After every epoch the run evaluates on the test set, appends one JSON line to
``metrics.jsonl``, and writes ``checkpoint.npz`` atomically; with
``checkpoint_every=N`` it also writes the checkpoint every N steps within an
epoch, so an interruption loses at most N steps. ``resume=True``
continues from that checkpoint with the same model, optimiser, schedule and
loader state, so an interrupted run ends with the same weights as an
uninterrupted one.

A run holds an exclusive lock on its folder (``OUT/.lock``) from before its
checks until it ends, so a second run (or resume) of the same folder is refused
while the first one works; the holder then removes the temporary files that an
earlier, killed run left there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import math
import os
import time
from dataclasses import dataclass

import numpy as np

import miniran.functional as F
from miniran import backend, data, models, optim
from miniran._io import lock_folder, lock_holder, remove_stale_temporaries
from miniran.autograd import Tensor, no_grad
from miniran.nn import load_arrays
from miniran.distributed import world
from miniran.train import parallel
from miniran.train.checkpoint import Checkpoint, save_checkpoint
from miniran.train.cuda_graph import CapturedStep
from miniran.train.metrics import append_metrics, read_metrics, write_metrics

PAPER_STEPS = 160_000
SCHEDULES = ("paper", "cosine", "onecycle")


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
    label_smoothing: float = 0.0
    init: str | None = None  # start from these weights: a pretrained name or a .npz (checkpoint or exported)
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
    sync_bn: bool = False  # data-parallel runs: batch-norm statistics over the global batch
    cuda_graph: bool = False  # --device gpu: one training step captured as a CUDA graph, replayed every step
    checkpoint_every: int | None = None  # also write the checkpoint every N steps within an epoch

    def validate(self):
        if self.model not in models.MODELS:
            raise ValueError(f"--model must be one of {', '.join(models.MODELS)}, got {self.model!r}")
        if self.model.endswith("_imagenet"):
            raise ValueError(f"--model {self.model} takes 224x224 images; CIFAR training needs a 32x32 model")
        if self.model == "resnet164" and (self.attention != "mixed" or self.nal or self.mask != "encoder_decoder" or self.mask_bn):
            raise ValueError("resnet164 has no attention modules: --attention, --nal, --mask and --mask-bn do not apply")
        for name in ("epochs", "max_steps", "subset", "test_subset", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {self.batch_size}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"--seed must be an integer >= 0, got {self.seed!r}")
        for name in ("lr", "weight_decay", "momentum", "label_noise", "label_smoothing"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number, got {value}")
        if self.lr <= 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if not 0 <= self.label_noise < 1:
            raise ValueError(f"--label-noise is the fraction of corrupted labels, in [0, 1), got {self.label_noise}")
        if self.init is not None and self.init not in models.PRETRAINED and not os.path.isfile(self.init):
            raise ValueError(f"--init must be a pretrained name ({', '.join(models.PRETRAINED)}) or a .npz file, "
                             f"got {self.init!r} (no such file)")
        if self.cuda_graph and backend.normalize_device(self.device) != "gpu":
            raise ValueError("--cuda-graph needs --device gpu: a CUDA graph replays GPU work")
        backend.normalize_device(self.device)
        return self

    @classmethod
    def from_dict(cls, values, source="the configuration"):
        """A TrainConfig from a dict (a checkpoint's ``meta/config``), every key and type checked."""
        if not isinstance(values, dict):
            raise ValueError(f"{source} is not a JSON object of settings (got {type(values).__name__})")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"{source} has unknown setting(s) {', '.join(unknown)}: not written by this miniran")
        kinds = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "None": (type(None),)}
        for key, value in values.items():
            allowed = sum((kinds[part.strip()] for part in fields[key].type.split("|")), ())
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise ValueError(f"{source}: setting {key!r} should be {fields[key].type}, got {value!r}")
        return cls(**values)


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


def evaluate(model, images, labels, mean, std, batch_size=500, device="cpu", num_classes=10, comm=None):
    """Loss, accuracy and per-class accuracy of ``model`` on uint8 images (evaluation mode).

    With ``comm`` (a data-parallel run) each process evaluates its part of the
    images and the counts are summed over the processes.
    """
    comm = comm if comm is not None else world()
    part = parallel.shard_range(len(labels), comm)
    images, labels = images[part], labels[part]
    loader = data.DataLoader(images, labels, batch_size=batch_size, shuffle=False, augment=False,
                             mean=mean, std=std, device=device, num_classes=num_classes)
    was_training = model.training
    model.eval()
    xp = np if backend.normalize_device(device) == "cpu" else backend.cupy_module()
    # Everything is counted on the device and read once at the end: a boolean
    # mask or bincount per batch would make the host wait for the GPU each time.
    classes = xp.arange(num_classes)
    loss_sum = xp.zeros((), dtype=np.float64)
    correct = xp.zeros(num_classes, dtype=np.int64)
    total = xp.zeros(num_classes, dtype=np.int64)
    with no_grad():
        for x, y in loader:
            logits = model(Tensor(x))
            loss_sum += F.cross_entropy(logits, y).data * len(y)
            one_hot = y[:, None] == classes  # (B, K)
            total += one_hot.sum(axis=0)
            correct += (one_hot & (logits.data.argmax(axis=1) == y)[:, None]).sum(axis=0)
    model.train(was_training)
    correct, total = backend.to_numpy(correct), backend.to_numpy(total)
    if comm.size > 1:
        summed = comm.sum_values([float(loss_sum)] + correct.tolist() + total.tolist())
        loss_sum = summed[0]
        correct = np.asarray(summed[1:1 + num_classes], dtype=np.int64)
        total = np.asarray(summed[1 + num_classes:], dtype=np.int64)
    n = int(total.sum())
    per_class = np.where(total > 0, correct / np.maximum(total, 1), np.nan)
    return {"loss": float(loss_sum) / n, "acc": float(correct.sum()) / n, "per_class": per_class.tolist(), "count": n}


class OutputError(OSError):
    """Writing the run's files failed (full disk, read-only folder); what was on disk before is intact."""


#: options that may change on ``--resume``; every other one comes from the checkpoint
RESUME_OPTIONS = ("out", "device", "data_dir", "epochs", "max_steps", "cuda_graph", "checkpoint_every")
RUN_FILES = ("metrics.jsonl", "checkpoint.npz")
#: files the run writes through a temporary file: the temporaries a killed run left are removed
WRITTEN_FILES = RUN_FILES + ("curves.png",)


def _flag(name):
    return "--" + name.replace("_", "-")


def _resume_config(config: TrainConfig, ckpt: Checkpoint, log) -> TrainConfig:
    """The saved run's configuration, with the options that may change on resume taken from ``config``."""
    saved = TrainConfig.from_dict(ckpt.config, source=f"the configuration in {ckpt.path}")
    defaults = TrainConfig()
    ignored = [f"{_flag(f.name)} {getattr(config, f.name)} (the run keeps {getattr(saved, f.name)})"
               for f in dataclasses.fields(TrainConfig)
               if f.name not in RESUME_OPTIONS
               and getattr(config, f.name) != getattr(defaults, f.name)
               and getattr(config, f.name) != getattr(saved, f.name)]
    if ignored:
        log(f"warning: --resume continues the saved run with its own settings; ignored: {', '.join(ignored)}. "
            f"Only {', '.join(_flag(k) for k in RESUME_OPTIONS)} are honoured")
    changes = {k: getattr(config, k) for k in RESUME_OPTIONS if getattr(config, k) is not None}
    if "epochs" in changes and "max_steps" not in changes:
        changes["max_steps"] = None  # --epochs given now replaces the saved --max-steps
    return dataclasses.replace(saved, **changes)


def _check_out_folder(out: str) -> None:
    """Refuse an --out that cannot hold the run (a file, under a file, not writable)."""
    existing = out
    while not os.path.exists(existing) and os.path.dirname(os.path.abspath(existing)) != os.path.abspath(existing):
        existing = os.path.dirname(os.path.abspath(existing))
    if not os.path.isdir(existing):
        where = "is a file" if existing == out else f"is under {existing}, which is a file"
        raise ValueError(f"--out {out} {where}, not a folder: choose a folder for the run's files")
    if not os.access(existing, os.W_OK):
        raise ValueError(f"--out {out}: the folder {existing} is not writable; nothing was written")


def _make_out_folder(out: str) -> list:
    """Create --out (and the folders above it that are missing); returns the new folders, deepest first."""
    new, path = [], os.path.abspath(out)
    while not os.path.exists(path) and os.path.dirname(path) != path:
        new.append(path)
        path = os.path.dirname(path)
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot prepare --out {out}: {exc.strerror or exc}") from exc
    return new


def _remove_new_folders(new: list) -> None:
    """Undo :func:`_make_out_folder` for a run refused during its set-up (only empty folders go)."""
    for path in new:
        try:
            os.rmdir(path)
        except OSError:
            break


def _lock_out_folder(out: str):
    """The folder's lock, or a ValueError naming --out while another run holds it."""
    try:
        lock = lock_folder(out)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise ValueError(f"--out {out}: the folder {out} is not writable; nothing was written") from exc
        raise OutputError(f"cannot lock --out {out}: {exc.strerror or exc}") from exc
    if lock is None:
        pid = lock_holder(out)
        raise ValueError(f"--out {out} is in use by another training run{f' (process {pid})' if pid else ''}, "
                         f"left unchanged: wait for it to end, or choose another --out folder")
    return lock


def _remove_stale_temporaries(out: str, log) -> None:
    """Temporary files of this folder's run files are left-overs of a killed run: the lock holder removes them."""
    try:
        removed = remove_stale_temporaries(out, WRITTEN_FILES)
    except OSError as exc:
        raise OutputError(f"cannot list --out {out}: {exc.strerror or exc}") from exc
    for path in removed:
        log(f"removed {path}: a temporary file left by a write that was stopped part way (a killed run)")


def _check_no_run(out: str, force: bool) -> list:
    """Refuse an --out that holds a run and would be overwritten.

    Returns the files of an earlier run that ``force`` allows to replace.
    """
    found = [name for name in RUN_FILES if os.path.exists(os.path.join(out, name))]
    if found and not force:
        raise ValueError(
            f"--out {out} already holds a run ({', '.join(found)}), left unchanged: continue it with "
            f"--resume, start it over with --force (its files are replaced), or choose a new --out folder")
    return [os.path.join(out, name) for name in found]


@dataclass
class _Run:
    """Everything a training run needs, built by :func:`_set_up`."""

    config: TrainConfig
    device: str
    out: str
    ckpt_path: str
    metrics_path: str
    x_test: object
    y_test: object
    num_classes: int
    loader: object
    model: object
    optimizer: object
    schedule: object
    total_steps: int
    step: int = 0
    history: list = dataclasses.field(default_factory=list)
    saved_step: int | None = None  # step of the checkpoint on disk (None: none from this run)
    lock: object = None  # the folder's lock (miniran._io.FolderLock), held until the run ends
    comm: object = None  # the processes of a data-parallel run (miniran.distributed); rank 0 writes the files
    captured: object = None  # --cuda-graph: the step as a CUDA graph (miniran.train.cuda_graph.CapturedStep)
    epoch_sums: dict | None = None  # resumed in the middle of an epoch: its training sums so far (rank 0 only)

    @property
    def steps_per_epoch(self):
        return len(self.loader)

    @property
    def total_epochs(self):
        return math.ceil(self.total_steps / self.steps_per_epoch)


def _set_up(config: TrainConfig, resume: bool, force: bool, log, comm) -> _Run:
    """Step 1: lock the output folder, check it and the configuration, then build the run.

    The lock is taken before the folder is looked at ("already holds a run",
    the checkpoint of --resume), so two runs started together cannot both pass
    the checks. A run refused here gives the lock back and removes the folders
    it created. In a data-parallel run only rank 0 touches the folder, and
    every process raises rank 0's verdict, so all of them stop with one line.
    """
    if resume and force:
        raise ValueError("--resume continues the run in --out and --force starts it over: give only one of them")
    out, lock, new_folders, ckpt, replaced = config.out, None, [], None, []
    try:
        local_error = None
        try:
            if resume and comm.is_root:
                lock = _lock_out_folder(out) if os.path.isdir(out) else None  # none: "checkpoint not found" below
            if resume:
                ckpt = Checkpoint(os.path.join(out, "checkpoint.npz"))
                config = _resume_config(config, ckpt, log)
            config.validate()
            parallel.check_batch_size(config.batch_size, comm)
            if config.cuda_graph and comm.size > 1:
                raise ValueError("--cuda-graph runs in one process: a data-parallel run (mpiexec -n N) is not captured")
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            if comm.size == 1:
                raise
            local_error = exc  # raised after the broadcast below, which every process must join
        verdict = local_error
        if comm.is_root and local_error is None:
            try:
                lock, new_folders, replaced = _prepare_folder(config, resume, force, lock, log)
            except (ValueError, OutputError) as exc:
                verdict = exc
        _raise_everywhere(verdict, comm)
        if local_error is not None:
            raise local_error
        run = _build_run(config, ckpt, replaced, log, comm)
        if config.cuda_graph:  # after the restore: the schedule's table starts at the saved step
            run.captured = CapturedStep(run.model, run.optimizer, functools.partial(
                F.cross_entropy, label_smoothing=config.label_smoothing), run.schedule, run.total_steps,
                config.batch_size)
            log("--cuda-graph: the first step is captured as a CUDA graph, and replayed for every later one")
    except BaseException:
        if lock is not None:
            lock.release()
        _remove_new_folders(new_folders)
        raise
    run.lock = lock
    return run


def _prepare_folder(config: TrainConfig, resume: bool, force: bool, lock, log):
    """Rank 0's part of step 1: the folder checked, made, locked and cleaned; (lock, new folders, files to replace)."""
    out, new_folders = config.out, []
    try:
        _check_out_folder(out)
        if lock is None:
            new_folders = _make_out_folder(out)
            lock = _lock_out_folder(out)
        replaced = [] if resume else _check_no_run(out, force)
        _remove_stale_temporaries(out, log)
    except BaseException:
        if lock is not None:
            lock.release()
        _remove_new_folders(new_folders)
        raise
    return lock, new_folders, replaced


def _raise_everywhere(error, comm) -> None:
    """Rank 0's error (or None) raised on every process, as the same type and line."""
    if comm.size > 1:
        verdict = comm.broadcast(None if error is None else (type(error).__name__, str(error)))
        if verdict is not None and error is None:
            kind, message = verdict
            error = OutputError(message) if kind == "OutputError" else ValueError(message)
    if error is not None:
        raise error


def init_weights(model, init: str) -> str:
    """Load ``--init`` into ``model``: a shipped pretrained name, or a ``.npz`` with ``model/`` entries
    (a run's ``checkpoint.npz`` or an exported weights file). Returns the file read.

    Only the weights come from it: the optimiser, the schedule and the data
    statistics start fresh, so this is a warm start (fine-tuning), not a resume.
    """
    path = models.pretrained_path(init) if init in models.PRETRAINED else init
    if not os.path.isfile(path):
        raise ValueError(f"--init {init}: {path} not found")
    try:
        arrays = load_arrays(path)
    except ValueError as exc:
        raise ValueError(f"--init {init}: {exc}") from exc
    except OSError as exc:  # a folder, no permission to read
        raise ValueError(f"--init {init}: {path} cannot be read ({exc.strerror or exc})") from exc
    state = {k[len("model/"):]: v for k, v in arrays.items() if k.startswith("model/")}
    if not state:
        raise ValueError(f"--init {init}: {path} holds no 'model/' weights (not a miniran checkpoint or export)")
    try:
        model.load_state_dict(state)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"--init {init}: the weights do not fit this --model ({' '.join(str(exc.args[0]).split())})") from exc
    return str(path)


def _build_run(config: TrainConfig, ckpt, replaced: list, log, comm) -> _Run:
    """Step 1a: the data, the model, the optimiser and the schedule (restored from ``ckpt`` when given)."""
    out = config.out
    ckpt_path = os.path.join(out, "checkpoint.npz")
    metrics_path = os.path.join(out, "metrics.jsonl")
    device = backend.normalize_device(config.device)
    if device == "gpu":
        backend.check_cuda_available()
        if comm.size > 1:  # one GPU per process on each machine
            parallel.use_local_gpu(comm)
    parallel.share_cores(comm)

    x_train, y_train, x_test, y_test = load_data(config)
    k = data.num_classes(config.dataset)
    loader = data.DataLoader(x_train, y_train, batch_size=config.batch_size, shuffle=True,
                             augment=config.augment, normalize=config.normalize, seed=config.seed,
                             num_classes=data.num_classes(config.dataset),
                             device=device, mean=None if ckpt is None else ckpt.mean,
                             std=None if ckpt is None else ckpt.std)
    if config.max_steps is not None:
        total_steps = config.max_steps
    elif config.epochs is not None:
        total_steps = config.epochs * len(loader)
    else:
        total_steps = PAPER_STEPS

    model = build_model(config, k)
    if ckpt is None and config.init is not None:
        log(f"starting from the weights of {init_weights(model, config.init)}")
    if device == "gpu":
        model.to("gpu")
    if config.sync_bn and comm.size > 1:
        parallel.use_sync_batch_norm(model, comm)
    # on the GPU and across processes: one flat parameter and gradient buffer, so a
    # step's update is one kernel and the gradients are one all-reduce
    opt = optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, nesterov=True,
                    weight_decay=config.weight_decay, flat=device == "gpu" or comm.size > 1)
    if config.schedule == "paper":
        schedule = optim.paper_schedule(opt, total_steps)
    elif config.schedule == "onecycle":
        schedule = optim.OneCycleLR(opt, total_steps)
    else:
        schedule = optim.CosineLR(opt, total_steps)
    run = _Run(config, device, out, ckpt_path, metrics_path, x_test, y_test, k, loader, model, opt, schedule,
               total_steps, comm=comm)

    if ckpt is not None:
        _restore(run, ckpt, log)
    elif comm.is_root:
        try:
            for path in replaced:  # --force, and every check above passed: only now is the old run removed
                os.unlink(path)
                log(f"--force: removed {path} of the earlier run")
        except OSError as exc:
            raise OutputError(f"cannot prepare --out {out}: {exc.strerror or exc}") from exc
    log(f"training {config.model} on {config.dataset}: {len(y_train)} images, {run.steps_per_epoch} steps/epoch, "
        f"{total_steps} steps, device {device}, output {out}"
        + (f", {comm.size} processes ({config.batch_size // comm.size} images each per step"
           f"{', sync batch norm' if config.sync_bn else ''})" if comm.size > 1 else ""))
    return run


def _restore(run: _Run, ckpt: Checkpoint, log) -> None:
    """Step 1b (--resume): the model, optimiser, schedule, loader and metrics as the checkpoint left them."""
    if ckpt.step >= run.total_steps:
        config = run.config
        length = f"--max-steps {config.max_steps}" if config.max_steps is not None else f"--epochs {config.epochs}"
        raise ValueError(f"{run.ckpt_path} is already at step {ckpt.step} and {length} means {run.total_steps} "
                         f"steps: nothing to train; give a larger --epochs or --max-steps to continue")
    try:
        run.model.load_state_dict(ckpt.model)
    except (KeyError, ValueError) as exc:
        raise ValueError(f"{run.ckpt_path}: the weights do not fit its {run.config.model} configuration "
                         f"({exc.args[0]})") from exc
    for section, target, state in (("optim", run.optimizer, ckpt.optim), ("schedule", run.schedule, ckpt.schedule),
                                   ("loader", run.loader, ckpt.loader)):
        try:
            target.load_state_dict(state)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"checkpoint {run.ckpt_path}: its '{section}/' entries do not fit this run "
                             f"({' '.join(str(exc).split())})") from exc
    run.step = run.saved_step = ckpt.step
    if ckpt.epoch_sums is not None and run.comm.is_root:  # the saved sums are over every process: counted once
        run.epoch_sums = ckpt.epoch_sums
    # keep the lines of finished epochs only (a crash may have left one more, or half of one)
    run.history = [r for r in read_metrics(run.metrics_path, warn=log) if r["step"] <= ckpt.step]
    if run.comm.is_root:
        _write_or_explain(run, write_metrics, run.metrics_path, run.history)
    log(f"resumed from {run.ckpt_path} at step {ckpt.step} (epoch {run.loader.epoch})")


def _train_one_epoch(run: _Run, epoch: int, bar, on_step):
    """Step 2: one pass over the loader (or up to the last step); returns the epoch's training statistics."""
    model, opt, loader = run.model, run.optimizer, run.loader
    xp = np if run.device == "cpu" else backend.cupy_module()
    sync_every = 1 if run.device == "cpu" else 25  # a float() on the GPU waits for it: do it rarely
    model.train()
    loss_sum = xp.zeros((), dtype=np.float64)
    correct = xp.zeros((), dtype=np.int64)
    if run.captured is not None:  # the graph sums them on the device
        run.captured.reset_sums()
        loss_sum, correct = run.captured.loss_sum, run.captured.correct
    seen, t0 = 0, time.perf_counter()
    if run.epoch_sums is not None:  # resumed in the middle of this epoch: go on from its sums
        loss_sum += run.epoch_sums["loss_sum"]
        correct += run.epoch_sums["correct"]
        seen, t0 = run.epoch_sums["seen"], t0 - run.epoch_sums["train_seconds"]
        run.epoch_sums = None
    for x, y in loader:
        x, y = parallel.shard(x, run.comm), parallel.shard(y, run.comm)  # this process's part of the batch
        if run.captured is not None:
            run.captured(x, y)  # two copies and one graph launch; it advances the schedule
        else:
            _eager_step(run, x, y, loss_sum, correct)
        run.step += 1
        seen += len(y)
        if run.step % sync_every == 0 or run.step == run.total_steps or loader.position == run.steps_per_epoch:
            running_loss = float(loss_sum) / seen
            if not math.isfinite(running_loss):
                raise TrainingDiverged(
                    f"the training loss became {running_loss} at step {run.step} (epoch {epoch}); "
                    f"stopping. {_kept(run)} Try a lower --lr."
                )
            if bar is not None:
                elapsed = time.perf_counter() - t0
                bar.set_postfix(epoch=epoch, loss=f"{running_loss:.3f}", acc=f"{int(correct) / seen:.3f}",
                                lr=f"{opt.lr:.4g}", img_s=f"{seen / max(elapsed, 1e-9):.0f}")
        every = run.config.checkpoint_every
        if every and run.step % every == 0 and run.step < run.total_steps and loader.position < run.steps_per_epoch:
            _save_within_epoch(run, epoch, {"loss_sum": float(loss_sum), "correct": int(correct), "seen": seen,
                                            "train_seconds": time.perf_counter() - t0})
        if bar is not None:
            bar.update(1)
        if on_step is not None:
            on_step(run.step)
        if run.step >= run.total_steps:
            break
    train_seconds = time.perf_counter() - t0
    loss_total, correct_total, seen = run.comm.sum_values([float(loss_sum), int(correct), seen])
    return {"train_loss": loss_total / max(seen, 1), "train_acc": correct_total / max(seen, 1),
            "loss_sum": loss_total, "correct": int(correct_total), "seen": int(seen), "train_seconds": train_seconds,
            "t0": t0}


def _write_checkpoint(run: _Run, epoch: int, epoch_sums: dict | None) -> None:
    """The run's state at this step to ``checkpoint.npz`` (atomic; rank 0 calls it)."""
    _write_or_explain(run, lambda path: save_checkpoint(
        path, model=run.model, optimizer=run.optimizer, schedule=run.schedule, loader=run.loader,
        step=run.step, epoch=epoch, config=dataclasses.asdict(run.config), mean=run.loader.mean,
        std=run.loader.std, epoch_sums=epoch_sums), run.ckpt_path)


def _sums_if_within_epoch(run: _Run, stats: dict) -> dict | None:
    """The epoch's training sums when the loader stopped in its middle (else None: the epoch is complete)."""
    if not 0 < run.loader.position < run.steps_per_epoch:
        return None
    return {key: stats[key] for key in ("loss_sum", "correct", "seen", "train_seconds")}


def _save_within_epoch(run: _Run, epoch: int, sums: dict) -> None:
    """``checkpoint_every``: the checkpoint in the middle of an epoch, with the epoch's training sums so far.

    No metrics line is written: the epoch has none until it ends. In a
    data-parallel run every process reaches this step together: the sums are
    added over the processes and the batch-norm running statistics averaged
    (as at an epoch's end), so the checkpoint describes one model and the
    resumed processes start alike.
    """
    parallel.average_buffers(run.model, run.comm)
    loss_sum, correct, seen = run.comm.sum_values([sums["loss_sum"], sums["correct"], sums["seen"]])
    if run.comm.is_root:
        _write_checkpoint(run, epoch, {**sums, "loss_sum": loss_sum, "correct": int(correct), "seen": int(seen)})
    run.saved_step = run.step


def _eager_step(run: _Run, x, y, loss_sum, correct) -> None:
    """One training step, array operation by array operation; adds to the sums in place."""
    logits = run.model(Tensor(x))
    loss = F.cross_entropy(logits, y, label_smoothing=run.config.label_smoothing)
    run.optimizer.zero_grad()
    loss.backward()
    parallel.average_gradients(run.optimizer, run.comm)  # one all-reduce of the flat gradient buffer
    run.optimizer.step()
    run.schedule.step()
    loss_sum += loss.data * len(y)
    correct += (logits.data.argmax(axis=1) == y).sum()


def _evaluate_epoch(run: _Run, epoch: int, stats) -> dict:
    """Step 3: evaluate on the test set; returns the epoch's metrics row."""
    parallel.average_buffers(run.model, run.comm)  # one model on every process: the same running statistics
    test = evaluate(run.model, run.x_test, run.y_test, run.loader.mean, run.loader.std,
                    run.config.eval_batch_size, run.device, run.num_classes, comm=run.comm)
    row = {
        "epoch": epoch,
        "step": run.step,
        "train_loss": stats["train_loss"],
        "train_acc": stats["train_acc"],
        "test_loss": test["loss"],
        "test_acc": test["acc"],
        "lr": run.optimizer.lr,
        "seconds": round(time.perf_counter() - stats["t0"], 3),
        "train_seconds": round(stats["train_seconds"], 3),
        "images_per_second": round(stats["seen"] / max(stats["train_seconds"], 1e-9), 2),
        "test_images": test["count"],
    }
    if not math.isfinite(row["train_loss"]) or not math.isfinite(row["test_loss"]):
        raise TrainingDiverged(
            f"the loss became non-finite in epoch {epoch} (train {row['train_loss']}, test "
            f"{row['test_loss']}); stopping. {_kept(run)} Try a lower --lr."
        )
    return row


def _kept(run: _Run) -> str:
    """What is safe on disk, for error messages."""
    if run.saved_step is None:
        return "No checkpoint was saved yet; any earlier files are unchanged."
    return f"The last good checkpoint ({run.ckpt_path}, step {run.saved_step}) was kept."


def _write_or_explain(run: _Run, write, path, *args):
    try:
        write(path, *args)
    except OSError as exc:
        if run.saved_step is None:  # _save_epoch takes back what this run wrote: nothing is left to resume
            raise OutputError(f"could not write {path}: {exc.strerror or exc}. No checkpoint was saved yet, so "
                              f"nothing of this run was kept; any earlier files are unchanged. Free some space "
                              f"(or fix the folder) and run the same command again") from exc
        raise OutputError(f"could not write {path}: {exc.strerror or exc}. Earlier data is safe: "
                          f"{_kept(run)} Free some space (or fix the folder) and continue with --resume") from exc


def _record_row(run: _Run, row: dict) -> bool:
    """Add the epoch's row to the history; True when it replaced the last row (same epoch).

    The end of an epoch stopped half way by --max-steps, then resumed: its row
    is replaced, not repeated.
    """
    if run.history and run.history[-1]["epoch"] == row["epoch"]:
        run.history[-1] = row
        return True
    run.history.append(row)
    return False


def _save_epoch(run: _Run, row: dict, stats: dict) -> None:
    """Step 4: the metrics line first, then the checkpoint (atomic), so a crash between them redoes the epoch.

    An epoch stopped half way (``--max-steps``) also saves its training sums, so
    that the resumed epoch's line averages over all of its steps.

    Before the first checkpoint there is nothing to resume from: if the
    checkpoint cannot be written (a full disk, Ctrl-C, SIGTERM), the new
    ``metrics.jsonl`` is removed again, so the same command can start over.
    """
    if not run.comm.is_root:  # rank 0 writes the run's files; the others keep the history
        _record_row(run, row)
        run.saved_step = run.step
        return
    take_back = run.saved_step is None and not os.path.exists(run.metrics_path)
    try:
        if _record_row(run, row):
            _write_or_explain(run, write_metrics, run.metrics_path, run.history)
        else:
            _write_or_explain(run, append_metrics, run.metrics_path, row)
        _write_checkpoint(run, row["epoch"], _sums_if_within_epoch(run, stats))
    except BaseException:
        if take_back:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(run.metrics_path)
            run.history = []
        raise
    run.saved_step = run.step


def train(config: TrainConfig, resume: bool = False, progress: bool = True, log=print, on_step=None,
          force: bool = False):
    """Run (or resume) a training run; returns the list of per-epoch metrics.

    Args:
        config: the run's options (ignored when resuming, except ``out``,
            ``device``, ``data_dir``, ``epochs``, ``max_steps`` and ``cuda_graph``,
            which may change; the others are reported as ignored through ``log``).
        resume: continue from ``config.out/checkpoint.npz``.
        progress: show a tqdm progress bar.
        log: where one-line messages go.
        on_step: optional ``callback(step)`` after every optimiser step (tests
            use it to interrupt a run).
        force: start a new run even if ``config.out`` holds one (its
            ``metrics.jsonl`` and ``checkpoint.npz`` are removed); without it
            such a folder is refused with a ValueError.

    Raises:
        TrainingDiverged: when the loss becomes NaN or infinite.
        OutputError: when the run's files cannot be written (the earlier ones are intact).
        ValueError: bad options, an --out folder that cannot be used, a damaged checkpoint.
    """
    comm = world()
    if not comm.is_root:  # one voice: rank 0 logs and shows the progress bar
        log, progress = (lambda *args, **kwargs: None), False
    run = _set_up_everywhere(config, resume, force, log, comm)
    bar = None
    try:
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=run.total_steps, initial=run.step, unit="step", dynamic_ncols=True)
        while run.step < run.total_steps:
            # the loader counts finished epochs; a run stopped right at an epoch's
            # end (by --max-steps) has a loader still positioned after its last batch
            loader = run.loader
            epoch = loader.epoch + (1 if loader.position < run.steps_per_epoch else 2)
            stats = _train_one_epoch(run, epoch, bar, on_step)
            row = _evaluate_epoch(run, epoch, stats)
            _save_epoch(run, row, stats)
            message = (f"epoch {epoch}/{run.total_epochs}  step {run.step}  train loss {row['train_loss']:.4f} "
                       f"acc {row['train_acc']:.4f}  test loss {row['test_loss']:.4f} acc {row['test_acc']:.4f}  "
                       f"lr {row['lr']:.4g}  {row['images_per_second']:.1f} img/s")
            if bar is not None:
                bar.write(message)
            else:
                log(message)
    except BaseException as exc:
        if comm.size > 1:
            _end_every_process(comm, exc)
        raise
    finally:
        if bar is not None:
            bar.close()
        if run.lock is not None:
            run.lock.release()
    return run.history


def _set_up_everywhere(config, resume, force, log, comm) -> _Run:
    """:func:`_set_up` on every process; if one of them cannot start, none does (no process waits forever).

    A refusal that every process meets (a bad option, a busy folder) is each
    one's own line; a process that started while another could not says so.
    """
    try:
        run, error = _set_up(config, resume, force, log, comm), None
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        run, error = None, exc
    if comm.size > 1 and not comm.all_agree(error is None) and error is None:
        if run.lock is not None:
            run.lock.release()
        raise ValueError(f"another process of this run could not start (its message is above); "
                         f"process {comm.rank} stops too, nothing was trained")
    if error is not None:
        raise error
    return run


def _end_every_process(comm, exc: BaseException) -> None:
    """A failure in one process of a data-parallel run ends all of them at once (an MPI abort), with one line.

    The others may be waiting in an all-reduce that this process will never
    join: without the abort they would hang.
    """
    import sys

    if isinstance(exc, KeyboardInterrupt):
        status, what = 130, "interrupted"
    else:
        status, what = (1 if isinstance(exc, TrainingDiverged) else 2), " ".join(str(exc).split()) or type(exc).__name__
    # one write call: lines of several processes sharing a pipe do not interleave mid-line
    sys.stderr.write(f"miniran train: error on process {comm.rank} of {comm.size}: {what}; ending every process "
                     f"(checkpoints already saved are kept)\n")
    comm.abort(status)
