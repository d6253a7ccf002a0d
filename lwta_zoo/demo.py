"""``lwta-zoo demo``: the zoo's question in a few CPU minutes, offline.

Does stochastic LWTA make a network robust, or only hard to attack through its own gradient?
The demo loads the two Fashion-MNIST networks this repo ships through torch.hub (the AISTATS
paper's softmax network, both PGD-trained at eps 0.1: ReLU, and stochastic LWTA with U=2) and
attacks each on the shipped test subset with the papers' protocol (PGD-20 on the model's own
gradient) and an adaptive attack (PGD on the mean surrogate), at eps 0.1 and 0.05. It prints each
report and a summary side by side, and writes DIR/<model>/report.{json,md} and robust_vs_eps.png.

The WRN paper authors' WRN-34-1 weights are not redistributed (their card says how to convert
them with one ``lwta-zoo import``). Where they have been converted, so that ``pretrained=True``
finds them without the Hub, the demo also attacks them on the shipped CIFAR-10 subset, under the
authors' test-time protocol (soft relaxation at temperature 0.01, which is what their attacker
differentiated) and with exact samples, in DIR/wrn34_1_lwta.authors_pgd/<protocol>/.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import torch
from timm.models import resolve_pretrained_cfg

from . import hub
from .attacks import plots
from .attacks.command import load_data
from .attacks.suite import evaluate, suite



class Data(NamedTuple):
    """A shipped test subset, the attack budgets of its dataset (``suite``) and a smaller eps for the plot."""

    dataset: str
    npz: Path
    eps_sweep: List[float]


REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / 'data'
FMNIST = Data('fashion_mnist', DATA / 'fashion_mnist_test_500.npz', [0.05])
CIFAR10 = Data('cifar10', DATA / 'cifar10_test_500.npz', [4 / 255])
FMNIST_MODELS = ('aistats_softmax_mnist.relu_fmnist_pgd', 'aistats_softmax_mnist.lwta_u2_fmnist_pgd')
AUTHORS = 'wrn34_1_lwta.authors_pgd'
ATTACKS = ('pgd20', 'pgd_mean')  # the papers' protocol, the adaptive attack (and their eps-sweep variants)
PROTOCOLS: Dict[str, Dict[str, Any]] = {
    'authors_tau0.01': {'lwta_args': {'eval_tau': 0.01}},  # the authors' test-time relaxation
    'exact_samples': {},  # the papers' model: one-hot winner samples
}


def load_model(name: str, samples: int, **kwargs: Any) -> torch.nn.Module:
    """``torch.hub.load`` from this checkout (``timm.create_model``, as hubconf does, when installed without it)."""
    if (REPO / 'hubconf.py').is_file():
        return torch.hub.load(str(REPO), name, source='local', pretrained=True, samples=samples, **kwargs)
    import timm
    return timm.create_model(name, pretrained=True, samples=samples, **kwargs)


def missing_weights(name: str) -> Optional[str]:
    """Why ``pretrained=True`` would not find ``name``'s weights locally (mirrors, HF cache), or None if it does."""
    try:
        hub.find_weights(resolve_pretrained_cfg(name), local_only=True)
    except hub.MissingWeightsError as e:
        return str(e)
    return None


def attack(name: str, data: Data, n: int, out: Path, args: argparse.Namespace, protocol: Optional[str] = None,
           **kwargs: Any) -> Dict[str, Any]:
    """Attack ``name`` (built with ``kwargs``) on ``n`` examples of ``data``; print and return the report."""
    x, y, index = load_data(str(data.npz), n, args.seed)
    attacks = [a for a in suite(data.dataset, adaptive_steps=args.steps, eps_sweep=data.eps_sweep)
               if a.name.split('@')[0] in ATTACKS]
    model = load_model(name, args.samples, **kwargs).eval()
    report = evaluate(model, x, y, attacks, repeats=args.repeats, batch_size=args.batch_size, seed=args.seed,
                      random_inputs=0, output=out,
                      meta={'model': name, **({'protocol': protocol} if protocol else {}), **kwargs,
                            'data': data.npz.name, 'indices': index.tolist(),
                            'command': getattr(args, 'command_line', 'lwta-zoo demo')})
    plots.plot_robust_vs_eps(report, out / 'robust_vs_eps.png')
    print(f"\n## {name}{', ' + protocol if protocol else ''}, n={len(y)} of {data.npz.name}\n")
    print((out / 'report.md').read_text())
    return report


def summary(reports: Dict[str, Dict[str, Any]]) -> str:
    """Clean, papers' protocol, adaptive attack (at the dataset's eps) and per-example worst case (%), a row a model."""
    rows = ['| model | eps | clean | PGD-20, own gradient (papers) | PGD, mean surrogate (adaptive) | worst case |',
            '|---|---|---|---|---|---|']
    for label, r in reports.items():
        cells = [r['clean_accuracy'], *(r['attacks'][a]['robust_accuracy'] for a in ATTACKS), r['worst_case_accuracy']]
        eps = hub.format_eps(r['attacks'][ATTACKS[0]]['settings']['eps'])
        rows.append(f'| {label} | {eps} | ' + ' | '.join(f'{100 * v:.1f}' for v in cells) + ' |')
    return '\n'.join(rows)


def run_demo(args: argparse.Namespace) -> int:
    """Attack the shipped Fashion-MNIST models, and the authors' WRN-34-1 where converted; print, write reports."""
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    output = Path(args.output)
    reports = {name: attack(name, FMNIST, args.n, output / name, args) for name in FMNIST_MODELS}
    missing = missing_weights(AUTHORS)
    if missing is None:
        for protocol, kwargs in PROTOCOLS.items():
            reports[f'{AUTHORS}, {protocol}'] = attack(AUTHORS, CIFAR10, args.cifar_n, output / AUTHORS / protocol,
                                                       args, protocol, **kwargs)
    print('\n## Summary: robust accuracy (%), defended = correct in a majority of R fresh predictions\n')
    print(summary(reports))
    if missing:
        print(f'\nThe CIFAR-10 part (the authors\' WRN-34-1) did not run. {missing}')
    print(f'\nL={args.samples}, R={args.repeats}, seed {args.seed}, {time.time() - t0:.0f} s. '
          f'Reports and plots under {output}/')
    return 0


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lwta-zoo demo``."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument('--n', type=int, default=200,
                        help=f'Fashion-MNIST test examples (a seeded subset of the shipped 500 in {FMNIST.npz.name})')
    parser.add_argument('--cifar-n', type=int, default=100,
                        help=f"CIFAR-10 test examples for the authors' weights, if converted ({CIFAR10.npz.name})")
    parser.add_argument('--samples', type=int, default=1, help='L samples a prediction')
    parser.add_argument('--repeats', type=int, default=5, help='R fresh predictions per adversarial input')
    parser.add_argument('--steps', type=int, default=20, help='steps of the adaptive attack')
    parser.add_argument('--batch-size', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--output', default='runs/demo', help='folder for the reports and plots')
    parser.set_defaults(func=run_demo)
