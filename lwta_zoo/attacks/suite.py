"""Robustness evaluation suite: both papers' protocols and adaptive attacks, side by side.

Every attack runs on every example. The estimator (docs/evaluating.md, "The estimator") separates choosing
an input from scoring it, so that prediction noise cannot bias the figures:

* every candidate input of an example (the clean input and each attack's output; an attack
  such as AutoAttack may return several, its *parts*) gets 2R fresh predictions in one folded
  forward, every copy with its own LWTA samples and IBP masks;
* **selection**: the first R draws estimate the candidate's probability of a correct
  prediction (ties broken by the mean probability of the true class);
* **evaluation**: for a set of candidates (an attack's figure: the clean input and that
  attack's outputs; a worst case: the clean input and the outputs of every attack of a threat
  model), the candidate with the lowest selection estimate is chosen and scored with its own
  last R draws, which played no part in choosing it. An example is *defended* if a majority
  (> R/2) of them are correct; the mean fraction correct (P(correct)) is reported beside it.

For a deterministic model this is the old rule exactly (defended iff correct on the clean
input and on every attack output). Each figure carries n and a 95% interval (Wilson for the
majority accuracy, a percentile bootstrap over examples for P(correct)); the old rule's
figures (AND over R-draw majorities) are kept under ``previous_rule`` for comparison.

Threat models stay apart: an L-inf worst case at eps takes the L-inf attacks of budget <= eps
(and only outputs inside the eps-ball); the L2 attacks (CW, Blind-Spot: unbounded, as in the
AISTATS paper) form an L2 threat model, reported with their median L2 distance.

Determinism: before each batch of each attack the global RNG (which the LWTA samples and IBP
masks draw from) is seeded with ``crc32(f'{seed}/{attack}/{first example}')``, so a batch gives
the same result whatever process runs it. Under ``torchrun`` batches are dealt to the
processes round-robin and one report is merged; ``resume=True`` skips the batches a partial
report already holds, and refuses a partial written for another run (model, weights, data,
L, eval_tau, attack settings, n, R, seed, library version).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from ..layers.stochastic import stochastic_modules
from ..machine import environment
from ..sampling import folded_forward
from .autoattack import apgd, autoattack
from .cw import blind_spot, cw_l2
from .pgd import frozen_parameters, gradient_surrogate, input_gradient, pgd

AttackOutput = Union[torch.Tensor, Dict[str, torch.Tensor]]
AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], AttackOutput]
FORMAT = 2  # report.json format: 2 = the selection / evaluation estimator (1: AND over R-draw majorities)
THREAT_MODELS = ('Linf', 'L2')
TOLERANCE = 1e-5  # float slack when checking that an output lies inside its eps-ball
INTERVAL_METHOD = ('95%: Wilson score interval for the majority accuracy; percentile bootstrap over examples '
                   '(2000 resamples, seed 0) for the mean P(correct)')

# Per-dataset budgets: `eps`/`pgd_step` for the WRN paper's and the adaptive attacks, the
# AISTATS paper's PGD (its step, 2/3 eps, is Verma & Swami's public code: the paper gives none;
# `aistats_steps` for its Tables 2-5, `aistats_at_steps` for its adversarial-training Tables 6
# (MNIST, 40 steps) and 7 (CIFAR-10, 20 steps), "under the same configuration" otherwise).
# Neither paper uses Fashion-MNIST: its budget is the eps our recipes train at (0.1), with the
# MNIST protocol's step counts.
BUDGETS: Dict[str, Dict[str, float]] = {
    'cifar10': dict(eps=8 / 255, pgd_step=0.007, aistats_eps=0.031, aistats_steps=200, aistats_at_steps=20),
    'mnist': dict(eps=0.3, pgd_step=0.3 * 2.5 / 20, aistats_eps=0.3, aistats_steps=500, aistats_at_steps=40),
    'fashion_mnist': dict(eps=0.1, pgd_step=0.1 * 2.5 / 20, aistats_eps=0.1, aistats_steps=500,
                          aistats_at_steps=40),
}
CHANNELS = {'cifar10': 3, 'mnist': 1, 'fashion_mnist': 1}
PRESETS = ('default', 'papers', 'adaptive', 'all')
"""Attack sets: 'default' (the strongest attacks at a cost that fits 100 CIFAR-10 examples of a
WRN-34-1 in minutes on a CPU), 'papers' (both papers' protocols), 'adaptive' (every attack built
for stochastic models) and 'all'."""


@dataclass(frozen=True)
class Attack:
    """One attack of the suite: ``run(model, x, y, seed)`` returns adversarial inputs, or a dict
    part name -> inputs (each part is scored, and the attack is their per-example worst case).

    ``threat_model`` 'Linf' with budget ``eps``, or 'L2' with ``eps`` None (unbounded);
    ``origin`` maps x to the point an L2 attack starts from (its distance is measured there);
    ``cost`` is gradient evaluations per example (an upper bound, for the time estimate);
    ``presets`` names the attack sets that include it.
    """

    name: str
    protocol: str  # 'WRN paper' | 'AISTATS paper' | 'adaptive'
    settings: Dict[str, Any]
    run: AttackFn = field(compare=False)
    threat_model: str = 'Linf'
    eps: Optional[float] = None
    cost: float = 1.0
    presets: tuple = ()
    origin: Optional[Callable[[torch.Tensor], torch.Tensor]] = field(default=None, compare=False)


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, *, source: Optional[nn.Module] = None,
         **kwargs) -> torch.Tensor:
    return pgd(source if source is not None else model, x, y, **kwargs)


def _seeded(fn: Callable[..., AttackOutput], **kwargs) -> AttackFn:
    """An AttackFn for a pyautoattack function that takes its own ``seed``."""
    return lambda model, x, y, seed: fn(model, x, y, seed=seed, **kwargs)


def _unseeded(fn: Callable[..., torch.Tensor], **kwargs) -> AttackFn:
    return lambda model, x, y, seed: fn(model, x, y, **kwargs)


def _identity(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int) -> torch.Tensor:
    return x


def null_attack(name: str) -> Attack:
    """An 'attack' that returns its input: the calibration of the estimator (its figures must
    equal clean accuracy within their intervals)."""
    return Attack(name, 'calibration', dict(attack='null'), _identity, eps=0.0, cost=0.0)


def pgd_attack(name: str, protocol: str, *, eps: float, step_size: float, steps: int, gradient: str = 'model',
               eot_samples: int = 20, source: Optional[nn.Module] = None, source_name: str = '',
               presets: tuple = ()) -> Attack:
    """A PGD entry of the suite (``source`` crafts the inputs for a transfer attack)."""
    settings: Dict[str, Any] = dict(attack='pgd', eps=eps, step_size=step_size, steps=steps, random_start=True,
                                    gradient=gradient)
    if gradient == 'eot':
        settings['eot_samples'] = eot_samples
    if source is not None:
        settings['transfer_from'] = source_name or type(source).__name__
    run = partial(_pgd, source=source, eps=eps, step_size=step_size, steps=steps, gradient=gradient,
                  eot_samples=eot_samples)
    cost = steps * (eot_samples if gradient == 'eot' else 1)
    return Attack(name, protocol, settings, run, eps=eps, cost=cost, presets=presets)


def suite(
    dataset: str = 'cifar10',
    *,
    eot_samples: int = 20,
    adaptive_steps: int = 50,
    cw_steps: int = 1000,
    cw_binary_steps: int = 10,
    eps_sweep: Sequence[float] = (),
    twin: Optional[nn.Module] = None,
    twin_name: str = '',
) -> List[Attack]:
    """The full suite for ``dataset`` (the budgets of ``BUDGETS``: 'cifar10', 'mnist', 'fashion_mnist').

    Adaptive PGD attacks take ``adaptive_steps`` steps of 2.5 eps / steps; ``eps_sweep`` adds
    PGD-20, EoT-PGD and mean-surrogate PGD at further radii (for the eps plot; in every preset);
    ``twin``, a deterministic ReLU twin, adds a transfer attack. CW's default budget (1000
    steps x 10 binary-search steps) is the one that fools undefended networks; far fewer steps
    at the AISTATS paper's learning rate (1e-3) leave saturated pixels where they are.
    """
    if dataset not in BUDGETS:
        raise ValueError(f'dataset must be one of {sorted(BUDGETS)}, got {dataset!r}')
    if min(eot_samples, adaptive_steps, cw_steps, cw_binary_steps) < 1:
        raise ValueError(f'eot_samples, adaptive_steps, cw_steps and cw_binary_steps must be >= 1, got '
                         f'{eot_samples}, {adaptive_steps}, {cw_steps}, {cw_binary_steps}')
    p = BUDGETS[dataset]
    eps, a_eps = p['eps'], p['aistats_eps']
    cw = dict(steps=cw_steps, binary_search_steps=cw_binary_steps, lr=1e-3, initial_const=1e-2)
    at_steps = int(p['aistats_at_steps'])
    strongest, papers, adaptive_ = ('default', 'adaptive', 'all'), ('papers', 'all'), ('adaptive', 'all')

    def adaptive(name: str, e: float, gradient: str, presets: tuple = adaptive_) -> Attack:
        return pgd_attack(name, 'adaptive', eps=e, step_size=2.5 * e / adaptive_steps, steps=adaptive_steps,
                          gradient=gradient, eot_samples=eot_samples, presets=presets)

    def l2(name: str, fn: Callable[..., torch.Tensor], origin=None, protocol: str = 'AISTATS paper',
           presets: tuple = papers, **settings) -> Attack:
        return Attack(name, protocol, dict(attack=fn.__name__, **settings, **cw),
                      _unseeded(fn, **settings, **cw), threat_model='L2', cost=cw_steps * cw_binary_steps,
                      presets=presets, origin=origin)

    attacks = [
        pgd_attack('pgd20', 'WRN paper', eps=eps, step_size=p['pgd_step'], steps=20,
                   presets=('default', 'papers', 'all')),
        Attack('autoattack_standard', 'WRN paper',
               dict(attack='autoattack', version='standard', parts='apgd-ce, apgd-t, fab-t, square', eps=eps),
               _seeded(autoattack, eps=eps, version='standard'), eps=eps, cost=100 + 900 + 900 + 5000 / 3,
               presets=papers),
        Attack('autoattack_rand', 'WRN paper',
               dict(attack='autoattack', version='rand', parts='apgd-ce, apgd-dlr', eps=eps, eot_iter=20),
               _seeded(autoattack, eps=eps, version='rand'), eps=eps, cost=2 * 100 * 20, presets=papers),
        pgd_attack('aistats_pgd', 'AISTATS paper', eps=a_eps, step_size=2 / 3 * a_eps, steps=int(p['aistats_steps']),
                   presets=papers),
        pgd_attack(f'aistats_pgd{at_steps}', 'AISTATS paper', eps=a_eps, step_size=2 / 3 * a_eps, steps=at_steps,
                   presets=papers),
        l2('aistats_cw', cw_l2),
        l2('aistats_blind_spot', blind_spot, origin=lambda x: 0.8 * (x - 0.5) + 0.5, alpha=0.8),
        l2('cw_mean', cw_l2, protocol='adaptive', presets=adaptive_, gradient='mean'),
        adaptive('eot_pgd', eps, 'eot'),
        adaptive('pgd_mean', eps, 'mean', strongest),
        adaptive('pgd_max', eps, 'max'),
        adaptive('pgd_ste', eps, 'ste', strongest),
        Attack('apgd_mean', 'adaptive', dict(attack='apgd', loss='ce', eps=eps, steps=100, gradient='mean'),
               _seeded(apgd, eps=eps, steps=100, gradient='mean'), eps=eps, cost=100, presets=strongest),
    ]
    if twin is not None:
        attacks.append(pgd_attack('transfer_twin', 'adaptive', eps=eps, step_size=2.5 * eps / adaptive_steps,
                                  steps=adaptive_steps, source=twin, source_name=twin_name, presets=adaptive_))
    everywhere = PRESETS
    for e in eps_sweep:
        tag = f'@{e * 255:g}/255'
        attacks += [pgd_attack('pgd20' + tag, 'WRN paper', eps=e, step_size=p['pgd_step'], steps=20,
                               presets=everywhere),
                    adaptive('eot_pgd' + tag, e, 'eot', everywhere), adaptive('pgd_mean' + tag, e, 'mean', everywhere)]
    return attacks


def select(attacks: Sequence[Attack], names: Optional[Sequence[str]] = None, preset: Optional[str] = None
           ) -> List[Attack]:
    """The attacks named in ``names``, or those of ``preset`` (all when both are None), with an
    error naming unknown ones."""
    if names is not None and preset is not None:
        raise ValueError('give attack names or a preset, not both')
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f'unknown preset {preset!r}; one of {PRESETS}')
        return [a for a in attacks if preset in a.presets or preset == 'all']
    if names is None:
        return list(attacks)
    known = {a.name: a for a in attacks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f'unknown attacks {unknown}; this suite has {sorted(known)}')
    return [known[n] for n in names]


@torch.no_grad()
def score(model: nn.Module, x_adv: torch.Tensor, y: torch.Tensor, repeats: int, max_batch: Optional[int] = None
          ) -> Dict[str, List]:
    """2R fresh predictions of each input, every copy with its own randomness (IBP masks too).

    Returns per example ``sel`` (correct among the first R), ``selp`` (their mean probability
    of the true class) and ``ev`` (correct among the last R).
    """
    n = len(x_adv)
    logits = folded_forward(model, x_adv, 2 * repeats, max_batch or getattr(model, 'max_batch', None))
    logits = logits.view(2 * repeats, n, -1)
    correct = logits.argmax(-1).eq(y)
    p_true = logits.float().softmax(-1).gather(-1, y.view(1, n, 1).expand(2 * repeats, n, 1))[..., 0]
    return {'sel': correct[:repeats].sum(0).tolist(), 'selp': p_true[:repeats].mean(0).round(decimals=6).tolist(),
            'ev': correct[repeats:].sum(0).tolist()}


def distances(x_adv: torch.Tensor, x: torch.Tensor, origin: torch.Tensor) -> Dict[str, List[float]]:
    """L-inf distance to the clean input, L2 distance to the attack's origin, and whether the
    output is a valid image (inside [0, 1])."""
    return {'linf': (x_adv - x).flatten(1).abs().amax(1).tolist(),
            'l2': (x_adv - origin).flatten(1).norm(dim=1).tolist(),
            'valid': ((x_adv >= -TOLERANCE) & (x_adv <= 1 + TOLERANCE)).flatten(1).all(1).tolist()}


@torch.no_grad()
def random_attack(model: nn.Module, shape: Sequence[int], n: int = 1000, threshold: float = 0.9,
                  batch_size: int = 250) -> float:
    """The AISTATS paper's Random attack: fraction of uniform-noise inputs with confidence < threshold."""
    low = 0
    for start in range(0, n, batch_size):
        x = torch.rand(min(batch_size, n - start), *shape, device=_device(model))
        low += int((model(x).softmax(-1).amax(-1) < threshold).sum())
    return low / n


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def batch_seed(seed: int, attack: str, first: int) -> int:
    """The seed of one batch of one attack (independent of which process runs it)."""
    return zlib.crc32(f'{seed}/{attack}/{first}'.encode())


def _distributed() -> tuple:
    """(rank, world size), joining a torchrun gloo group when launched under one."""
    if int(os.environ.get('WORLD_SIZE', '1')) > 1 and not dist.is_initialized():
        dist.init_process_group('gloo')
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sha256(*tensors: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_identity(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Dict[str, Any]:
    """What makes an evaluation of ``model`` on (x, y) that evaluation: weights, data, L, test-time sampling."""
    from .. import __version__
    state = model.state_dict()
    eval_taus = sorted({str(m.eval_tau) for m in stochastic_modules(model)})
    modes = sorted({m.mode for m in stochastic_modules(model)})
    return {'weights_sha256': _sha256(*(state[k] for k in sorted(state))), 'data_sha256': _sha256(x, y),
            'samples': next((m.num_samples for m in model.modules() if hasattr(m, 'num_samples')), 1),
            'eval_tau': eval_taus, 'modes': modes, 'lwta_zoo': __version__}


def estimate_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, jobs: Sequence[tuple], repeats: int,
                     batch_size: int) -> float:
    """Seconds the pending ``jobs`` should take, from a cost model: each attack's ``cost``
    (gradient evaluations per example) times one input gradient of its kind ('model', 'mean',
    'max', 'ste'), plus 2R predictions a candidate, all timed on the first batch."""
    xb, yb = x[:batch_size].to(_device(model)), y[:batch_size].to(_device(model))
    kinds = {'model' if a.settings.get('gradient', 'eot') == 'eot' else a.settings['gradient'] for a, _ in jobs if a}
    grad = {}
    input_gradient(model, xb[:2], yb[:2])  # warm-up: one-time costs (kernel builds, allocations)
    for kind in kinds:
        with gradient_surrogate(model, kind):
            t0 = time.time()
            input_gradient(model, xb, yb)
            grad[kind] = (time.time() - t0) / len(xb)
    t0 = time.time()
    score(model, xb, yb, 1)
    predict = (time.time() - t0) / len(xb) / 2
    total = 0.0
    for attack, s in jobs:
        rows = len(x[s:s + batch_size])
        if attack is None:
            total += rows * 2 * repeats * predict
            continue
        kind = attack.settings.get('gradient', 'model')
        parts = max(1, str(attack.settings.get('parts', '')).count(',') + 1)
        total += rows * (attack.cost * grad['model' if kind == 'eot' else kind] + parts * 2 * repeats * predict)
    return total


def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    attacks: Sequence[Attack],
    *,
    repeats: int = 5,
    batch_size: int = 100,
    seed: int = 0,
    random_inputs: int = 1000,
    output: Optional[os.PathLike] = None,
    resume: bool = False,
    progress: bool = True,
    meta: Optional[Dict[str, Any]] = None,
    identity: Optional[Dict[str, Any]] = None,
    estimate: Optional[bool] = None,
) -> Dict[str, Any]:
    """Run ``attacks`` on (x, y) in [0, 1] and return the report (written to ``output`` if given).

    ``random_inputs`` uniform-noise images feed the Random attack (0 skips it). ``identity``
    adds what names the run (model spec, data spec) to what ``run_identity`` measures; a
    resumed partial must match all of it. Under torchrun each process takes every
    world-size-th batch and all return the merged report. With ``estimate`` (default: as
    ``progress``) an estimate of the total time is printed to stderr before the first batch.
    Times: ``time_s`` sums every batch (all processes, earlier runs resumed); ``wall_s`` is this call.
    """
    if repeats < 1 or batch_size < 1:
        raise ValueError(f'need repeats >= 1 and batch_size >= 1, got {repeats}, {batch_size}')
    if len(x) < 1 or len(x) != len(y):
        raise ValueError(f'need at least one example and as many labels as inputs, got {len(x)} and {len(y)}')
    names = [a.name for a in attacks]
    if 'clean' in names or len(set(names)) != len(names) or any(':' in n for n in names):
        raise ValueError(f'attack names must be unique, without ":" and not "clean": {names}')
    bad = [a.name for a in attacks if a.threat_model not in THREAT_MODELS or (a.threat_model == 'Linf') != (
        a.eps is not None)]
    if bad:
        raise ValueError(f'attacks {bad}: an L-inf attack needs its eps, an L2 attack has none (unbounded)')
    model.eval()
    rank, world = _distributed()
    device = _device(model)
    config = dict(format=FORMAT, **(identity or {}), **run_identity(model, x, y), n=len(x), repeats=repeats,
                  batch_size=batch_size, seed=seed, random_inputs=random_inputs,
                  settings={a.name: a.settings for a in attacks})
    partial_path = Path(output) / 'partial' / f'rank{rank}-of-{world}.json' if output else None
    if resume and output:
        _check_report(Path(output) / 'report.json', config)
    state = _load_partial(partial_path, config) if resume else None
    state = state or dict(config=config, batches={}, time={}, random=None)

    starts = list(range(0, len(x), batch_size))[rank::world]
    jobs = [(a, s) for a in [None, *attacks] for s in starts
            if str(s) not in state['batches'].get(a.name if a else 'clean', {})]
    if (progress if estimate is None else estimate) and rank == 0 and jobs:
        seconds = estimate_seconds(model, x, y, jobs, repeats, batch_size)
        print(f'estimated time: {seconds / 60:.1f} min for {len(jobs)} batches on this process (each attack\'s '
              f'gradient count times one timed gradient of its kind; early stopping and AutoAttack\'s filtering '
              f'can make it shorter, a loaded machine longer)', file=sys.stderr)
    t_start = time.time()
    for attack, s in tqdm(jobs, disable=not progress or rank > 0, desc='eval', unit='batch'):
        name = attack.name if attack else 'clean'
        xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
        torch.manual_seed(batch_seed(seed, name, s))
        t0 = time.time()
        with frozen_parameters(model):
            out = attack.run(model, xb, yb, batch_seed(seed, name, s)) if attack else xb
        origin = attack.origin(xb) if attack and attack.origin else xb
        state['batches'].setdefault(name, {})[str(s)] = {
            part: {**score(model, x_adv.detach(), yb, repeats), **distances(x_adv.detach(), xb, origin)}
            for part, x_adv in (out.items() if isinstance(out, dict) else [('', out)])}
        state['time'].setdefault(name, {})[str(s)] = time.time() - t0
        _save_partial(partial_path, state)
    if rank == 0 and random_inputs and state['random'] is None:
        torch.manual_seed(batch_seed(seed, 'random', 0))
        state['random'] = random_attack(model, x.shape[1:], random_inputs)
        _save_partial(partial_path, state)

    states = [state]
    if world > 1:
        states = [None] * world
        dist.all_gather_object(states, state)
    report = _report(states, attacks, y, config, time.time() - t_start, meta or {})
    if rank == 0 and output:
        write_report(report, output)
    return report


RESUME_HINT = '; use another --output, or replace it with --overwrite'


def _differences(old: Dict[str, Any], settings: Dict[str, Any], config: Dict[str, Any], what: str) -> List[str]:
    """How the identity ``old`` and attack ``settings`` of a partial or report differ from this run's ``config``
    (attacks only one of them runs do not count: a resumed run may add attacks)."""
    diff = [f'{k} {_short(old.get(k))} != {_short(v)}' for k, v in config.items()
            if k != 'settings' and old.get(k) != v]
    diff += [f'{k} ({what} has it, this run not)' for k in old if k not in config and k != 'settings']
    diff += [f'settings of {n} {_short(s)} != {_short(config["settings"][n])}'
             for n, s in settings.items() if n in config['settings'] and config['settings'][n] != s]
    return diff


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f'{path} is not a readable {what} ({" ".join(str(e).split())}){RESUME_HINT}') from e


def _check_report(path: Path, config: Dict[str, Any]) -> None:
    """Refuse to resume into a folder whose report.json another run wrote (its figures would be replaced)."""
    if not path.exists():
        return
    report = _read_json(path, 'report')
    attacks = report.get('attacks') if isinstance(report, dict) else None
    if not (isinstance(attacks, dict) and isinstance(report.get('identity'), dict)
            and all(isinstance(a, dict) and 'settings' in a for a in attacks.values())):
        raise ValueError(f'{path} is not a report of lwta-zoo eval (format {FORMAT}){RESUME_HINT}')
    diff = _differences(report['identity'], {n: a['settings'] for n, a in attacks.items()}, config, 'report')
    if diff:
        raise ValueError(f'{path} is the report of another run: {"; ".join(diff)}{RESUME_HINT}')


def _load_partial(path: Optional[Path], config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    """The partial state at ``path`` if it was written for this run; a one-line error naming what differs."""
    if path is None or not path.exists():
        return None
    state = _read_json(path, 'partial evaluation')
    if not (isinstance(state, dict) and isinstance(state.get('config'), dict) and isinstance(state.get('batches'), dict)
            and isinstance(state.get('time'), dict) and isinstance(state['config'].get('settings', {}), dict)):
        raise ValueError(f'{path} is not a partial evaluation of lwta-zoo eval{RESUME_HINT}')
    old = state['config']
    if old.get('format') != FORMAT:
        raise ValueError(f'{path} was written by an older lwta_zoo (report format {old.get("format", 1)}, this is '
                         f'{FORMAT}){RESUME_HINT}')
    diff = _differences(old, old.get('settings', {}), config, 'partial')
    if diff:
        raise ValueError(f'{path} was written for another run: {"; ".join(diff)}{RESUME_HINT}')
    return state


def _short(v: Any) -> str:
    text = json.dumps(v)
    return text[:12] + '...' if isinstance(v, str) and len(v) == 64 else text if len(text) < 80 else text[:77] + '...'


def _save_partial(path: Optional[Path], state: Dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


# --- the estimator -------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float = 1.959964) -> List[float]:
    """95% Wilson score interval of a proportion k / n."""
    if n == 0:
        return [0.0, 1.0]
    p = k / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return [max(0.0, (centre - half) / (1 + z * z / n)), min(1.0, (centre + half) / (1 + z * z / n))]


def bootstrap(values: np.ndarray, resamples: int = 2000, seed: int = 0) -> List[float]:
    """95% percentile bootstrap interval of the mean of ``values`` (resampling examples).

    A resample is drawn as multinomial counts of the distinct values (the same distribution as
    resampling the examples, in memory that does not grow with n)."""
    rng = np.random.default_rng(seed)
    distinct, counts = np.unique(values, return_counts=True)
    means = rng.multinomial(len(values), counts / counts.sum(), size=resamples) @ distinct / len(values)
    return [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]


def figure(evaluation: np.ndarray, repeats: int) -> Dict[str, Any]:
    """Majority accuracy and mean P(correct) of per-example evaluation counts, with intervals and n."""
    defended = 2 * evaluation > repeats
    p = evaluation / repeats
    return {'accuracy': float(defended.mean()), 'interval': wilson(int(defended.sum()), len(defended)),
            'p_correct': float(p.mean()), 'p_correct_interval': bootstrap(p), 'n': int(len(defended))}


def choose(candidates: Dict[str, Dict[str, np.ndarray]], allowed: Dict[str, np.ndarray]) -> np.ndarray:
    """Per example, the index into ``allowed`` (name -> per-example mask) of the candidate with the
    fewest correct selection draws (ties: the lowest mean probability of the true class)."""
    keys = np.stack([np.where(mask, candidates[c]['sel'] + 0.5 * candidates[c]['selp'], np.inf)
                     for c, mask in allowed.items()])
    return keys.argmin(0)


def worst(candidates: Dict[str, Dict[str, np.ndarray]], allowed: Dict[str, np.ndarray], repeats: int
          ) -> tuple:
    """(figure, chosen candidate name per example) of the per-example worst case over ``allowed``."""
    names = list(allowed)
    index = choose(candidates, allowed)
    ev = np.stack([candidates[c]['ev'] for c in names])[index, np.arange(len(index))]
    return figure(ev, repeats), [names[i] for i in index]


def _report(states: List[Dict[str, Any]], attacks: Sequence[Attack], y: torch.Tensor, config: Dict[str, Any],
            wall: float, meta: Dict[str, Any]) -> Dict[str, Any]:
    """Merge per-process states into the report: every figure of the estimator, per-example counts."""
    repeats, n = config['repeats'], config['n']
    candidates: Dict[str, Dict[str, np.ndarray]] = {}
    parts: Dict[str, List[str]] = {}
    seconds: Dict[str, float] = {}
    for attack in ['clean'] + [a.name for a in attacks]:
        merged: Dict[str, Dict[str, np.ndarray]] = {}
        done = np.zeros(n, dtype=bool)
        for st in states:
            for s, entry in st['batches'].get(attack, {}).items():
                for part, values in entry.items():
                    m = merged.setdefault(part, {k: np.zeros(n) for k in values})
                    for k, v in values.items():
                        m[k][int(s):int(s) + len(v)] = v
                done[int(s):int(s) + len(next(iter(entry.values()))['sel'])] = True
        if not done.all():
            raise RuntimeError(f'{attack}: {int((~done).sum())} examples were not evaluated')
        parts[attack] = [attack + (':' + p if p else '') for p in merged]
        candidates.update({attack + (':' + p if p else ''): v for p, v in merged.items()})
        seconds[attack] = sum(t for st in states for t in st['time'].get(attack, {}).values())
    for c in candidates.values():
        c['valid'] = c['valid'].astype(bool)

    def inside(attack: Attack, candidate: str, eps: Optional[float]) -> np.ndarray:
        c = candidates[candidate]
        return c['valid'] & (c['linf'] <= eps + TOLERANCE) if eps is not None else c['valid']

    clean_only = {'clean': np.ones(n, dtype=bool)}
    clean, _ = worst(candidates, clean_only, repeats)
    report_attacks: Dict[str, Any] = {}
    for a in attacks:
        allowed = {**clean_only, **{c: inside(a, c, a.eps) for c in parts[a.name]}}
        fig, _ = worst(candidates, allowed, repeats)
        entry = {'protocol': a.protocol, 'threat_model': a.threat_model, 'eps': a.eps, 'settings': a.settings,
                 'robust_accuracy': fig['accuracy'], **fig,
                 'outside_threat_model': int(sum((~allowed[c]).sum() for c in parts[a.name])),
                 'time_s': seconds[a.name], 'time_per_example_s': seconds[a.name] / n}
        if len(parts[a.name]) > 1:
            entry['parts'] = {c.split(':', 1)[1]: worst(candidates, {**clean_only, c: allowed[c]}, repeats)[0]
                              for c in parts[a.name]}
        if a.threat_model == 'L2':
            c = candidates[parts[a.name][0]]
            found = c['l2'] > 0
            entry['found'] = int(found.sum())
            entry['median_l2'] = float(np.median(c['l2'][found])) if found.any() else None
        report_attacks[a.name] = entry

    threat_models, chosen = [], {}
    linf_eps = sorted({a.eps for a in attacks if a.threat_model == 'Linf'})
    for tm, eps in [('Linf', e) for e in linf_eps] + [('L2', None)] * any(a.threat_model == 'L2' for a in attacks):
        members = [a for a in attacks if a.threat_model == tm and (eps is None or a.eps <= eps + 1e-12)]
        allowed = {**clean_only, **{c: inside(a, c, eps) for a in members for c in parts[a.name]}}
        fig, picked = worst(candidates, allowed, repeats)
        key = f'{tm}@{eps:g}' if eps is not None else tm
        threat_models.append({'threat_model': tm, 'eps': eps, 'attacks': [a.name for a in members], **fig})
        chosen[key] = picked
    main = _main_eps(attacks)
    main_worst = next((t for t in threat_models if t['threat_model'] == 'Linf' and t['eps'] == main), None)

    sel_majority = {k: 2 * c['sel'] > repeats for k, c in candidates.items()}
    previous = {'rule': (f'defended = a majority of {repeats} predictions correct on the clean input AND on every '
                         'attack output (the same draws choose and score: biased low by noise)'),
                'clean_accuracy': float(sel_majority['clean'].mean()),
                'robust_accuracy': {a.name: float(np.logical_and.reduce(
                    [sel_majority['clean']] + [sel_majority[c] for c in parts[a.name]]).mean()) for a in attacks},
                'worst_case_accuracy': {t['threat_model'] + (f"@{t['eps']:g}" if t['eps'] is not None else ''): float(
                    np.logical_and.reduce([sel_majority['clean']] + [sel_majority[c] for a in t['attacks']
                                                                      for c in parts[a]]).mean())
                    for t in threat_models}}
    random_frac = next((st['random'] for st in states if st['random'] is not None), None)
    return {
        **meta,
        'format': FORMAT, 'identity': {k: v for k, v in config.items() if k != 'settings'},
        'n': n, 'repeats': repeats, 'samples': config['samples'], 'batch_size': config['batch_size'],
        'world_size': len(states),
        'rule': (f'per example, each candidate input (clean, each attack output inside the threat model) gets '
                 f'{repeats} selection draws; the candidate with the fewest correct is scored with {repeats} fresh '
                 f'draws: defended = a majority (> {repeats}/2) correct; p_correct = the fraction correct'),
        'interval_method': INTERVAL_METHOD,
        'clean': clean, 'clean_accuracy': clean['accuracy'],
        'attacks': report_attacks,
        'robust_accuracy': {a.name: report_attacks[a.name]['accuracy'] for a in attacks},
        'threat_models': threat_models,
        'worst_case': main_worst,
        'worst_case_accuracy': main_worst['accuracy'] if main_worst else None,
        'previous_rule': previous,
        'random_attack': None if random_frac is None else {
            'protocol': 'AISTATS paper', 'inputs': config['random_inputs'], 'threshold': 0.9,
            'low_confidence_fraction': random_frac,
            'interval': wilson(round(random_frac * config['random_inputs']), config['random_inputs'])},
        'per_example': {'label': y.tolist(),
                        'selection': {k: c['sel'].astype(int).tolist() for k, c in candidates.items()},
                        'evaluation': {k: c['ev'].astype(int).tolist() for k, c in candidates.items()},
                        'chosen': chosen},
        'time_s': sum(seconds.values()), 'wall_s': wall, 'clean_time_s': seconds['clean'],
        'seeds': {'seed': config['seed'], 'rule': "torch.manual_seed(crc32(f'{seed}/{attack}/{first example}')) "
                                                  'before each batch; pyautoattack gets the same seed'},
        **environment(),
    }


def _main_eps(attacks: Sequence[Attack]) -> Optional[float]:
    """The L-inf budget most attacks share (ties: the larger): the one the headline worst case is at."""
    counts = Counter(a.eps for a in attacks if a.threat_model == 'Linf' and a.protocol != 'calibration')
    counts = counts or Counter(a.eps for a in attacks if a.threat_model == 'Linf')
    return max(counts, key=lambda e: (counts[e], e)) if counts else None


# --- output --------------------------------------------------------------------------------------


def _pct(fig: Dict[str, Any]) -> str:
    low, high = fig['interval']
    return f"{100 * fig['accuracy']:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def _eps_text(eps: Optional[float]) -> str:
    if eps is None:
        return 'unbounded'
    return f'{round(eps * 255)}/255' if eps and abs(eps * 255 - round(eps * 255)) < 1e-6 else f'{eps:g}'


def markdown_table(report: Dict[str, Any]) -> str:
    """The report as a Markdown table for a model card (either report format)."""
    if report.get('format', 1) < 2:
        return _markdown_table_v1(report)
    r = report['repeats']
    lines = [f"Robust accuracy (%) [95% interval] on n={report['n']}, L={report.get('samples', '?')} samples a "
             f"prediction: per example the worst candidate input (by {r} selection draws) is scored with {r} fresh "
             f"draws; defended = correct in a majority. P(correct): mean fraction of the {r} fresh draws correct.", '',
             '| attack | protocol | threat model | settings | robust acc. | P(correct) | time / example (s) |',
             '|---|---|---|---|---|---|---|',
             f"| clean | | | | {_pct(report['clean'])} | {100 * report['clean']['p_correct']:.1f} "
             f"| {report['clean_time_s'] / report['n']:.2f} |"]
    for name, a in report['attacks'].items():
        s = ', '.join(f'{k}={_fmt(v)}' for k, v in a['settings'].items() if k not in ('attack', 'eps'))
        tm = f"{a['threat_model']}, eps {_eps_text(a['eps'])}"
        if a['threat_model'] == 'L2':
            tm += f", median L2 {_fmt(a['median_l2'])} ({a['found']} found)"
        lines.append(f"| {name} | {a['protocol']} | {tm} | {s} | {_pct(a)} | {100 * a['p_correct']:.1f} "
                     f"| {a['time_per_example_s']:.2f} |")
        lines += [f"| {name}: {part} | | | | {_pct(f)} | {100 * f['p_correct']:.1f} | |"
                  for part, f in a.get('parts', {}).items()]
    for t in report['threat_models']:
        lines.append(f"| **worst case** | per example, over {', '.join(t['attacks'])} | {t['threat_model']}, eps "
                     f"{_eps_text(t['eps'])} | | **{_pct(t)}** | {100 * t['p_correct']:.1f} | |")
    if report.get('random_attack'):
        ra = report['random_attack']
        low, high = ra['interval']
        lines += ['', f"Random attack (AISTATS paper): {100 * ra['low_confidence_fraction']:.1f}% "
                      f"[{100 * low:.1f}, {100 * high:.1f}] of {ra['inputs']} uniform-noise images get confidence < "
                      f"{ra['threshold']} (higher is better)."]
    return '\n'.join(lines) + '\n'


def _markdown_table_v1(report: Dict[str, Any]) -> str:
    """A report of format 1 (before the estimator): AND over R-draw majorities."""
    lines = [f"Robust accuracy (%) on n={report['n']}: {report['rule']}.", '',
             '| attack | protocol | robust acc. | all R |', '|---|---|---|---|',
             f"| clean | | {100 * report['clean_accuracy']:.1f} | {100 * report['clean_accuracy_all']:.1f} |"]
    lines += [f"| {name} | {a['protocol']} | {100 * a['robust_accuracy']:.1f} | {100 * a['robust_accuracy_all']:.1f} |"
              for name, a in report['attacks'].items()]
    lines.append(f"| **worst case** | | **{100 * report['worst_case_accuracy']:.1f}** | "
                 f"{100 * report['worst_case_accuracy_all']:.1f} |")
    return '\n'.join(lines) + '\n'


def sampling_label(eval_tau: Optional[float]) -> str:
    """How the model samples at test time: exact samples, or the authors' relaxation."""
    return 'exact samples' if eval_tau is None else f'relaxation at temperature {eval_tau}'


def report_label(report: Dict[str, Any]) -> str:
    """The evaluation protocol a report's results are labelled by: sampling and n ('exact samples, n=100')."""
    return f"{sampling_label(report.get('eval_tau'))}, n={report['n']}"


def card_results(report: Dict[str, Any], label: str) -> List[Dict[str, Any]]:
    """The report as model-card results (``lwta_zoo.hub`` metrics): clean, each attack (and its
    parts), the worst case of each threat model.

    ``label`` names the evaluation protocol (e.g. 'exact samples'). Every row has ``name``,
    ``value`` (majority accuracy), ``threat_model`` ('Linf', 'L2', None for clean), ``eps``,
    ``examples`` (n), ``repeats`` (R), ``samples`` (L), ``eval_tau``, ``interval`` ([low, high]),
    ``interval_method``, ``rule``, ``p_correct``, the seed, data and command. Reports written
    before the estimator (format 1) give their old rows, with their rule.
    """
    common = {'protocol_label': label, 'examples': report['n'], 'repeats': report['repeats'],
              'samples': report.get('samples'), 'eval_tau': report.get('eval_tau'), 'seed': report['seeds']['seed'],
              'data': report.get('data'), 'command': report.get('command'), 'rule': report.get('rule')}
    if report.get('format', 1) < 2:
        rows = [{'name': f'clean accuracy ({label})', 'value': report['clean_accuracy'], **common}]
        rows += [{'name': f'{name} robust accuracy ({label})', 'value': a['robust_accuracy'],
                  'protocol': a['protocol'], **a['settings'], **common} for name, a in report['attacks'].items()]
        rows.append({'name': f'worst-case robust accuracy ({label})', 'value': report['worst_case_accuracy'],
                     'over': sorted(report['attacks']), **common})
        return rows
    common['interval_method'] = report['interval_method']

    def row(name: str, fig: Dict[str, Any], threat_model: Optional[str], eps: Optional[float], **extra) -> Dict:
        return {'name': name, 'value': fig['accuracy'], 'threat_model': threat_model, 'eps': eps,
                'interval': fig['interval'], 'p_correct': fig['p_correct'], **extra, **common}

    rows = [row(f'clean accuracy ({label})', report['clean'], None, None)]
    for name, a in report['attacks'].items():
        settings = {k: v for k, v in a['settings'].items() if k != 'eps'}
        l2 = {'median_l2': a['median_l2'], 'found': a['found']} if a['threat_model'] == 'L2' else {}
        rows.append(row(f'{name} robust accuracy ({label})', a, a['threat_model'], a['eps'], protocol=a['protocol'],
                        **settings, **l2))
        rows += [row(f'{name} {part} robust accuracy ({label})', f, a['threat_model'], a['eps'],
                     protocol=a['protocol'], part_of=name, **settings) for part, f in a.get('parts', {}).items()]
    main = [t for t in report['threat_models'] if t == report.get('worst_case')]  # the headline one first
    rows += [row(f"worst-case robust accuracy ({t['threat_model']}, eps {_eps_text(t['eps'])}; {label})", t,
                 t['threat_model'], t['eps'], over=t['attacks'])
             for t in main + [t for t in report['threat_models'] if t not in main]]
    return rows


def _fmt(v: Any) -> str:
    return f'{v:.4g}' if isinstance(v, float) else str(v)


def write_report(report: Dict[str, Any], output: os.PathLike) -> None:
    """DIR/report.json and DIR/report.md."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'report.json').write_text(json.dumps(report, indent=1))
    (out / 'report.md').write_text(markdown_table(report))
