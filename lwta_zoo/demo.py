"""``lwta-zoo demo``: the zoo in a few CPU minutes, offline.

Loads the authors' WRN-34-1 stochastic-LWTA weights (shipped in this repo) through
torch.hub and attacks them on the shipped CIFAR-10 test subset twice: under the authors'
test-time protocol (soft relaxation at temperature 0.01, which is what their attacker
differentiated) and with the model's exact samples. Each time it runs the WRN paper's
attack (PGD-20 on the model's own gradient) and an adaptive one (PGD on the mean
surrogate) at two radii, prints the tables and writes DIR/<protocol>/robust_vs_eps.png.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Dict

import torch

from .attacks import plots
from .attacks.command import load_data
from .attacks.suite import evaluate, select, suite

REPO = Path(__file__).resolve().parents[1]
SUBSET = Path(__file__).resolve().parent / 'data' / 'cifar10_test_500.npz'
ATTACKS = [a + tag for a in ('pgd20', 'pgd_mean') for tag in ('', '@4/255')]
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


def run_demo(args: argparse.Namespace) -> int:
    """Evaluate ``args.model`` under each protocol; print the tables, write reports and plots."""
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    x, y, index = load_data(str(SUBSET), args.n, args.seed)
    attacks = select(suite('cifar10', adaptive_steps=args.steps, eps_sweep=[4 / 255]), ATTACKS)
    for protocol, kwargs in PROTOCOLS.items():
        out = Path(args.output) / protocol
        model = load_model(args.model, args.samples, **kwargs).eval()
        report = evaluate(model, x, y, attacks, repeats=args.repeats, batch_size=args.batch_size, seed=args.seed,
                          random_inputs=0, output=out,
                          meta={'model': args.model, 'protocol': protocol, **kwargs, 'data': SUBSET.name,
                                'indices': index.tolist(),
                                'command': getattr(args, 'command_line', 'lwta-zoo demo')})
        plots.plot_robust_vs_eps(report, out / 'robust_vs_eps.png')
        print(f'\n## {args.model}, {protocol}\n')
        print((out / 'report.md').read_text())
    print(f'L={args.samples}, n={len(y)} of {SUBSET.name} (seed {args.seed}), {time.time() - t0:.0f} s. '
          f'Reports and plots under {args.output}/')
    return 0


def configure_demo(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``lwta-zoo demo``."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument('--model', default='wrn34_1_lwta', help='hubconf entrypoint with published weights')
    parser.add_argument('--n', type=int, default=100, help='test examples (a seeded subset of the shipped 500)')
    parser.add_argument('--samples', type=int, default=1, help='L samples a prediction')
    parser.add_argument('--repeats', type=int, default=5, help='R fresh predictions per adversarial input')
    parser.add_argument('--steps', type=int, default=20, help='steps of the adaptive attacks')
    parser.add_argument('--batch-size', type=int, default=50)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--output', default='runs/demo', help='folder for report.json, report.md and the plot')
    parser.set_defaults(func=run_demo)
