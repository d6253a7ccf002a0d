"""``lwta-zoo train RECIPE``: ELBO + adversarial training, checkpoints, resume, torchrun DDP, export.

Objective (the papers' ELBO, per example): cross-entropy of the (adversarial) batch plus
``kl_weight * KL / N_train``, KL summed over every stochastic layer (``kl_divergence``).
Adversarial training: PGD (Madry; one step from a random start is FGSM-RS), FGSM (one step of
size eps, no random start) or TRADES, each following the gradient the recipe names (the
model's own or an adaptive one); the ``guard`` section stops fast runs that overfit
catastrophically.

Reproducibility: data order is a function of (seed, epoch) and augmentation of (seed,
epoch, index); checkpoints (written atomically) hold model, optimizer, scheduler, every
rank's RNG state and the position in the epoch, so ``--resume`` after a kill continues
exactly where the last checkpoint left off. Under ``torchrun`` the same command trains with
DistributedDataParallel; rank 0 logs, checkpoints and exports.

Outputs in the run folder: ``recipe.yaml``, ``checkpoint.safetensors``, ``metrics.jsonl``,
``final_metrics.json``, ``export/`` (model.safetensors + config.json + README.md), and
``tensorboard/`` if asked for. A folder holds one run (``lwta_zoo.runs``): another run is refused
unless resumed (same recipe, data and library version) or ``--overwrite``, and a lock file keeps
a second process out. Checkpoints come every ``train.checkpoint_minutes`` of training too; SIGTERM
or SIGINT stops the run after its current step with a checkpoint of that step (exit status 128 +
the signal), and training stops, keeping the last checkpoint, as soon as the weights stop being finite.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import timm
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from .attacks.pgd import pgd
from .data import augment_batch, dataset_info, load_dataset
from .checkpoint import flatten, load_state, save_state
from .layers.stochastic import kl_divergence
from .machine import cpu_model, environment, native_bf16
from .recipe import Recipe, RecipeError, load_recipe
from .runs import RunFolderError, check_identity, claim, run_identity
from .sampling import set_samples

CHECKPOINT = 'checkpoint.safetensors'
# recipe keys a resumed run may change: the machine's threads (results may differ in the last bits),
# its arithmetic (bf16 autocast and channels_last: a run that moves to a CPU without native bf16 goes on
# in float32 rather than 10x slower; every (re)start's record in metrics.jsonl says which), checkpoint
# timing, where the data lies (the checkpoint's data identity checks what it holds) and the description
# (prose; the settings are the keys)
RESOURCE_KEYS = ('train.threads', 'train.bf16', 'train.channels_last', 'train.checkpoint_minutes', 'data.root',
                 'description')


def elbo_loss(logits: torch.Tensor, y: torch.Tensor, model: nn.Module, n_train: int,
              kl_weight: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(loss, ce, kl): ``loss = CE(logits, y) + kl_weight * KL / n_train`` for the last training forward."""
    ce = F.cross_entropy(logits.float(), y)
    kl = kl_divergence(model).float()
    return ce + kl_weight * kl / n_train, ce, kl


def trades_loss_fn(p_clean: torch.Tensor):
    """TRADES' inner loss KL(p_clean || p_adv) as ``loss_fn(logits, idx)`` for :func:`pgd`.

    pgd passes its ``y`` through (repeated for EoT), so the attack is run with
    ``y = arange(N)`` and the clean distribution is looked up by index.
    """
    def loss_fn(logits: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.kl_div(logits.float().log_softmax(1), p_clean[idx], reduction='batchmean')
    return loss_fn


class Distributed:
    """Rank, world size and device; under torchrun, the process group (gloo on CPU, nccl on GPU)."""

    def __init__(self, device: str):
        self.world = int(os.environ.get('WORLD_SIZE', '1'))
        self.rank = int(os.environ.get('RANK', '0'))
        local_rank = int(os.environ.get('LOCAL_RANK', '0'))
        use_cuda = torch.cuda.is_available() if device == 'auto' else device == 'cuda'
        if device == 'cuda' and not torch.cuda.is_available():
            raise RecipeError('recipe asks for train.device=cuda but CUDA is not available here')
        self.device = torch.device(f'cuda:{local_rank}' if use_cuda else 'cpu')
        if use_cuda:
            torch.cuda.set_device(self.device)
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group('nccl' if use_cuda else 'gloo')

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def gather(self, obj: Any) -> List[Any]:
        if self.world == 1:
            return [obj]
        out: List[Any] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def agree(self, flag: bool) -> bool:
        """Rank 0's ``flag`` on every rank (decisions from the clock must be the same everywhere)."""
        if self.world == 1:
            return flag
        t = torch.tensor([float(flag)], device=self.device)
        dist.broadcast(t, 0)
        return bool(t.item())

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


class TrainingDiverged(ValueError):
    """The weights stopped being finite; the message names the step, the loss and the checkpoint kept."""


class TrainingInterrupted(Exception):
    """SIGTERM or SIGINT stopped the run after a step, with a checkpoint of that step: nothing lost."""

    def __init__(self, signum: int, step: int, output: Path):
        self.signum = signum
        super().__init__(f'stopped by {signal.Signals(signum).name} after step {step}, checkpoint saved; '
                         f'--resume --output {output} continues from there')


@contextlib.contextmanager
def _stop_requests() -> Iterator[List[int]]:
    """While training, SIGTERM and SIGINT (unless ignored, as in a shell's background job) ask for a stop
    after the current step: the list collects their numbers. A second signal acts as it would have."""
    received: List[int] = []
    if threading.current_thread() is not threading.main_thread():  # handlers live in the main thread
        yield received
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def request(signum: int, frame: Any) -> None:
        received.append(signum)
        for s, handler in previous.items():
            signal.signal(s, handler)

    for s, handler in previous.items():
        if handler is not signal.SIG_IGN:
            signal.signal(s, request)
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _finite(model: nn.Module) -> bool:
    """Whether every parameter and buffer is finite (one reduction, one sync)."""
    sums = [t.detach().float().sum() for t in model.state_dict().values() if t.is_floating_point()]
    return bool(torch.isfinite(torch.stack(sums)).all()) if sums else True


def _rng_state(device: torch.device) -> Dict[str, torch.Tensor]:
    state = {'cpu': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: Dict[str, torch.Tensor], device: torch.device) -> None:
    torch.set_rng_state(state['cpu'])
    if device.type == 'cuda' and 'cuda' in state:
        torch.cuda.set_rng_state(state['cuda'], device)


def build_optimizer(model: nn.Module, r: Recipe) -> torch.optim.Optimizer:
    o = r.optim
    if o.name == 'sgd':
        return torch.optim.SGD(model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay,
                               nesterov=o.nesterov)
    return torch.optim.Adam(model.parameters(), lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(epoch: float, r: Recipe) -> float:
    """Multiplier of the base learning rate at (0-based, fractional) ``epoch``.

    ``cyclic`` changes every step; the other schedules hold one value for a whole epoch.
    """
    s = r.schedule
    if s.name == 'cyclic':
        return epoch / s.peak if epoch < s.peak else max(0.0, (r.train.epochs - epoch) / (r.train.epochs - s.peak))
    epoch = math.floor(epoch)
    if s.name == 'decay_after':
        return s.gamma ** max(0, epoch + 1 - s.start)
    if s.name == 'multistep':
        return s.gamma ** sum(epoch >= m for m in s.milestones)
    if s.name == 'cosine':
        return 0.5 * (1 + math.cos(math.pi * epoch / r.train.epochs))
    return 1.0


class Trainer:
    """One training run of a recipe into an output folder; see the module docstring."""

    def __init__(self, recipe: Recipe, output: os.PathLike, *, resume: bool = False, max_steps: Optional[int] = None,
                 overwrite: bool = False):
        self.r, self.output, self.max_steps = recipe, Path(output), max_steps
        t = recipe.train
        if t.threads:
            torch.set_num_threads(t.threads)
        self.dist = Distributed(t.device)
        self.device = self.dist.device
        if t.bf16 and not native_bf16(self.device):
            warnings.warn(f'train.bf16: this {self.device.type} has no native bfloat16 ({cpu_model()}); autocast '
                          'emulates it, about 10x slower than float32 here: train.bf16=false trains faster '
                          '(a resumed run may change it)', stacklevel=2)
        self.info = dataset_info(recipe.data.name)
        # Data first: a missing dataset fails before the model is built.
        d = recipe.data
        self.train_set = load_dataset(d.name, 'train', d.root, augment=d.augment, limit=d.train_limit, seed=t.seed,
                                      download=d.download)
        self.test_set = load_dataset(d.name, 'test', d.root, limit=d.test_limit, seed=t.seed, download=d.download)
        self.n_train = len(self.train_set)
        self.identity = run_identity(d.name, self.train_set, self.test_set)
        self.steps_per_epoch = len(self._epoch_indices(0)) // t.batch_size
        if self.steps_per_epoch < 1:
            raise RecipeError(f'train.batch_size={t.batch_size} x {self.dist.world} processes exceeds the '
                              f'{self.n_train} training examples')

        if d.on_device:
            self.device_images = self.train_set.images.to(self.device)
            self.device_labels = self.train_set.labels.to(self.device)
        torch.manual_seed(t.seed)  # the same initial weights on every rank
        try:
            self.model = timm.create_model(recipe.model.name, num_classes=self.info.num_classes, **recipe.model.args)
        except TypeError as e:  # an argument the model's builder does not take
            raise RecipeError(f'recipe key model.args {recipe.model.args} does not fit {recipe.model.name}: {e}') from None
        in_chans, size = getattr(self.model, 'in_chans', None), self.model.pretrained_cfg.get('input_size')
        if (in_chans is not None and in_chans != self.info.shape[0]) or (
                self.model.pretrained_cfg.get('fixed_input_size') and tuple(size) != self.info.shape):
            raise RecipeError(f'model {recipe.model.name} takes {in_chans}-channel inputs'
                              + (f' of size {tuple(size)}' if self.model.pretrained_cfg.get('fixed_input_size') else '')
                              + f'; {d.name} images are {self.info.shape} (model.args in_chans / img_size?)')
        self.model.to(self.device, memory_format=torch.channels_last if t.channels_last else torch.preserve_format)
        self.ddp = (DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == 'cuda'
                                            else None) if self.dist.world > 1 else self.model)
        self.optimizer = build_optimizer(self.model, recipe)
        # stepped after every optimizer step: the lambda sees the step count
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda step: lr_factor(step / self.steps_per_epoch, recipe))
        self.guard_set = self._guard_examples() if recipe.guard.enabled else None
        self.guard_best: Optional[Dict[str, Any]] = None  # {'accuracy', 'epoch', 'model'} of the best epoch
        torch.manual_seed(t.seed + 1_000 * (self.dist.rank + 1))  # distinct noise per rank
        self.epoch, self.step_in_epoch, self.step = 0, 0, 0
        # Nothing is written before the folder is claimed (rank 0) and a resumed checkpoint is checked.
        self.lock = claim(self.output, CHECKPOINT, resume=resume, overwrite=overwrite) if self.dist.main else None
        try:
            if resume:
                self._load_checkpoint()
            elif self.dist.main:
                (self.output / 'recipe.yaml').write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
                (self.output / 'metrics.jsonl').write_text('')
        except BaseException:
            self.close()
            raise
        self.saved_at, self.saved_step = time.monotonic(), self.step
        self.writer = self._tensorboard() if t.tensorboard and self.dist.main else None

    def close(self) -> None:
        """Release the run folder and the process group."""
        if self.lock is not None:
            self.lock.release()
        self.dist.close()

    # ------------------------------------------------------------------ helpers
    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            warnings.warn('train.tensorboard=true but tensorboard is not installed (pip install tensorboard); '
                          'metrics go to metrics.jsonl only')
            return None
        return SummaryWriter(str(self.output / 'tensorboard'))

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.r.train.bf16)

    def _to_device(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        fmt = torch.channels_last if self.r.train.channels_last else torch.contiguous_format
        return x.to(self.device, memory_format=fmt, non_blocking=True), y.to(self.device, non_blocking=True)

    def _epoch_indices(self, epoch: int) -> List[int]:
        """This rank's training indices for ``epoch``: a permutation fixed by (seed, epoch)."""
        sampler = DistributedSampler(self.train_set, self.dist.world, self.dist.rank, shuffle=True,
                                     seed=self.r.train.seed, drop_last=True)
        sampler.set_epoch(epoch)
        return list(sampler)

    def _log(self, record: Dict[str, Any]) -> None:
        if not self.dist.main:
            return
        with open(self.output / 'metrics.jsonl', 'a') as f:
            f.write(json.dumps(record) + '\n')
        if self.writer is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ('step', 'epoch'):
                    self.writer.add_scalar(k, v, record['step'])

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> None:
        """Write the checkpoint atomically (temp file + rename); every rank contributes its RNG state."""
        rng = self.dist.gather(_rng_state(self.device))
        if self.dist.main:
            state = {
                'model': self.model.state_dict(), 'optimizer': self.optimizer.state_dict(),
                'scheduler': self.scheduler.state_dict(), 'rng': rng, 'epoch': self.epoch,
                'step_in_epoch': self.step_in_epoch, 'step': self.step, 'world_size': self.dist.world,
                'recipe': self.r.to_dict(), 'guard_best': self.guard_best, 'identity': self.identity,
            }
            save_state(state, self.output / CHECKPOINT)
        self.dist.barrier()
        self.saved_at, self.saved_step = time.monotonic(), self.step

    def _load_checkpoint(self) -> None:
        path = self.output / CHECKPOINT
        state = load_state(path)
        # A key the checkpoint lacks was added to the schema after it was written: its default is
        # what that run did. RESOURCE_KEYS are the machine's, not the run's.
        saved = {**flatten(Recipe().to_dict()), **flatten(state['recipe'])}
        now = flatten(self.r.to_dict())
        diff = sorted(k for k in saved.keys() | now.keys() if saved.get(k) != now.get(k) and k not in RESOURCE_KEYS)
        if diff:
            raise RecipeError(f'--resume: the recipe differs from the one in {path} at {diff}; '
                              f'resume with {self.output / "recipe.yaml"}')
        check_identity(state.get('identity'), self.identity, path)
        if state['world_size'] != self.dist.world:
            raise RunFolderError(f'--resume: checkpoint written by {state["world_size"]} processes, '
                                 f'now {self.dist.world}; exact resumption needs the same number')
        self.model.load_state_dict(state['model'])
        self.optimizer.load_state_dict(state['optimizer'])
        self.scheduler.load_state_dict(state['scheduler'])
        _set_rng_state(state['rng'][self.dist.rank], self.device)
        self.epoch, self.step_in_epoch, self.step = state['epoch'], state['step_in_epoch'], state['step']
        self.guard_best = state.get('guard_best')
        if self.dist.main:  # drop metrics logged after the checkpoint: they are about to be redone
            log = self.output / 'metrics.jsonl'
            lines = log.read_text().splitlines() if log.is_file() else []
            kept = [ln for ln in lines if json.loads(ln).get('step', 0) <= self.step]
            log.write_text(''.join(ln + '\n' for ln in kept))
            print(f'resumed from {path}: epoch {self.epoch + 1}, step {self.step} '
                  f'({self.step_in_epoch}/{self.steps_per_epoch} of the epoch)')

    # ------------------------------------------------------------------ training
    def adversarial(self, x: torch.Tensor, y: torch.Tensor, p_clean: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The training attack's inputs for (x, y), attacking the unwrapped model in ``model_mode``."""
        a = self.r.adversary
        steps, step_size, random_start = (1, a.eps, False) if a.method == 'fgsm' else (a.steps, a.step_size,
                                                                                      a.random_start)
        loss_kw = {}
        if a.method == 'trades':
            loss_kw = {'loss_fn': trades_loss_fn(p_clean)}
            y = torch.arange(len(x), device=x.device)
        was_training = self.model.training
        self.model.train(a.model_mode == 'train')
        try:
            with self._autocast():
                return pgd(self.model, x, y, a.eps, step_size, steps, random_start=random_start,
                           init_scale=a.init_scale, project=a.project,
                           gradient=a.gradient, eot_samples=a.eot_samples, **loss_kw)
        finally:
            self.model.train(was_training)

    def training_loss(self, x: torch.Tensor, y: torch.Tensor) -> Tuple[torch.Tensor, Dict[str, float], torch.Tensor]:
        """(loss, parts for the log, logits) of one batch: the ELBO on the recipe's (adversarial) inputs."""
        a, w = self.r.adversary, self.r.train.kl_weight
        if a.method == 'trades':  # CE(clean) + beta * KL(p_clean || p_adv), KL terms of both forwards averaged
            with self._autocast():
                logits_clean = self.ddp(x)
            _, ce, kl_c = elbo_loss(logits_clean, y, self.model, self.n_train, w)
            x_adv = self.adversarial(x, y, logits_clean.detach().float().softmax(1))
            with self._autocast():
                logits = self.ddp(x_adv)
            kl = 0.5 * (kl_c + kl_divergence(self.model).float())
            robust = trades_loss_fn(logits_clean.float().softmax(1))(logits, torch.arange(len(x), device=x.device))
            loss = ce + a.trades_beta * robust + w * kl / self.n_train
            return loss, {'ce': ce.item(), 'trades_kl': robust.item(), 'kl': kl.item()}, logits
        if a.method != 'none':
            x = self.adversarial(x, y)
        with self._autocast():
            logits = self.ddp(x)
        loss, ce, kl = elbo_loss(logits, y, self.model, self.n_train, w)
        return loss, {'ce': ce.item(), 'kl': kl.item()}, logits

    def _batches(self) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """This epoch's remaining batches (after ``step_in_epoch`` on a resume)."""
        t = self.r.train
        self.train_set.set_epoch(self.epoch)
        indices = self._epoch_indices(self.epoch)[self.step_in_epoch * t.batch_size:]
        if self.r.data.on_device:
            return self._device_batches(indices, self.step_in_epoch)
        # A generator of its own: creating the iterator must not draw from the global RNG (resume).
        loader = DataLoader(self.train_set, batch_size=t.batch_size, sampler=indices, drop_last=True,
                            num_workers=self.r.data.workers, pin_memory=self.device.type == 'cuda',
                            generator=torch.Generator().manual_seed(t.seed + self.epoch))
        return iter(loader)

    def _device_batches(self, indices: List[int], first: int) -> Iterator[Tuple[torch.Tensor, torch.Tensor]]:
        """Batches gathered from the training set held on the device, augmented there; batch k of an
        epoch draws from a generator seeded by (seed, epoch, k), so a resumed run sees the same batches."""
        t, images, labels = self.r.train, self.device_images, self.device_labels
        order = torch.tensor(indices, dtype=torch.long, device=self.device)
        generator = torch.Generator(self.device)
        for b in range(len(indices) // t.batch_size):
            idx = order[b * t.batch_size:(b + 1) * t.batch_size]
            x = images[idx]
            if self.train_set.transform is not None:  # the dataset's augmentation, batched
                generator.manual_seed((t.seed * 1_000_003 + self.epoch) * 1_000_003 + first + b)
                x = augment_batch(x, generator)
            yield x.float().div_(255), labels[idx]

    def fit(self) -> Dict[str, Any]:
        """Train to the end of the recipe (or ``max_steps``), evaluate, export; returns the final metrics."""
        t = self.r.train
        acc_key = 'train_adv_acc' if self.r.adversary.method != 'none' else 'train_acc'
        stopped = bool(self.guard_best and self.guard_best.get('stopped_after_epoch'))
        # Where each (re)started piece of the run trains, for the card's record of the training cost.
        self._log({'step': self.step, 'start': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
                   'processes': self.dist.world, 'bf16': t.bf16, 'channels_last': t.channels_last,
                   **environment()})
        with _stop_requests() as signals:
            stopped, interrupted = self._train_epochs(stopped, acc_key, signals)
        if interrupted:
            raise TrainingInterrupted(signals[0] if signals else signal.SIGTERM, self.step, self.output)  # rank 0's
        metrics = self.evaluate()
        self._log({'step': self.step, 'epoch': self.epoch + self.step_in_epoch / self.steps_per_epoch, **metrics,
                   'final': True})
        if self.dist.main:
            self._export(metrics)
            if self.lock is not None:  # the run is done: the folder is free
                self.lock.release()
        self.dist.barrier()
        if self.writer is not None:
            self.writer.close()
        return metrics

    def _train_epochs(self, stopped: bool, acc_key: str, signals: List[int]) -> Tuple[bool, bool]:
        """The epochs from where the run stands, checkpointing as it goes; returns (stopped, interrupted):
        stopped early (guard, ``max_steps``) and stopped by a signal (``_stop_requests``)."""
        t = self.r.train
        interrupted = False
        while self.epoch < t.epochs and not stopped:
            self.ddp.train()
            bar = tqdm(self._batches(), total=self.steps_per_epoch, initial=self.step_in_epoch,
                       desc=f'epoch {self.epoch + 1}/{t.epochs}', disable=not self.dist.main, dynamic_ncols=True)
            seen = correct = batches = 0
            start = time.time()
            for x, y in bar:
                x, y = self._to_device(x, y)
                loss, parts, logits = self.training_loss(x, y)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.scheduler.step()
                self.step += 1
                if not _finite(self.model):
                    raise TrainingDiverged(
                        f'step {self.step}: the weights are no longer finite (loss {loss.item():.4g}); stopped. '
                        + (f'The checkpoint of step {self.saved_step} is kept. ' if (self.output / CHECKPOINT).is_file()
                           else '') + f'A smaller optim.lr (now {self.r.optim.lr:g}) may help')
                self.step_in_epoch += 1
                seen, batches = seen + len(y), batches + 1
                correct += (logits.argmax(1) == y).sum().item()
                bar.set_postfix(loss=f'{loss.item():.3f}', **{acc_key: f'{correct / seen:.3f}'})
                if self.step % t.log_every == 0:
                    self._log({'step': self.step, 'epoch': self.epoch + self.step_in_epoch / self.steps_per_epoch,
                               'loss': loss.item(), **parts, acc_key: correct / seen,
                               'lr': self.optimizer.param_groups[0]['lr'],
                               'sec_per_step': (time.time() - start) / batches})
                if self.max_steps is not None and self.step >= self.max_steps:
                    stopped = True
                    break
                if self.dist.agree(bool(signals)):
                    stopped = interrupted = True
                    break
                due = bool(t.checkpoint_every and self.step % t.checkpoint_every == 0) or self.dist.agree(
                    bool(t.checkpoint_minutes) and time.monotonic() - self.saved_at >= 60 * t.checkpoint_minutes)
                if due and self.step_in_epoch < self.steps_per_epoch:
                    self.save_checkpoint()
            bar.close()
            if stopped and self.step_in_epoch < self.steps_per_epoch:
                self.save_checkpoint()
                break
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if self.guard_set is not None and self._guard_stops():
                stopped = True
            last = self.epoch == t.epochs or stopped
            if not last and self.r.eval.every and self.epoch % self.r.eval.every == 0:
                self._log({'step': self.step, 'epoch': self.epoch, **self.evaluate()})
            self.save_checkpoint()
        return stopped, interrupted

    # ------------------------------------------------------------------ catastrophic-overfitting guard
    def _guard_examples(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """The guard's fixed training images (no augmentation), chosen by the seed."""
        n = min(self.r.guard.examples, self.n_train)
        idx = torch.randperm(self.n_train, generator=torch.Generator().manual_seed(self.r.train.seed))[:n]
        return self.train_set.images[idx].float().div(255), self.train_set.labels[idx]

    def guard_accuracy(self) -> float:
        """PGD accuracy of the model (eval mode) on the guard's images; the training RNG is left as it was."""
        g, a = self.r.guard, self.r.adversary
        x_all, y_all = self.guard_set
        was_training = self.model.training
        self.model.eval()
        correct = 0
        with torch.random.fork_rng(devices=[self.device] if self.device.type == 'cuda' else []):
            torch.manual_seed(self.r.train.seed)
            for start in range(0, len(y_all), self.r.eval.batch_size):
                x, y = self._to_device(x_all[start:start + self.r.eval.batch_size],
                                       y_all[start:start + self.r.eval.batch_size])
                with self._autocast():
                    x_adv = pgd(self.model, x, y, a.eps, a.eps / 4, g.steps)
                    with torch.no_grad():
                        correct += (self.model(x_adv).argmax(1) == y).sum().item()
        self.model.train(was_training)
        return correct / len(y_all)

    def _guard_stops(self) -> bool:
        """After an epoch: log the guard's accuracy; on a collapse restore the best epoch and return True."""
        acc = self.guard_accuracy() if self.dist.main else 0.0
        acc = self.dist.gather(acc)[0]
        best = self.guard_best
        record = {'step': self.step, 'epoch': self.epoch, 'guard_pgd_acc': acc}
        if best is None or acc >= best['accuracy']:
            self.guard_best = {'accuracy': acc, 'epoch': self.epoch,
                               'model': {k: v.detach().clone() for k, v in self.model.state_dict().items()}}
            self._log(record)
            return False
        if acc >= best['accuracy'] - self.r.guard.drop:
            self._log(record)
            return False
        self.model.load_state_dict(best['model'])
        best['stopped_after_epoch'] = self.epoch  # a resumed run does not train on
        self._log({**record, 'catastrophic_overfitting': True, 'restored_epoch': best['epoch'],
                   'restored_guard_pgd_acc': best['accuracy']})
        if self.dist.main:
            print(f'catastrophic overfitting: guard PGD accuracy {acc:.3f} after epoch {self.epoch}, best '
                  f'{best["accuracy"]:.3f} after epoch {best["epoch"]}; restored that epoch\'s weights and stopped')
        return True

    # ------------------------------------------------------------------ evaluation and export
    def eval_attack(self) -> Dict[str, Any]:
        """The settings of the robust-accuracy attack (recipe ``eval`` with defaults from ``adversary``)."""
        e = self.r.eval
        eps = e.eps if e.eps is not None else self.r.adversary.eps
        return {'eps': eps, 'step_size': e.step_size if e.step_size is not None else eps / 4, 'steps': e.steps,
                'gradient': e.gradient, 'random_start': True}

    def evaluate(self) -> Dict[str, Any]:
        """Rank 0: clean accuracy on the test set and PGD accuracy on its first ``eval.limit`` examples."""
        if not self.dist.main:
            return {}
        e, model = self.r.eval, self.model
        attack = self.eval_attack()
        was_training = model.training
        model.eval()
        restore = getattr(model, 'num_samples', None)
        if restore is not None or e.samples > 1:
            set_samples(model, e.samples)
        loader = DataLoader(self.test_set, batch_size=e.batch_size, shuffle=False,
                            generator=torch.Generator().manual_seed(self.r.train.seed))
        clean = robust = attacked = 0
        for x, y in loader:
            x, y = self._to_device(x, y)
            with torch.no_grad(), self._autocast():
                clean += (model(x).argmax(1) == y).sum().item()
            n = min(len(y), (e.limit if e.limit is not None else len(self.test_set)) - attacked)
            if n > 0 and attack['eps'] > 0:
                with self._autocast():
                    x_adv = pgd(model, x[:n], y[:n], attack['eps'], attack['step_size'], attack['steps'],
                                gradient=attack['gradient'])
                with torch.no_grad(), self._autocast():
                    robust += (model(x_adv).argmax(1) == y[:n]).sum().item()
                attacked += n
        if restore is not None:
            set_samples(model, restore)
        model.train(was_training)
        metrics: Dict[str, Any] = {'test_clean_acc': clean / len(self.test_set), 'test_n': len(self.test_set)}
        if attacked:
            metrics.update({'test_pgd_acc': robust / attacked, 'test_pgd_n': attacked})
        return metrics

    def _export(self, metrics: Dict[str, Any]) -> None:
        """Final metrics to final_metrics.json; weights, config and model card to ``export/``."""
        from .hub import save_pretrained

        e = self.r.eval
        full = {**metrics, 'samples': e.samples, 'pgd': self.eval_attack(), 'steps_trained': self.step,
                'epochs_trained': self.epoch + self.step_in_epoch / self.steps_per_epoch,
                'dataset': self.r.data.name}
        if self.guard_best is not None:
            stop = self.guard_best.get('stopped_after_epoch')
            full['guard'] = {'best_pgd_acc': self.guard_best['accuracy'], 'best_epoch': self.guard_best['epoch'],
                             'catastrophic_overfitting_after_epoch': stop,
                             'weights_from_epoch': self.guard_best['epoch'] if stop else self.epoch}
        (self.output / 'final_metrics.json').write_text(json.dumps(full, indent=2) + '\n')
        save_pretrained(self.model, self.output / 'export', recipe=self.r.to_dict(), metrics=full)
        print(f'exported to {self.output / "export"}: {json.dumps(metrics)}')


def train(recipe: Recipe, output: os.PathLike, *, resume: bool = False, max_steps: Optional[int] = None,
          overwrite: bool = False) -> Dict[str, Any]:
    """Run ``recipe`` into ``output`` (see :class:`Trainer`); returns the final metrics."""
    trainer = Trainer(recipe, output, resume=resume, max_steps=max_steps, overwrite=overwrite)
    try:
        return trainer.fit()
    finally:
        trainer.close()


# ---------------------------------------------------------------------- CLI

def _run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.data_dir is not None:
        overrides.append(f'data.root={args.data_dir}')
    recipe = load_recipe(args.recipe, overrides)
    output = args.output or Path('runs') / Path(args.recipe).stem
    try:
        train(recipe, output, resume=args.resume, max_steps=args.max_steps, overwrite=args.overwrite)
    except TrainingInterrupted as e:
        print(f'lwta-zoo train: {e}', file=sys.stderr)
        return 128 + e.signum
    return 0


def configure_train(parser: argparse.ArgumentParser) -> None:
    """``lwta-zoo train RECIPE [key=value ...] [--output DIR] [--max-steps N] [--resume] [--data-dir DIR]``."""
    parser.description = 'Train a model from a YAML recipe (works under torchrun for DDP).'
    parser.add_argument('recipe', type=Path, help='recipes/<name>.yaml')
    parser.add_argument('overrides', nargs='*', metavar='key=value',
                        help='override recipe values, e.g. train.epochs=2 adversary.gradient=eot')
    parser.add_argument('--output', type=Path, default=None, help='run folder (default: runs/<recipe name>)')
    parser.add_argument('--max-steps', type=int, default=None, help='stop after N optimizer steps in total')
    parser.add_argument('--resume', action='store_true', help='continue from <output>/checkpoint.safetensors')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace the run in <output> (its recipe, log, checkpoint and export) with this one')
    parser.add_argument('--data-dir', default=None, help='folder of local dataset files (sets data.root)')
    parser.set_defaults(func=_run)


def main(argv: Optional[List[str]] = None) -> int:
    """``python -m lwta_zoo.train ...`` (e.g. under ``torchrun -m``): the same as ``lwta-zoo train ...``."""
    from .cli import main as cli_main

    return cli_main(['train', *(sys.argv[1:] if argv is None else argv)])


if __name__ == '__main__':
    raise SystemExit(main())
