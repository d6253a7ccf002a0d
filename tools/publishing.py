"""What the weights tools share: seeded clean accuracy and ``lwta-zoo eval`` reports as model-card
results, and the reports copied beside the weights (lwta_zoo/weights/<name>/eval/<run>/).

Used by make_authors_weights.py and make_trained_weights.py; every result records the data it was
measured on, the seeds and the command that rewrites it.
"""
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn as nn

from lwta_zoo.attacks.reports import read_report
from lwta_zoo.attacks.suite import card_results, report_label, sampling_label

ROOT = Path(__file__).resolve().parents[1]
SEEDS = (0, 1, 2)


def clean_result(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, data: str, eval_tau: Optional[float] = None,
                 seeds: Sequence[int] = SEEDS, batch_size: int = 1000) -> Dict[str, Any]:
    """Clean accuracy of ``model`` (eval mode) on ``x`` in [0, 1], one value per seed and their mean.

    Each seed seeds torch's global RNG once, then the batches run in order: a shipped subset of
    up to ``batch_size`` images is one forward, as tests/test_published.py repeats it.
    """
    per_seed = []
    for seed in seeds:
        torch.manual_seed(seed)
        with torch.no_grad():
            correct = sum((model(xb).argmax(1) == yb).sum().item()
                          for xb, yb in zip(x.split(batch_size), y.split(batch_size)))
        per_seed.append(round(correct / len(y), 4))
    return {'name': f'clean accuracy ({sampling_label(eval_tau)}, {data.split(":")[0]})',
            'value': round(float(np.mean(per_seed)), 4), 'samples': model.num_samples, 'eval_tau': eval_tau,
            'seeds': list(seeds), 'per_seed': per_seed, 'examples': len(y), 'data': data,
            'command': ' '.join(['python', *sys.argv])}


def report_results(folders: Sequence[Path], data_notes: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
    """Model-card results of ``lwta-zoo eval`` output folders, each labelled by sampling and n and
    linked to its report where ``copy_reports`` puts it (eval/<folder name>/report.md).

    ``data_notes`` maps a report's data (an .npz path) to its description ('PATH: what it holds').
    """
    results = []
    for folder in folders:
        report = read_report(folder)
        results += [{**r, 'data': (data_notes or {}).get(r.get('data'), r.get('data')),
                     'report': f'eval/{Path(folder).name}/report.md'}
                    for r in card_results(report, report_label(report))]
    return results


def copy_reports(folders: Sequence[Path], out: Path) -> None:
    """report.json, report.md and the figures (*.png, which the leaderboard's model pages show) of each
    folder to ``out``/eval/<folder name>/, replacing what a report of that name shipped before."""
    for folder in folders:
        target = out / 'eval' / Path(folder).name
        if target.resolve() == Path(folder).resolve():  # republishing the reports already shipped
            continue
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for file in ['report.json', 'report.md', *sorted(p.name for p in Path(folder).glob('*.png'))]:
            shutil.copy(Path(folder) / file, target / file)
