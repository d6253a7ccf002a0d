"""Careless and hostile input (issue 14): every case ends in one line `lwta-zoo <cmd>: error: ...`, exit
status 2 and nothing on disk changed; or in the right result.

Tiny models (smallcnn_mnist, the AISTATS Softmax network) and tiny synthetic data, so each case takes
well under a second or two.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import huggingface_hub.constants
import numpy as np
import pytest
import timm
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lwta_zoo import LWTA, convert, hub, runs
from lwta_zoo.checkpoint import load_state
from lwta_zoo.cli import main
from lwta_zoo.data import DatasetNotFound, load_arrays, read_npz
from lwta_zoo.recipe import RANGES, numeric_keys, recipe_from_dict
from lwta_zoo.train import Trainer, train
from test_train import N_TRAIN, synthetic, tiny_recipe  # the trainer tests' tiny data and recipe

ROOT = Path(__file__).resolve().parents[1]
FMNIST = ROOT / 'lwta_zoo/data/fashion_mnist_test_500.npz'


def snapshot(folder: Path) -> Dict[str, str]:
    """Every file and folder under ``folder`` (a file with a hash of its bytes): 'nothing on disk changed'
    is equality."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else 'folder'
            for p in sorted(folder.rglob('*'))}


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


def test_eval_refuses_labels_out_of_range_and_inputs_of_another_shape(export: Path, tmp_path: Path, capsys) -> None:
    """Before any attack runs (nothing written): labels the model cannot output, a 32x32 input for a 28x28 model."""
    labels = write_npz(tmp_path / 'labels.npz', np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 2, 12]))
    assert 'labels outside [0, 10)' in fails(eval_args(export, labels, tmp_path / 'out', '--dataset', 'fashion_mnist'),
                                             capsys, tmp_path)
    big = write_npz(tmp_path / 'big.npz', np.zeros((4, 32, 32), np.uint8), np.arange(4))
    line = fails(eval_args(export, big, tmp_path / 'out', '--dataset', 'fashion_mnist'), capsys, tmp_path)
    assert '(1, 32, 32)' in line and '(1, 28, 28)' in line, line


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


# --- training: run folders, identity, locks, validation, finite weights, timed checkpoints -------


@pytest.fixture()
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / 'data'
    root.mkdir()
    np.savez(root / 'train.npz', **synthetic(N_TRAIN, 0))
    np.savez(root / 'test.npz', **synthetic(32, 1))
    monkeypatch.setenv('LWTA_ZOO_DATA', str(tmp_path / 'cache'))
    return root


def recipe_file(tmp_path: Path, data_root: Path, name: str = 'recipe.yaml', **sections) -> Path:
    tree = tiny_recipe(data_root, **{'train': {'epochs': 1, 'checkpoint_minutes': 0}, **sections})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture()
def finished(tmp_path: Path, data_root: Path) -> Path:
    """A finished one-epoch run in tmp_path/run."""
    assert main(['train', str(recipe_file(tmp_path, data_root)), '--output', str(tmp_path / 'run')]) == 0
    assert not (tmp_path / 'run' / runs.LOCK).exists()  # released at the end
    return tmp_path / 'run'


def test_training_into_another_runs_folder_is_refused(finished: Path, tmp_path: Path, data_root: Path,
                                                      capsys) -> None:
    same = recipe_file(tmp_path, data_root)
    line = fails(['train', str(same), '--output', str(finished)], capsys, tmp_path)
    assert 'holds a training run' in line and '--resume' in line and '--overwrite' in line
    other = recipe_file(tmp_path, data_root, 'other.yaml', optim={'lr': 0.01})
    fails(['train', str(other), '--output', str(finished)], capsys, tmp_path)  # a run that would crash at once too
    fails(['train', str(other), 'train.log_every=0', '--output', str(finished)], capsys, tmp_path)
    # --overwrite replaces it: the other recipe, a fresh log; files that are not the run's stay
    (finished / 'notes.txt').write_text('mine')
    assert main(['train', str(other), '--output', str(finished), '--overwrite']) == 0
    assert (finished / 'notes.txt').read_text() == 'mine'
    assert yaml.safe_load((finished / 'recipe.yaml').read_text())['optim']['lr'] == 0.01
    steps = [json.loads(ln)['step'] for ln in (finished / 'metrics.jsonl').read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(1) == 1


def test_resume_refuses_another_recipe_other_data_or_another_version(finished: Path, tmp_path: Path,
                                                                    data_root: Path, capsys, monkeypatch) -> None:
    recipe = recipe_file(tmp_path, data_root)
    line = fails(['train', str(recipe), 'optim.lr=0.01', '--output', str(finished), '--resume'], capsys, tmp_path)
    assert "optim.lr" in line
    np.savez(data_root / 'train.npz', **synthetic(N_TRAIN, 5))  # the same file name, other images
    line = fails(['train', str(recipe), '--output', str(finished), '--resume'], capsys, tmp_path)
    assert 'belongs to another run: data.sha256 is' in line
    np.savez(data_root / 'train.npz', **synthetic(N_TRAIN, 0))
    monkeypatch.setattr('lwta_zoo.__version__', '9.9')
    line = fails(['train', str(recipe), '--output', str(finished), '--resume'], capsys, tmp_path)
    assert "lwta_zoo is '9.9' now, " in line


def test_resume_and_overwrite_need_what_they_act_on(tmp_path: Path, data_root: Path, capsys) -> None:
    recipe = recipe_file(tmp_path, data_root)
    assert 'no checkpoint at' in fails(['train', str(recipe), '--output', str(tmp_path / 'new'), '--resume'],
                                       capsys, tmp_path)
    assert not (tmp_path / 'new').exists()
    assert 'choose one' in fails(['train', str(recipe), '--output', str(tmp_path / 'new'), '--resume',
                                  '--overwrite'], capsys, tmp_path)


def test_a_live_lock_stops_a_second_process_and_a_dead_ones_is_taken_over(tmp_path: Path, data_root: Path,
                                                                         capsys) -> None:
    recipe = recipe_file(tmp_path, data_root)
    out = tmp_path / 'run'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (out / runs.LOCK).write_text(json.dumps({'pid': holder.pid, 'host': socket.gethostname()}))
        line = fails(['train', str(recipe), '--output', str(out)], capsys, tmp_path)
        assert f'in use by process {holder.pid}' in line
    finally:
        holder.kill()
        holder.wait()
    assert main(['train', str(recipe), '--output', str(out)]) == 0  # the holder is gone: its lock is stale
    assert f'taking over the stale lock {out / runs.LOCK}' in capsys.readouterr().err
    assert (out / 'export' / 'model.safetensors').is_file() and not (out / runs.LOCK).exists()


BAD_OVERRIDES = {
    'data.train_limit=-5': 'data.train_limit', 'data.test_limit=0': 'data.test_limit',
    'train.device=gpu': 'train.device', 'adversary.eps=5.0': 'adversary.eps', 'train.kl_weight=-1': 'kl_weight',
    'train.checkpoint_every=-1': 'checkpoint_every', 'train.log_every=0': 'log_every',
    'data.root=/no/such/folder': '/no/such/folder', 'model.args.hiden=16': "model.args {'hidden': 16, 'hiden': 16}",
    'model.args.num_classes=5': 'model.args', 'guard.drop=0': 'guard.drop', 'schedule.peak=-1': 'schedule.peak',
    'optim.lr=.inf': 'optim.lr', 'optim.lr=0': 'optim.lr', 'optim.momentum=1.5': 'optim.momentum',
    'adversary.step_size=-0.1': 'adversary.step_size', 'eval.eps=2': 'eval.eps', 'train.checkpoint_minutes=-1':
        'checkpoint_minutes', 'eval.every=-1': 'eval.every', 'train.seed=-1': 'train.seed',
}


@pytest.mark.parametrize('override', sorted(BAD_OVERRIDES))
def test_recipe_values_out_of_range(override: str, tmp_path: Path, data_root: Path, capsys) -> None:
    line = fails(['train', str(recipe_file(tmp_path, data_root)), override, '--output', str(tmp_path / 'run')],
                 capsys, tmp_path)
    assert BAD_OVERRIDES[override] in line
    assert not (tmp_path / 'run').exists()


def test_every_numeric_recipe_key_has_a_range() -> None:
    assert sorted(numeric_keys()) == sorted(RANGES)


def test_recipe_files_that_are_not_yaml_mappings(tmp_path: Path, data_root: Path, capsys) -> None:
    good = recipe_file(tmp_path, data_root).read_text()
    duplicate = tmp_path / 'dup.yaml'
    duplicate.write_text(good + '\ntrain:\n  epochs: 3\n')
    assert "duplicate key 'train'" in fails(['train', str(duplicate), '--output', str(tmp_path / 'o')],
                                            capsys, tmp_path)
    nested = tmp_path / 'nested.yaml'
    nested.write_text('model: {name: smallcnn_mnist, name: smallcnn_mnist_lwta}\n')
    assert "duplicate key 'name'" in fails(['train', str(nested), '--output', str(tmp_path / 'o')], capsys, tmp_path)
    binary = tmp_path / 'binary.yaml'
    binary.write_bytes(bytes(range(256)))
    assert 'not a UTF-8 text file' in fails(['train', str(binary), '--output', str(tmp_path / 'o')], capsys, tmp_path)
    broken = tmp_path / 'broken.yaml'
    broken.write_text('model: [name: x\n  - {')
    assert 'not valid YAML' in fails(['train', str(broken), '--output', str(tmp_path / 'o')], capsys, tmp_path)
    scalar = tmp_path / 'scalar.yaml'
    scalar.write_text('just a string\n')
    assert 'a recipe is a mapping' in fails(['train', str(scalar), '--output', str(tmp_path / 'o')], capsys, tmp_path)
    assert not (tmp_path / 'o').exists()


def test_data_the_model_cannot_take_is_refused_before_training(tmp_path: Path, data_root: Path, capsys) -> None:
    recipe = recipe_file(tmp_path, data_root)
    labels = synthetic(N_TRAIN, 0)
    np.savez(data_root / 'train.npz', images=labels['images'], labels=labels['labels'] + 3)  # up to 12
    assert 'labels outside [0, 10)' in fails(['train', str(recipe), '--output', str(tmp_path / 'run')],
                                             capsys, tmp_path)
    np.savez(data_root / 'train.npz', images=labels['images'], labels=labels['labels'].astype(float))
    assert 'labels must be a 1-d array of integers' in fails(['train', str(recipe), '--output',
                                                              str(tmp_path / 'run')], capsys, tmp_path)
    np.savez(data_root / 'train.npz', **labels)
    line = fails(['train', str(recipe), 'data.name=cifar10', '--output', str(tmp_path / 'run')], capsys, tmp_path)
    assert 'cifar10' in line  # 28x28 grayscale files are not CIFAR-10 images
    cifar = tmp_path / 'cifar'  # CIFAR-shaped files: the model takes one channel
    cifar.mkdir()
    for split, n in (('train', N_TRAIN), ('test', 32)):
        write_npz(cifar / f'{split}.npz', np.zeros((n, 32, 32, 3), np.uint8), np.arange(n) % 10)
    line = fails(['train', str(recipe), 'data.name=cifar10', f'data.root={cifar}', '--output',
                  str(tmp_path / 'run')], capsys, tmp_path)
    assert 'smallcnn_mnist_lwta takes 1-channel inputs; cifar10 images are (3, 32, 32)' in line
    assert not (tmp_path / 'run').exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason='asks for CUDA where there is none')
def test_cuda_without_cuda(tmp_path: Path, data_root: Path, capsys) -> None:
    line = fails(['train', str(recipe_file(tmp_path, data_root)), 'train.device=cuda', '--output',
                  str(tmp_path / 'run')], capsys, tmp_path)
    assert 'CUDA is not available' in line


def test_diverging_training_stops_and_keeps_the_last_good_checkpoint(tmp_path: Path, data_root: Path,
                                                                    capsys) -> None:
    recipe = recipe_file(tmp_path, data_root, train={'epochs': 1, 'checkpoint_every': 1, 'checkpoint_minutes': 0},
                         optim={'lr': 1e30})
    out = tmp_path / 'run'
    assert main(['train', str(recipe), '--output', str(out)]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # after the progress bar
    assert 'Traceback' not in err and last.startswith('lwta-zoo train: error: step '), err
    assert 'weights are no longer finite' in last
    assert not (out / 'export').exists() and not (out / runs.LOCK).exists()
    if (out / 'checkpoint.safetensors').exists():  # a checkpoint of a step before the divergence, if any
        state = load_state(out / 'checkpoint.safetensors')
        assert all(torch.isfinite(v).all() for v in state['model'].values() if v.is_floating_point())
        assert f'error: step {state["step"] + 1}: ' in last and f'checkpoint of step {state["step"]} is kept' in last


def test_time_based_checkpoints_resume_bit_identically(tmp_path: Path, data_root: Path, monkeypatch) -> None:
    """Every recipe checkpoints every train.checkpoint_minutes (a tiny interval here: every step); a run
    resumed from a mid-epoch one of them ends with the same weights as a run that was never stopped."""
    tree = tiny_recipe(data_root, train={'epochs': 1, 'checkpoint_minutes': 1e-9},
                       adversary={'method': 'pgd', 'eps': 0.1, 'step_size': 0.05, 'steps': 1})
    recipe = recipe_from_dict(tree)
    assert recipe_from_dict(tiny_recipe(data_root)).train.checkpoint_minutes == 5  # the default
    saved = []
    original = Trainer.save_checkpoint

    def keep_copy(self: Trainer) -> None:
        original(self)
        if self.step == 3:
            saved.append((self.output / 'checkpoint.safetensors').read_bytes())
    monkeypatch.setattr(Trainer, 'save_checkpoint', keep_copy)
    train(recipe, tmp_path / 'straight')
    assert saved, 'no checkpoint at step 3'
    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    (resumed / 'checkpoint.safetensors').write_bytes(saved[0])
    assert load_state(resumed / 'checkpoint.safetensors')['step_in_epoch'] == 3
    train(recipe, resumed, resume=True)
    a = load_state(tmp_path / 'straight' / 'checkpoint.safetensors')['model']
    b = load_state(resumed / 'checkpoint.safetensors')['model']
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_config_whose_args_change_the_weights_shapes(export: Path) -> None:
    config = json.loads((export / 'config.json').read_text())
    (export / 'config.json').write_text(json.dumps({**config, 'num_classes': 5,
                                                    'model_args': {**config['model_args'], 'num_classes': 5}}))
    with pytest.raises(ValueError, match=r'do not fit aistats_softmax_mnist: shapes differ at \d+ keys: .*\(10, '):
        hub.load_pretrained(export)


# --- issue 37: hostile inputs, second round -------------------------------------------------------


def strip_metadata(folder: Path, cast: Optional[torch.dtype] = None) -> None:
    """Rewrite the exported weights without their metadata (the record of the network), optionally cast."""
    path = folder / 'model.safetensors'
    weights = {k: v.to(cast) if cast is not None and v.is_floating_point() else v for k, v in load_file(path).items()}
    save_file(weights, path)


def test_weights_of_another_network_are_refused_naming_both(exported: Path, tmp_path: Path, capsys,
                                                            monkeypatch) -> None:
    """Item 1: a mirror folder named after the ReLU variant holds the LWTA variant's files; keys and shapes
    agree, so only the record of what they were exported from tells them apart."""
    mirror = tmp_path / 'mirror' / 'aistats_softmax_mnist.relu_fmnist_pgd'
    mirror.mkdir(parents=True)
    for f in exported.iterdir():
        (mirror / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv(hub.MIRROR_ENV, str(tmp_path / 'mirror'))
    line = fails(eval_args('aistats_softmax_mnist.relu_fmnist_pgd', FMNIST, tmp_path / 'out', '--n', '2'),
                 capsys, tmp_path)
    assert "(architecture='aistats_softmax_mnist', method='lwta', U=2)" in line, line
    assert "being built (architecture='aistats_softmax_mnist', method='relu')" in line, line
    with pytest.raises(ValueError, match='exported from another network'):
        timm.create_model('aistats_softmax_mnist.relu_fmnist_pgd', pretrained=True)


def test_relu_weights_into_the_lwta_twin_are_refused(tmp_path: Path) -> None:
    """Item 1: a ReLU network and its LWTA twin have the same tensors; the record names the activation."""
    folder = hub.save_pretrained(timm.create_model('smallcnn_mnist'), tmp_path / 'relu')
    with pytest.raises(ValueError, match=r"\(architecture='smallcnn_mnist', act='relu'\) than the one being built "
                                         r"\(architecture='smallcnn_mnist_lwta', act='lwta', U=2\)"):
        timm.create_model('smallcnn_mnist_lwta', pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(folder / 'model.safetensors')))


def test_weights_without_the_record_load_only_on_trust(export: Path, tmp_path: Path, capsys) -> None:
    """Item 1: without the record, config.json alone cannot tell an LWTA network from ReLU weights."""
    strip_metadata(export)
    line = fails(eval_args(export, FMNIST, tmp_path / 'out', '--n', '2'), capsys, tmp_path)
    assert 'does not record the network it was exported from' in line and '--trust-config' in line, line
    assert 'does not record' in fails(['push', str(export), 'me/model'], capsys, tmp_path)
    with pytest.raises(ValueError, match='does not record'):
        timm.create_model(f'local-dir:{export}', pretrained=True)
    assert hub.load_pretrained(export, trust_config=True).method == 'lwta'
    with hub.trusting_config():
        timm.create_model(f'local-dir:{export}', pretrained=True)


def test_the_shipped_weights_carry_the_record_of_their_network() -> None:
    for name in hub.shipped_weights():
        weights = hub.SHIPPED_WEIGHTS / name / 'model.safetensors'
        if weights.exists():  # the authors' weights ship as a card only
            config = hub.read_config(weights.with_name('config.json'))
            with safe_open(str(weights), 'pt') as f:
                record = json.loads(f.metadata()[hub.MODEL_META])
            assert record == hub.model_identity(config), name


def test_integer_weights_are_refused(export: Path, tmp_path: Path, capsys) -> None:
    """Item 5: int32 safetensors, an int64 state_dict: casting them gives a chance-level model."""
    model = hub.load_pretrained(export)
    pt = tmp_path / 'ints.pt'
    torch.save({k: v.long() if v.is_floating_point() else v for k, v in model.state_dict().items()}, pt)
    line = fails(['import', str(pt), '--model', 'aistats_softmax_mnist.lwta_u2', '--output', str(tmp_path / 'o')],
                 capsys, tmp_path)
    assert 'integer or boolean tensors where aistats_softmax_mnist has floating-point ones' in line, line
    strip_metadata(export, torch.int32)
    with pytest.raises(ValueError, match=r'integer or boolean tensors .*\(torch.int32\)'):
        hub.load_pretrained(export, trust_config=True)


def test_import_into_a_model_folder_needs_overwrite(export: Path, tmp_path: Path, capsys) -> None:
    """Item 2: importing over another model would leave its eval/ reports beside the new weights."""
    pt = tmp_path / 'relu.pt'
    torch.save(timm.create_model('aistats_softmax_mnist', method='relu').state_dict(), pt)
    (export / 'eval' / 'run').mkdir(parents=True)
    (export / 'eval' / 'run' / 'report.json').write_text('{}')
    argv = ['import', str(pt), '--model', 'aistats_softmax_mnist.relu', '--output', str(export)]
    line = fails(argv, capsys, tmp_path)
    assert 'holds a model already (model.safetensors, config.json, README.md, eval)' in line and '--overwrite' in line
    assert main(argv + ['--overwrite']) == 0
    assert not (export / 'eval').exists()
    assert hub.load_pretrained(export).method == 'relu'


def tiny_eval(model: Path, out: Path, *extra: str) -> List[str]:
    return eval_args(model, FMNIST, out, '--n', '2', '--attacks', 'pgd20', '--random-inputs', '0',
                     '--batch-size', '1', *extra)


def test_eval_keeps_a_report_of_another_run_unless_told(export: Path, tmp_path: Path, capsys) -> None:
    """Item 3: a second eval into a folder with a report; --resume only of the same run; --overwrite."""
    out = tmp_path / 'out'
    assert main(tiny_eval(export, out)) == 0
    capsys.readouterr()
    line = fails(tiny_eval(export, out, '--repeats', '3'), capsys, tmp_path)
    assert 'holds an evaluation (report.json, report.md, partial)' in line and '--resume' in line, line
    line = fails(tiny_eval(export, out, '--repeats', '3', '--resume'), capsys, tmp_path)
    assert 'report.json is the report of another run: repeats 5 != 3' in line, line
    assert main(tiny_eval(export, out, '--resume')) == 0  # the same run: nothing left to do
    (out / 'notes.txt').write_text('mine')
    assert main(tiny_eval(export, out, '--repeats', '3', '--overwrite')) == 0
    assert json.loads((out / 'report.json').read_text())['repeats'] == 3
    assert (out / 'notes.txt').read_text() == 'mine' and not (out / 'eval.lock').exists()
    capsys.readouterr()
    assert 'is a model folder' in fails(tiny_eval(export, export), capsys, tmp_path)


def test_eval_takes_a_lock(export: Path, tmp_path: Path, capsys) -> None:
    """Item 3: two evals into one folder at once would lose a report."""
    out = tmp_path / 'out'
    out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    try:
        (out / 'eval.lock').write_text(json.dumps({'pid': holder.pid, 'host': socket.gethostname()}))
        assert f'in use by process {holder.pid}' in fails(tiny_eval(export, out), capsys, tmp_path)
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.parametrize('sweep', ['nan', 'inf', '1000', '0', '-2', 'abc', '2,,4'])
def test_eps_sweep_takes_budgets_in_0_255(sweep: str, export: Path, tmp_path: Path, capsys) -> None:
    """Items 4 and 10: NaN ran the attacks as no-ops, inf gave 0%, 1000/255 went beyond images' range."""
    line = fails(eval_args(export, FMNIST, tmp_path / 'out', f'--eps-sweep={sweep}'), capsys, tmp_path)
    assert f"--eps-sweep: takes comma-separated budgets in 1/255, each a number in (0, 255] (e.g. 2,4,16), got " \
           f"'{sweep}'" in line, line


def test_options_that_would_be_ignored_are_refused(export: Path, tmp_path: Path, capsys) -> None:
    """Item 10: --eps-sweep beside --attacks that names none of its attacks; --attacks '' ran the default preset."""
    line = fails(eval_args(export, FMNIST, tmp_path / 'out', '--attacks', 'pgd20', '--eps-sweep', '2,4', '--n', '2'),
                 capsys, tmp_path)
    assert '--eps-sweep 2,4: --attacks names none of the attacks at that budget (e.g. pgd20@2/255)' in line, line
    assert "--attacks: takes comma-separated attack names" in fails(
        eval_args(export, FMNIST, tmp_path / 'out', '--attacks', ''), capsys, tmp_path)


def test_ctrl_c_in_eval_saves_the_partial_and_exits_130(export: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Item 9: one line, the partial saved, --resume continues to the report an uninterrupted run writes."""
    suite = importlib.import_module('lwta_zoo.attacks.suite')  # lwta_zoo.attacks.suite is also a function's name
    save = suite._save_partial
    calls = []

    def interrupt_after_one_batch(path, state):
        save(path, state)
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
    monkeypatch.setattr(suite, '_save_partial', interrupt_after_one_batch)
    out = tmp_path / 'out'
    try:
        code = main(tiny_eval(export, out))
    except KeyboardInterrupt:  # would stop the whole test session
        pytest.fail('Ctrl-C escaped lwta-zoo eval as a KeyboardInterrupt traceback')
    assert code == 130
    err = capsys.readouterr().err
    assert 'Traceback' not in err and err.strip().splitlines()[-1] == (  # after the time estimate
        f'lwta-zoo eval: interrupted; the finished batches are saved in {out / "partial"}: the same command with '
        '--resume continues from there'), err
    assert (out / 'partial').is_dir() and not (out / 'report.json').exists() and not (out / 'eval.lock').exists()
    monkeypatch.setattr(suite, '_save_partial', save)
    assert main(tiny_eval(export, out, '--resume')) == 0
    assert main(tiny_eval(export, tmp_path / 'straight')) == 0
    resumed, straight = (json.loads((o / 'report.json').read_text()) for o in (out, tmp_path / 'straight'))
    assert resumed['per_example'] == straight['per_example']


def test_unclear_messages_name_the_file_or_option(export: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    """Item 10: each case in one line that names what is wrong and where."""
    out = tmp_path / 'out'
    line = fails(eval_args(tmp_path / 'no_such_model', FMNIST, out), capsys, tmp_path)
    assert f'{tmp_path / "no_such_model"}: no such model folder' in line and 'local-dir' not in line, line
    noise = tmp_path / 'noise.npz'
    noise.write_bytes(bytes(range(256)) * 8)
    line = fails(eval_args(export, noise, out), capsys, tmp_path)
    assert f'{noise} is not a readable .npz archive (not a zip file)' in line and 'pickle' not in line, line
    (out / 'partial').mkdir(parents=True)
    (out / 'partial' / 'rank0-of-1.json').write_text('{"config": ')
    line = fails(tiny_eval(export, out, '--resume'), capsys, tmp_path)
    assert f'{out / "partial" / "rank0-of-1.json"} is not a readable partial evaluation' in line, line
    config = json.loads((export / 'config.json').read_text())
    (export / 'config.json').write_text(json.dumps({**config, 'model_args': 'method=lwta'}))
    line = fails(eval_args(export, FMNIST, tmp_path / 'o2'), capsys, tmp_path)
    assert f'{export / "config.json"}: "model_args" must be a mapping' in line, line
    empty, noise_pt = tmp_path / 'empty.pt', tmp_path / 'noise.pt'
    empty.write_bytes(b'')
    noise_pt.write_bytes(bytes(range(256)) * 8)
    for path, why in ((empty, 'is empty (0 bytes)'), (noise_pt, 'is not a torch checkpoint')):
        line = fails(['import', str(path), '--model', 'smallcnn_mnist', '--output', str(tmp_path / 'o')],
                     capsys, tmp_path)
        assert f'{path} {why}' in line and 'file an issue' not in line, line


def test_push_checks_the_token_and_names_a_network_failure(exported: Path, tmp_path: Path, capsys,
                                                           monkeypatch) -> None:
    """Item 10: no token is said before going online; no network is a one-line error, not 'unexpected'."""
    monkeypatch.setattr(hub, 'get_token', lambda: None)
    assert 'no Hugging Face token' in fails(['push', str(exported), 'me/model'], capsys, tmp_path)
    monkeypatch.setattr(hub, 'get_token', lambda: 'hf_test')
    transport = type('TransportError', (Exception,), {})
    offline = type('ConnectError', (transport,), {})

    def no_network(*args, **kwargs):
        raise offline('[Errno -2] Name or service not known')
    monkeypatch.setattr(hub.HfApi, 'create_repo', no_network)
    line = fails(['push', str(exported), 'me/model'], capsys, tmp_path)
    assert 'cannot reach the Hugging Face Hub to push' in line and 'unexpected' not in line, line


def test_api_misuse_is_named() -> None:
    """Item 10: convert('x') gave an AttributeError; an integer tensor into LWTA an 'Exponential' error."""
    with pytest.raises(TypeError, match='convert needs a torch.nn.Module to change, got str'):
        convert('x')
    for mode in ('sample', 'max', 'mean'):
        for training in (True, False):
            with pytest.raises(TypeError, match='LWTA: expected a floating-point input, got torch.int64'):
                LWTA(mode=mode).train(training)(torch.ones(2, 4, dtype=torch.long))
