"""AutoAttack and APGD through pyautoattack (Croce & Hein 2020), on any gradient of ours.

pyautoattack's ``run_standard_evaluation`` attacks only the examples its one clean forward
classifies correctly and keeps an attack's output only where one more forward is fooled; on a
stochastic model that skips examples and throws away the best iterates. Here every sub-attack
of AutoAttack runs on its own and its output is returned, so that the evaluation suite can
score each one (and their per-example worst case) with fresh draws. The APGD runs attack
every example and return, per example, the adversarial point they found, else their
highest-loss iterate. pyautoattack wants contiguous inputs (its checks call ``.view``) and a
device; both are taken care of here.
"""
from __future__ import annotations

import logging
from typing import Dict

import torch
import torch.nn as nn
from pyautoattack import AutoAttack
from pyautoattack.autopgd_base import APGDAttack

from .pgd import gradient_surrogate

VERSIONS = ('standard', 'rand')
logging.getLogger('auto-attack').setLevel(logging.WARNING)


def apgd_every_example(attack: APGDAttack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One APGD run on every example: where it found an adversarial point that point, else its
    highest-loss iterate (``APGDAttack.perturb`` skips examples a clean forward gets wrong)."""
    attack.init_hyperparam(x)
    torch.manual_seed(int(attack.seed))
    x_best, acc, _, x_best_adv = attack.attack_single_run(x.contiguous(), y.contiguous())
    fooled = (acc == 0).view(-1, *[1] * (x.dim() - 1))
    return torch.where(fooled, x_best_adv, x_best).detach()


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, version: str = 'standard',
               seed: int = 0) -> Dict[str, torch.Tensor]:
    """L-inf AutoAttack's sub-attacks, each run on its own: name -> adversarial inputs.

    'standard': APGD-CE (every example), APGD-T, FAB-T and Square (as pyautoattack runs them:
    on the examples a clean forward classifies correctly); 'rand': APGD-CE and APGD-DLR with
    EoT over 20 draws, every example.
    """
    if version not in VERSIONS:
        raise ValueError(f'AutoAttack version must be one of {VERSIONS}, got {version!r}')
    x, y = x.contiguous(), y.contiguous()
    adversary = AutoAttack(model, eps=eps, version=version, seed=seed, device=x.device)
    with torch.no_grad():
        targets = min(9, model(x[:1]).shape[1] - 1)
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = targets
    out: Dict[str, torch.Tensor] = {}
    for name in adversary.attacks_to_run:
        if name in ('apgd-ce', 'apgd-dlr'):
            adversary.apgd.loss, adversary.apgd.seed = name.split('-')[1], seed
            out[name] = apgd_every_example(adversary.apgd, x, y)
        elif name == 'apgd-t':
            adversary.apgd_targeted.seed = seed
            out[name] = adversary.apgd_targeted.perturb(x, y).detach()
        elif name == 'fab-t':
            adversary.fab.targeted, adversary.fab.n_restarts, adversary.fab.seed = True, 1, seed
            out[name] = adversary.fab.perturb(x, y).detach()
        else:  # square
            adversary.square.seed = seed
            out[name] = adversary.square.perturb(x, y).detach()
    return out


def apgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, steps: int = 100, loss: str = 'ce',
         restarts: int = 1, eot_iter: int = 1, gradient: str = 'model', seed: int = 0) -> torch.Tensor:
    """L-inf APGD following ``gradient`` ('model', 'mean', 'max', 'ste'); EoT is ``eot_iter``.

    On a surrogate gradient APGD keeps the highest-loss point of each example (a surrogate
    that is already fooled says little about the real model); otherwise, per example, the
    adversarial point it found, else its highest-loss iterate (``apgd_every_example``).
    """
    attack = APGDAttack(model, n_iter=steps, eps=eps, loss=loss, n_restarts=restarts, eot_iter=eot_iter,
                        seed=seed, device=x.device)
    if gradient == 'eot':
        raise ValueError("APGD averages gradients itself: use gradient='model' with eot_iter")
    with gradient_surrogate(model, gradient), torch.enable_grad():
        if gradient == 'model' and restarts == 1:
            return apgd_every_example(attack, x, y)
        return attack.perturb(x.contiguous(), y.contiguous(), best_loss=gradient != 'model').detach()
