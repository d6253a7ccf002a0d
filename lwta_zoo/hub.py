"""Weights that travel: safetensors export, config.json, model cards, Hub push and pull, imports.

An exported folder is timm's layout, so ``timm.create_model('local-dir:FOLDER')`` and
``'hf-hub:ORG/NAME[@REVISION]'`` read it: ``model.safetensors``, ``config.json`` (architecture,
num_classes, num_features, label_names, model_args, pretrained_cfg with the papers' arXiv ids) and
``README.md`` (a model card with Hugging Face metadata: install and usage, results as a model-index
that tells robust from clean accuracy, limitations, citations). Published folders also hold the
``lwta-zoo eval`` reports their cards cite, under ``eval/``; ``push_to_hub`` uploads them too.

``pretrained=True`` on a zoo model (``timm.create_model``, ``torch.hub.load``) finds its weights:

1. where the pretrained_cfg points: a ``local-dir:`` folder or a ``file`` the caller set;
2. in local mirrors, a folder named after the model (``arch`` or ``arch.tag``) that holds
   model.safetensors, under ``$LWTA_ZOO_WEIGHTS``, then under ``lwta_zoo/weights/`` (the
   weights this repo ships);
3. on the Hugging Face Hub at the pretrained_cfg's ``hf_hub_id``, through ``hf_hub_download``,
   so the HF cache, ``HF_HUB_OFFLINE`` and revisions behave as everywhere else.

Only safetensors are loaded. Third-party ``.pt`` checkpoints are read once, by
``import_checkpoint`` (``lwta-zoo import``), with ``torch.load(weights_only=True)``.
Third-party weights whose licence does not allow redistribution ship as a card and config.json
without model.safetensors; the config's ``provenance.conversion`` (see ``conversion``) says how
to convert the source checkpoint, and the import checks its sha256 and that of the result.
"""
from __future__ import annotations

import argparse
import contextlib
import contextvars
import hashlib
import inspect
import json
import math
import os
import pickle
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import timm
import torch
import torch.nn as nn
import yaml
from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCardData, get_token, hf_hub_download
from huggingface_hub.errors import (
    LocalEntryNotFoundError, OfflineModeIsEnabled, RemoteEntryNotFoundError, RepositoryNotFoundError,
    RevisionNotFoundError,
)
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save
from timm.models import (
    clean_state_dict, model_entrypoint, parse_model_name, resolve_pretrained_cfg, split_model_name_tag,
)
from timm.models._hub import download_from_hf, hf_split, save_config_for_hf
from timm.models._pretrained import PretrainedCfg

from .checkpoint import differences, flatten

WEIGHTS_FILE, CONFIG_FILE, CARD_FILE = 'model.safetensors', 'config.json', 'README.md'
MIRROR_ENV = 'LWTA_ZOO_WEIGHTS'
SHIPPED_WEIGHTS = Path(__file__).resolve().parent / 'weights'
RECIPES = Path(__file__).resolve().parents[1] / 'recipes'  # in a source checkout
STATE_DICT_KEYS = ('state_dict', 'model_state_dict', 'model')  # where checkpoints keep their weights
# safetensors metadata entry: the config.json entries that built the exported network (see model_identity)
MODEL_META = 'lwta_zoo.model'
RUNTIME_ARGS = ('samples', 'sample_average', 'max_batch')  # model_args that set how it predicts, not what it is
EXPORT_FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, 'eval')  # what an exported folder holds (import --overwrite)
# Whether weights without the MODEL_META record may be loaded on the config's word (see trusting_config).
_TRUST_CONFIG: contextvars.ContextVar[bool] = contextvars.ContextVar('lwta_zoo_trust_config', default=False)


class MissingWeightsError(FileNotFoundError):
    """A model has no weights where ``pretrained=True`` looks for them."""


# ----------------------------------------------------------------------------------------------
# Checks shared by every way in


def _listing(keys: Iterable[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f', ... ({len(keys) - limit} more)' if len(keys) > limit else ''
    return f'{len(keys)} [' + ', '.join(keys[:limit]) + more + ']'


def check_safetensors(path: Union[str, Path]) -> Path:
    """Return ``path`` if it is a complete safetensors file; refuse anything else unread."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f'No weights file {path}')
    try:
        with safe_open(str(path), 'pt') as f:
            f.keys()
    except SafetensorError as e:
        with path.open('rb') as f:  # a pickle's or zip's first bytes (a safetensors header length may start 0x80)
            head = f.read(4)
        if head[:1] == b'\x80' or head == b'PK\x03\x04':
            raise ValueError(
                f'{path} is a torch/pickle checkpoint, not safetensors; lwta_zoo never unpickles weights. '
                f'Convert a trusted checkpoint with `lwta-zoo import`.') from e
        raise ValueError(f'{path} is not a valid safetensors file ({e}); refusing to load it') from e
    return path


def read_config(path: Union[str, Path]) -> Dict[str, Any]:
    """A model folder's config.json, refused with its path unless it is a JSON object naming a zoo architecture,
    with ``model_args`` (if any) a mapping."""
    path = Path(path)
    try:
        config = json.loads(path.read_text(encoding='utf-8'))
        arch = config['architecture']
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f'{path} is not a timm model config with an "architecture": {e}') from e
    _require_zoo_architecture(arch, str(path))
    if not isinstance(config.get('model_args') or {}, dict):
        raise ValueError(f'{path}: "model_args" must be a mapping of build arguments (e.g. {{"method": "lwta"}}), '
                         f'got {type(config["model_args"]).__name__} {config["model_args"]!r}')
    return config


def check_export(folder: Union[str, Path]) -> Dict[str, Any]:
    """The config.json of an exported folder, once its architecture and safetensors weights are checked."""
    folder = Path(folder)
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f'{folder} is not an exported model folder: it has no {CONFIG_FILE}')
    config = read_config(folder / CONFIG_FILE)
    check_safetensors(folder / WEIGHTS_FILE)
    return config


def _require_zoo_architecture(arch: Any, where: str) -> None:
    """Only the zoo's own builders check weights on the way in; refuse anything else."""
    from .models import zoo_model_names  # lwta_zoo.models imports this module

    if arch not in zoo_model_names():
        raise ValueError(f'{where} names architecture {arch!r}, which is not a model of lwta_zoo')


def check_finite(state_dict: Dict[str, torch.Tensor], source: Any) -> None:
    """Refuse weights holding NaN or inf: such a model predicts one class whatever its input."""
    bad = [k for k, v in state_dict.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f'Weights {source} hold non-finite values (NaN or inf) in {_listing(bad)}; refusing them')


def _check_keys(state_dict: Dict[str, torch.Tensor], model: nn.Module, source: Any,
                built: Optional[Dict[str, Any]] = None) -> Dict[str, torch.Tensor]:
    """Refuse weights whose keys, shapes or kinds (integer for floating point) differ from ``model``'s,
    non-finite weights, weights recorded as exported from another network than ``built`` (``network``), and a
    config.json beside them that no longer describes the network they were exported from; a timm
    ``pretrained_filter_fn``."""
    own = model.state_dict()
    missing, unexpected = set(own) - set(state_dict), set(state_dict) - set(own)
    arch = getattr(model, 'pretrained_cfg', {}).get('architecture', type(model).__name__)
    if missing or unexpected:
        raise ValueError(
            f'Weights {source} do not fit {arch}: missing keys {_listing(missing)}, '
            f'unexpected keys {_listing(unexpected)}')
    shapes = [f'{k} {tuple(v.shape)} (the model: {tuple(own[k].shape)})' for k, v in state_dict.items()
              if v.shape != own[k].shape]
    if shapes:
        raise ValueError(f'Weights {source} do not fit {arch}: shapes differ at {len(shapes)} keys: '
                         + ', '.join(shapes[:4]) + (', ...' if len(shapes) > 4 else ''))
    kinds = [f'{k} ({v.dtype})' for k, v in state_dict.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if kinds:
        raise ValueError(f'Weights {source} hold integer or boolean tensors where {arch} has floating-point ones: '
                         f'{_listing(kinds)}; casting them would give another model. Export the weights in float')
    check_finite(state_dict, source)
    if isinstance(source, (str, Path)) and Path(source).name == WEIGHTS_FILE:  # an exported folder's weights
        config = Path(source).with_name(CONFIG_FILE)
        if config.is_file():  # an edited config.json, named field by field
            check_config_matches(Path(source), read_config(config), config)
    if built is not None:
        check_built_network(Path(source), built)
    return state_dict


def model_identity(config: Dict[str, Any]) -> Dict[str, Any]:
    """What in a config.json decides the network its weights belong to: architecture, classes and the
    build arguments other than the runtime ones (``RUNTIME_ARGS``)."""
    args = {k: v for k, v in (config.get('model_args') or {}).items() if k not in RUNTIME_ARGS}
    return {'architecture': config.get('architecture'), 'num_classes': config.get('num_classes'), 'model_args': args}


def network(architecture: Any, model_args: Dict[str, Any]) -> Dict[str, Any]:
    """What weights cannot tell apart by their keys and shapes: the architecture, its activation ('act', and
    LWTA's U), an AISTATS network's ``method`` (relu, lwta, lwta_ibp) and U; defaults filled in."""
    out: Dict[str, Any] = {'architecture': architecture}
    if 'method' in model_args:  # the AISTATS networks: method and U, which a ReLU network ignores
        out['method'] = model_args['method']
        if model_args['method'] != 'relu':
            out['U'] = model_args.get('U')
        return out
    out['act'] = model_args.get('act') or 'relu'
    if out['act'] == 'lwta':
        from .layers.lwta import LWTA  # lwta_zoo.layers imports lwta_zoo.kernels, which need not load for export

        out['U'] = (model_args.get('lwta_args') or {}).get('U', inspect.signature(LWTA).parameters['U'].default)
    return out


@contextlib.contextmanager
def trusting_config() -> Iterator[None]:
    """Within it, weights that do not record the network they were exported from (third-party safetensors)
    load into the network the config and arguments describe, unchecked; ``load_pretrained(trust_config=True)``."""
    token = _TRUST_CONFIG.set(True)
    try:
        yield
    finally:
        _TRUST_CONFIG.reset(token)


def _record(weights: Path) -> Optional[Dict[str, Any]]:
    """The model identity (``model_identity``) recorded in a safetensors file's metadata at export, if any."""
    with safe_open(str(weights), 'pt') as f:
        recorded = (f.metadata() or {}).get(MODEL_META)
    try:
        record = json.loads(recorded) if recorded is not None else None
    except ValueError as e:
        raise ValueError(f'{weights}: its {MODEL_META} metadata is not JSON ({e}); refusing it') from e
    if record is not None and not (isinstance(record, dict) and isinstance(record.get('model_args'), dict)):
        raise ValueError(f'{weights}: its {MODEL_META} metadata is not a model record; refusing it')
    return record


def _unrecorded(weights: Path) -> ValueError:
    return ValueError(
        f'{weights} does not record the network it was exported from ({MODEL_META} metadata), so nothing shows '
        'that the architecture, method and U being built are its own. If you know they are, load it with '
        'trust_config=True (lwta_zoo.load_pretrained, lwta-zoo eval --trust-config) or inside '
        'lwta_zoo.hub.trusting_config(), and re-export it with save_pretrained to record them')


def check_built_network(weights: Path, built: Dict[str, Any]) -> None:
    """Refuse weights whose record (``MODEL_META``) names another ``network`` than ``built``, the one being
    built, naming both; and weights without a record, unless within ``trusting_config``."""
    record = _record(weights)
    if record is None:
        if _TRUST_CONFIG.get():
            return
        raise _unrecorded(weights)
    saved = network(record.get('architecture'), record['model_args'])
    if saved != built:
        text = lambda n: ', '.join(f'{k}={v!r}' for k, v in n.items())  # noqa: E731
        raise ValueError(f'{weights} were exported from another network ({text(saved)}) than the one being built '
                         f'({text(built)}); load them as the network they record, or choose the weights of this one')


def check_config_matches(weights: Path, config: Dict[str, Any], where: Any) -> None:
    """Refuse a config.json whose model identity differs from the one recorded in the weights at export
    (an edited ``model_args`` would rebuild another network around the same weights), and weights without
    the record unless within ``trusting_config``."""
    saved = _record(weights)
    if saved is None:
        if _TRUST_CONFIG.get():
            return
        raise _unrecorded(weights)
    now = model_identity(config)
    diff = differences(saved, now)
    if diff:
        flat_saved, flat_now = flatten(saved), flatten(now)
        details = '; '.join(f'{k}: {flat_now.get(k)!r} here, {flat_saved.get(k)!r} at export' for k in diff)
        raise ValueError(f'{where} does not describe the network {weights} were exported from ({details}); '
                         'restore the exported config.json')


# ----------------------------------------------------------------------------------------------
# pretrained=True: where the weights are


def shipped_weights() -> List[str]:
    """Names (``arch.tag``) of the model folders this package ships in ``lwta_zoo/weights/`` (none if it is
    absent): weights with their card, or, for weights it does not redistribute, the card and how to convert them."""
    return sorted(p.name for p in SHIPPED_WEIGHTS.glob('*') if (p / CONFIG_FILE).is_file())


def conversion(name: str) -> Optional[Dict[str, Any]]:
    """How to make weights ``name`` (``arch.tag``) that lwta_zoo describes but does not redistribute, else None.

    The ``provenance.conversion`` record of its folder in ``lwta_zoo/weights/``: ``reason`` (why they are
    not redistributed), ``source`` (the checkpoint and where it comes from), ``command`` (the ``lwta-zoo
    import`` that converts it), ``checkpoint_sha256`` and ``tensors_sha256`` (of the converted weights' tensors: ``tensors_sha256``).
    """
    path = SHIPPED_WEIGHTS / name / CONFIG_FILE
    if not path.is_file():
        return None
    return (json.loads(path.read_text(encoding='utf-8')).get('provenance') or {}).get('conversion')


def file_sha256(path: Union[str, Path]) -> str:
    """The sha256 of a file, as ``sha256sum`` prints it."""
    with Path(path).open('rb') as f:
        return hashlib.file_digest(f, 'sha256').hexdigest()


def tensors_sha256(path: Union[str, Path]) -> str:
    """The sha256 of a safetensors file's tensors (names, dtypes, shapes and bytes, by name), not of the
    file: its metadata records the exporting code's model args, which may change while the weights do not."""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(str(path)).items()):
        digest.update(f'{name}:{tensor.dtype}:{tuple(tensor.shape)};'.encode())
        digest.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _mirrors() -> List[Path]:
    roots = [SHIPPED_WEIGHTS]
    env = os.environ.get(MIRROR_ENV)
    if env:
        if not Path(env).is_dir():
            raise NotADirectoryError(f'{MIRROR_ENV}={env} is not a folder')
        roots.insert(0, Path(env))
    return roots


def _name(cfg: PretrainedCfg) -> str:
    return f'{cfg.architecture}.{cfg.tag}' if cfg.tag else cfg.architecture


def _weights_in_folder(folder: Path, arch: str) -> Path:
    found = check_export(folder)['architecture']
    if found != arch:
        raise ValueError(f'{folder / CONFIG_FILE} names architecture {found!r}, not {arch!r}')
    return folder / WEIGHTS_FILE


def _recipes(arch: str) -> List[str]:
    """The checkout's recipes that train ``arch``, else the name its recipe would have."""
    found = []
    for path in sorted(RECIPES.glob('*.yaml')):
        model = (yaml.safe_load(path.read_text(encoding='utf-8')) or {}).get('model')
        if isinstance(model, dict) and model.get('name') == arch:
            found.append(f'recipes/{path.name}')
    return found or [f'recipes/{arch}.yaml']


def _no_weights(cfg: PretrainedCfg, reason: str) -> MissingWeightsError:
    name = _name(cfg)
    mirrors = ', '.join(str(m / name) for m in _mirrors())
    record = conversion(name)
    if record:
        where = '' if os.environ.get(MIRROR_ENV) else f' (first set {MIRROR_ENV} to a folder of your choice)'
        return MissingWeightsError(
            f"No weights for {name}: lwta_zoo does not redistribute them ({record['reason']}). Convert "
            f"{record['source']}, sha256 {record['checkpoint_sha256']}, once{where}:\n    {record['command']}\n"
            "The import checks the checkpoint's sha256 and that of the converted weights; pretrained=True then "
            f'finds them. Looked in {mirrors}; {reason}.')
    others = [n for n in timm.list_pretrained(f'{cfg.architecture}*')
              if split_model_name_tag(n)[0] == cfg.architecture and n != name]
    other_tags = f' Other pretrained tags of {cfg.architecture}: {", ".join(others)}.' if others else ''
    train = ' or '.join(f'`lwta-zoo train {r}`' for r in _recipes(cfg.architecture))
    return MissingWeightsError(
        f'No weights for {name}: {reason}. Local mirrors tried first: '
        f'{mirrors}. If {name} has no published weights, '
        f'train them with {train}.{other_tags}')


def _download(cfg: PretrainedCfg, cache_dir: Optional[Union[str, Path]], local_only: bool = False) -> Path:
    repo_id, revision = hf_split(cfg.hf_hub_id)
    at = f'{repo_id}/{WEIGHTS_FILE}' + (f'@{revision}' if revision else '')
    try:
        return check_safetensors(hf_hub_download(repo_id, WEIGHTS_FILE, revision=revision, cache_dir=cache_dir,
                                                 local_files_only=local_only))
    except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as e:
        raise _no_weights(cfg, f'it has no published weights (the Hugging Face Hub has no {at})') from e
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        online = 'was not asked' if local_only else 'cannot be reached'
        raise _no_weights(cfg, f'{at} is not in the Hugging Face cache and the Hub {online}') from e


def find_weights(cfg: PretrainedCfg, cache_dir: Optional[Union[str, Path]] = None, local_only: bool = False) -> Path:
    """The checked local safetensors file that a resolved pretrained_cfg points at (see module doc);
    ``local_only`` looks in the HF cache but does not ask the Hub."""
    if cfg.source == 'hf-hub':  # timm.create_model('hf-hub:ORG/NAME[@REVISION]')
        return _download(cfg, cache_dir, local_only)
    if cfg.file:  # a 'local-dir:' folder, or a file or folder the caller set
        file = Path(cfg.file)
        return _weights_in_folder(file, cfg.architecture) if file.is_dir() else check_safetensors(file)
    for root in _mirrors():
        if (root / _name(cfg) / WEIGHTS_FILE).exists():  # passes over a shipped card of weights not redistributed
            return _weights_in_folder(root / _name(cfg), cfg.architecture)
    if cfg.hf_hub_id:
        return _download(cfg, cache_dir, local_only)
    raise _no_weights(cfg, 'its pretrained_cfg names no source')


def resolve_pretrained(variant: str, kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """``build_model_with_cfg`` kwargs that load ``variant``'s weights from a checked local file.

    The file goes into the pretrained_cfg overlay (timm then loads it with safetensors), and a
    filter refuses weights whose keys differ from the model's, listing the missing and unexpected.
    Weights from a local mirror folder bring its config.json's ``label_names``, as timm's
    ``local-dir:`` and ``hf-hub:`` do.
    """
    cfg = resolve_pretrained_cfg(variant, kwargs.get('pretrained_cfg'), kwargs.get('pretrained_cfg_overlay'))
    file = find_weights(cfg, kwargs.get('cache_dir'))
    overlay = dict(kwargs.get('pretrained_cfg_overlay') or {}, file=str(file), source=None)
    if not cfg.label_names and file.parent in [root / _name(cfg) for root in _mirrors()]:
        overlay.setdefault('label_names', json.loads((file.parent / CONFIG_FILE).read_text(encoding='utf-8'))
                           .get('label_names'))
    built = network(cfg.architecture, kwargs)
    return dict(kwargs, pretrained_cfg_overlay=overlay, pretrained_filter_fn=partial(_check_keys, source=file,
                                                                                  built=built))


# ----------------------------------------------------------------------------------------------
# What a Hugging Face Hub user meets: the code, the papers, the labels (timm's config fields)

# Where `pip install` gets the code: the GitHub repository hubconf.py serves as torch.hub's 'lwta-zoo/lwta'.
# A placeholder until the code is published; `lwta-zoo push --code-repository URL` writes another into the card.
CODE_REPOSITORY = 'https://github.com/lwta-zoo/lwta'
L2_ATTACKS = ('cw_l2', 'blind_spot')  # unbounded minimal-perturbation attacks; every other budget is L-inf
CIFAR10_LABELS = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')


@dataclass(frozen=True)
class Paper:
    """A source paper, as config.json (``paper_ids``, ``paper_name``) and the card's Citation give it."""

    title: str
    arxiv: str
    bibtex: str


AISTATS_PAPER = Paper(
    'Local Competition and Stochasticity for Adversarial Robustness in Deep Learning', '2101.01121',
    '@inproceedings{panousis2021local,\n'
    '  title = {Local Competition and Stochasticity for Adversarial Robustness in Deep Learning},\n'
    '  author = {Panousis, Konstantinos P. and Chatzis, Sotirios and Alexos, Antonios and Theodoridis, Sergios},\n'
    '  booktitle = {International Conference on Artificial Intelligence and Statistics (AISTATS)},\n'
    '  year = {2021},\n  eprint = {2101.01121},\n  archivePrefix = {arXiv}\n}')
WRN_PAPER = Paper(
    'Stochastic Local Winner-Takes-All Networks Enable Profound Adversarial Robustness', '2112.02671',
    '@misc{panousis2021stochastic,\n'
    '  title = {Stochastic Local Winner-Takes-All Networks Enable Profound Adversarial Robustness},\n'
    '  author = {Panousis, Konstantinos P. and Chatzis, Sotirios and Theodoridis, Sergios},\n'
    '  note = {Bayesian Deep Learning workshop, NeurIPS 2021},\n'
    '  year = {2021},\n  eprint = {2112.02671},\n  archivePrefix = {arXiv}\n}')


def papers(arch: str) -> Tuple[Paper, Paper]:
    """Both source papers, the one that defines ``arch`` first."""
    return (AISTATS_PAPER, WRN_PAPER) if arch.startswith('aistats_') else (WRN_PAPER, AISTATS_PAPER)


def label_names(dataset: Optional[str]) -> Optional[List[str]]:
    """Class names by classifier index for a dataset of ``lwta_zoo.data`` (timm's ``label_names``)."""
    from .data import DATASETS

    if dataset == 'cifar10':  # torchvision reads these from the downloaded batches, so they are kept here
        return list(CIFAR10_LABELS)
    classes = getattr(DATASETS[dataset].torchvision_cls, 'classes', None) if dataset in DATASETS else None
    return list(classes) if classes else None


def _dataset(recipe: Optional[Dict[str, Any]], metrics: Optional[Dict[str, Any]]) -> Optional[str]:
    return (metrics or {}).get('dataset') or ((recipe or {}).get('data') or {}).get('name')


def hub_config(model: nn.Module, recipe: Optional[Dict[str, Any]] = None,
               metrics: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """config.json fields timm reads beyond the model's own: ``label_names`` and the papers in pretrained_cfg."""
    cfg = model.pretrained_cfg
    source = papers(cfg['architecture'])
    fields: Dict[str, Any] = {'pretrained_cfg': {
        'paper_ids': [f'arXiv:{p.arxiv}' for p in source], 'paper_name': cfg.get('paper_name') or source[0].title}}
    names = label_names(_dataset(recipe, metrics))
    if names and len(names) == model.num_classes:
        fields['label_names'] = names
    return fields


# ----------------------------------------------------------------------------------------------
# Export: safetensors + config.json + model card


def _structured(metrics: Dict[str, Any]) -> Dict[str, Any]:
    """``metrics`` as {'dataset', 'split', 'dataset_args', 'results': [{'name', 'value', **settings}]}.

    The flat form that ``lwta_zoo.train`` writes is converted: each ``<split>_<what>_acc`` entry is a
    result, with its example count (``<split>_<what>_n`` or ``<split>_n``), ``samples`` and the
    settings dict named ``<what>`` (e.g. ``pgd``) as its settings.
    """
    if 'results' in metrics:
        return metrics
    results, splits = [], set()
    for key, value in metrics.items():
        if key.endswith('_acc'):
            split, _, what = key[:-len('_acc')].partition('_')
            attack = metrics.get(what) if isinstance(metrics.get(what), dict) else {}
            settings = {'examples': metrics.get(f'{split}_{what}_n', metrics.get(f'{split}_n')),
                        'samples': metrics.get('samples'), **attack}
            results.append({'name': f'{what} accuracy', 'value': value,
                            **{k: v for k, v in settings.items() if v is not None}})
            splits.add(split)
    return {'dataset': metrics.get('dataset'), 'split': splits.pop() if len(splits) == 1 else None,
            'results': results}


def _check_metrics(metrics: Dict[str, Any]) -> None:
    if not isinstance(metrics.get('dataset'), str) or not metrics.get('results'):
        raise ValueError("metrics need a 'dataset' (e.g. 'cifar10') and measured results: a list of "
                         "'results' or flat '<split>_<what>_acc' entries")
    for r in metrics['results']:
        value = r.get('value') if isinstance(r, dict) else None
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and isinstance(r.get('name'), str)):
            raise ValueError(f'every metrics result needs a name and a measured finite value, got {r!r}')


# ----------------------------------------------------------------------------------------------
# The model card


def _stochastic(args: Dict[str, Any]) -> bool:
    """Stochastic LWTA: ``act='lwta'`` (sampling mode) or an AISTATS ``method`` of 'lwta' / 'lwta_ibp'."""
    return ((args.get('act') == 'lwta' and (args.get('lwta_args') or {}).get('mode', 'sample') == 'sample')
            or args.get('method') in ('lwta', 'lwta_ibp'))


def _attack_name(result: Dict[str, Any]) -> str:
    return result['name'].split(' robust accuracy')[0]


def threat_model(result: Dict[str, Any], results: Sequence[Dict[str, Any]] = ()) -> Optional[str]:
    """'Linf', 'L2' or None (clean); as the result says, else from its attack's settings.

    A worst case over attacks of several threat models (reports before they were kept apart)
    gets them joined, e.g. 'L2+Linf'.
    """
    if 'threat_model' in result:
        return result['threat_model']
    if 'over' in result:
        found = {threat_model(r, results) for r in results
                 if r.get('protocol_label') == result.get('protocol_label') and _attack_name(r) in result['over']}
        return '+'.join(sorted(found - {None})) or None
    if result.get('attack') in L2_ATTACKS:
        return 'L2'
    return 'Linf' if 'eps' in result else None


ARG_NAMES = {'examples': 'n', 'repeats': 'R', 'samples': 'L'}  # the papers' and the reports' symbols
CARD_ONLY = ('name', 'value', 'type', 'report', 'data')  # result keys that are not settings (data: dataset_args)


def _settings(result: Dict[str, Any]) -> Dict[str, Any]:
    """A result's settings under the symbols n, R, L; eval_tau None (exact samples) as 'exact', which
    the Hub's metadata keeps (it drops null values)."""
    settings = {ARG_NAMES.get(k, k): v for k, v in result.items() if k not in CARD_ONLY}
    if 'eval_tau' in settings and settings['eval_tau'] is None:
        settings['eval_tau'] = 'exact'
    return settings


def report_folder(result: Dict[str, Any]) -> Optional[str]:
    """The folder beside the weights (``eval/<run>``) that holds the report a result comes from, if any."""
    return Path(result['report']).parent.as_posix() if result.get('report') else None


def _subset(result: Dict[str, Any], metrics: Dict[str, Any]) -> Tuple[str, Dict[str, Any]]:
    """The model-index ``config`` (data source, report and n) and ``args`` of the examples a result was measured
    on. A report's examples get a config of their own: the Hub groups results by config and keeps only the
    first one's args, which would give a report's results another subset's (or report's) indices."""
    data = str(result.get('data') or metrics['dataset'])
    source = data.split(':')[0]
    n = result.get('examples')
    folder = report_folder(result)
    config = ((Path(source).stem if source.endswith('.npz') else metrics['dataset'])
              + (f'-{Path(folder).name}' if folder else '') + (f'-n{n}' if n else ''))
    args = {'data': data, 'n': n}
    if folder:
        args['indices'] = f'{folder}/report.json'
    return config, args


def _eval_results(metrics: Dict[str, Any]) -> List[EvalResult]:
    out = []
    for r in metrics['results']:
        threat = threat_model(r, metrics['results'])
        robust = threat is not None or 'attack' in r or 'over' in r
        config, data_args = _subset(r, metrics)
        args = {**({'threat_model': threat} if robust else {}), **_settings(r)}
        out.append(EvalResult(
            task_type='image-classification', dataset_type=metrics['dataset'],
            dataset_name=metrics.get('dataset_name', metrics['dataset']), dataset_split=metrics.get('split'),
            dataset_config=config, dataset_args={**data_args, **(metrics.get('dataset_args') or {})},
            metric_type=r.get('type', 'robust_accuracy' if robust else 'accuracy'), metric_name=r['name'],
            metric_value=r['value'], metric_args=args))
    return out


def _block(lang: str, data: Any) -> str:
    text = json.dumps(data, indent=2) if lang == 'json' else yaml.safe_dump(data, sort_keys=False).rstrip()
    return f'```{lang}\n{text}\n```'


def format_eps(eps: float) -> str:
    """8/255 for budgets on the 255 grid, else the decimal."""
    return f'{round(eps * 255)}/255' if abs(eps * 255 - round(eps * 255)) < 1e-6 else f'{eps:g}'


def _budget(result: Dict[str, Any], results: Sequence[Dict[str, Any]]) -> str:
    threat, eps = threat_model(result, results), result.get('eps')
    if threat is None:
        return 'clean'
    if isinstance(eps, (int, float)):
        return f'{threat}, eps {format_eps(eps)}'
    return f'{threat}, unbounded' if threat == 'L2' else threat


def _results_table(metrics: Dict[str, Any]) -> str:
    rows = []
    for r in metrics['results']:
        interval = r.get('interval')
        report = report_folder(r)
        rows.append(' | '.join([
            '', r['name'], f"{r['value']:g}",
            f'[{interval[0]:g}, {interval[1]:g}] ({r.get("interval_method", "")})' if interval else '',
            _budget(r, metrics['results']), str(r.get('examples', '')), str(r.get('repeats', '')),
            str(r.get('samples', '')), f'[{report}/report.md]({report}/report.md)' if report else '', '']).strip())
    return ('| Result | Value | Interval | Threat model | n | R | L | Report |\n|---|---|---|---|---|---|---|---|\n'
            + '\n'.join(rows))


def _usage(name: str, repo_id: str, code_repository: str, cfg: Dict[str, Any], dataset: Optional[str],
           record: Optional[Dict[str, Any]] = None) -> List[str]:
    """The card's Model Usage: install, (for weights not redistributed, their ``conversion`` record) and a snippet."""
    chans, *size = cfg['input_size']
    mode = 'L' if chans == 1 else 'RGB'
    example = {'fashion_mnist': 'fashion_mnist_test_500.npz', 'cifar10': 'cifar10_test_500.npz'}.get(dataset or '')
    image = ([f"shipped = Path(lwta_zoo.__file__).with_name('data') / '{example}'  # test images the package ships",
              'images, labels = read_npz(shipped)  # or open your own image',
              f"img = Image.fromarray(images[0].permute(1, 2, 0).squeeze(-1).numpy()).convert('{mode}')"]
             if example else [f"img = Image.new('{mode}', ({size[1]}, {size[0]}))  # your image here"])
    snippet = [
        'from pathlib import Path', '', 'import timm', 'import torch', 'from PIL import Image', '',
        "import lwta_zoo  # registers the zoo's architectures with timm: without it create_model says 'Unknown model'",
        *(['from lwta_zoo.data import read_npz'] if example else []), '',
        f"model = timm.create_model('{name if record else 'hf-hub:' + repo_id}', pretrained=True).eval()",
        'transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))', '',
        *image,
        'with torch.no_grad():',
        '    probs = model(transform(img).unsqueeze(0)).softmax(-1)[0]',
        "names = model.pretrained_cfg.get('label_names') or [str(i) for i in range(len(probs))]",
        'top = probs.topk(3)',
        'print([(names[i], round(p, 3)) for p, i in zip(top.values.tolist(), top.indices.tolist())])']
    channels = (f'The model takes {chans}-channel {size[0]}x{size[1]} images in [0, 1] (normalisation is inside '
                f"the model; timm's transform only resizes and converts to a tensor). "
                + ("Convert other images to grayscale first (`img.convert('L')`): an RGB tensor has 3 channels "
                   'and the model refuses it.' if chans == 1 else
                   "Convert grayscale or RGBA images with `img.convert('RGB')`."))
    convert = [
        f"lwta_zoo does not redistribute these weights ({record['reason']}). Convert {record['source']} once; "
        f"`lwta-zoo import` checks its sha256 ({record['checkpoint_sha256']}) and that of the converted "
        f"tensors ({record['tensors_sha256']}, `lwta_zoo.hub.tensors_sha256`), and `pretrained=True` then finds the weights in "
        f'`${MIRROR_ENV}`:',
        f"```bash\nexport {MIRROR_ENV}=$HOME/lwta_zoo_weights  # any folder\n{record['command']}\n```",
    ] if record else []
    return ['## Model Usage', 'Install the code (the architectures are not part of timm), '
            + ('convert the weights, then load them through timm:' if record else
               'then load the weights through timm:'),
            f'```bash\npip install "lwta_zoo @ git+{code_repository}"\n```', *convert,
            '```python\n' + '\n'.join(snippet) + '\n```', channels,
            "`model.pretrained_cfg['label_names']` (from config.json) names the classes by index. "
            'In eval mode the model averages the logits of L posterior samples drawn in one batch '
            "(the WRN paper's eq. 10); `timm.create_model(..., samples=L)` or `lwta_zoo.set_samples(model, L)` "
            'sets L. With stochastic units, two calls on the same image can differ.',
            *([f"lwta_zoo ships these weights as `{name}`: `timm.create_model('{name}', pretrained=True)` finds "
               'them without the Hub.'] if name in shipped_weights() and not record else []),
            f'Code and issues: {code_repository}.']


def _training(recipe: Optional[Dict[str, Any]], provenance: Dict[str, Any]) -> Optional[str]:
    """Steps, batch and time of a run this repo trained, from what the run recorded."""
    steps = provenance.get('steps_trained')
    if not steps:
        return None
    train = (recipe or {}).get('train') or {}
    text = f'{steps} optimizer steps'
    if train.get('batch_size'):
        text += f" of batch {train['batch_size']} ({train.get('epochs')} epoch(s); the last partial batch of " \
                'each epoch is dropped)'
    per_step, hours = provenance.get('seconds_per_step_median'), provenance.get('train_step_hours')
    if hours:
        text += (f'; {hours:.1f} h of training steps (the mean time per step the run logged, times the steps, '
                 'for each epoch or the part of one between restarts; the per-epoch checks not counted)')
    elif per_step:
        text += (f'; about {steps * per_step / 60:.0f} min of training ({steps} x the median {per_step} s per step '
                 'the run logged; its total time was not recorded)')
    machines = provenance.get('machines')
    text += f"; on {' and '.join(machines)}." if machines else '; the CPU model was not recorded.'
    curve = provenance.get('clean_accuracy_curve')
    if curve:
        text += (' Clean test accuracy (the recipe\'s eval.samples, all the test images) after epoch '
                 + ', '.join(f"{p['epoch']:g}: {100 * p['test_clean_acc']:.1f}%" for p in curve) + '.')
    return text


def _limitations(cfg: Dict[str, Any], metrics: Optional[Dict[str, Any]], stochastic: bool) -> str:
    items = [
        'Robust accuracy holds only for the attacks, budgets and examples listed under Results; it is an upper '
        'bound on robustness, not a certificate. The per-example worst case over attacks is the figure to rely on, '
        'not any single attack.',
        'The figures come from test subsets (n in the table) with sampling error of several points at n=100; '
        'they are not the papers\' full-test-set protocol, and the papers\' own numbers are not reproduced here.',
    ]
    if stochastic:
        items.append('Predictions are stochastic: an example counts as defended when a majority of R fresh '
                     'predictions are right, and repeated calls on one input can disagree.')
    if metrics and any('.npz' in str(r.get('data', '')) and 'JPEG' in str(r.get('data', ''))
                       for r in metrics['results']):
        items.append('The CIFAR-10 subset is a public JPEG re-encoding of the test set, which costs about 1-3 '
                     'points of accuracy against the PNG originals.')
    if cfg.get('license') == 'unknown':
        items.append('Licence unknown: the source repository publishes no licence, so the right to redistribute '
                     'these weights is not established.')
    return '\n'.join(f'- {i}' for i in items)


def model_card(config: Dict[str, Any], *, repo_id: Optional[str] = None,
               code_repository: str = CODE_REPOSITORY) -> str:
    """README.md of an exported folder, generated from its config.json alone: it claims nothing else.

    ``repo_id`` is the Hub repository the usage snippet loads (default: the zoo's organisation and
    the model's name); ``code_repository`` is where ``pip install`` gets lwta_zoo.
    """
    from .models import HF_ORG  # lwta_zoo.models imports this module

    cfg, arch, args = config['pretrained_cfg'], config['architecture'], config.get('model_args', {})
    name = f"{arch}.{cfg['tag']}" if cfg.get('tag') else arch
    metrics, recipe, provenance = (config.get(k) for k in ('metrics', 'recipe', 'provenance'))
    metrics, provenance = (_structured(metrics) if metrics else None), provenance or {}
    dataset = _dataset(recipe, metrics)
    stochastic = _stochastic(args)
    data = ModelCardData(
        library_name='timm', license=cfg.get('license'), pipeline_tag='image-classification', model_name=name,
        tags=['image-classification', 'timm', 'lwta_zoo', 'adversarial-robustness']
        + (['stochastic-lwta'] if stochastic else []),
        datasets=[dataset] if dataset else None,
        eval_results=_eval_results(metrics) if metrics else None,
    )
    source = papers(arch)
    details = {
        'Model Type': 'Image classification' + (', stochastic LWTA' if stochastic else ''),
        'Image size': 'x'.join(map(str, cfg['input_size'][1:])) + f" ({cfg['input_size'][0]} channel(s), in [0, 1])",
        'Classes': ', '.join(config.get('label_names') or []) or str(config.get('num_classes')),
        'Papers': [f'{p.title}: https://arxiv.org/abs/{p.arxiv}' for p in source],
        'Dataset': (metrics or {}).get('dataset_name', dataset),
        'Original': cfg.get('origin_url'), 'Code': code_repository,
        'Training': provenance.get('training') or _training(recipe, provenance),
    }
    lines = []
    for key, value in details.items():
        if isinstance(value, dict):
            lines += [f'- **{key}:**'] + [f'  - {k}: {v}' for k, v in value.items()]
        elif isinstance(value, list):
            lines += [f'- **{key}:**'] + [f'  - {v}' for v in value]
        elif value:
            lines.append(f'- **{key}:** {value}')
    about = (model_entrypoint(arch).__doc__ or '').strip()
    parts = [f'---\n{data.to_yaml()}\n---', f'# Model card for {name}', about, provenance.get('summary'),
             '## Model Details', '\n'.join(lines),
             *_usage(name, repo_id or f'{HF_ORG}/{name}', code_repository, cfg, dataset,
                    provenance.get('conversion') or conversion(name)),
             '## Results']
    if metrics:
        where = f"Dataset `{metrics['dataset']}`" + (f", split `{metrics['split']}`" if metrics.get('split') else '')
        parts += [where + ('. Each report (eval/) holds the per-example outcomes, the examples\' indices, seeds, '
                           'versions and machine.' if any(report_folder(r) for r in metrics['results']) else '.'),
                  _results_table(metrics)]
    else:
        parts.append('No measured results were supplied with this export; none are claimed.')
    parts += ['## Limitations', _limitations(cfg, metrics, stochastic),
              '## Model arguments', _block('json', args), '## Training recipe',
              _block('yaml', recipe) if recipe else 'No training recipe was supplied with this export.']
    more = {k: v for k, v in provenance.items() if k != 'summary'}
    if more:
        parts += ['## Provenance', _block('yaml', more)]
    parts += ['## Citation'] + [f'```bibtex\n{p.bibtex}\n```' for p in source]
    return '\n\n'.join(p for p in parts if p) + '\n'


def save_pretrained(
    model: nn.Module,
    folder: Union[str, Path],
    *,
    recipe: Optional[Dict[str, Any]] = None,
    metrics: Optional[Dict[str, Any]] = None,
    provenance: Optional[Dict[str, Any]] = None,
) -> Path:
    """Export a zoo model to ``folder``: model.safetensors, config.json and a README.md model card.

    Args:
        model: a model built by ``timm.create_model(NAME)`` for a NAME that lwta_zoo registers.
        recipe: the training recipe, kept in config.json and shown in the card.
        metrics: measured results only (nothing is filled in here), kept as given in config.json and
            shown in the card's model-index: ``{'dataset': 'cifar10', 'split': 'test', 'dataset_args':
            {...}, 'results': [{'name': 'clean accuracy', 'value': 0.848, 'samples': 1, 'seed': 0},
            {'name': 'robust accuracy', 'value': 0.51, 'attack': 'APGD-CE', 'eps': 8 / 255, 'eot_iter': 20}]}``
            (a result's keys other than name, value and type ('accuracy') are its settings), or the
            flat form of ``lwta_zoo.train`` (see ``_structured``).
        provenance: where the weights come from: 'summary' (markdown for the card) and any
            JSON-serialisable details.
    """
    _require_zoo_architecture(getattr(model, 'pretrained_cfg', {}).get('architecture'),
                              f'the pretrained_cfg of this {type(model).__name__} (build it with timm.create_model)')
    if metrics is not None:
        _check_metrics(_structured(metrics))
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    check_finite(state_dict, f'of this {type(model).__name__}')
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    extras = {k: v for k, v in (('recipe', recipe), ('metrics', metrics), ('provenance', provenance)) if v is not None}
    # timm.create_model records the build arguments; the sample count is the model's current one.
    save_config_for_hf(model, folder / CONFIG_FILE, model_config={**hub_config(model, recipe, metrics), **extras},
                       model_args={'samples': model.num_samples, 'sample_average': model.sample_average})
    config = json.loads((folder / CONFIG_FILE).read_text())
    _save_weights(state_dict, folder / WEIGHTS_FILE, {'format': 'pt', MODEL_META: json.dumps(model_identity(config))})
    (folder / CARD_FILE).write_text(model_card(config), encoding='utf-8')
    return folder


def _save_weights(state_dict: Dict[str, torch.Tensor], path: Path, metadata: Dict[str, str]) -> None:
    """safetensors with its metadata in sorted order: safetensors writes it in hash order, and the same
    weights should give the same bytes (hashes, pushes that change nothing)."""
    data = save(state_dict, metadata=metadata)
    n = int.from_bytes(data[:8], 'little')
    header = json.loads(data[8:8 + n])
    header['__metadata__'] = dict(sorted(header['__metadata__'].items()))
    text = json.dumps(header, separators=(',', ':'), ensure_ascii=False).encode()
    if len(text) > n:
        raise RuntimeError(f'safetensors header of {path} grew when sorted ({len(text)} > {n} bytes)')
    path.write_bytes(data[:8] + text.ljust(n) + data[8 + n:])


def load_pretrained(source: Union[str, Path], *, trust_config: bool = False, **kwargs: Any) -> nn.Module:
    """A zoo model with its weights, from an exported folder, ``'local-dir:FOLDER'``,
    ``'hf-hub:ORG/NAME[@REVISION]'`` or a registered name (``'arch'`` or ``'arch.tag'``).

    ``kwargs`` go to ``timm.create_model`` (``samples=L``, ``lwta_args=...``). Weights whose keys
    differ from the architecture's are refused with the missing and unexpected keys listed, and
    weights recorded as another network's (architecture, activation, method, U) with both named.
    ``trust_config`` loads weights that record no network (third-party files) as the config says.
    """
    text = str(source)
    if not text.startswith(('hf-hub:', 'local-dir:')) and (isinstance(source, Path) or '/' in text or os.sep in text
                                                          or text.startswith(('.', '~'))):  # a path, not a name
        if not Path(source).expanduser().is_dir():
            raise FileNotFoundError(f'{source}: no such model folder (a folder that lwta-zoo import or '
                                    "save_pretrained wrote); for the Hub write 'hf-hub:ORG/NAME', for a "
                                    "registered model 'arch.tag'")
        source = Path(source).expanduser()
    name = f'local-dir:{source}' if Path(source).is_dir() else str(source)
    kind, ident = parse_model_name(name)
    config = None
    if kind == 'local-dir':
        config = check_export(ident)
    elif kind == 'hf-hub':
        try:
            config = read_config(Path(download_from_hf(ident, CONFIG_FILE, cache_dir=kwargs.get('cache_dir'))))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
            raise MissingWeightsError(f'{source}: its {CONFIG_FILE} is not in the Hugging Face cache and the Hub '
                                      'cannot be reached (offline?)') from e
        except (RepositoryNotFoundError, RevisionNotFoundError, RemoteEntryNotFoundError) as e:
            raise MissingWeightsError(f'{source}: the Hugging Face Hub has no {CONFIG_FILE} there') from e
    else:
        _require_zoo_architecture(split_model_name_tag(ident)[0], f'{source!r}')
    try:
        with trusting_config() if trust_config else contextlib.nullcontext():
            return timm.create_model(name, pretrained=True, **kwargs)
    except TypeError as e:  # model_args that the architecture's builder does not take
        if config is None:
            raise
        raise ValueError(f'{source}: {CONFIG_FILE} model_args {config.get("model_args")} do not fit architecture '
                         f'{config["architecture"]!r} ({e})') from e


def upload_files(folder: Union[str, Path]) -> List[str]:
    """The files of an exported folder that go to the Hub, relative to it: weights, config.json and eval/."""
    folder = Path(folder)
    reports = sorted(p.relative_to(folder).as_posix() for p in (folder / 'eval').rglob('*') if p.is_file())
    return [WEIGHTS_FILE, CONFIG_FILE] + reports


def push_to_hub(
    folder_or_model: Union[str, Path, nn.Module],
    repo_id: str,
    *,
    revision: Optional[str] = None,
    private: Optional[bool] = None,
    commit_message: str = 'Upload lwta_zoo model',
    create_pr: bool = False,
    token: Optional[str] = None,
    recipe: Optional[Dict[str, Any]] = None,
    metrics: Optional[Dict[str, Any]] = None,
    code_repository: str = CODE_REPOSITORY,
):
    """Upload an exported folder (or export ``model`` first) to the Hugging Face Hub; returns the CommitInfo.

    Creates the repo if needed and sends, in one commit, the weights, config.json, the reports
    under eval/ that the card links to, and a README.md card written for this repo: its snippet
    loads ``hf-hub:<repo_id>`` and installs the code from ``code_repository``. Nothing else in
    the folder is sent. The token comes from the usual places (``token``, ``HF_TOKEN``, ``hf auth login``).
    """
    if isinstance(folder_or_model, nn.Module):
        with TemporaryDirectory() as tmp:
            folder = save_pretrained(folder_or_model, tmp, recipe=recipe, metrics=metrics)
            return push_to_hub(folder, repo_id, revision=revision, private=private, commit_message=commit_message,
                               create_pr=create_pr, token=token, code_repository=code_repository)
    folder = Path(folder_or_model)
    config = check_export(folder)
    check_finite(load_file(folder / WEIGHTS_FILE), folder / WEIGHTS_FILE)
    check_config_matches(folder / WEIGHTS_FILE, config, folder / CONFIG_FILE)
    if token is None and get_token() is None:
        raise ValueError(f'no Hugging Face token to push {folder} with: set HF_TOKEN or run `hf auth login`')
    from . import __version__

    api = HfApi(token=token, library_name='lwta_zoo', library_version=__version__)  # the user agent, as timm's
    try:
        repo = api.create_repo(repo_id, private=private, exist_ok=True)
        card = model_card(config, repo_id=repo.repo_id, code_repository=code_repository)
        operations = [CommitOperationAdd(path_in_repo=f, path_or_fileobj=str(folder / f))
                      for f in upload_files(folder)]
        operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode('utf-8')))
        return api.create_commit(repo_id=repo.repo_id, operations=operations, revision=revision,
                                 commit_message=commit_message, create_pr=create_pr)
    except Exception as e:
        if not any(c.__name__ == 'TransportError' for c in type(e).__mro__):  # the HTTP client's network failures
            raise
        raise ConnectionError(f'cannot reach the Hugging Face Hub to push {folder} to {repo_id} '
                              f'({type(e).__name__}: {e}); check the connection (and HF_ENDPOINT) and push again') from e


# ----------------------------------------------------------------------------------------------
# Import of third-party checkpoints


def _native(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Keys already as the zoo's models name them."""
    return state_dict, {}


def _trades(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """TRADES / RobustBench WideResNet: as the zoo's, plus an unused ``sub_block1`` that is dropped."""
    return {k: v for k, v in state_dict.items() if not k.startswith('sub_block1.')}, {}


AUTHORS_ACTIVATIONS = {'lwta1': 'relu1', 'lwta2': 'relu2', 'lwta': 'relu'}
AUTHORS_TEMPERATURES = (
    "The authors' code learns one temperature parameter `temp` per LWTA layer (listed under the zoo's "
    'module names). Their conv LWTA draws its training-time concrete relaxation at softplus(temp) and, at '
    'test time, the relaxation at temperature 0.01. lwta_zoo follows the paper (fixed tau=0.67 in training, '
    "exact samples at test time), so these values are kept for reference only; lwta_args={'eval_tau': 0.01} "
    "reproduces the authors' test-time relaxation.")


def _authors_lwta(state_dict: Dict[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The WRN paper authors' code: TRADES layout, activations lwta1/lwta2/lwta each holding a ``temp``."""
    weights, temps = {}, {}
    for key, value in _trades(state_dict)[0].items():
        *path, leaf = (AUTHORS_ACTIVATIONS.get(p, p) for p in key.split('.'))
        if leaf == 'temp':
            temps['.'.join(path)] = value.item()
        else:
            weights['.'.join(path + [leaf])] = value
    return weights, {'learned_temperatures': {'about': AUTHORS_TEMPERATURES, 'temp': temps}}


# layout name -> state_dict mapping into the zoo's keys, returning (state_dict, metadata to keep)
LAYOUTS: Dict[str, Callable[[Dict[str, torch.Tensor]], Tuple[Dict[str, torch.Tensor], Dict[str, Any]]]] = {
    'native': _native, 'trades': _trades, 'authors-lwta': _authors_lwta,
}


def _read_checkpoint(path: Path) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """The state_dict of a .pt checkpoint, and its other scalar entries (epoch, ...); nothing executed."""
    if not path.is_file():
        raise FileNotFoundError(f'No checkpoint file {path}')
    if path.stat().st_size == 0:
        raise ValueError(f'{path} is empty (0 bytes): not a checkpoint; copy or download it again')
    try:
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except pickle.UnpicklingError as e:
        text = ' '.join(str(e).split())
        if 'Unsupported global' not in text:  # no object it refuses: the bytes are not a checkpoint's pickle
            why = text.split('WeightsUnpickler error:')[-1].split('Check the documentation')[0].strip()
            raise ValueError(f'{path} is not a torch checkpoint (torch.load cannot read it: {why}); '
                             'check the file') from e
        reason = text[text.index('Unsupported global'):].split(' was not')[0]  # the class it would construct
        raise ValueError(f'Refusing {path}: it holds more than weights, and loading it would run code ({reason}); '
                         'import only a state_dict saved with torch.save(model.state_dict(), ...)') from e
    except (EOFError, RuntimeError) as e:  # truncated pickles; a zip torch cannot read
        raise ValueError(f'{path} is not a readable torch checkpoint ({type(e).__name__}: '
                         f'{" ".join(str(e).split()) or "truncated"}); check the file') from e
    if isinstance(ckpt, dict):
        key = next((k for k in STATE_DICT_KEYS if isinstance(ckpt.get(k), dict)), None)
        state_dict = ckpt[key] if key else ckpt
        if state_dict and all(isinstance(v, torch.Tensor) for v in state_dict.values()):
            entries = {k: v for k, v in ckpt.items() if isinstance(v, (bool, int, float, str))} if key else {}
            return clean_state_dict(state_dict), entries
    raise ValueError(f'{path} has no state_dict: neither a dict of tensors nor one under {STATE_DICT_KEYS}')


def import_checkpoint(
    checkpoint: Union[str, Path],
    model_name: str,
    output: Union[str, Path],
    *,
    layout: str = 'native',
    metrics: Optional[Dict[str, Any]] = None,
    provenance: Optional[Dict[str, Any]] = None,
    verify: bool = True,
    overwrite: bool = False,
) -> Path:
    """Convert a third-party .pt checkpoint into an exported folder for a registered zoo model.

    The file is read with ``torch.load(weights_only=True)``; ``layout`` (see ``LAYOUTS``) maps its
    keys; the result must fit ``model_name`` exactly. The source file's name and sha256, its scalar
    entries and the layout's metadata are kept in config.json and the model card. For weights that
    lwta_zoo converts rather than redistributes (``conversion(model_name)``), the checkpoint must have
    the recorded sha256 before it is read, and the converted tensors the recorded one; given no metrics
    or provenance, the folder then gets the published config.json, card and eval/ reports. ``verify=False``
    skips the checks, for the tool that writes the record. An ``output`` that holds a model already (its
    weights, config, card or eval/ reports, which would end up beside other weights) is refused unless
    ``overwrite``, which removes those first, once the checkpoint has converted.
    """
    checkpoint, output = Path(checkpoint), Path(output)
    if layout not in LAYOUTS:
        raise ValueError(f'layout must be one of {sorted(LAYOUTS)}, got {layout!r}')
    _require_zoo_architecture(split_model_name_tag(model_name)[0], f'model {model_name!r}')
    if output.exists() and not output.is_dir():
        raise ValueError(f'--output {output} exists and is not a folder')
    held = [f for f in EXPORT_FILES if (output / f).exists()]
    if held and not overwrite:
        raise ValueError(f'--output {output} holds a model already ({", ".join(held)}); choose another folder, or '
                         'pass --overwrite to replace it (its eval/ reports are removed with it)')
    record, digest = conversion(model_name) if verify else None, file_sha256(checkpoint)
    if record and digest != record['checkpoint_sha256']:
        raise ValueError(f"{checkpoint} is not the checkpoint {model_name} is converted from: its sha256 is {digest}, "
                         f"{record['source']} has {record['checkpoint_sha256']}")
    state_dict, entries = _read_checkpoint(checkpoint)
    state_dict, notes = LAYOUTS[layout](state_dict)
    model = timm.create_model(model_name)
    model.load_state_dict(_check_keys(state_dict, model, checkpoint))
    for name in held:  # overwrite: nothing of the model it replaces stays beside the new weights
        shutil.rmtree(output / name) if (output / name).is_dir() else (output / name).unlink()
    source = {'file': checkpoint.name, 'sha256': digest, 'layout': layout, **({'entries': entries} if entries else {})}
    folder = save_pretrained(model, output, metrics=metrics,
                             provenance={**(provenance or {}), 'checkpoint': source, **notes})
    got = tensors_sha256(folder / WEIGHTS_FILE) if record else None
    if record and got != record['tensors_sha256']:
        for name in (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE):  # what this call wrote: the folder held none of them
            (folder / name).unlink()
        raise ValueError(f"Converting {checkpoint} as {model_name} gave tensors with sha256 {got}, not the recorded "
                         f"{record['tensors_sha256']} (layout {layout!r}; the recorded command: {record['command']}); "
                         f'the files it wrote to {folder} were removed')
    card = SHIPPED_WEIGHTS / model_name
    if record and metrics is None and provenance is None and card.resolve() != folder.resolve():
        for file in [CARD_FILE] + upload_files(card)[1:]:  # config.json and eval/: the folder as it would have shipped
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(card / file, folder / file)
    return folder


# ----------------------------------------------------------------------------------------------
# lwta-zoo import / lwta-zoo push


def configure_import(parser: argparse.ArgumentParser) -> None:
    """``lwta-zoo import CHECKPOINT --model NAME --output DIR [--layout L]``."""
    parser.description = 'Convert a .pt checkpoint (read with torch.load(weights_only=True)) to a safetensors folder.'
    parser.add_argument('checkpoint', type=Path)
    parser.add_argument('--model', required=True, help="registered model, 'arch' or 'arch.tag'")
    parser.add_argument('--output', required=True, type=Path, help='folder to write')
    parser.add_argument('--layout', default='native', choices=sorted(LAYOUTS),
                        help="key layout of the checkpoint: 'trades' drops TRADES' sub_block1; 'authors-lwta' "
                             "also renames the WRN paper code's lwta1/lwta2/lwta and keeps their temperatures")
    parser.add_argument('--overwrite', action='store_true',
                        help="replace the model that --output holds (its weights, config.json, card and eval/)")
    parser.set_defaults(func=lambda a: print(import_checkpoint(a.checkpoint, a.model, a.output, layout=a.layout,
                                                               overwrite=a.overwrite)))


def configure_push(parser: argparse.ArgumentParser) -> None:
    """``lwta-zoo push FOLDER REPO_ID [--revision R] [--private] [--create-pr] [--code-repository URL]``."""
    parser.description = 'Upload an exported folder to the Hugging Face Hub (token: HF_TOKEN or `hf auth login`).'
    parser.add_argument('folder', type=Path)
    parser.add_argument('repo_id')
    parser.add_argument('--revision', help='branch to push to (default: main)')
    parser.add_argument('--private', action='store_true', default=None, help='create the repo private')
    parser.add_argument('--create-pr', action='store_true')
    parser.add_argument('--commit-message', default='Upload lwta_zoo model')
    parser.add_argument('--code-repository', default=CODE_REPOSITORY,
                        help=f'where the card tells users to pip install lwta_zoo from (default {CODE_REPOSITORY})')
    parser.set_defaults(func=lambda a: print(push_to_hub(
        a.folder, a.repo_id, revision=a.revision, private=a.private, create_pr=a.create_pr,
        commit_message=a.commit_message, code_repository=a.code_repository).commit_url))
