"""Robustness evaluation suite: both papers' protocols and adaptive attacks, side by side.

Every attack runs on every example; a report keeps, per example and attack, how many of R
fresh stochastic predictions of the adversarial input were correct. The rule (DESIGN.md,
"Evaluating a stochastic model honestly"): an example is *defended* against an attack if a
majority (> R/2) of R fresh predictions are correct, both on the clean input and on the
adversarial one; the stricter all-R rule is reported beside it. The worst case of an
example is the AND over the clean input and every attack run.

Determinism: before each batch of each attack the global RNG (which the LWTA samples
draw from) is seeded with ``crc32(f'{seed}/{attack}/{first example}')``, so a batch gives
the same result whatever process runs it. Under ``torchrun`` batches are dealt to the
processes round-robin and one report is merged; ``resume=True`` skips the batches a
partial report already holds.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
import zlib
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
from tqdm import tqdm

from .autoattack import apgd, autoattack
from .cw import blind_spot, cw_l2
from .pgd import pgd

AttackFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor]

# Per-dataset budgets: `eps`/`pgd_step` for the WRN paper's and the adaptive attacks, the
# AISTATS paper's PGD (its step, 2/3 eps, is Verma & Swami's public code: the paper gives none).
# Neither paper uses Fashion-MNIST: its budget is the eps our recipes train at (0.1), with the
# MNIST protocol's step counts.
PRESETS: Dict[str, Dict[str, float]] = {
    'cifar10': dict(eps=8 / 255, pgd_step=0.007, aistats_eps=0.031, aistats_steps=200),
    'mnist': dict(eps=0.3, pgd_step=0.3 * 2.5 / 20, aistats_eps=0.3, aistats_steps=500),
    'fashion_mnist': dict(eps=0.1, pgd_step=0.1 * 2.5 / 20, aistats_eps=0.1, aistats_steps=500),
}


@dataclass(frozen=True)
class Attack:
    """One attack of the suite: ``run(model, x, y, seed)`` returns adversarial inputs."""

    name: str
    protocol: str  # 'WRN paper' | 'AISTATS paper' | 'adaptive'
    settings: Dict[str, Any]
    run: AttackFn = field(compare=False)


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, seed: int, *, source: Optional[nn.Module] = None,
         **kwargs) -> torch.Tensor:
    return pgd(source if source is not None else model, x, y, **kwargs)


def _seeded(fn: Callable[..., torch.Tensor], **kwargs) -> AttackFn:
    """An AttackFn for a pyautoattack function that takes its own ``seed``."""
    return lambda model, x, y, seed: fn(model, x, y, seed=seed, **kwargs)


def _unseeded(fn: Callable[..., torch.Tensor], **kwargs) -> AttackFn:
    return lambda model, x, y, seed: fn(model, x, y, **kwargs)


def pgd_attack(name: str, protocol: str, *, eps: float, step_size: float, steps: int, gradient: str = 'model',
               eot_samples: int = 20, source: Optional[nn.Module] = None, source_name: str = '') -> Attack:
    """A PGD entry of the suite (``source`` crafts the inputs for a transfer attack)."""
    settings: Dict[str, Any] = dict(attack='pgd', eps=eps, step_size=step_size, steps=steps, random_start=True,
                                    gradient=gradient)
    if gradient == 'eot':
        settings['eot_samples'] = eot_samples
    if source is not None:
        settings['transfer_from'] = source_name or type(source).__name__
    run = partial(_pgd, source=source, eps=eps, step_size=step_size, steps=steps, gradient=gradient,
                  eot_samples=eot_samples)
    return Attack(name, protocol, settings, run)


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
    """The full suite for ``dataset`` (the budgets of ``PRESETS``: 'cifar10', 'mnist', 'fashion_mnist').

    Adaptive PGD attacks take ``adaptive_steps`` steps of 2.5 eps / steps; ``eps_sweep`` adds
    PGD-20, EoT-PGD and mean-surrogate PGD at further radii (for the eps plot); ``twin``, a
    deterministic ReLU twin, adds a transfer attack.
    """
    if dataset not in PRESETS:
        raise ValueError(f'dataset must be one of {sorted(PRESETS)}, got {dataset!r}')
    p = PRESETS[dataset]
    eps, a_eps = p['eps'], p['aistats_eps']
    cw = dict(steps=cw_steps, binary_search_steps=cw_binary_steps, lr=1e-3, initial_const=1e-2)

    def adaptive(name: str, e: float, gradient: str) -> Attack:
        return pgd_attack(name, 'adaptive', eps=e, step_size=2.5 * e / adaptive_steps, steps=adaptive_steps,
                          gradient=gradient, eot_samples=eot_samples)

    attacks = [
        pgd_attack('pgd20', 'WRN paper', eps=eps, step_size=p['pgd_step'], steps=20),
        Attack('autoattack_standard', 'WRN paper', dict(attack='autoattack', version='standard', eps=eps),
               _seeded(autoattack, eps=eps, version='standard')),
        Attack('autoattack_rand', 'WRN paper', dict(attack='autoattack', version='rand', eps=eps, eot_iter=20),
               _seeded(autoattack, eps=eps, version='rand')),
        pgd_attack('aistats_pgd', 'AISTATS paper', eps=a_eps, step_size=2 / 3 * a_eps, steps=int(p['aistats_steps'])),
        Attack('aistats_cw', 'AISTATS paper', dict(attack='cw_l2', **cw), _unseeded(cw_l2, **cw)),
        Attack('aistats_blind_spot', 'AISTATS paper', dict(attack='blind_spot', alpha=0.8, **cw),
               _unseeded(blind_spot, alpha=0.8, **cw)),
        adaptive('eot_pgd', eps, 'eot'),
        adaptive('pgd_mean', eps, 'mean'),
        adaptive('pgd_max', eps, 'max'),
        adaptive('pgd_ste', eps, 'ste'),
        Attack('apgd_mean', 'adaptive', dict(attack='apgd', loss='ce', eps=eps, steps=100, gradient='mean'),
               _seeded(apgd, eps=eps, steps=100, gradient='mean')),
    ]
    if twin is not None:
        attacks.append(pgd_attack('transfer_twin', 'adaptive', eps=eps, step_size=2.5 * eps / adaptive_steps,
                                  steps=adaptive_steps, source=twin, source_name=twin_name))
    for e in eps_sweep:
        tag = f'@{e * 255:g}/255'
        attacks += [pgd_attack('pgd20' + tag, 'WRN paper', eps=e, step_size=p['pgd_step'], steps=20),
                    adaptive('eot_pgd' + tag, e, 'eot'), adaptive('pgd_mean' + tag, e, 'mean')]
    return attacks


def select(attacks: Sequence[Attack], names: Optional[Sequence[str]]) -> List[Attack]:
    """The attacks named in ``names`` (all when None), with an error naming unknown ones."""
    if names is None:
        return list(attacks)
    known = {a.name: a for a in attacks}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f'unknown attacks {unknown}; this suite has {sorted(known)}')
    return [known[n] for n in names]


@torch.no_grad()
def correct_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, repeats: int) -> torch.Tensor:
    """How many of ``repeats`` fresh predictions (one batched forward) classify each input correctly."""
    logits = model(x.repeat(repeats, *([1] * (x.dim() - 1))))
    return logits.argmax(-1).view(repeats, -1).eq(y).sum(0)


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


def environment() -> Dict[str, Any]:
    """Versions and machine, for the report."""
    import pyautoattack
    import timm

    from .. import __version__
    return {
        'versions': {'python': sys.version.split()[0], 'torch': torch.__version__, 'timm': timm.__version__,
                     'pyautoattack': pyautoattack.__version__, 'numpy': np.__version__, 'lwta_zoo': __version__},
        'machine': {'platform': platform.platform(), 'processor': platform.processor() or platform.machine(),
                    'cpus': os.cpu_count(), 'torch_threads': torch.get_num_threads(),
                    'cuda': torch.cuda.get_device_name() if torch.cuda.is_available() else None},
    }


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
) -> Dict[str, Any]:
    """Run ``attacks`` on (x, y) in [0, 1] and return the report (written to ``output`` if given).

    ``random_inputs`` uniform-noise images feed the Random attack (0 skips it). Under
    torchrun each process takes every world-size-th batch and all return the merged report.
    Times: ``time_s`` sums every batch (all processes, earlier runs resumed); ``wall_s`` is this call.
    """
    if repeats < 1 or batch_size < 1:
        raise ValueError(f'need repeats >= 1 and batch_size >= 1, got {repeats}, {batch_size}')
    names = [a.name for a in attacks]
    if 'clean' in names or len(set(names)) != len(names):
        raise ValueError(f'attack names must be unique and not "clean": {names}')
    model.eval()
    rank, world = _distributed()
    device = _device(model)
    config = dict(n=len(x), repeats=repeats, batch_size=batch_size, seed=seed, random_inputs=random_inputs,
                  settings={a.name: a.settings for a in attacks})
    partial_path = Path(output) / 'partial' / f'rank{rank}-of-{world}.json' if output else None
    state = _load_partial(partial_path, config) if resume else None
    state = state or dict(config=config, counts={}, time={}, random=None)

    starts = list(range(0, len(x), batch_size))[rank::world]
    jobs = [(a, s) for a in [None, *attacks] for s in starts
            if str(s) not in state['counts'].get(a.name if a else 'clean', {})]
    t_start = time.time()
    for attack, s in tqdm(jobs, disable=not progress or rank > 0, desc='eval', unit='batch'):
        name = attack.name if attack else 'clean'
        xb, yb = x[s:s + batch_size].to(device), y[s:s + batch_size].to(device)
        torch.manual_seed(batch_seed(seed, name, s))
        t0 = time.time()
        x_adv = attack.run(model, xb, yb, batch_seed(seed, name, s)) if attack else xb
        counts = correct_counts(model, x_adv.detach(), yb, repeats)
        state['counts'].setdefault(name, {})[str(s)] = counts.tolist()
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
    samples = next((m.num_samples for m in model.modules() if hasattr(m, 'num_samples')), 1)
    report = _report(states, attacks, y, config, time.time() - t_start, {'samples': samples, **(meta or {})})
    if rank == 0 and output:
        write_report(report, output)
    return report


def _load_partial(path: Optional[Path], config: Dict[str, Any]) -> Optional[Dict[str, Any]]:
    if path is None or not path.exists():
        return None
    state = json.loads(path.read_text())
    old = state['config']
    same = {k: v for k, v in old.items() if k != 'settings'} == {k: v for k, v in config.items() if k != 'settings'}
    clash = [n for n, s in old['settings'].items() if n in config['settings'] and config['settings'][n] != s]
    if not same or clash:
        raise ValueError(f'{path} was written with other settings ({"attacks " + str(clash) if clash else old}); '
                         'use another output folder or run without resume')
    return state


def _save_partial(path: Optional[Path], state: Dict[str, Any]) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix('.tmp')
    tmp.write_text(json.dumps(state))
    tmp.replace(path)


def _report(states: List[Dict[str, Any]], attacks: Sequence[Attack], y: torch.Tensor, config: Dict[str, Any],
            wall: float, meta: Dict[str, Any]) -> Dict[str, Any]:
    """Merge per-process states into the report: accuracies, per-example counts and flags."""
    repeats, n = config['repeats'], config['n']
    counts: Dict[str, np.ndarray] = {}
    seconds: Dict[str, float] = {}
    for name in ['clean'] + [a.name for a in attacks]:
        c = np.full(n, -1)
        for st in states:
            for s, v in st['counts'].get(name, {}).items():
                c[int(s):int(s) + len(v)] = v
        if (c < 0).any():
            raise RuntimeError(f'{name}: {int((c < 0).sum())} examples were not evaluated')
        counts[name] = c
        seconds[name] = sum(t for st in states for t in st['time'].get(name, {}).values())
    majority = {k: 2 * v > repeats for k, v in counts.items()}
    every = {k: v == repeats for k, v in counts.items()}
    flags = {k: majority[k] & majority['clean'] for k in counts}
    flags_all = {k: every[k] & every['clean'] for k in counts}
    worst = np.logical_and.reduce(list(flags.values()))
    worst_all = np.logical_and.reduce(list(flags_all.values()))
    random_frac = next((st['random'] for st in states if st['random'] is not None), None)
    return {
        **meta,
        'n': n, 'repeats': repeats, 'batch_size': config['batch_size'], 'world_size': len(states),
        'rule': (f'defended = a majority (> {repeats}/2) of {repeats} fresh stochastic predictions are correct on the '
                 f'clean and on the adversarial input; *_all: all {repeats} are correct'),
        'clean_accuracy': float(majority['clean'].mean()),
        'clean_accuracy_all': float(every['clean'].mean()),
        'worst_case_accuracy': float(worst.mean()),
        'worst_case_accuracy_all': float(worst_all.mean()),
        'attacks': {a.name: {'protocol': a.protocol, 'settings': a.settings,
                             'robust_accuracy': float(flags[a.name].mean()),
                             'robust_accuracy_all': float(flags_all[a.name].mean()),
                             'time_s': seconds[a.name], 'time_per_example_s': seconds[a.name] / n}
                    for a in attacks},
        'robust_accuracy': {a.name: float(flags[a.name].mean()) for a in attacks},
        'random_attack': None if random_frac is None else {
            'protocol': 'AISTATS paper', 'inputs': config['random_inputs'], 'threshold': 0.9,
            'low_confidence_fraction': random_frac},
        'per_example': {'label': y.tolist(), 'correct_of_repeats': {k: v.tolist() for k, v in counts.items()},
                        'worst_case': worst.tolist(), 'worst_case_all': worst_all.tolist()},
        'time_s': sum(seconds.values()), 'wall_s': wall, 'clean_time_s': seconds['clean'],
        'seeds': {'seed': config['seed'], 'rule': "torch.manual_seed(crc32(f'{seed}/{attack}/{first example}')) "
                                                  'before each batch; pyautoattack gets the same seed'},
        **environment(),
    }


def markdown_table(report: Dict[str, Any]) -> str:
    """The report as a Markdown table for a model card."""
    r = report['repeats']
    lines = [f"Robust accuracy (%) on n={report['n']}: defended = correct in a majority of R={r} fresh predictions "
             f"(all R in brackets); L={report.get('samples', '?')} samples a prediction.", '',
             '| attack | protocol | settings | robust acc. | time / example (s) |', '|---|---|---|---|---|',
             f"| clean | | | {100 * report['clean_accuracy']:.1f} ({100 * report['clean_accuracy_all']:.1f}) "
             f"| {report['clean_time_s'] / report['n']:.2f} |"]
    for name, a in report['attacks'].items():
        s = ', '.join(f'{k}={_fmt(v)}' for k, v in a['settings'].items() if k != 'attack')
        lines.append(f"| {name} | {a['protocol']} | {s} | {100 * a['robust_accuracy']:.1f} "
                     f"({100 * a['robust_accuracy_all']:.1f}) | {a['time_per_example_s']:.2f} |")
    lines.append(f"| **worst case** | per example, over all attacks above | | "
                 f"**{100 * report['worst_case_accuracy']:.1f}** ({100 * report['worst_case_accuracy_all']:.1f}) | |")
    if report.get('random_attack'):
        ra = report['random_attack']
        lines += ['', f"Random attack (AISTATS paper): {100 * ra['low_confidence_fraction']:.1f}% of "
                      f"{ra['inputs']} uniform-noise images get confidence < {ra['threshold']} (higher is better)."]
    return '\n'.join(lines) + '\n'


def card_results(report: Dict[str, Any], label: str) -> List[Dict[str, Any]]:
    """The report as model-card results (``lwta_zoo.hub`` metrics): clean, each attack, worst case.

    ``label`` names the evaluation protocol (e.g. 'exact samples'); each result carries the
    attack's settings and what it was measured on (n, R and the rule, L, eval_tau, seed, data, command).
    """
    common = {'protocol_label': label, 'examples': report['n'], 'repeats': report['repeats'],
              'samples': report.get('samples'), 'eval_tau': report.get('eval_tau'), 'seed': report['seeds']['seed'],
              'data': report.get('data'), 'command': report.get('command')}
    rows = [{'name': f'clean accuracy ({label})', 'value': report['clean_accuracy'], **common}]
    rows += [{'name': f'{name} robust accuracy ({label})', 'value': a['robust_accuracy'], 'protocol': a['protocol'],
              **{k: v for k, v in a['settings'].items()}, **common} for name, a in report['attacks'].items()]
    rows.append({'name': f'worst-case robust accuracy ({label})', 'value': report['worst_case_accuracy'],
                 'over': sorted(report['attacks']), **common})
    return rows


def _fmt(v: Any) -> str:
    return f'{v:.4g}' if isinstance(v, float) else str(v)


def write_report(report: Dict[str, Any], output: os.PathLike) -> None:
    """DIR/report.json and DIR/report.md."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'report.json').write_text(json.dumps(report, indent=1))
    (out / 'report.md').write_text(markdown_table(report))
