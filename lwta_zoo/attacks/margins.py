"""``lwta-zoo margins MODEL [MODEL ...] --data ... --n M --output DIR``: decision margins across frequencies.

The AISTATS paper's section 4.3.3 (Figs. 4 and 5), after Ortiz-Jimenez et al. (2020, "Hold me
tight! Influence of discriminative features on deep network boundaries"): for each of a sequence
of subspaces spanned by K x K blocks of the orthonormal 2D DCT, taken along the diagonal from low
to high frequency (every channel), the smallest L2 perturbation inside that subspace that changes
the prediction, found by DeepFool (Moosavi-Dezfooli et al. 2016) with every step projected onto the
subspace. Inputs are not clipped to [0, 1]: the margin is a distance to the decision boundary, not
an attack on valid images (as in Ortiz-Jimenez et al.).

A stochastic model is measured two ways, both in the report:

* ``model`` (the paper's way): DeepFool through the sampled network, every step's gradient from one
  forward of the model as it predicts (L samples), stopping as soon as one such forward changes
  class. Each boundary point found is then scored with R fresh predictions: ``really_changed`` is
  the fraction of examples where a majority of them changed class. The margin is the one found.
* ``mean`` (the classifier's own boundary): DeepFool on the deterministic mean surrogate (every
  stochastic layer in its 'mean' mode), then each boundary point scored with R fresh predictions
  of the stochastic model. Where a majority changed class the margin stands (``confirmed``); where
  not, the perturbation is extended along its own direction, by factors up to ``max_extend``, to
  the first point where a majority does (``extended``); if none does, the example is censored.

A deterministic model has one boundary, measured once (way ``deterministic``). The original class
of an example is the majority of R fresh predictions on the clean input. Examples where no boundary
was found within the budget (``max_iter`` DeepFool steps, then the extension) are *censored*: the
mean is over the others, the median counts them as larger than every margin found (so it is a
lower bound only where more than half are censored, reported as null).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import scipy.fft
import torch
import torch.nn as nn

from ..layers.stochastic import stochastic_modules
from ..sampling import folded_forward
from .pgd import frozen_parameters, gradient_surrogate
from .suite import batch_seed

WAYS = ('deterministic', 'model', 'mean')
Logits = Callable[[torch.Tensor], torch.Tensor]


def dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II of length ``n`` as an (n, n) matrix: row k is the k-th basis vector
    (scipy.fft.dct with norm='ortho' applied to the identity)."""
    return torch.from_numpy(scipy.fft.dct(np.eye(n), norm='ortho', axis=0)).float()


class DCTSubspace:
    """The span of the 2D DCT basis images (u, v), u in [u0, u0 + K), v in [v0, v0 + K), in every channel."""

    def __init__(self, height: int, width: int, origin: Tuple[int, int], block: int):
        if not (0 <= origin[0] <= height - block and 0 <= origin[1] <= width - block and block >= 1):
            raise ValueError(f'a {block}x{block} DCT block at {origin} does not fit {height}x{width} images')
        self.origin, self.block = origin, block
        self.rows, self.cols = dct_matrix(height), dct_matrix(width)
        self.mask = torch.zeros(height, width)
        self.mask[origin[0]:origin[0] + block, origin[1]:origin[1] + block] = 1

    def project(self, g: torch.Tensor) -> torch.Tensor:
        """The orthogonal projection of images ``g`` (..., H, W) onto the subspace."""
        rows, cols, mask = (t.to(g.device, g.dtype) for t in (self.rows, self.cols, self.mask))
        return rows.t() @ ((rows @ g @ cols.t()) * mask) @ cols

    def dimension(self, channels: int) -> int:
        return channels * self.block ** 2


def diagonal_subspaces(height: int, width: int, block: int, stride: int) -> List[DCTSubspace]:
    """K x K DCT blocks along the diagonal, from the lowest frequencies (0, 0) to the highest."""
    if block > min(height, width) or block < 1 or stride < 1:
        raise ValueError(f'--block {block} and --stride {stride} do not fit {height}x{width} images')
    return [DCTSubspace(height, width, (s, s), block) for s in range(0, min(height, width) - block + 1, stride)]


def subspace_deepfool(logits_fn: Logits, x: torch.Tensor, label: torch.Tensor, project: Callable, max_iter: int = 50,
                      overshoot: float = 0.02) -> Tuple[torch.Tensor, torch.Tensor]:
    """DeepFool restricted to a subspace: (perturbations, found) for inputs ``x`` of class ``label``.

    Each step linearises ``logits_fn`` at the current point (all class gradients from the same forward,
    so from the same sample of a stochastic model), projects the gradients onto the subspace and steps
    to the nearest linearised boundary within it. The iterate is ``x + (1 + overshoot) * r``; an
    example stops as soon as a forward there predicts another class (``found``) and is left where it is
    after ``max_iter`` steps otherwise. Returns ``(1 + overshoot) * r``.
    """
    n, arange = len(x), torch.arange(len(x), device=x.device)
    r = torch.zeros_like(x)
    active = torch.ones(n, dtype=torch.bool, device=x.device)
    for step in range(max_iter + 1):
        point = (x + (1 + overshoot) * r).requires_grad_(True)
        with torch.enable_grad():
            logits = logits_fn(point)
            active &= logits.argmax(1) == label
            if step == max_iter or not active.any():
                break
            grads = torch.stack([torch.autograd.grad(logits[:, j].sum(), point, retain_graph=True)[0]
                                 for j in range(logits.shape[1])], 1)  # (N, C, ...)
        diffs = project(grads - grads[arange, label].unsqueeze(1)).flatten(2)
        f = (logits - logits[arange, label].unsqueeze(1)).detach()
        norms = diffs.norm(dim=2)
        distance = f.abs() / norms.clamp_min(1e-12)
        distance[arange, label] = math.inf
        nearest = distance.argmin(1)
        w, norm = diffs[arange, nearest], norms[arange, nearest]
        step_r = ((f[arange, nearest].abs() + 1e-4) / norm.clamp_min(1e-12) ** 2).unsqueeze(1) * w
        r = r + (step_r * active.unsqueeze(1)).view_as(x)
    return ((1 + overshoot) * r).detach(), ~active


@torch.no_grad()
def changed_majority(model: nn.Module, x: torch.Tensor, label: torch.Tensor, repeats: int) -> torch.Tensor:
    """Whether a majority of ``repeats`` fresh predictions of each input (each its own samples and IBP
    masks, folded into the batch) is another class than ``label``."""
    logits = folded_forward(model, x, repeats, getattr(model, 'max_batch', None)).view(repeats, len(x), -1)
    return 2 * (logits.argmax(-1) != label).sum(0) > repeats


@torch.no_grad()
def majority_class(model: nn.Module, x: torch.Tensor, repeats: int) -> torch.Tensor:
    """The most frequent class of ``repeats`` fresh predictions of each input (ties: the lowest class)."""
    logits = folded_forward(model, x, repeats, getattr(model, 'max_batch', None)).view(repeats, len(x), -1)
    classes = logits.shape[-1]
    return torch.nn.functional.one_hot(logits.argmax(-1), classes).sum(0).argmax(-1)


def extend_until_changed(model: nn.Module, x: torch.Tensor, delta: torch.Tensor, label: torch.Tensor, repeats: int,
                         factors: Sequence[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    """For each example, ``delta`` scaled by the first of ``factors`` at which a majority of fresh
    predictions changed class; (scaled deltas, found). Unfound rows keep ``delta``."""
    out, found = delta.clone(), torch.zeros(len(x), dtype=torch.bool, device=x.device)
    for factor in factors:
        todo = ~found
        if not todo.any():
            break
        hit = changed_majority(model, x[todo] + factor * delta[todo], label[todo], repeats)
        rows = todo.nonzero()[:, 0][hit]
        out[rows], found[rows] = factor * delta[rows], True
    return out, found


def is_stochastic(model: nn.Module) -> bool:
    return next(stochastic_modules(model), None) is not None


def margins(model: nn.Module, x: torch.Tensor, subspaces: Sequence[DCTSubspace], *, repeats: int = 5,
            max_iter: int = 50, overshoot: float = 0.02, max_extend: float = 4.0, extend_steps: int = 12,
            batch_size: int = 100, seed: int = 0) -> Dict[str, Any]:
    """Per way and subspace, per example: margin (None where censored), status and the perturbation.

    Returns ``{'label': [...], 'ways': {way: [{'margin': [...], 'status': [...], 'delta': Tensor}, ...]}}``;
    the status is 'found' (deterministic), 'really_changed' / 'not_changed' (the paper's way, by fresh
    predictions), 'confirmed' / 'extended' (the surrogate's way) or 'censored'.
    """
    model.eval()
    ways = ('model', 'mean') if is_stochastic(model) else ('deterministic',)
    factors = np.geomspace(1, max_extend, extend_steps + 1)[1:].tolist()
    labels = []
    for s in range(0, len(x), batch_size):
        torch.manual_seed(batch_seed(seed, 'label', s))
        labels.append(majority_class(model, x[s:s + batch_size], repeats))
    label = torch.cat(labels)
    out: Dict[str, Any] = {'label': label.tolist(), 'ways': {w: [] for w in ways}}
    with frozen_parameters(model):
        for way in ways:
            for k, sub in enumerate(subspaces):
                deltas, statuses = [], []
                for s in range(0, len(x), batch_size):
                    xb, yb = x[s:s + batch_size], label[s:s + batch_size]
                    torch.manual_seed(batch_seed(seed, f'{way}/{k}', s))
                    with gradient_surrogate(model, 'mean' if way == 'mean' else 'model'):
                        delta, found = subspace_deepfool(model, xb, yb, sub.project, max_iter, overshoot)
                    status = np.where(found.cpu().numpy(), 'found', 'censored').astype(object)
                    if way != 'deterministic':
                        changed = changed_majority(model, xb + delta, yb, repeats) & found
                        if way == 'model':
                            status[(found & changed).cpu().numpy()] = 'really_changed'
                            status[(found & ~changed).cpu().numpy()] = 'not_changed'
                        else:
                            status[(found & changed).cpu().numpy()] = 'confirmed'
                            todo = found & ~changed
                            if todo.any():
                                longer, hit = extend_until_changed(model, xb[todo], delta[todo], yb[todo], repeats,
                                                                   factors)
                                delta[todo] = longer
                                rows = todo.nonzero()[:, 0].cpu().numpy()
                                status[rows] = np.where(hit.cpu().numpy(), 'extended', 'censored')
                    deltas.append(delta)
                    statuses += status.tolist()
                delta = torch.cat(deltas)
                norm = delta.flatten(1).norm(dim=1).tolist()
                out['ways'][way].append({'margin': [None if st == 'censored' else v for v, st in zip(norm, statuses)],
                                         'status': statuses, 'delta': delta})
    return out


def bootstrap_interval(values: np.ndarray, statistic: Callable[[np.ndarray], np.ndarray], resamples: int = 2000,
                       seed: int = 0) -> List[Optional[float]]:
    """95% percentile bootstrap interval of ``statistic`` (applied along axis 1 of resampled rows);
    an infinite end (a median of mostly censored resamples) is None."""
    if len(values) == 0:
        return [None, None]
    rng = np.random.default_rng(seed)
    stats = statistic(values[rng.integers(0, len(values), size=(resamples, len(values)))])
    ends = np.percentile(stats, 2.5, method='lower'), np.percentile(stats, 97.5, method='higher')  # no inf - inf
    return [float(v) if math.isfinite(v) else None for v in ends]


def summarise(margin: Sequence[Optional[float]], status: Sequence[str]) -> Dict[str, Any]:
    """Mean (of the margins found) and median (censored counted as infinite) with 95% bootstrap
    intervals, the censored fraction and each status's count."""
    found = np.array([m for m in margin if m is not None], dtype=float)
    everything = np.array([math.inf if m is None else m for m in margin], dtype=float)
    median = float(np.median(everything)) if len(everything) else math.inf
    return {'n': len(margin), 'n_found': len(found),
            'mean': float(found.mean()) if len(found) else None,
            'mean_interval': bootstrap_interval(found, lambda v: v.mean(1)),
            'median': median if math.isfinite(median) else None,
            'median_interval': bootstrap_interval(everything, lambda v: np.median(v, 1)),
            'censored': 1 - len(found) / max(len(margin), 1),
            'status_counts': {s: status.count(s) for s in sorted(set(status))}}


def plot_margins(report: Dict[str, Any], path: Path) -> None:
    """Margin against frequency, one line per model and way, with the 95% intervals: the mean of the
    margins found (the paper's Figs. 4/5 plot means) beside the median (censored counted as infinite)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    style = {'deterministic': '-', 'model': '--', 'mean': '-'}
    for i, (spec, entry) in enumerate(report['models'].items()):
        for way, rows in entry['ways'].items():
            for ax, key in zip(axes, ('mean', 'median')):
                xs = [k for k, r in enumerate(rows) if r[key] is not None]
                ys = [rows[k][key] for k in xs]
                lo = [ys[j] - (rows[k][f'{key}_interval'][0] or ys[j]) for j, k in enumerate(xs)]
                hi = [(rows[k][f'{key}_interval'][1] or ys[j]) - ys[j] for j, k in enumerate(xs)]
                label = short_name(spec) if way == 'deterministic' else f'{short_name(spec)} ({WAY_LABELS[way]})'
                ax.errorbar(xs, ys, yerr=[lo, hi], color=f'C{i}', ls=style[way], marker='o', capsize=3,
                            label=label if ax is axes[0] else None)
    ticks = [f"{s['origin'][0]}" for s in report['subspaces']]
    s = report['settings']
    for ax, key in zip(axes, ('mean of margins found', 'median (censored = inf)')):
        ax.set(xlabel=f"DCT block (diagonal position, {s['block']}x{s['block']}): low -> high frequency",
               ylabel=f'L2 margin, {key}', xticks=range(len(ticks)), xticklabels=ticks)
    axes[0].set_title(f"n={report['n']}, R={s['repeats']}, seed={s['seed']}, 95% bootstrap intervals", fontsize=9)
    fig.tight_layout(rect=(0, 0.06 * (1 + len(axes[0].get_legend_handles_labels()[1]) // 2), 1, 1))
    fig.legend(loc='lower center', ncol=2, fontsize=7)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def short_name(spec: str) -> str:
    """A model's name in a legend: the folder's name (a run's, for its export/), or the spec."""
    path = Path(spec)
    return path.parent.name if path.name == 'export' else path.name


WAY_LABELS = {'model': "paper's: sampled net", 'mean': 'own boundary: mean + fresh check'}


def configure_margins(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lwta-zoo margins``."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument('models', nargs='+', metavar='MODEL', help="exported folder, 'hf-hub:ORG/NAME' or 'arch.tag'")
    parser.add_argument('--data', required=True, help='.npz with images (uint8 NHWC) and labels, or a dataset name')
    parser.add_argument('--n', type=int, default=None, help='M test examples, a seeded random subset (default: all)')
    parser.add_argument('--output', required=True, help='folder for report.json and margins.png')
    parser.add_argument('--block', type=int, default=8, help='K: the DCT blocks are K x K')
    parser.add_argument('--stride', type=int, default=4, help='step between blocks along the diagonal')
    parser.add_argument('--samples', type=int, default=None, help="L samples a prediction (default: the model's)")
    parser.add_argument('--repeats', type=int, default=5, help='R fresh predictions that check a boundary point')
    parser.add_argument('--max-iter', type=int, default=50, help='DeepFool steps before an example is censored')
    parser.add_argument('--overshoot', type=float, default=0.02)
    parser.add_argument('--max-extend', type=float, default=4.0,
                        help='largest factor a surrogate boundary point is extended by before it is censored')
    parser.add_argument('--extend-steps', type=int, default=12, help='geometric steps from 1 to --max-extend')
    parser.add_argument('--batch-size', type=int, default=100)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.set_defaults(func=run_margins)


def run_margins(args: argparse.Namespace) -> int:
    """Measure every model on the same examples; write DIR/report.json and DIR/margins.png."""
    from .command import check_inputs, load_data, load_model
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_extend <= 1:
        raise ValueError(f'--max-extend must be > 1, got {args.max_extend}')
    x, y, index = load_data(args.data, args.n, args.seed)
    subspaces = diagonal_subspaces(x.shape[2], x.shape[3], args.block, args.stride)
    settings = {k: getattr(args, k) for k in ('block', 'stride', 'repeats', 'max_iter', 'overshoot', 'max_extend',
                                               'extend_steps', 'batch_size', 'seed')}
    report: Dict[str, Any] = {
        'command': getattr(args, 'command_line', None), 'data': args.data, 'n': len(x), 'indices': index.tolist(),
        'settings': settings,
        'subspaces': [{'origin': list(s.origin), 'block': s.block, 'dimension': s.dimension(x.shape[1])}
                      for s in subspaces],
        'ways': {'deterministic': 'a deterministic model: one boundary',
                 'model': "the paper's: DeepFool through the sampled network, stopping at one forward that changes "
                          'class; really_changed = a majority of R fresh predictions there changed class',
                 'mean': "the classifier's own boundary: DeepFool on the mean surrogate, checked with R fresh "
                         'predictions (confirmed), else extended along its direction (extended) or censored'},
        'models': {}}
    for spec in args.models:
        model = load_model(spec, args.samples)
        check_inputs(model, x, y, args.data)
        start = time.time()
        result = margins(model, x, subspaces, repeats=args.repeats, max_iter=args.max_iter, overshoot=args.overshoot,
                         max_extend=args.max_extend, extend_steps=args.extend_steps, batch_size=args.batch_size,
                         seed=args.seed)
        label = np.asarray(result['label'])
        entry = {'samples': getattr(model, 'num_samples', 1), 'clean_accuracy': float((label == y.numpy()).mean()),
                 'time_s': round(time.time() - start, 1), 'ways': {}, 'per_example': {'label': result['label']}}
        for way, rows in result['ways'].items():
            entry['ways'][way] = [summarise(r['margin'], r['status']) for r in rows]
            entry['per_example'][way] = [{'margin': r['margin'], 'status': r['status']} for r in rows]
        report['models'][spec] = entry
        print(f'{spec}: {entry["time_s"]} s', file=sys.stderr)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / 'report.json').write_text(json.dumps(report, indent=1))
    plot_margins(report, out / 'margins.png')
    print(format_table(report))
    return 0


def format_table(report: Dict[str, Any]) -> str:
    """One line per model, way and subspace: mean and median margin with intervals, censored share."""
    fmt = lambda v: '-' if v is None else f'{v:.3g}'  # noqa: E731
    lines = [f"{'model':<40} {'way':<13} {'block':>5} {'mean [95%]':>22} {'median [95%]':>22} {'censored':>8}  statuses"]
    for spec, entry in report['models'].items():
        for way, rows in entry['ways'].items():
            for sub, r in zip(report['subspaces'], rows):
                mean = f"{fmt(r['mean'])} [{fmt(r['mean_interval'][0])}, {fmt(r['mean_interval'][1])}]"
                median = f"{fmt(r['median'])} [{fmt(r['median_interval'][0])}, {fmt(r['median_interval'][1])}]"
                lines.append(f"{spec:<40} {way:<13} {sub['origin'][0]:>5} {mean:>22} {median:>22} "
                             f"{r['censored']:>8.2f}  {r['status_counts']}")
    return '\n'.join(lines)
