"""Figures next to an evaluation report (matplotlib, PNG).

* ``robust_vs_eps.png``: robust accuracy against eps for each attack family of a report;
* ``winner_probabilities.png``: the AISTATS paper's Figure 2, mean winning probability of
  each unit of one LWTA layer per true class, benign against PGD inputs;
* ``logit_trajectories.png``: the AISTATS paper's Figure 3, the logits of one example along
  a PGD attack on the model's own gradient, beside PGD on the mean surrogate (what an
  adaptive attacker sees) and the deterministic (ReLU) twin where given.
"""
from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from ..layers.lwta import LWTA, _blocks, lwta_modules  # noqa: E402
from .pgd import pgd  # noqa: E402


def plot_robust_vs_eps(report: Dict[str, Any], path: os.PathLike) -> None:
    """Robust accuracy against eps, one line per attack family ('pgd20', 'pgd20@4/255', ... -> 'pgd20'),
    with the 95% intervals of reports that have them."""
    families: Dict[str, list] = defaultdict(list)
    for name, a in report['attacks'].items():
        if 'eps' in a['settings']:
            acc = 100 * a['robust_accuracy']
            low, high = (100 * v for v in a.get('interval', (a['robust_accuracy'],) * 2))
            families[name.split('@')[0]].append((a['settings']['eps'] * 255, acc, acc - low, high - acc))
    fig, ax = plt.subplots(figsize=(6, 4))
    for family, points in sorted(families.items()):
        eps, acc, below, above = zip(*sorted(points))
        ax.errorbar(eps, acc, yerr=[below, above], marker='o', capsize=3, label=family)
    ax.axhline(100 * report['clean_accuracy'], color='k', ls=':', label='clean')
    ax.set(xlabel='eps (x/255, L-inf)', ylabel='robust accuracy (%)', ylim=(0, 100),
           title=f"n={report['n']}, R={report['repeats']}, 95% intervals")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@torch.no_grad()
def winner_probabilities(model: nn.Module, layer: LWTA, x: torch.Tensor, y: torch.Tensor) -> Dict[int, np.ndarray]:
    """Class -> (channels,): mean softmax winning probability of each unit of ``layer``, per true class."""
    seen: List[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0]))
    try:
        model(x)
    finally:
        handle.remove()
    h = seen[0]  # (L*N, C, ...) when the model folds L samples into the batch
    p = _blocks(h, layer.U, layer.layer_name).softmax(2).flatten(1, 2).flatten(2).mean(2)
    p = p.view(-1, len(x), p.shape[1]).mean(0)
    return {int(c): p[y == c].mean(0).cpu().numpy() for c in y.unique()}


def plot_winner_probabilities(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor,
                              path: os.PathLike, max_units: int = 32) -> None:
    """The AISTATS paper's Figure 2 on the middle LWTA layer of ``model`` (rows: the classes present in y)."""
    layers = list(lwta_modules(model))
    if not layers:
        raise ValueError(f'{type(model).__name__} has no LWTA layer')
    layer = layers[len(layers) // 2]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, inputs, title in zip(axes, (x, x_adv), ('benign', 'PGD')):
        probs = winner_probabilities(model, layer, inputs, y)
        im = ax.imshow(np.stack(list(probs.values()))[:, :max_units], cmap='Greys', vmin=0, vmax=1, aspect='auto')
        ax.set_yticks(range(len(probs)), [str(c) for c in probs])
        ax.set(title=title, xlabel='unit', ylabel='true class')
    fig.suptitle(f'{layer.layer_name}, U={layer.U}: mean winning probability per true class')
    fig.colorbar(im, ax=axes, label='winning probability')
    fig.savefig(path, dpi=120)
    plt.close(fig)


def logit_trajectory(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, steps: int,
                     gradient: str = 'model') -> np.ndarray:
    """(steps + 1, classes): the model's logits (one fresh prediction) at each PGD iterate of one example.

    The logits are those of the model as it is, also when PGD follows a surrogate gradient.
    """
    iterates = [x]
    pgd(model, x, y, eps, 2.5 * eps / steps, steps, gradient=gradient, callback=iterates.append)
    with torch.no_grad():
        return np.stack([model(it)[0].cpu().numpy() for it in iterates])


def plot_logit_trajectories(panels: Dict[str, Tuple[nn.Module, str]], x: torch.Tensor, y: torch.Tensor,
                            path: os.PathLike, eps: float, steps: int = 100) -> None:
    """The AISTATS paper's Figure 3: per panel, title -> (model, PGD gradient); same example and seed."""
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (name, (m, gradient)) in zip(axes[0], panels.items()):
        torch.manual_seed(0)
        traj = logit_trajectory(m, x[:1], y[:1], eps, steps, gradient)
        true = int(y[0])
        for c in range(traj.shape[1]):
            ax.plot(traj[:, c], lw=2.5 if c == true else 1, label=f'class {c}' + (' (true)' if c == true else ''))
        ax.set(title=name, xlabel='PGD step', ylabel='logit value')
    axes[0, -1].legend(fontsize=6, loc='center left', bbox_to_anchor=(1, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# the figures make_figures may write (``lwta-zoo eval --overwrite`` removes them with the report)
FIGURES = ('robust_vs_eps.png', 'winner_probabilities.png', 'logit_trajectories.png')


def make_figures(report: Dict[str, Any], model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 output: os.PathLike, eps: float, twin: Optional[nn.Module] = None, n: int = 32) -> List[Path]:
    """Write the three figures for ``report`` into ``output``; PGD-20 at ``eps`` on ``n`` examples for Fig. 2."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    paths = [out / FIGURES[0]]
    plot_robust_vs_eps(report, paths[0])
    x, y = x[:n], y[:n]
    if any(True for _ in lwta_modules(model)):
        torch.manual_seed(0)
        x_adv = pgd(model, x, y, eps, eps / 8, 20)
        paths.append(out / FIGURES[1])
        plot_winner_probabilities(model, x, x_adv, y, paths[-1])
    with torch.no_grad():
        correct = (model(x).argmax(1) == y).nonzero().flatten()
    i = int(correct[0]) if len(correct) else 0
    panels = {'stochastic model, PGD on its own gradient': (model, 'model')}
    if any(True for _ in lwta_modules(model)):
        panels['stochastic model, PGD on the mean surrogate'] = (model, 'mean')
    if twin is not None:
        panels['deterministic twin'] = (twin.eval(), 'model')
    paths.append(out / FIGURES[2])
    plot_logit_trajectories(panels, x[i:i + 1], y[i:i + 1], paths[-1], eps)
    return paths
