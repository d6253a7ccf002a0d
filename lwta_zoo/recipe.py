"""Training recipes: a YAML file checked against a typed schema before any work starts.

A recipe has the sections below; every key has a default except ``model.name`` and
``data.name``. Unknown keys, duplicate keys, wrong types, unknown choices and numbers outside
their range (``RANGES``) are errors that name the key.
Floats may be written as fractions (``eps: 8/255``). ``key=value`` overrides use dotted
paths (``train.epochs=2``, ``model.args.lwta_args.U=4``); values are parsed as YAML.
A recipe file may start from another: ``extends: other.yaml`` (a path relative to the file) takes
that recipe and replaces the values the file gives, key by key within each section, so a variant
states only how it differs (a longer run, say).
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Optional, Sequence, Union

import timm
import yaml

from . import data
from .attacks.pgd import GRADIENTS


@dataclass
class ModelSection:
    name: str = ''  # a model in timm's registry (after ``import lwta_zoo``)
    args: Dict[str, Any] = field(default_factory=dict)  # keyword arguments of timm.create_model


@dataclass
class DataSection:
    name: str = ''  # cifar10 | mnist | fashion_mnist
    root: Optional[str] = None  # a folder of local files, searched before $LWTA_ZOO_DATA
    download: bool = True
    # true: CIFAR's random crop (padding 4) + horizontal flip; 'verma_swami': Verma & Swami's noise,
    # class blending (and CIFAR shift/rotate/flip), the AISTATS paper's (lwta_zoo.data.VermaSwamiAugment)
    augment: Literal[False, True, 'verma_swami'] = False
    train_limit: Optional[int] = None  # a fixed random subset of the training set
    test_limit: Optional[int] = None
    workers: int = 0
    # hold the training set on the training device as one uint8 tensor and augment whole batches
    # there (lwta_zoo.data.augment_batch): no DataLoader, for GPUs; other random draws than the loader's
    on_device: bool = False


@dataclass
class OptimSection:
    name: Literal['sgd', 'adam'] = 'sgd'
    lr: float = 0.1
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    nesterov: bool = False


@dataclass
class ScheduleSection:
    """Per-epoch learning-rate schedule.

    ``constant``; ``decay_after``: multiply by ``gamma`` every epoch after epoch ``start``
    (the WRN paper: gamma 0.5 after 75); ``multistep``: multiply by ``gamma`` at each of
    ``milestones``; ``cosine``: cosine annealing to 0 over the run, one value an epoch.
    ``cyclic``: updated every optimizer step, linear from 0 to the base rate at epoch
    ``peak`` (fractional epochs allowed), then linear to 0 at the end of the run: the
    one-cycle schedule of fast adversarial training (Wong, Rice, Kolter 2020).
    """

    name: Literal['constant', 'decay_after', 'multistep', 'cosine', 'cyclic'] = 'constant'
    gamma: float = 0.1
    start: int = 0
    milestones: List[int] = field(default_factory=list)
    peak: float = 0.0  # cyclic only: the epoch where the rate peaks


@dataclass
class AdversarySection:
    """Adversarial training. ``fgsm`` is one PGD step of size eps without random start;
    FGSM with a random start (Wong, Rice, Kolter 2020) is ``pgd`` with ``steps: 1``,
    ``random_start: true`` and ``step_size`` 1.25 eps; N-FGSM (de Jorge et al. 2022) adds
    ``init_scale: 2``, ``step_size`` eps and ``project: false``; few-step PGD is ``pgd`` with few steps;
    ``trades`` (Zhang et al. 2019) maximises KL(p_clean || p_adv) from a uniform random start
    in the ball (TRADES' code starts from 0.001 * N(0, 1)) and trains on
    CE(clean) + trades_beta * KL(p_clean || p_adv).

    ``gradient`` is the gradient the training attack follows: ``model`` (the sampled
    model's own, as the papers' authors did) or an adaptive one (``mean`` surrogate,
    ``ste`` straight-through, ``eot`` over ``eot_samples`` draws; see lwta_zoo.attacks.pgd).
    ``model_mode``: the mode the model is attacked in (``train``: BatchNorm batch statistics
    and relaxed LWTA samples, as in Madry-style PGD-AT code; ``eval``: running statistics and
    exact samples).
    """

    method: Literal['none', 'pgd', 'fgsm', 'trades'] = 'none'
    eps: float = 8 / 255
    step_size: float = 2 / 255
    steps: int = 10
    random_start: bool = True
    init_scale: float = 1.0  # the random start is uniform in the ball of init_scale * eps
    project: bool = True  # false: iterates stay in [0, 1] only, not in the eps-ball (N-FGSM)
    gradient: Literal[GRADIENTS] = 'model'  # type: ignore[valid-type]
    eot_samples: int = 4
    model_mode: Literal['train', 'eval'] = 'train'
    trades_beta: float = 6.0


@dataclass
class EvalSection:
    """Test-set monitoring during and after training (the full suite is lwta_zoo.attacks).

    Robust accuracy: PGD with ``steps`` steps of ``step_size`` in the ``eps`` ball
    (defaults: the adversary's eps, 20 steps, eps/4), following ``gradient``; then a
    fresh ``samples``-sample prediction of the adversarial input.
    """

    every: int = 1  # epochs between evaluations (0: only at the end)
    samples: int = 1  # L: posterior samples averaged per prediction
    limit: Optional[int] = 1000  # test examples attacked (clean accuracy uses the whole test set)
    eps: Optional[float] = None
    step_size: Optional[float] = None
    steps: int = 20
    gradient: Literal[GRADIENTS] = 'model'  # type: ignore[valid-type]
    batch_size: int = 256


@dataclass
class GuardSection:
    """Guard against catastrophic overfitting of fast adversarial training (Wong et al. 2020).

    After every epoch, PGD with ``steps`` steps of eps/4 (the adversary's eps, random start,
    the model's own gradient, eval mode) attacks ``examples`` fixed training images (no
    augmentation). If its accuracy falls more than ``drop`` below the best epoch's, the run
    logs it, restores the best epoch's weights and stops there (then evaluates and exports).
    """

    enabled: bool = False
    examples: int = 512
    steps: int = 10
    drop: float = 0.2


@dataclass
class TrainSection:
    epochs: int = 1
    batch_size: int = 128  # per process (the global batch is this times the world size)
    seed: int = 0
    kl_weight: float = 1.0  # loss = CE + kl_weight * KL / N_train (1: the ELBO; docs/evaluating.md, The objective)
    checkpoint_every: int = 0  # optimizer steps between checkpoints, besides every epoch end (0: epochs only)
    checkpoint_minutes: float = 5.0  # and a checkpoint after this much training time since the last (0: never)
    log_every: int = 50  # optimizer steps between metrics lines
    device: Literal['auto', 'cpu', 'cuda'] = 'auto'
    threads: Optional[int] = None  # torch.set_num_threads
    bf16: bool = False  # bf16 autocast for forward passes
    channels_last: bool = False
    tensorboard: bool = False


@dataclass
class Recipe:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    adversary: AdversarySection = field(default_factory=AdversarySection)
    eval: EvalSection = field(default_factory=EvalSection)
    guard: GuardSection = field(default_factory=GuardSection)
    description: str = ''  # what this recipe reproduces and where each setting comes from

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


class RecipeError(ValueError):
    """A recipe that cannot run: the message names the key and what was expected."""


REQUIRED = ('model.name', 'data.name')

# The allowed interval of every numeric key (each element of a list key); a test checks that none is missing.
RANGES = {
    'data.train_limit': '[1, inf)', 'data.test_limit': '[1, inf)', 'data.workers': '[0, inf)',
    'optim.lr': '(0, inf)', 'optim.momentum': '[0, 1)', 'optim.weight_decay': '[0, inf)',
    'schedule.gamma': '(0, inf)', 'schedule.start': '[0, inf)', 'schedule.milestones': '[0, inf)',
    'adversary.eps': '[0, 1]', 'adversary.step_size': '(0, 1]', 'adversary.steps': '[1, inf)',
    'adversary.init_scale': '[0, inf)',
    'adversary.eot_samples': '[1, inf)', 'adversary.trades_beta': '[0, inf)',
    'eval.every': '[0, inf)', 'eval.samples': '[1, inf)', 'eval.limit': '[0, inf)', 'eval.eps': '[0, 1]',
    'eval.step_size': '(0, 1]', 'eval.steps': '[1, inf)', 'eval.batch_size': '[1, inf)',
    'train.epochs': '[1, inf)', 'train.batch_size': '[1, inf)', 'train.seed': '[0, inf)',
    'train.kl_weight': '[0, inf)', 'train.checkpoint_every': '[0, inf)', 'train.checkpoint_minutes': '[0, inf)',
    'train.log_every': '[1, inf)', 'train.threads': '[1, inf)', 'schedule.peak': '[0, inf)',
    'guard.examples': '[1, inf)', 'guard.steps': '[1, inf)', 'guard.drop': '(0, 1]',
}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return 'one of ' + ', '.join(map(repr, typing.get_args(tp)))
    return getattr(tp, '__name__', None) or str(tp).replace('typing.', '')


def _check(value: Any, tp: Any, key: str) -> Any:
    """``value`` as type ``tp`` (ints and fraction strings are accepted as floats), or RecipeError."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:  # Optional[X]
        if value is None:
            return None
        return _check(value, next(a for a in args if a is not type(None)), key)
    if origin is Literal:
        if value in args:
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # "8/255", and "5e-4", which YAML 1.1 reads as a string
            try:
                return float(Fraction(value.replace(' ', '')))
            except (ValueError, ZeroDivisionError):
                pass
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bool):
        if isinstance(value, tp):
            return value
    elif origin is list:
        if isinstance(value, list):
            return [_check(v, args[0], f'{key}[{i}]') for i, v in enumerate(value)]
    elif origin is dict:
        if isinstance(value, dict) and all(isinstance(k, str) for k in value):
            return dict(value)
    else:
        raise TypeError(f'recipe schema: unsupported type {tp} at {key}')
    raise RecipeError(f'recipe key {key!r}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})')


def _build(cls: type, values: Any, prefix: str) -> Any:
    if not isinstance(values, dict):
        raise RecipeError(f'recipe section {prefix.rstrip(".") or "<top>"!r}: expected a mapping, got {values!r}')
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise RecipeError(f'unknown recipe key(s) {[prefix + k for k in unknown]}; '
                          f'{prefix.rstrip(".") or "the top level"} accepts {sorted(names)}')
    kwargs = {}
    for name, value in values.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value if value is not None else {}, f'{prefix}{name}.')
        else:
            kwargs[name] = _check(value, tp, prefix + name)
    return cls(**kwargs)


def numeric_keys(cls: type = Recipe, prefix: str = '') -> Iterator[str]:
    """The dotted names of the schema's int and float keys (also optional ones and lists of numbers)."""
    for name, tp in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(tp):
            yield from numeric_keys(tp, f'{prefix}{name}.')
        elif _holds_numbers(tp):
            yield prefix + name


def _holds_numbers(tp: Any) -> bool:
    return tp in (int, float) or (typing.get_origin(tp) is not Literal and any(map(_holds_numbers, typing.get_args(tp))))


def _in_range(value: float, interval: str) -> bool:
    """Whether ``value`` lies in an interval written '[lo, hi)' (brackets closed, parentheses open)."""
    low, high = (float(v) for v in interval[1:-1].split(','))
    return (math.isfinite(value) and (low <= value if interval[0] == '[' else low < value)
            and (value <= high if interval[-1] == ']' else value < high))


def _check_ranges(r: Recipe) -> None:
    for key, interval in RANGES.items():
        section, name = key.split('.')
        value = getattr(getattr(r, section), name)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and not _in_range(v, interval):
                raise RecipeError(f'recipe key {key!r} must be in {interval}, got {v}')


def _check_values(r: Recipe) -> None:
    """Checks beyond types: required keys, known dataset and model, numbers in range."""
    for key in REQUIRED:
        section, name = key.split('.')
        if not getattr(getattr(r, section), name):
            raise RecipeError(f'recipe key {key!r} is required')
    if r.data.name not in data.DATASETS:
        raise RecipeError(f'recipe key data.name: unknown dataset {r.data.name!r}; known: {sorted(data.DATASETS)}')
    if not timm.is_model(r.model.name):
        raise RecipeError(f'recipe key model.name: {r.model.name!r} is not in timm\'s registry '
                          '(see timm.list_models() after import lwta_zoo)')
    _check_ranges(r)
    if r.schedule.name == 'cyclic' and not 0 < r.schedule.peak < r.train.epochs:
        raise RecipeError(f'recipe key schedule.peak must be in (0, train.epochs={r.train.epochs}), '
                          f'got {r.schedule.peak}')
    if r.guard.enabled and (r.adversary.method == 'none' or not 0 < r.guard.drop <= 1):
        raise RecipeError('recipe section guard: needs an adversary (adversary.method) and 0 < guard.drop <= 1, '
                          f'got method {r.adversary.method!r}, drop {r.guard.drop}')
    if r.adversary.method != 'none' and not r.adversary.eps > 0:
        raise RecipeError(f'recipe key adversary.eps must be > 0 for {r.adversary.method}, got {r.adversary.eps}')


def set_dotted(tree: Dict[str, Any], key: str, value: Any) -> None:
    """Set ``tree['a']['b']['c'] = value`` for key ``'a.b.c'``, creating mappings on the way."""
    *path, last = key.split('.')
    node = tree
    for i, part in enumerate(path):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise RecipeError(f'override {key!r}: {".".join(path[:i + 1])!r} is not a section')
        node = child
    node[last] = value


def parse_overrides(overrides: Sequence[str]) -> List[tuple]:
    """``['train.epochs=2', ...]`` -> ``[('train.epochs', 2), ...]`` (values parsed as YAML)."""
    pairs = []
    for item in overrides:
        key, sep, raw = item.partition('=')
        if not sep or not key:
            raise RecipeError(f'override {item!r}: expected KEY=VALUE, e.g. train.epochs=2')
        pairs.append((key.strip(), yaml.safe_load(raw) if raw.strip() else None))
    return pairs


def recipe_from_dict(tree: Dict[str, Any], overrides: Sequence[str] = ()) -> Recipe:
    """A validated :class:`Recipe` from a nested mapping plus ``key=value`` overrides."""
    if not isinstance(tree or {}, dict):
        raise RecipeError(f'a recipe is a mapping of sections, got {tree!r}'[:200])
    tree = yaml.safe_load(yaml.safe_dump(tree or {}))  # a deep copy
    for key, value in parse_overrides(overrides):
        set_dotted(tree, key, value)
    recipe = _build(Recipe, tree, '')
    _check_values(recipe)
    return recipe


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load, except that a key given twice in one mapping is an error (YAML keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise RecipeError(f'duplicate key {key!r} (line {key_node.start_mark.line + 1})')
            seen.add(key)
        return super().construct_mapping(node, deep)


def _merged(base: Dict[str, Any], update: Dict[str, Any]) -> Dict[str, Any]:
    """``base`` with ``update``'s values in place of its own, mappings merged key by key."""
    out = dict(base)
    for key, value in update.items():
        out[key] = _merged(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _read_tree(path: Path, seen: tuple = ()) -> Any:
    """A recipe file's mapping, with the recipe it ``extends`` (if any) underneath it."""
    if not path.is_file():
        raise RecipeError(f'recipe file {path} does not exist' if not path.exists() else
                          f'recipe path {path} is not a file (give a .yaml recipe)')
    if path.resolve() in seen:
        raise RecipeError(f'{path}: extends itself through {[str(p) for p in seen]}')
    try:
        tree = yaml.load(path.read_text(encoding='utf-8'), Loader=_UniqueKeyLoader)
    except UnicodeDecodeError:
        raise RecipeError(f'{path}: not a UTF-8 text file (a recipe is YAML)') from None
    except yaml.YAMLError as e:
        raise RecipeError(f'{path}: not valid YAML: {" ".join(str(e).split())}') from None
    except RecipeError as e:
        raise RecipeError(f'{path}: {e}') from None
    if not isinstance(tree, dict) or 'extends' not in tree:
        return tree
    tree = dict(tree)
    parent = tree.pop('extends')
    if not isinstance(parent, str):
        raise RecipeError(f'{path}: extends: expected a recipe file name, got {parent!r}')
    base = _read_tree(path.parent / parent, seen + (path.resolve(),))
    if not isinstance(base, dict):
        raise RecipeError(f'{path.parent / parent}: a recipe is a mapping of sections, got {base!r}'[:200])
    return _merged(base, tree)


def load_recipe(path: Union[str, Path], overrides: Sequence[str] = ()) -> Recipe:
    """Read a YAML recipe (and the one it extends), apply overrides, and validate it (see the module docstring)."""
    path = Path(path)
    tree = _read_tree(path)
    try:
        return recipe_from_dict(tree, overrides)
    except RecipeError as e:
        raise RecipeError(f'{path}: {e}') from None
