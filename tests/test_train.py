"""The trainer: ELBO weight, training attacks, loss going down, exact resume after SIGKILL, DDP, recipe errors.

Everything runs on a tiny synthetic 28x28 dataset (a bright patch whose position is the
class) with the zoo's small CNN, on one CPU thread.
"""
from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

import lwta_zoo  # noqa: F401  (registers the models)
from lwta_zoo.checkpoint import load_state
from lwta_zoo.data import DatasetNotFound, VermaSwamiAugment
from lwta_zoo.layers.lwta import LWTA
from lwta_zoo.recipe import AdversarySection, RecipeError, load_recipe, recipe_from_dict
from lwta_zoo.train import Trainer, lr_factor, main, train

ROOT = Path(__file__).resolve().parents[1]
N_TRAIN, N_TEST = 64, 32


def synthetic(n: int, seed: int) -> dict:
    """uint8 28x28 images: noise plus a bright 7x7 patch at one of 10 grid cells (the label)."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = g.integers(0, 60, size=(n, 28, 28), dtype=np.uint8)
    for img, k in zip(images, labels):
        r, c = divmod(int(k), 4)
        img[r * 7:(r + 1) * 7, c * 7:(c + 1) * 7] = 230
    return {'images': images, 'labels': labels}


@pytest.fixture()
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / 'data'
    root.mkdir()
    np.savez(root / 'train.npz', **synthetic(N_TRAIN, 0))
    np.savez(root / 'test.npz', **synthetic(N_TEST, 1))
    monkeypatch.setenv('LWTA_ZOO_DATA', str(tmp_path / 'cache'))  # never look at the user's cache
    return root


def tiny_recipe(root: Path, **sections) -> dict:
    tree = {
        'model': {'name': 'smallcnn_mnist_lwta', 'args': {'hidden': 16}},
        'data': {'name': 'fashion_mnist', 'root': str(root), 'download': False},
        'train': {'epochs': 2, 'batch_size': 8, 'seed': 3, 'threads': 1, 'log_every': 1},
        'optim': {'lr': 0.05, 'weight_decay': 0.0},
        'adversary': {'method': 'none'},
        'eval': {'every': 0, 'limit': 8, 'steps': 1, 'eps': 0.1, 'batch_size': 32},
    }
    for section, values in sections.items():
        tree.setdefault(section, {}).update(values)
    return tree


def read_log(folder: Path) -> list:
    return [json.loads(line) for line in (folder / 'metrics.jsonl').read_text().splitlines()]


def test_loss_decreases_and_run_exports(data_root: Path, tmp_path: Path) -> None:
    recipe = recipe_from_dict(tiny_recipe(data_root, train={'epochs': 3}))
    metrics = train(recipe, tmp_path / 'run')
    losses = [r['loss'] for r in read_log(tmp_path / 'run') if 'loss' in r]
    assert len(losses) == 3 * N_TRAIN // 8
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses
    assert metrics['test_n'] == N_TEST and 0 <= metrics['test_clean_acc'] <= 1 and metrics['test_pgd_n'] == 8
    export = tmp_path / 'run' / 'export'
    assert {'model.safetensors', 'config.json', 'README.md'} <= {p.name for p in export.iterdir()}
    config = json.loads((export / 'config.json').read_text())
    assert config['architecture'] == 'smallcnn_mnist_lwta' and config['num_classes'] == 10


@pytest.mark.parametrize('kl_weight', [0.0, 1.0, 3.0])
def test_kl_enters_the_loss_with_the_stated_weight(data_root: Path, tmp_path: Path, kl_weight: float) -> None:
    trainer = Trainer(recipe_from_dict(tiny_recipe(data_root, train={'kl_weight': kl_weight})), tmp_path / 'run')
    assert trainer.n_train == N_TRAIN
    inputs = []  # the pre-activations every LWTA layer sees, to compute the KL by hand
    for m in trainer.model.modules():
        if isinstance(m, LWTA):
            m.register_forward_hook(lambda mod, args, out: inputs.append((mod.U, args[0].detach())))
    x, y = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=8)))
    trainer.model.train()
    loss, parts, logits = trainer.training_loss(x, y)
    assert len(inputs) == 4  # three conv layers and the dense hidden layer
    kl = 0.0
    for U, h in inputs:  # sum over blocks and positions of KL(softmax(h_block) || uniform), batch mean
        q = h.unflatten(1, (h.shape[1] // U, U)).softmax(2)
        kl += (q * (q.log() + math.log(U))).sum(2).flatten(1).sum(1).mean().item()
    ce = F.cross_entropy(logits, y).item()
    assert kl > 1.0
    assert parts['kl'] == pytest.approx(kl, rel=1e-4)
    assert loss.item() == pytest.approx(ce + kl_weight * kl / N_TRAIN, rel=1e-5, abs=1e-6)


def test_training_attacks_raise_the_loss_inside_the_ball(data_root: Path, tmp_path: Path) -> None:
    eps = 0.1
    trainer = Trainer(recipe_from_dict(tiny_recipe(data_root)), tmp_path / 'run')
    model = trainer.model.train()  # attacked in train mode, as in training (adversary.model_mode)
    for x, y in torch.utils.data.DataLoader(trainer.train_set, batch_size=8):  # some clean training first
        trainer.optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        trainer.optimizer.step()
    x, y = next(iter(torch.utils.data.DataLoader(trainer.train_set, batch_size=16)))
    with torch.no_grad():
        p_clean = model(x).softmax(1)

    def mean_loss(inputs: torch.Tensor, method: str) -> float:  # averaged over 8 draws of the stochastic model
        torch.manual_seed(0)
        with torch.no_grad():
            if method == 'trades':
                return np.mean([F.kl_div(model(inputs).log_softmax(1), p_clean, reduction='batchmean').item()
                                for _ in range(8)])
            return np.mean([F.cross_entropy(model(inputs), y).item() for _ in range(8)])

    for method, gradient in [('pgd', 'model'), ('fgsm', 'mean'), ('trades', 'eot')]:
        trainer.r.adversary = AdversarySection(method=method, eps=eps, step_size=0.03, steps=5, gradient=gradient,
                                               eot_samples=4)
        x_adv = trainer.adversarial(x, y, p_clean)
        assert (x_adv - x).abs().max() <= eps + 1e-6, method
        assert x_adv.min() >= 0 and x_adv.max() <= 1, method
        assert (x_adv - x).abs().max() > eps / 2, method  # it moved
        clean, adv = mean_loss(x, method), mean_loss(x_adv, method)
        assert adv > (1.2 * clean if method == 'trades' else clean + 0.01), (method, clean, adv)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _env(tmp_path: Path) -> dict:
    return {**os.environ, 'LWTA_ZOO_DATA': str(tmp_path / 'cache'), 'OMP_NUM_THREADS': '1',
            'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}


def _signal_mid_run(tree: dict, tmp_path: Path, signum: int) -> Tuple[Path, Path, int, str]:
    """Start ``lwta-zoo train`` on ``tree`` in a subprocess and send it ``signum`` a few steps into
    its second epoch; returns the recipe file, the run folder, the exit status and stderr."""
    recipe_file = tmp_path / 'recipe.yaml'
    recipe_file.write_text(yaml.safe_dump(tree))
    run = tmp_path / 'signalled'
    proc = subprocess.Popen([sys.executable, '-m', 'lwta_zoo.train', str(recipe_file), '--output', str(run)],
                            env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 90
    while time.time() < deadline and proc.poll() is None:
        log = run / 'metrics.jsonl'
        if log.is_file() and any(json.loads(ln).get('step', 0) >= N_TRAIN // 8 + 3
                                 for ln in log.read_text().splitlines()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, f'the run ended before the signal: {proc.stderr.read().decode()[-2000:]}'
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=60)
    return recipe_file, run, proc.returncode, err.decode()


def _resumes_to_the_uninterrupted_run(recipe_file: Path, run: Path, tmp_path: Path) -> None:
    recipe = load_recipe(recipe_file)
    train(recipe, run, resume=True)
    train(recipe, tmp_path / 'straight')
    resumed = load_state(run / 'checkpoint.safetensors')
    straight = load_state(tmp_path / 'straight' / 'checkpoint.safetensors')
    assert resumed['step'] == straight['step'] == 2 * (N_TRAIN // 8)
    for k, v in straight['model'].items():
        assert torch.equal(v, resumed['model'][k]), k


def test_resume_after_sigkill_gives_identical_weights(data_root: Path, tmp_path: Path) -> None:
    tree = tiny_recipe(data_root, train={'checkpoint_every': 2},
                       adversary={'method': 'pgd', 'eps': 0.1, 'step_size': 0.05, 'steps': 1})
    recipe_file, killed, _, _ = _signal_mid_run(tree, tmp_path, signal.SIGKILL)
    steps_per_epoch = N_TRAIN // 8
    state = load_state(killed / 'checkpoint.safetensors')
    assert 0 < state['step_in_epoch'] < steps_per_epoch and state['epoch'] == 1  # a mid-epoch checkpoint
    _resumes_to_the_uninterrupted_run(recipe_file, killed, tmp_path)
    # The metrics log has each step once, as if the run had never been killed, and says where each piece ran.
    assert [r['step'] for r in read_log(killed) if 'loss' in r] == list(range(1, 2 * steps_per_epoch + 1))
    starts = [r for r in read_log(killed) if 'start' in r]
    assert [r['step'] for r in starts] == [0, state['step']]
    assert all(r['machine']['cpus'] == os.cpu_count() and r['versions']['torch'] == torch.__version__ for r in starts)


def test_sigterm_stops_after_the_step_with_its_checkpoint(data_root: Path, tmp_path: Path) -> None:
    """A polite stop (SIGTERM, as a machine being shut down sends) loses nothing: the run checkpoints the
    step it finished, says so, exits 128 + 15, and --resume ends where an uninterrupted run ends."""
    tree = tiny_recipe(data_root, train={'checkpoint_minutes': 0})  # no checkpoint but the one the signal asks for
    recipe_file, stopped, status, err = _signal_mid_run(tree, tmp_path, signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, err[-2000:]
    assert 'stopped by SIGTERM' in err and '--resume' in err
    state = load_state(stopped / 'checkpoint.safetensors')
    logged = max(r['step'] for r in read_log(stopped) if 'loss' in r)
    assert state['step'] == logged > N_TRAIN // 8  # the last step done is in the checkpoint
    assert not (stopped / 'export').exists()
    _resumes_to_the_uninterrupted_run(recipe_file, stopped, tmp_path)


def test_ddp_two_gloo_processes_train_and_write_one_checkpoint(data_root: Path, tmp_path: Path) -> None:
    recipe_file = tmp_path / 'recipe.yaml'
    recipe_file.write_text(yaml.safe_dump(tiny_recipe(data_root, train={'epochs': 1})))
    out = tmp_path / 'ddp'
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={_free_port()}',
           '-m', 'lwta_zoo.train', str(recipe_file), '--output', str(out)]
    result = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(p.name for p in out.glob('checkpoint*')) == ['checkpoint.safetensors']
    state = load_state(out / 'checkpoint.safetensors')
    assert state['world_size'] == 2 and len(state['rng']) == 2
    assert state['step'] == N_TRAIN // (2 * 8)  # each rank saw half of the data per step
    assert not torch.equal(state['rng'][0]['cpu'], state['rng'][1]['cpu'])  # distinct noise per rank
    assert len([r for r in read_log(out) if 'final' in r]) == 1  # rank 0 logs once


def test_bad_recipes_fail_before_any_work(data_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = tiny_recipe(data_root)
    with pytest.raises(RecipeError, match=r"unknown recipe key\(s\) \['train.epoch'\]"):
        recipe_from_dict(good, ['train.epoch=3'])
    with pytest.raises(RecipeError, match="'train.epochs': expected int, got 'three'"):
        recipe_from_dict(good, ['train.epochs=three'])
    with pytest.raises(RecipeError, match='adversary.gradient.*one of'):
        recipe_from_dict(good, ['adversary.gradient=sharp'])
    with pytest.raises(RecipeError, match="'data.name' is required"):
        recipe_from_dict({k: v for k, v in good.items() if k != 'data'})
    with pytest.raises(RecipeError, match="unknown dataset 'imagenet'"):
        recipe_from_dict(good, ['data.name=imagenet'])
    with pytest.raises(RecipeError, match='not in timm'):
        recipe_from_dict(good, ['model.name=no_such_net'])
    assert recipe_from_dict(good, ['adversary.eps=8/255', 'optim.weight_decay=5e-4']).adversary.eps == 8 / 255
    bad_file = tmp_path / 'bad.yaml'
    bad_file.write_text(yaml.safe_dump({**good, 'extra': 1}))
    with pytest.raises(RecipeError, match=f"{bad_file}.*'extra'"):
        load_recipe(bad_file)
    assert main([str(bad_file), '--output', str(tmp_path / 'run')]) == 2  # the CLI: a message, exit status 2
    assert "'extra'" in capsys.readouterr().err
    good_file = tmp_path / 'good.yaml'
    good_file.write_text(yaml.safe_dump(good))  # key=value after an option is an override too, checked as such
    assert main([str(good_file), '--output', str(tmp_path / 'run'), 'train.epoch=3']) == 2
    assert "unknown recipe key(s) ['train.epoch']" in capsys.readouterr().err
    # A dataset that is not there: the error names where it looked, and nothing is written.
    missing = recipe_from_dict(good, ['data.name=cifar10', f'data.root={tmp_path / "nowhere"}'])
    with pytest.raises(DatasetNotFound, match='nowhere'):
        Trainer(missing, tmp_path / 'run')
    assert not (tmp_path / 'run').exists()


def test_every_shipped_recipe_is_valid() -> None:
    recipes = sorted((ROOT / 'recipes').glob('*.yaml'))
    assert recipes
    for path in recipes:
        load_recipe(path)


def test_wrn_paper_schedule_halves_the_lr_every_epoch_after_the_75th(data_root: Path) -> None:
    recipe = load_recipe(ROOT / 'recipes' / 'cifar10_wrn34_10_lwta_pgd.yaml')
    # epochs are 0-based here: index 74 is the 75th epoch
    assert [lr_factor(e, recipe) for e in (0, 74, 75, 76, 99)] == [1.0, 1.0, 0.5, 0.25, 0.5 ** 25]


def test_a_recipe_extends_another_and_differs_only_where_it_says(tmp_path: Path) -> None:
    base = load_recipe(ROOT / 'recipes' / 'cifar10_wrn34_1_relu_fast.yaml')
    longer = load_recipe(ROOT / 'recipes' / 'cifar10_wrn34_1_relu_fast_60ep.yaml')
    assert (longer.train.epochs, longer.schedule.peak) == (60, 24)
    assert longer.description != base.description
    longer.train.epochs, longer.schedule.peak, longer.description = 30, 12.0, base.description
    assert longer == base  # nothing else changed, the schedule's other keys included
    (tmp_path / 'loop.yaml').write_text('extends: loop.yaml\n')
    with pytest.raises(RecipeError, match='extends itself'):
        load_recipe(tmp_path / 'loop.yaml')
    (tmp_path / 'orphan.yaml').write_text('extends: missing.yaml\n')
    with pytest.raises(RecipeError, match='missing.yaml does not exist'):
        load_recipe(tmp_path / 'orphan.yaml')
    with pytest.raises(RecipeError, match='is not a file'):
        load_recipe(tmp_path)


TABLE4_RECIPES = {m: ROOT / 'recipes' / f'aistats_softmax_fmnist_{m}_vs.yaml'
                  for m in ('relu', 'lwta_max', 'lwta_max_ibp', 'lwta', 'lwta_ibp')}


def test_table4_recipes_differ_only_in_the_method_and_where_the_paper_or_determinism_says() -> None:
    """The five no-AT recipes are one recipe: each extends the LWTA & IBP one and changes its method; the
    ReLU baseline also trains by SGD (the paper), the deterministic networks monitor with one prediction."""
    base = load_recipe(TABLE4_RECIPES['lwta_ibp']).to_dict()
    assert base['adversary']['method'] == 'none' and base['data']['augment'] == 'verma_swami'
    assert base['eval']['samples'] == 5 and base['model']['args']['lwta_args'] == {'kl': 'relaxed', 'tau': 0.67,
                                                                                    'prior_tau': 0.5}
    for method, path in TABLE4_RECIPES.items():
        recipe = load_recipe(path).to_dict()
        assert recipe['model']['args']['method'] == method
        differs = {(section, key) for section in base if isinstance(base[section], dict)
                   for key in set(base[section]) | set(recipe[section]) if base[section].get(key) != recipe[section].get(key)}
        expected = {('model', 'args')} if method != 'lwta_ibp' else set()
        expected |= {('eval', 'samples')} if method in ('relu', 'lwta_max') else set()
        expected |= {('optim', 'name'), ('optim', 'lr')} if method == 'relu' else set()
        assert differs == expected, method
        args = recipe['model']['args']
        assert args == {**base['model']['args'], 'method': method, **({'lwta_args': None} if method == 'relu' else {})}


def test_table4_recipe_trains_on_verma_swami_batches_without_attack_and_logs_the_clean_curve(
        data_root: Path, tmp_path: Path) -> None:
    """The committed recipe, on the synthetic set for a few steps: its batches come through Verma & Swami's
    augmentation (noise 0.3, blending 0.3, clipped), the loss is the ELBO on them as they are (no attack), and
    every epoch logs clean accuracy."""
    fast = [f'data.root={data_root}', 'data.download=false', 'train.epochs=2', 'train.batch_size=16',
            'train.threads=1', 'train.log_every=1', 'eval.batch_size=32']
    trainer = Trainer(load_recipe(TABLE4_RECIPES['relu'], fast), tmp_path / 'relu')
    try:
        augment = trainer.train_set.transform
        assert isinstance(augment, VermaSwamiAugment) and (augment.noise_std, augment.blend, augment.geometric) == (
            0.3, 0.3, False) and augment.images is trainer.train_set.images
        x, y = next(trainer._batches())
        plain = trainer.train_set.images[:N_TRAIN].float().div(255)
        assert x.min() >= 0 and x.max() <= 1 and not any(torch.equal(x[0], p) for p in plain)
        assert 0.15 < (x - plain[trainer._epoch_indices(0)[:16]]).std() < 0.45  # noise and a partner image
        model = trainer.model.train()
        loss, parts, logits = trainer.training_loss(x, y)
        torch.testing.assert_close(logits, model(x))  # the batch itself, not an adversarial one
        assert parts['kl'] == 0 and loss.item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-5)
    finally:
        trainer.close()
    train(load_recipe(TABLE4_RECIPES['lwta_ibp'], fast), tmp_path / 'lwta_ibp')
    log = read_log(tmp_path / 'lwta_ibp')
    assert [r['epoch'] for r in log if 'test_clean_acc' in r] == [1, 2]  # eval.every 1, then the final evaluation
    assert not any('test_pgd_acc' in r for r in log) and all(r['kl'] > 0 for r in log if 'kl' in r)
    assert json.loads((tmp_path / 'lwta_ibp' / 'final_metrics.json').read_text())['samples'] == 5
