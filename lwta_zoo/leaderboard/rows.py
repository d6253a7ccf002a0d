"""The leaderboard's rows: one per model, board (dataset and threat model) and prediction setting (L, and how the
model samples at test time), every figure read from one of the model's committed reports (eval/<run>/report.json).

A row's worst case is a report's own per-example worst case, and only a report whose attacks include every attack
of the adaptive preset (``lwta-zoo eval --preset adaptive``) gives one: a row whose reports ran the papers' attacks
alone is 'not evaluated adaptively', never ranked by a papers' figure. The model's facts (epochs, training hours,
parameters, U, training attack) come from its config.json, and where a paper reports the model's configuration,
the paper's own figures stand beside it, labelled as the paper's.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, FrozenSet, List, Optional, Tuple

import timm

from .. import hub
from ..attacks.reports import read_report
from ..attacks.suite import report_label, sampling_label, select, suite
from ..layers import LWTA

PAPERS_PROTOCOLS = ('WRN paper', 'AISTATS paper')  # the attacks' ``protocol`` values that are a paper's own
AUTOATTACK = ('autoattack_rand', 'autoattack_standard')
BoardKey = Tuple[str, Optional[str], Optional[float]]  # dataset, threat model, eps
STATUSES = ('adaptive suite', 'incomplete adaptive suite', 'not evaluated adaptively', 'not evaluated')  # rank order


@dataclass(frozen=True)
class PaperClaim:
    """What a paper reports for a model's configuration: quoted, never measured here."""

    paper: str
    source: str  # where in the paper, and on what data
    samples: int  # the L the paper predicts with
    figures: Tuple[Tuple[str, str], ...]  # (what, accuracy in %), as the paper names and prints them
    training_attack: str  # how the paper's model was trained


# The WRN paper's WRN-34-1 with stochastic LWTA: the authors' public checkpoint is that model (its Tables 1-3).
PAPER_CLAIMS = {
    'wrn34_1_lwta.authors_pgd': PaperClaim(
        'WRN paper', 'Tables 1-3, the full CIFAR-10 test set, eps 8/255', 1,
        (('clean', '87.0'), ('PGD-20', '81.87'), ('AutoAttack', '74.71'), ('APGD-CE + EoT-20', '79.67'),
         ('APGD-DLR + EoT-20', '76.15')),
        "PGD (Madry et al.), model's gradient: the WRN paper's training"),
}


@dataclass(frozen=True)
class Figure:
    """One accuracy of a report: the majority accuracy in [0, 1], its 95% interval, and where it is read from."""

    name: str  # 'clean', the attack ('pgd20'), a part of one ('autoattack_rand apgd-ce') or 'worst case'
    value: float
    interval: Tuple[float, float]
    report: str  # the report's folder beside the weights, 'eval/<run>'
    key: Tuple[Any, ...]  # its place in report.json: ('clean',), ('attacks', 'pgd20', 'parts', 'apgd-ce'), ...
    n: int
    protocol: Optional[str] = None  # an attack's: 'WRN paper', 'AISTATS paper' or 'adaptive'
    threat_model: Optional[str] = None
    part_of: Optional[str] = None  # the attack a part belongs to
    median_l2: Optional[float] = None  # an L2 attack's median distance over the adversarials it found
    over: Tuple[str, ...] = ()  # a worst case's attacks


@dataclass(frozen=True)
class Evaluation:
    """A report a row reads figures from."""

    report: str  # 'eval/<run>'
    label: str  # sampling and n, 'exact samples, n=1000'
    data: str
    n: int
    repeats: int  # R
    command: str


@dataclass(frozen=True)
class Model:
    """What a row says about the model itself, from its config.json and its architecture."""

    name: str  # arch.tag
    architecture: str  # 'aistats_softmax_mnist (lwta)': the architecture and its activation
    activation: str  # 'relu', 'lwta', 'lwta_ibp', ...
    dataset: str
    dataset_name: str
    redistributed: bool  # False: lwta_zoo ships the card and the reports, not the weights
    training: str  # the training attack, in a few words
    adaptive_training: Optional[bool]  # whether that attack followed a surrogate built for stochastic models
    epochs: Optional[int]
    hours: Optional[float]
    hours_estimated: bool  # the median time per step times the steps (the run recorded no total)
    parameters: int
    U: Optional[int]  # competing units per LWTA block; None: no LWTA


@dataclass(frozen=True)
class Row:
    """A model's figures on one board under one prediction setting; without ``reports``: not evaluated."""

    model: Model
    threat_model: Optional[str] = None
    eps: Optional[float] = None
    samples: Optional[int] = None  # L
    sampling: Optional[str] = None  # 'exact samples' or 'relaxation at temperature 0.01'
    reports: Tuple[Evaluation, ...] = ()  # the one the clean figure and n come from first
    clean: Optional[Figure] = None
    attacks: Tuple[Figure, ...] = ()  # each attack once (from the first report that ran it), then the parts
    worst: Optional[Figure] = None  # only from a report that ran every attack of the adaptive preset
    missing_adaptive: Tuple[str, ...] = ()  # the adaptive preset's attacks that no single report ran with the rest
    claim: Optional[PaperClaim] = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def board(self) -> BoardKey:
        return self.model.dataset, self.threat_model, self.eps

    @property
    def status(self) -> str:
        """One of ``STATUSES``: whether the worst case is the adaptive suite's."""
        if not self.reports:
            return STATUSES[3]
        if self.worst is not None:
            return STATUSES[0]
        return STATUSES[1] if any(f.protocol == 'adaptive' for f in self.attacks) else STATUSES[2]

    @property
    def n(self) -> Optional[int]:
        return self.reports[0].n if self.reports else None

    @property
    def papers(self) -> Optional[Figure]:
        """The papers' protocol: the lowest accuracy among the row's attacks that are a paper's own."""
        return _lowest(f for f in self.attacks if f.protocol in PAPERS_PROTOCOLS and not f.part_of)

    @property
    def autoattack(self) -> Optional[Figure]:
        """The lowest of the AutoAttack versions the row's reports ran."""
        return _lowest(f for f in self.attacks if f.name in AUTOATTACK)

    def rank(self) -> Tuple[int, float]:
        """The board's order: the adaptive suite's worst case, highest first; then the rest by status."""
        return STATUSES.index(self.status), -(self.worst.value if self.worst else 0.0)


def _lowest(figures) -> Optional[Figure]:
    return min(figures, key=lambda f: f.value, default=None)


def budget(threat_model: Optional[str], eps: Optional[float]) -> str:
    """'Linf, eps 8/255', 'L2, unbounded', 'not evaluated'."""
    if threat_model is None:
        return 'not evaluated'
    return f'{threat_model}, unbounded' if eps is None else f'{threat_model}, eps {hub.format_eps(eps)}'


def report_folders(folder: Path) -> List[Path]:
    """The eval/<run> folders of a model folder that hold a report.json: in the order its config.json records
    their results, then any others by name."""
    found = [p.parent for p in sorted((folder / 'eval').glob('*/report.json'))]
    results = (hub.read_config(folder / hub.CONFIG_FILE).get('metrics') or {}).get('results', [])
    recorded = [folder / f for f in dict.fromkeys(map(hub.report_folder, results)) if f and folder / f in found]
    return recorded + [p for p in found if p not in recorded]


def adaptive_attacks(dataset: str) -> Dict[str, FrozenSet[str]]:
    """The adaptive preset's attacks per threat model, as ``lwta-zoo eval --preset adaptive`` builds them for the
    dataset's budgets (without a ReLU twin's transfer attack, which needs a twin)."""
    found: Dict[str, set] = {}
    for attack in select(suite(dataset), preset='adaptive'):
        found.setdefault(attack.threat_model, set()).add(attack.name)
    return {t: frozenset(names) for t, names in found.items()}


def _training_attack(config: Dict[str, Any], name: str) -> Tuple[str, Optional[bool]]:
    """The recipe's training attack in a few words, and whether it was adaptive (a surrogate gradient)."""
    claim = PAPER_CLAIMS.get(name)
    if claim:
        return claim.training_attack, False
    adversary = (config.get('recipe') or {}).get('adversary')
    if not adversary:
        return 'not recorded', None
    method = adversary.get('method', 'none')
    if method == 'none':
        return 'standard training', False
    steps = adversary.get('steps')
    kind = {'fgsm': 'FGSM', 'trades': f"TRADES (beta {adversary.get('trades_beta')})"}.get(method, f'PGD-{steps}')
    if method == 'pgd' and steps == 1 and adversary.get('project') is False:
        kind = 'N-FGSM'  # one step from a wide random start, not projected (recipe.py)
    gradient = adversary.get('gradient', 'model')
    adaptive = gradient != 'model'
    return (f"{kind} at eps {hub.format_eps(adversary['eps'])}, "
            + (f'{gradient} surrogate (adaptive)' if adaptive else "the model's own gradient")), adaptive


def model_facts(name: str) -> Model:
    """The facts of shipped model ``name`` a row shows beside its figures."""
    folder = hub.SHIPPED_WEIGHTS / name
    config = hub.read_config(folder / hub.CONFIG_FILE)
    args = config.get('model_args') or {}
    activation = str(args.get('method') or args.get('act') or 'relu')
    dataset = hub._dataset(config.get('recipe'), config.get('metrics')) or 'unknown dataset'
    provenance = config.get('provenance') or {}
    recipe = config.get('recipe') or {}
    epochs = (recipe.get('train') or {}).get('epochs') or ((provenance.get('checkpoint') or {}).get('entries')
                                                           or {}).get('epoch')
    hours, per_step = provenance.get('train_step_hours'), provenance.get('seconds_per_step_median')
    estimated = hours is None and bool(per_step and provenance.get('steps_trained'))
    if estimated:
        hours = provenance['steps_trained'] * per_step / 3600
    network = timm.create_model(f'local-dir:{folder}')  # built from config.json alone; no weights are read
    units = {m.U for m in network.modules() if isinstance(m, LWTA)}
    training, adaptive = _training_attack(config, name)
    return Model(name=name, architecture=f"{config['architecture']} ({activation})", activation=activation,
                 dataset=dataset, dataset_name=(config.get('metrics') or {}).get('dataset_name') or dataset,
                 redistributed=hub.conversion(name) is None, training=training, adaptive_training=adaptive,
                 epochs=epochs, hours=hours, hours_estimated=estimated,
                 parameters=sum(p.numel() for p in network.parameters()), U=max(units) if units else None)


def _figure(fig: Dict[str, Any], report: str, key: Tuple[Any, ...], name: str, **extra: Any) -> Figure:
    return Figure(name=name, value=fig['accuracy'], interval=tuple(fig['interval']), report=report, key=key,
                  n=fig['n'], **extra)


def _report_parts(run: str, report: Dict[str, Any], path: Path) -> List[Dict[str, Any]]:
    """Per threat model of one report: its setting, evaluation, clean figure, attacks and worst case."""
    if report.get('format', 1) < 2:
        raise ValueError(f'{path}: report format {report.get("format", 1)}; the leaderboard reads format 2 '
                         '(rerun lwta-zoo eval)')
    evaluation = Evaluation(report=run, label=report_label(report), data=str(report.get('data')), n=report['n'],
                            repeats=report['repeats'], command=str(report.get('command')))
    clean = _figure(report['clean'], run, ('clean',), 'clean')
    parts = []
    for i, threat in enumerate(report['threat_models']):
        attacks = []
        for name in threat['attacks']:
            a = report['attacks'][name]
            extra = dict(protocol=a['protocol'], threat_model=a['threat_model'])
            attacks.append(_figure(a, run, ('attacks', name), name, median_l2=a.get('median_l2'), **extra))
            attacks += [_figure(f, run, ('attacks', name, 'parts', part), f'{name} {part}', part_of=name, **extra)
                        for part, f in (a.get('parts') or {}).items()]
        parts.append(dict(setting=(threat['threat_model'], threat['eps'], report.get('samples', 1),
                                   sampling_label(report.get('eval_tau'))),
                          evaluation=evaluation, clean=clean, attacks=attacks,
                          worst=_figure(threat, run, ('threat_models', i), 'worst case',
                                        threat_model=threat['threat_model'], over=tuple(threat['attacks'])),
                          dataset=report.get('dataset_budgets')))
    return parts


def _row(model: Model, setting: Tuple, parts: List[Dict[str, Any]]) -> Row:
    """One row from the parts of the model's reports that share a board and prediction setting."""
    threat_model, eps, samples, sampling = setting
    needed = adaptive_attacks(parts[0]['dataset'] or model.dataset).get(threat_model, frozenset())
    covered = [p for p in parts if needed and needed <= set(p['worst'].over)]
    # the report with the adaptive suite first (the largest n among them), else the largest n
    parts = sorted(parts, key=lambda p: (p not in covered, -p['evaluation'].n))
    attacks: Dict[str, Figure] = {}
    for p in parts:
        for f in p['attacks']:
            attacks.setdefault(f.name, f)
    best = max(parts, key=lambda p: len(needed & set(p['worst'].over)))
    claim = PAPER_CLAIMS.get(model.name)
    return Row(model=model, threat_model=threat_model, eps=eps, samples=samples, sampling=sampling,
               reports=tuple(dict.fromkeys(p['evaluation'] for p in parts)), clean=parts[0]['clean'],
               attacks=tuple(sorted(attacks.values(), key=lambda f: f.part_of is not None)),
               worst=covered[0]['worst'] if covered else None,
               missing_adaptive=() if covered else tuple(sorted(needed - set(best['worst'].over))),
               claim=claim if claim and claim.samples == samples else None)


def model_rows(name: str) -> List[Row]:
    """The rows of shipped model ``name``: one per board and prediction setting, or one 'not evaluated'."""
    model = model_facts(name)
    folder = hub.SHIPPED_WEIGHTS / name
    groups: Dict[Tuple, List[Dict[str, Any]]] = {}
    for run in report_folders(folder):
        path = run / 'report.json'
        for part in _report_parts(run.relative_to(folder).as_posix(), read_report(path), path):
            groups.setdefault(part['setting'], []).append(part)
    return [_row(model, setting, parts) for setting, parts in groups.items()] or [Row(model=model)]


def rows() -> List[Row]:
    """The rows of every shipped model (``lwta_zoo.hub.shipped_weights()``), by model."""
    return [row for name in hub.shipped_weights() for row in model_rows(name)]


def boards(all_rows: List[Row]) -> Dict[BoardKey, List[Row]]:
    """Rows by dataset and threat model, in rank order (``Row.rank``); a model without a report is on every board
    of its dataset (on its own where its dataset has no other)."""
    order = sorted({r.board for r in all_rows if r.reports}, key=lambda k: (k[0], k[1], k[2] is not None, k[2] or 0))
    order += [(d, None, None) for d in dict.fromkeys(r.model.dataset for r in all_rows if not r.reports)
              if not any(k[0] == d for k in order)]
    return {key: sorted((r for r in all_rows if r.board == key or (not r.reports and r.model.dataset == key[0])),
                        key=Row.rank) for key in order}
