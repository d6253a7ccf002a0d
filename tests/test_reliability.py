"""Careless and hostile input (issue 14): every case ends in one line `lwta-zoo <cmd>: error: ...`, exit
status 2 and nothing on disk changed; or in the right result.

Tiny models (smallcnn_mnist, the AISTATS Softmax network) and tiny synthetic data, so each case takes
well under a second or two.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lwta_zoo import hub
from lwta_zoo.cli import main
from lwta_zoo.data import DatasetNotFound, load_arrays, read_npz

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ROOT / 'lwta_zoo/data/fashion_mnist_test_500.npz'


def snapshot(folder: Path) -> Dict[str, str]:
    """Every file under ``folder`` and a hash of its bytes: 'nothing on disk changed' is equality."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob('*')) if p.is_file()}


def fails(argv: List[str], capsys: pytest.CaptureFixture, disk: Path) -> str:
    """Run ``lwta-zoo ARGV``; assert exit 2, one stderr line naming the command, no traceback, no file
    under ``disk`` created or changed. Returns the line."""
    before = snapshot(disk)
    try:
        code = main(argv)
    except SystemExit as e:  # argparse exits by itself
        code = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f'lwta-zoo {argv[0]}: error: ') and 'Traceback' not in err, err
    assert snapshot(disk) == before
    return lines[0]


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    np.savez(path, images=images, labels=labels)
    return path


@pytest.fixture(scope='module')
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An exported AISTATS Softmax LWTA network (method and U leave no trace in its weights)."""
    torch.manual_seed(0)
    model = timm.create_model('aistats_softmax_mnist', method='lwta', U=2)
    return hub.save_pretrained(model, tmp_path_factory.mktemp('export') / 'aistats')


@pytest.fixture()
def export(exported: Path, tmp_path: Path) -> Path:
    """A private copy of ``exported`` that a test may damage."""
    folder = tmp_path / 'model'
    folder.mkdir()
    for f in exported.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    return folder


def poison(folder: Path) -> None:
    """Put a NaN and an inf into the exported weights, keeping the file's metadata."""
    path = folder / 'model.safetensors'
    with safe_open(str(path), 'pt') as f:
        metadata = f.metadata()
    weights = {k: v.clone() for k, v in load_file(path).items()}
    first = next(k for k, v in weights.items() if v.is_floating_point())
    weights[first].view(-1)[:2] = torch.tensor([float('nan'), float('inf')])
    save_file(weights, path, metadata=metadata)


# --- the CLI's one error path -------------------------------------------------------------------


def eval_args(model: Path, data: Path, out: Path, *extra: str) -> List[str]:
    return ['eval', str(model), '--data', str(data), '--output', str(out), '--no-figures', '--no-progress', *extra]


@pytest.mark.parametrize('extra', [['--n', '0'], ['--n', '-5'], ['--adaptive-steps', '0'], ['--repeats', '0'],
                                   ['--eval-tau', 'inf'], ['--n', 'many'], ['--no-such-option']])
def test_eval_options_out_of_range(export: Path, tmp_path: Path, capsys, extra) -> None:
    line = fails(eval_args(export, FMNIST, tmp_path / 'out', *extra), capsys, tmp_path)
    assert extra[0] in line or 'unrecognized' in line or 'invalid int' in line, line


def test_eval_refuses_empty_and_float_labelled_npz(export: Path, tmp_path: Path, capsys) -> None:
    empty = write_npz(tmp_path / 'empty.npz', np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64))
    assert 'holds no examples' in fails(eval_args(export, empty, tmp_path / 'out'), capsys, tmp_path)
    floats = write_npz(tmp_path / 'floats.npz', np.zeros((4, 28, 28), np.uint8), np.array([0, 1.5, 2, 3]))
    assert 'labels must be a 1-d array of integers' in fails(eval_args(export, floats, tmp_path / 'out'),
                                                             capsys, tmp_path)
    notzip = tmp_path / 'binary.npz'
    notzip.write_bytes(b'\x00\xff' * 100)
    assert 'not a readable .npz' in fails(eval_args(export, notzip, tmp_path / 'out'), capsys, tmp_path)


def test_eval_import_and_push_refuse_non_finite_weights(export: Path, tmp_path: Path, capsys) -> None:
    poison(export)
    assert 'non-finite' in fails(eval_args(export, FMNIST, tmp_path / 'out', '--n', '2'), capsys, tmp_path)
    assert 'non-finite' in fails(['push', str(export), 'me/model'], capsys, tmp_path)
    with pytest.raises(ValueError, match='non-finite'):
        hub.load_pretrained(export)
    # timm's own route to the folder is refused the same way
    with pytest.raises(ValueError, match='non-finite'):
        timm.create_model(f'local-dir:{export}', pretrained=True)


def test_export_refuses_non_finite_weights_and_writes_nothing(tmp_path: Path) -> None:
    model = timm.create_model('smallcnn_mnist')
    with torch.no_grad():
        model.fc.weight[0, 0] = float('nan')
    with pytest.raises(ValueError, match=r'non-finite values \(NaN or inf\) in 1 \[fc.weight\]'):
        hub.save_pretrained(model, tmp_path / 'export')
    assert not (tmp_path / 'export').exists()


def test_edited_config_model_args_are_refused(export: Path, tmp_path: Path, capsys) -> None:
    config = json.loads((export / 'config.json').read_text())
    args = config['model_args']
    (export / 'config.json').write_text(json.dumps({**config, 'model_args': {**args, 'U': 4, 'method': 'relu'}}))
    line = fails(eval_args(export, FMNIST, tmp_path / 'out', '--n', '2'), capsys, tmp_path)
    assert "model_args.U: 4 here, 2 at export; model_args.method: 'relu' here, 'lwta' at export" in line
    assert 'does not describe the network' in fails(['push', str(export), 'me/model'], capsys, tmp_path)
    # runtime settings may change: the same weights predict with another L
    (export / 'config.json').write_text(json.dumps({**config, 'model_args': {**args, 'samples': 4}}))
    assert hub.load_pretrained(export).num_samples == 4


def test_config_naming_an_architecture_that_takes_other_args(export: Path, tmp_path: Path, capsys) -> None:
    config = json.loads((export / 'config.json').read_text())
    (export / 'config.json').write_text(json.dumps({**config, 'architecture': 'smallcnn_mnist_lwta'}))
    line = fails(eval_args(export, FMNIST, tmp_path / 'out'), capsys, tmp_path)
    assert "do not fit architecture 'smallcnn_mnist_lwta'" in line and "'method'" in line


def test_uncached_hf_hub_id_offline(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(tmp_path / 'hf-cache'))
    line = fails(eval_args('hf-hub:nobody/nothing', FMNIST, tmp_path / 'out'), capsys, tmp_path)
    assert 'hf-hub:nobody/nothing: its config.json is not in the Hugging Face cache' in line


def test_import_of_a_missing_file(tmp_path: Path, capsys) -> None:
    line = fails(['import', str(tmp_path / 'nope.pt'), '--model', 'smallcnn_mnist', '--output', str(tmp_path / 'o')],
                 capsys, tmp_path)
    assert 'nope.pt' in line


def test_debug_shows_the_traceback(export: Path, tmp_path: Path, capsys) -> None:
    poison(export)
    assert main(['--debug', *eval_args(export, FMNIST, tmp_path / 'out')]) == 2
    err = capsys.readouterr().err
    assert 'Traceback' in err and err.strip().splitlines()[-1].startswith('lwta-zoo eval: error: ')


# --- data ---------------------------------------------------------------------------------------


def test_a_data_root_that_does_not_exist_is_an_error(tmp_path: Path, monkeypatch) -> None:
    cache = tmp_path / 'cache'  # a cache that holds the data: it must not be used instead
    cache.mkdir()
    write_npz(cache / 'test.npz', np.zeros((3, 28, 28), np.uint8), np.arange(3))
    monkeypatch.setenv('LWTA_ZOO_DATA', str(cache))
    assert len(load_arrays('fashion_mnist', 'test', download=False)[1]) == 3
    with pytest.raises(DatasetNotFound, match=f'data folder {tmp_path / "typo"} .*does not exist'):
        load_arrays('fashion_mnist', 'test', tmp_path / 'typo', download=False)


def test_npz_labels_must_be_class_indices(tmp_path: Path) -> None:
    images = np.zeros((3, 28, 28), np.uint8)
    with pytest.raises(ValueError, match='labels must be class indices >= 0, found -1'):
        read_npz(write_npz(tmp_path / 'neg.npz', images, np.array([0, -1, 2])))
    folder = tmp_path / 'data'
    folder.mkdir()
    write_npz(folder / 'test.npz', images, np.array([0, 1, 10]))
    with pytest.raises(ValueError, match=r'labels outside \[0, 10\): found 0..10'):
        load_arrays('fashion_mnist', 'test', folder, download=False)


# --- the fused kernel ---------------------------------------------------------------------------


def test_an_empty_batch_passes_through_the_fused_lwta(tmp_path: Path) -> None:
    model = timm.create_model('smallcnn_mnist_lwta', samples=3)
    x = torch.zeros(0, 1, 28, 28, requires_grad=True)
    out = model.train()(x)
    out.sum().backward()
    assert out.shape == (0, 10) and x.grad.shape == x.shape
    with torch.no_grad():
        assert model.eval()(x).shape == (0, 10)
