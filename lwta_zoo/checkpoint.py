"""Training checkpoints without pickle: one safetensors file holding a nested state.

Tensors go in as safetensors entries; the rest of the tree (dicts, lists, numbers, strings,
None) goes into the file's metadata as JSON, with each tensor replaced by a reference to
its entry. Loading never executes code, so a resumed run trusts nothing but data.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

_TREE = 'lwta_zoo.state'
_REF = '__tensor__'


def _split(obj: Any, tensors: Dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {_REF: path}
    if isinstance(obj, dict):
        if not all(isinstance(k, (str, int)) for k in obj):
            raise TypeError(f'{path}: checkpoint dict keys must be str or int, got {list(obj)}')
        # JSON keys are strings: keep int keys (optimizer state is keyed by parameter index) apart
        return {'__dict__': [[k, _split(v, tensors, f'{path}.{k}')] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return [_split(v, tensors, f'{path}.{i}') for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f'{path}: cannot store {type(obj).__name__} in a checkpoint')


def _join(obj: Any, tensors: Dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict) and _REF in obj:
        return tensors[obj[_REF]]
    if isinstance(obj, dict):
        return {k: _join(v, tensors) for k, v in obj['__dict__']}
    if isinstance(obj, list):
        return [_join(v, tensors) for v in obj]
    return obj


def save_state(state: Dict[str, Any], path: os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file, then a rename)."""
    tensors: Dict[str, torch.Tensor] = {}
    tree = _split(state, tensors, 'state')
    tmp = Path(f'{path}.tmp')
    save_file(tensors, str(tmp), metadata={_TREE: json.dumps(tree)})
    os.replace(tmp, path)


def load_state(path: os.PathLike) -> Dict[str, Any]:
    """Read a state written by ``save_state`` (tensors on the CPU)."""
    try:
        tensors = load_file(str(path))
        with open(path, 'rb') as f:  # the header: 8-byte length, then JSON with __metadata__
            header = json.loads(f.read(int.from_bytes(f.read(8), 'little')))
        tree = json.loads(header['__metadata__'][_TREE])
    except (SafetensorError, KeyError, ValueError, OSError) as e:
        raise ValueError(f'{path} is not a lwta_zoo training checkpoint: {e}') from e
    return _join(tree, tensors)


def flatten(tree: Dict[str, Any], prefix: str = '') -> Dict[str, Any]:
    """``{'a': {'b': 1}}`` -> ``{'a.b': 1}``."""
    out: Dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f'{prefix}{k}.') if isinstance(v, dict) else {prefix + k: v})
    return out


def differences(saved: Dict[str, Any], now: Dict[str, Any]) -> List[str]:
    """The dotted keys at which two nested mappings differ (present in one only, or unequal)."""
    a, b, missing = flatten(saved), flatten(now), object()
    return sorted(k for k in a.keys() | b.keys() if a.get(k, missing) != b.get(k, missing))
