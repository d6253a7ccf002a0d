"""CPU cost of Table 4's Fashion-MNIST runs: ``python -m benchmarks.aistats_fmnist_vs [--steps N]``.

For each of recipes/aistats_softmax_fmnist_{method}_vs.yaml, on one torch thread, in CPU seconds of
this process (``time.process_time``, so that other work sharing the core does not count: the
figures approximate one core of this machine to itself):

- a training step (a batch of 200 through Verma & Swami's augmentation, the ELBO, backward, the
  optimizer), the median of ``--steps`` after one warm-up step;
- the per-epoch clean evaluation (the recipe's ``eval.samples``), timed on 1,000 test images and
  scaled to the 10,000;
- the epochs that fit ``--budget-hours`` of training, at 300 steps an epoch plus its evaluation;
- the evaluations tools/make_trained_weights.py fmnist_vs runs, from lwta_zoo.attacks.suite's own cost
  model (``estimate_seconds``: each attack's gradient evaluations times one input gradient of its
  kind, plus the scoring predictions), timed on 100 test images of the untrained network; CW and
  Blind-Spot at the model's L and at L=1. For CW and Blind-Spot this is an upper bound: they count
  every one of their 10 x 1000 steps, and stop early where the attack has converged.

On a shared machine CPU seconds still grow with the contention (caches, the other hyperthread), so the
figures are an upper bound on a quiet core's as well.
"""
from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Dict, List
from unittest import mock

import torch

from lwta_zoo.attacks.suite import estimate_seconds, suite
from lwta_zoo.recipe import load_recipe
from lwta_zoo.sampling import set_samples
from lwta_zoo.train import Trainer

ROOT = Path(__file__).resolve().parents[1]
METHODS = ('relu', 'lwta_max', 'lwta_max_ibp', 'lwta', 'lwta_ibp')
STEPS_PER_EPOCH = 60_000 // 200
TEST_IMAGES = 10_000
EVALS = {  # report -> (attacks, examples, L: None = the model's); the commands of make_trained_weights.py fmnist_vs
    'papers_pgd_n100': (['aistats_pgd'], 100, None),
    'papers_cw_n100 (L=1)': (['aistats_cw', 'aistats_blind_spot'], 100, 1),
    'papers_cw_n100 at the model L': (['aistats_cw', 'aistats_blind_spot'], 100, None),
    'suite_n500': (['pgd20', 'eot_pgd', 'pgd_mean', 'pgd_max', 'pgd_ste', 'apgd_mean'], 500, None),
}


def cpu_seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def train_costs(trainer: Trainer, steps: int) -> Dict[str, float]:
    """Median CPU seconds of a training step (its batch's augmentation included) and of the 10k evaluation."""
    batches = trainer._batches()

    def step() -> None:
        x, y = next(batches)
        loss, _, _ = trainer.training_loss(x, y)
        trainer.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trainer.optimizer.step()

    step()  # warm-up
    per_step = statistics.median(cpu_seconds(step) for _ in range(steps))
    per_eval = cpu_seconds(trainer.evaluate) * TEST_IMAGES / len(trainer.test_set)
    return {'step': per_step, 'eval': per_eval}


def eval_costs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, default_samples: int) -> Dict[str, float]:
    """CPU seconds of each report of ``EVALS`` by the suite's cost model (R=5 scoring draws, batch 100)."""
    attacks = {a.name: a for a in suite('fashion_mnist', eot_samples=5, adaptive_steps=20)}
    out = {}
    for report, (names, n, samples) in EVALS.items():
        set_samples(model, samples or default_samples)
        jobs = [(None, 0)] + [(attacks[name], 0) for name in names]
        # the suite times with time.time; CPU time here, so that other work on the core does not count
        with mock.patch('time.time', time.process_time):
            seconds = estimate_seconds(model, x, y, jobs, repeats=5, batch_size=len(x))
        out[report] = seconds * n / len(x)
    set_samples(model, default_samples)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=5, help='timed training steps per method')
    p.add_argument('--budget-hours', type=float, default=1.5, help='training budget per model, hours of one core')
    p.add_argument('--methods', default=','.join(METHODS))
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f'{time.strftime("%Y-%m-%d")}, {torch.__version__}, 1 thread, CPU seconds of this process; '
          f'load average {open("/proc/loadavg").read().split()[:3]}')
    epochs: List[int] = []
    for method in args.methods.split(','):
        recipe = load_recipe(ROOT / f'recipes/aistats_softmax_fmnist_{method}_vs.yaml',
                             ['data.test_limit=1000', 'train.threads=1'])
        with tempfile.TemporaryDirectory() as tmp:
            trainer = Trainer(recipe, tmp)
            try:
                train = train_costs(trainer, args.steps)
                x, y = trainer.test_set.images[:100].float().div(255), trainer.test_set.labels[:100]
                model = trainer.model.eval()
                evals = eval_costs(model, x, y, model.num_samples)
            finally:
                trainer.close()
        epoch = STEPS_PER_EPOCH * train['step'] + train['eval']
        fit = math.floor(args.budget_hours * 3600 / epoch)
        epochs.append(fit)
        print(f'{method}: train step {train["step"]:.3f} s (batch 200), clean eval {train["eval"]:.1f} s '
              f'(10k, L={recipe.eval.samples}), epoch {epoch / 60:.1f} min -> {fit} epochs in {args.budget_hours} h; '
              + '; '.join(f'{k} {v / 3600:.2f} h' for k, v in evals.items()))
    print(f'epochs that fit every method: {min(epochs)}')


if __name__ == '__main__':
    main()
