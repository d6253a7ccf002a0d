"""lwta_zoo.table4: the AISTATS paper's Table 4 beside the zoo's rows, read from reports (fabricated here)."""
import json
from pathlib import Path
from typing import Sequence

import pytest

from lwta_zoo import table4
from lwta_zoo.leaderboard.site import table4_page
from lwta_zoo.attacks.suite import wilson

INDICES = tuple(range(0, 40, 2))  # 20 examples


def _figure(defended: Sequence[bool]) -> dict:
    return {'accuracy': sum(defended) / len(defended), 'p_correct': sum(defended) / len(defended),
            'interval': list(wilson(sum(defended), len(defended))), 'n': len(defended)}


def _attack(name: str, defended: Sequence[bool]) -> dict:
    threat_model = 'L2' if name in ('aistats_cw', 'aistats_blind_spot') else 'Linf'
    return {**_figure(defended), 'settings': {} if threat_model == 'L2' else {'eps': 0.1}, 'threat_model': threat_model,
            **({'found': len(defended)} if threat_model == 'L2' else {})}


def _report(worst: Sequence[bool], attacks: dict, samples: int = 5, rand: float = 0.5) -> dict:
    """A format-2 report on INDICES (valid as lwta_zoo.attacks.reports checks it): every example clean-correct,
    ``worst`` its Linf worst case (R=5, unanimous)."""
    n = len(INDICES)
    linf = [k for k in attacks if _attack(k, attacks[k])['threat_model'] == 'Linf']
    l2 = [k for k in attacks if k not in linf]
    return {'format': 2, 'model': 'm', 'n': n, 'samples': samples, 'repeats': 5, 'indices': list(INDICES),
            'identity': {'data_sha256': 'd' * 64, 'data': 'fashion_mnist'},
            'per_example': {'label': [i % 10 for i in INDICES],
                            'evaluation': {'clean': [5] * n, 'a': [5 * d for d in worst]},
                            'chosen': {'Linf@0.1': ['a'] * n}},
            'clean': _figure([True] * n), 'clean_accuracy': 1.0,
            'attacks': {k: _attack(k, v) for k, v in attacks.items()},
            'threat_models': [{'threat_model': 'L2', 'attacks': l2, **_figure([False] * n)},
                              {'threat_model': 'Linf', 'attacks': linf, **_figure(worst)}],
            'random_attack': {'low_confidence_fraction': rand, 'interval': [rand - 0.05, rand + 0.05], 'inputs': 1000}}


def _ship(root: Path, method: str, worst: Sequence[bool], skip: Sequence[str] = ()) -> None:
    """The three reports of a Table 4 model: the paper's PGD (its worst case ``worst``), CW / Blind-Spot, the suite
    (the same worst case, one example fewer defended)."""
    n = len(INDICES)
    adaptive = list(worst[:-1]) + [False]
    reports = {table4.PAPERS_PGD: _report(worst, {'aistats_pgd': worst}, rand=0.25),
               table4.PAPERS_CW: _report(worst, {'aistats_cw': [True] * (n // 2) + [False] * (n - n // 2),
                                                 'aistats_blind_spot': [False] * n}, samples=1),
               table4.ADAPTIVE: _report(adaptive, {'pgd_mean': adaptive})}
    for name, report in reports.items():
        if name not in skip:
            folder = root / table4.model_name(method) / 'eval' / name
            folder.mkdir(parents=True)
            (folder / 'report.json').write_text(json.dumps(report))


def test_rows_read_each_column_from_its_report_and_pair_each_method_with_the_baseline(tmp_path):
    n = len(INDICES)
    worst = {'relu': [False] * n, 'lwta_max': [False] * n, 'lwta_max_ibp': [True] * 2 + [False] * (n - 2),
             'lwta': [True] * n, 'lwta_ibp': [True] * (n - 4) + [False] * 4}
    for method, w in worst.items():
        _ship(tmp_path, method, w)
    rows = table4.rows(lambda name: tmp_path / name)
    assert [r.method for r in rows] == list(table4.METHODS) and table4.complete(rows)
    relu, lwta_max, max_ibp, lwta, lwta_ibp = rows
    assert relu.paper == table4.PAPER['relu'] and relu.pgd_vs_baseline is None and relu.worst_vs_baseline is None
    assert (lwta.measured['pgd'].value, lwta.measured['cw'].value, lwta.measured['bsa'].value) == (1.0, 0.5, 0.0)
    assert (lwta.measured['rand'].value, lwta.measured['rand'].n, lwta.measured['cw'].samples) == (0.25, 1000, 1)
    assert lwta.worst.value == pytest.approx((n - 1) / n) and lwta.clean_adaptive.value == 1.0
    # paired on the same examples: all defended against none
    assert lwta.pgd_vs_baseline.value == 1.0 and lwta.pgd_vs_baseline.verdict == 'above'
    assert lwta_max.worst_vs_baseline.value == 0 and lwta_max.worst_vs_baseline.verdict == 'not established'
    assert max_ibp.worst_vs_baseline.value == pytest.approx(2 / n)
    assert max_ibp.worst_vs_baseline.verdict == 'not established'  # two examples of 20: its interval includes 0
    assert lwta_ibp.worst_vs_baseline.verdict == 'above'
    assert table4.conclusion(rows).count('yes: both stochastic LWTA methods stand above the baseline') == 2
    text = '\n'.join(table4.markdown(rows))
    assert '| LWTA & IBP | paper, MNIST (quoted) | 99.2 | 93.5 | 99.0 | 100.0 | 96.1 |' in text
    assert '+100.0 [+100.0, +100.0] (n=20)' in text and 'not yet' not in text
    assert 'LWTA & IBP minus the baseline +80.0' in table4.summary_line(rows)
    page = table4_page(rows, {})  # the leaderboard's page renders the same cells
    assert '<td>LWTA &amp; IBP</td><td>paper, MNIST (quoted)</td><td>99.2</td>' in page
    assert 'yes: both stochastic LWTA methods' in page and json.loads(table4.to_json(rows))[4]['label'] == 'LWTA & IBP'


def test_a_missing_report_leaves_its_cells_empty_and_the_conclusion_open(tmp_path):
    n = len(INDICES)
    for method in table4.METHODS:
        _ship(tmp_path, method, [method != 'relu'] * n, skip=[table4.ADAPTIVE] if method == 'lwta_ibp' else [])
    rows = table4.rows(lambda name: tmp_path / name)
    assert not table4.complete(rows)
    assert rows[-1].worst is None and rows[-1].worst_vs_baseline is None and rows[-1].pgd_vs_baseline.verdict == 'above'
    assert 'adaptive worst case? not measured yet' in table4.conclusion(rows)
    assert table4.cells(rows)[-1][7] == 'not yet'
