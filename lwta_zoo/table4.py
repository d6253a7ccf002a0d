"""The AISTATS paper's Table 4 beside the zoo's Fashion-MNIST analogue, read from the shipped reports.

Table 4 (the Softmax network on MNIST, U=2, no adversarial training) is quoted as the paper's. Beside
each of its five methods stand the zoo's ``aistats_softmax_mnist.<method>_fmnist_vs`` weights (the same
network and training, Fashion-MNIST in place of MNIST; recipes/aistats_softmax_fmnist_*_vs.yaml):

- under the paper's protocol at Fashion-MNIST's eps 0.1: PGD with 500 iterations (report
  ``papers_pgd_n100``), CW and Blind-Spot (``papers_cw_n100``, at L=1), Random (the fraction of
  uniform-noise images predicted with confidence below 0.9, from ``papers_pgd_n100``);
- in the adaptive worst case (``suite_n500``: Linf, eps 0.1), with clean accuracy from the same report;
- each method's paired difference from the baseline (ReLU) on the same examples, under the paper's PGD
  and in the adaptive worst case (``lwta_zoo.attacks.compare.paired``: the examples resampled together).

Every figure carries its 95% interval. MODEL_CARDS.md (tools/make_model_cards.py), the leaderboard and
README's summary line render the same rows, so they cannot disagree; a method whose reports are not
shipped yet has empty cells.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from . import hub
from .attacks.compare import paired, read_report
from .models.aistats import method_tag

METHODS = ('relu', 'lwta_max', 'lwta_max_ibp', 'lwta', 'lwta_ibp')  # Table 4's rows, in its order
LABELS = {'relu': 'Baseline (ReLU)', 'lwta_max': 'LWTA-max', 'lwta_max_ibp': 'LWTA-max & IBP', 'lwta': 'LWTA',
          'lwta_ibp': 'LWTA & IBP'}
COLUMNS = ('benign', 'pgd', 'cw', 'bsa', 'rand')
# The AISTATS paper, Table 4, the Softmax network's rows (MNIST, eps 0.3, U=2): quoted, not measured here.
PAPER = {
    'relu': dict(benign=.992, pgd=.082, cw=.540, bsa=.180, rand=.270),
    'lwta_max': dict(benign=.993, pgd=.302, cw=.800, bsa=.390, rand=.543),
    'lwta_max_ibp': dict(benign=.994, pgd=.890, cw=.920, bsa=.840, rand=.361),
    'lwta': dict(benign=.992, pgd=.900, cw=.990, bsa=1.0, rand=.810),
    'lwta_ibp': dict(benign=.992, pgd=.935, cw=.990, bsa=1.0, rand=.961),
}
PAPERS_PGD, PAPERS_CW, ADAPTIVE = 'papers_pgd_n100', 'papers_cw_n100', 'suite_n500'  # eval/<report> of each model
ATTACKS = {'pgd': (PAPERS_PGD, 'aistats_pgd'), 'cw': (PAPERS_CW, 'aistats_cw'),
           'bsa': (PAPERS_CW, 'aistats_blind_spot')}  # column -> (report, attack)


def model_name(method: str) -> str:
    """The zoo's weights of a Table 4 method: 'aistats_softmax_mnist.lwta_ibp_u2_fmnist_vs'."""
    return f'aistats_softmax_mnist.{method_tag(method, 2)}_fmnist_vs'


@dataclass(frozen=True)
class Cell:
    """One measured accuracy in [0, 1], its 95% interval, and the examples (or random inputs) and L behind it."""

    value: float
    interval: Tuple[float, float]
    n: int
    samples: int


@dataclass(frozen=True)
class Difference:
    """A method's accuracy minus the baseline's on the examples both reports hold (paired bootstrap interval)."""

    value: float
    interval: Tuple[float, float]
    n: int

    @property
    def verdict(self) -> str:
        """'above' / 'below' where the interval excludes 0, else 'not established'."""
        return 'above' if self.interval[0] > 0 else 'below' if self.interval[1] < 0 else 'not established'


@dataclass(frozen=True)
class Table4Row:
    method: str
    model: str
    paper: Dict[str, float]
    measured: Dict[str, Cell] = field(default_factory=dict)  # COLUMNS (zoo, Fashion-MNIST, the paper's protocol)
    worst: Optional[Cell] = None  # the adaptive worst case, Linf eps 0.1
    clean_adaptive: Optional[Cell] = None  # clean accuracy in the adaptive report
    pgd_vs_baseline: Optional[Difference] = None  # the paper's PGD, paired with the baseline
    worst_vs_baseline: Optional[Difference] = None  # the adaptive worst case, paired with the baseline


def _report(folder: Path, name: str) -> Optional[dict]:
    path = folder / 'eval' / name / 'report.json'
    return read_report(str(path)) if path.is_file() else None


def _cell(figure: dict, report: dict) -> Cell:
    return Cell(figure['accuracy'], tuple(figure['interval']), figure['n'], report['samples'])


def _linf(report: dict) -> dict:
    """The report's Linf worst case (its attacks' per-example worst, eps 0.1 on Fashion-MNIST)."""
    return next(t for t in report['threat_models'] if t['threat_model'] == 'Linf')


def _versus(report: Optional[dict], baseline: Optional[dict]) -> Optional[Difference]:
    """report minus baseline in the Linf worst case, on the examples both hold."""
    if report is None or baseline is None:
        return None
    row = next(r for r in paired(report, baseline) if r['figure'].startswith('Linf'))
    return Difference(row['difference'], tuple(row['difference_interval']), row['n'])


def rows(folder: Callable[[str], Path] = lambda name: hub.SHIPPED_WEIGHTS / name) -> List[Table4Row]:
    """Table 4's rows from the reports under ``folder(model)``/eval/ (default: the shipped weights)."""
    reports = {m: {r: _report(folder(model_name(m)), r) for r in (PAPERS_PGD, PAPERS_CW, ADAPTIVE)} for m in METHODS}
    out = []
    for method in METHODS:
        mine, base = reports[method], reports['relu']
        measured = {}
        if mine[PAPERS_PGD]:
            r = mine[PAPERS_PGD]
            measured['benign'] = _cell(r['clean'], r)
            rand = r['random_attack']
            measured['rand'] = Cell(rand['low_confidence_fraction'], tuple(rand['interval']), rand['inputs'],
                                    r['samples'])
        for column, (report, attack) in ATTACKS.items():
            if mine[report]:
                measured[column] = _cell(mine[report]['attacks'][attack], mine[report])
        adaptive = mine[ADAPTIVE]
        out.append(Table4Row(
            method, model_name(method), PAPER[method], measured,
            worst=_cell(_linf(adaptive), adaptive) if adaptive else None,
            clean_adaptive=_cell(adaptive['clean'], adaptive) if adaptive else None,
            pgd_vs_baseline=None if method == 'relu' else _versus(mine[PAPERS_PGD], base[PAPERS_PGD]),
            worst_vs_baseline=None if method == 'relu' else _versus(adaptive, base[ADAPTIVE])))
    return out


def complete(table: List[Table4Row]) -> bool:
    """Whether every method has all its reports (the table can be published)."""
    return all(len(r.measured) == len(COLUMNS) and r.worst for r in table)


# --------------------------------------------------------------------------- rendering

def _pct(v: float) -> str:
    return f'{100 * v:.1f}'


def _cell_text(cell: Optional[Cell]) -> str:
    return f'{_pct(cell.value)} [{_pct(cell.interval[0])}, {_pct(cell.interval[1])}]' if cell else 'not yet'


def _difference_text(d: Optional[Difference]) -> str:
    if d is None:
        return ''
    return f'{100 * d.value:+.1f} [{100 * d.interval[0]:+.1f}, {100 * d.interval[1]:+.1f}] (n={d.n})'


def conclusion(table: List[Table4Row]) -> str:
    """The two questions of the comparison, answered only as far as the paired intervals allow."""
    stochastic = [r for r in table if r.method in ('lwta', 'lwta_ibp')]

    def answer(key: str) -> str:
        diffs = [getattr(r, key) for r in stochastic]
        if any(d is None for d in diffs):
            return 'not measured yet'
        verdicts = {d.verdict for d in diffs}
        if verdicts == {'above'}:
            return 'yes: both stochastic LWTA methods stand above the baseline (both paired intervals exclude 0)'
        if verdicts == {'below'}:
            return 'no: both stochastic LWTA methods stand below the baseline (both paired intervals exclude 0)'
        return ('not established: ' + '; '.join(f'{LABELS[r.method]} {getattr(r, key).verdict}' for r in stochastic)
                + ' (a paired interval that includes 0 establishes neither)')

    return (f"Under the paper's PGD, do the stochastic methods stand above the baseline? {answer('pgd_vs_baseline')}. "
            f"In the adaptive worst case? {answer('worst_vs_baseline')}.")


PROTOCOL = (
    "The paper's rows are its Table 4's Softmax network on MNIST (eps 0.3), quoted, not measured here; its "
    "Baseline row is Verma & Swami's ReLU network as the paper reports it. The zoo's rows are the same "
    "network trained the same way (U=2, no adversarial training, Verma & Swami's augmentation, the ELBO; "
    'recipes/aistats_softmax_fmnist_*_vs.yaml) on Fashion-MNIST, which these machines can obtain in place '
    "of MNIST, so the paper's figures are not expected: the pattern is what can be compared. The paper's "
    'protocol at eps 0.1 (ours, the Fashion-MNIST budget of lwta_zoo.attacks.suite): PGD with 500 '
    "iterations (eval/papers_pgd_n100, n=100, at the model's L: S=5 for the stochastic methods), CW and "
    'Blind-Spot (eval/papers_cw_n100, n=100, at L=1: at L=5 they would exceed the evaluation budget), '
    'Random (1,000 uniform-noise images, the fraction predicted with confidence below 0.9). The adaptive '
    'worst case is eval/suite_n500 (Linf, eps 0.1, n=500; PGD-20, EoT-PGD, mean-surrogate, max and '
    'straight-through PGD, APGD on the mean surrogate), clean accuracy from the same report. Intervals are '
    "95% (Wilson; Random: its report's); the differences from the baseline are paired on the same "
    'examples (lwta-zoo compare: bootstrap over the examples resampled together), in points.')
HEADER = ('method', 'source', 'benign', 'PGD', 'CW', 'BSA', 'Rand', 'adaptive worst case (clean)',
          "- baseline: paper's PGD", '- baseline: adaptive worst case')


def cells(table: List[Table4Row]) -> List[List[str]]:
    """The table's body as text cells (``HEADER``'s columns): per method the paper's row, then the zoo's."""
    body = []
    for r in table:
        body.append([LABELS[r.method], 'paper, MNIST (quoted)', *(_pct(r.paper[c]) for c in COLUMNS), '', '', ''])
        worst = f'{_cell_text(r.worst)} ({_cell_text(r.clean_adaptive)})' if r.worst else 'not yet'
        body.append(['', f'zoo, Fashion-MNIST ({r.model})', *(_cell_text(r.measured.get(c)) for c in COLUMNS),
                     worst, _difference_text(r.pgd_vs_baseline), _difference_text(r.worst_vs_baseline)])
    return body


def markdown(table: List[Table4Row]) -> List[str]:
    """MODEL_CARDS.md's section: the paper's row and the zoo's per method, the differences, the conclusion."""
    return (["## The AISTATS paper's Table 4 on Fashion-MNIST (no adversarial training)", '', PROTOCOL, '',
             '| ' + ' | '.join(HEADER) + ' |', '|' + '---|' * len(HEADER)]
            + ['| ' + ' | '.join(row) + ' |' for row in cells(table)] + ['', conclusion(table), ''])


def summary_line(table: List[Table4Row]) -> str:
    """README's one-line summary: each method's adaptive worst case and the full method's paired difference."""
    worst = ', '.join(f'{LABELS[r.method]} {_pct(r.worst.value)}%' for r in table if r.worst)
    full = table[-1].worst_vs_baseline
    n = table[0].worst.n if table[0].worst else 0
    return (f"The AISTATS paper's Table 4 on Fashion-MNIST (no adversarial training; MODEL_CARDS.md): adaptive "
            f'worst case at eps 0.1, n={n}: {worst}'
            + (f'; LWTA & IBP minus the baseline {_difference_text(full)} points, paired' if full else '') + '. '
            + conclusion(table))


def to_json(table: List[Table4Row]) -> str:
    """The rows as JSON (the leaderboard's table4.json)."""
    return json.dumps([{**asdict(r), 'label': LABELS[r.method]} for r in table], indent=2)
