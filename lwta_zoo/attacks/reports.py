"""Reading ``lwta-zoo eval``'s report.json back, checked: what compare, the model cards and the leaderboard read.

A report that lwta-zoo eval wrote always passes. One edited by hand, truncated, or another file
altogether (a partial, a config) is refused with its path and the first field that is wrong:
accuracies and intervals must be finite and in [0, 1], counts of correct draws within [0, R],
per-example arrays as long as n, every figure on the report's n examples.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Union

from .suite import FORMAT, THREAT_MODELS

REPORT_FILE = 'report.json'
FORMATS = (1, FORMAT)  # 1: reports from before the selection / evaluation estimator (their own rule)


class _Check:
    """Field checks of one report, each failing as one ValueError that names the file and the field."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, field: str, problem: str) -> ValueError:
        return ValueError(f'{self.path}: {field} {problem}; it is not a report as lwta-zoo eval writes it '
                          '(edited or truncated?): rerun the evaluation')

    def get(self, tree: Dict[str, Any], key: str, field: str, kind: Any = None) -> Any:
        if not isinstance(tree, dict) or key not in tree:
            raise self.fail(field, 'is missing')
        value = tree[key]
        if kind is not None and not (isinstance(value, kind) and not isinstance(value, bool)):
            raise self.fail(field, f'must be {getattr(kind, "__name__", kind)}, got {value!r}'[:200])
        return value

    def count(self, value: Any, field: str, low: int, high: float = math.inf) -> int:
        if not (isinstance(value, int) and not isinstance(value, bool) and low <= value <= high):
            raise self.fail(field, f'must be an integer in [{low}, {high}], got {value!r}'[:200])
        return value

    def fraction(self, value: Any, field: str) -> float:
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and 0 <= value <= 1):
            raise self.fail(field, f'must be a finite number in [0, 1], got {value!r}'[:200])
        return value

    def counts(self, values: Any, field: str, n: int, high: float = math.inf) -> None:
        if not isinstance(values, list) or len(values) != n:
            raise self.fail(field, f'must be a list of n={n} entries, got '
                                   f'{len(values) if isinstance(values, list) else type(values).__name__}')
        for i, v in enumerate(values):
            self.count(v, f'{field}[{i}]', 0, high)

    def figure(self, fig: Any, field: str, n: int) -> None:
        """A figure of the estimator: majority accuracy, its interval, P(correct), on the report's n examples."""
        self.fraction(self.get(fig, 'accuracy', f'{field}.accuracy'), f'{field}.accuracy')
        self.fraction(self.get(fig, 'p_correct', f'{field}.p_correct'), f'{field}.p_correct')
        interval = self.get(fig, 'interval', f'{field}.interval', list)
        if len(interval) != 2 or self.fraction(interval[0], f'{field}.interval') > self.fraction(
                interval[1], f'{field}.interval'):
            raise self.fail(f'{field}.interval', f'must be [low, high] with low <= high, got {interval!r}')
        if 'n' in fig and fig['n'] != n:
            raise self.fail(f'{field}.n', f'is {fig["n"]!r}, the report has n={n}')


def _check_v2(report: Dict[str, Any], c: _Check, n: int, repeats: int) -> None:
    c.counts(c.get(report, 'indices', 'indices', list), 'indices', n)
    identity = c.get(report, 'identity', 'identity', dict)
    c.get(identity, 'data_sha256', 'identity.data_sha256', str)
    c.figure(c.get(report, 'clean', 'clean', dict), 'clean', n)
    c.fraction(c.get(report, 'clean_accuracy', 'clean_accuracy'), 'clean_accuracy')
    attacks = c.get(report, 'attacks', 'attacks', dict)
    for name, a in attacks.items():
        c.figure(a, f'attacks.{name}', n)
        c.get(a, 'settings', f'attacks.{name}.settings', dict)
        if c.get(a, 'threat_model', f'attacks.{name}.threat_model') not in THREAT_MODELS:
            raise c.fail(f'attacks.{name}.threat_model', f'must be one of {THREAT_MODELS}, got {a["threat_model"]!r}')
        parts = c.get(a, 'parts', f'attacks.{name}.parts', dict) if 'parts' in a else {}
        for part, fig in parts.items():
            c.figure(fig, f'attacks.{name}.parts.{part}', n)
        if a['threat_model'] == 'L2':
            c.count(c.get(a, 'found', f'attacks.{name}.found'), f'attacks.{name}.found', 0, n)
    for i, t in enumerate(c.get(report, 'threat_models', 'threat_models', list)):
        c.figure(t, f'threat_models[{i}]', n)
        unknown = [a for a in c.get(t, 'attacks', f'threat_models[{i}].attacks', list) if a not in attacks]
        if unknown:
            raise c.fail(f'threat_models[{i}].attacks', f'names attacks the report does not hold: {unknown}')
    if report.get('worst_case') is not None:
        c.figure(report['worst_case'], 'worst_case', n)
    if report.get('worst_case_accuracy') is not None:
        c.fraction(report['worst_case_accuracy'], 'worst_case_accuracy')
    examples = c.get(report, 'per_example', 'per_example', dict)
    c.counts(c.get(examples, 'label', 'per_example.label', list), 'per_example.label', n)
    evaluation = c.get(examples, 'evaluation', 'per_example.evaluation', dict)
    selection = c.get(examples, 'selection', 'per_example.selection', dict) if 'selection' in examples else {}
    for table, counts in (('selection', selection), ('evaluation', evaluation)):
        for name, values in counts.items():
            c.counts(values, f'per_example.{table}.{name}', n, repeats)
    if 'clean' not in evaluation:
        raise c.fail('per_example.evaluation.clean', 'is missing')
    for key, chosen in c.get(examples, 'chosen', 'per_example.chosen', dict).items():
        if not isinstance(chosen, list) or len(chosen) != n:
            raise c.fail(f'per_example.chosen.{key}', f'must be a list of n={n} candidate names')
        unknown = sorted({str(x) for x in chosen if x not in evaluation})
        if unknown:
            raise c.fail(f'per_example.chosen.{key}', f'names candidates per_example.evaluation lacks: {unknown[:4]}')


def _check_v1(report: Dict[str, Any], c: _Check) -> None:
    c.fraction(c.get(report, 'clean_accuracy', 'clean_accuracy'), 'clean_accuracy')
    c.fraction(c.get(report, 'worst_case_accuracy', 'worst_case_accuracy'), 'worst_case_accuracy')
    for name, a in c.get(report, 'attacks', 'attacks', dict).items():
        c.fraction(c.get(a, 'robust_accuracy', f'attacks.{name}.robust_accuracy'), f'attacks.{name}.robust_accuracy')


def read_report(path: Union[str, Path]) -> Dict[str, Any]:
    """The report.json at ``path`` (the file, or the eval folder that holds it), checked (see the module doc)."""
    file = Path(path) / REPORT_FILE if Path(path).is_dir() else Path(path)
    try:
        report = json.loads(file.read_text(encoding='utf-8'))
    except FileNotFoundError:
        raise FileNotFoundError(f'No report {file}: give a report.json of lwta-zoo eval or its folder') from None
    except (OSError, ValueError) as e:
        raise ValueError(f'{file} is not a readable report.json ({" ".join(str(e).split())})') from e
    if isinstance(report, dict) and 'batches' in report and 'config' in report:
        raise ValueError(f'{file} is the partial state of an unfinished lwta-zoo eval, not a report: finish that '
                         'run with --resume, then read DIR/report.json')
    c = _Check(file)
    if not isinstance(report, dict):
        raise c.fail('the file', f'must hold a JSON object, got {type(report).__name__}')
    version = report.get('format', 1)
    if version not in FORMATS:
        raise c.fail('format', f'must be one of {FORMATS}, got {version!r}')
    n = c.count(c.get(report, 'n', 'n'), 'n', 1)
    repeats = c.count(c.get(report, 'repeats', 'repeats'), 'repeats', 1)
    if report.get('samples') is not None:
        c.count(report['samples'], 'samples', 1)
    if version == 1:
        _check_v1(report, c)
    else:
        _check_v2(report, c, n, repeats)
    return report
