"""benchmarks/gpu_check.py, the prepared command for a GPU lease, runs end to end at toy sizes on a CPU."""
import json
import tarfile
from pathlib import Path

import numpy as np

from benchmarks import gpu_check


def test_pack_and_unpack_give_back_the_images_exactly(tmp_path: Path) -> None:
    g = np.random.default_rng(0)
    src = tmp_path / 'shared'
    src.mkdir()
    train = g.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    np.savez(src / 'cifar10_train.npz', images=train, labels=np.repeat(np.arange(10), 4))
    np.savez(src / 'cifar10_test_1k.npz', images=train[:10], labels=np.arange(10))
    gpu_check.pack(src, tmp_path / 'packed', train_images=20)
    gpu_check.unpack(tmp_path / 'packed', tmp_path)
    with np.load(tmp_path / 'cifar10_train.npz') as f:
        assert np.array_equal(np.bincount(f['labels']), [2] * 10)  # class-balanced
        keep = np.sort(np.concatenate([np.arange(4 * c, 4 * c + 2) for c in range(10)]))
        assert np.array_equal(f['images'], train[keep])
    with np.load(tmp_path / 'cifar10_test.npz') as f:
        assert np.array_equal(f['images'], train[:10])


def test_smoke_run_completes_every_stage(tmp_path: Path) -> None:
    assert gpu_check.main(['run', str(tmp_path / 'out'), '--smoke', '--budget-s', '900']) == 0
    summary = json.loads((tmp_path / 'out' / 'summary.json').read_text())
    assert [k for k, v in summary['stages'].items() if v['status'] == 'ok'] == [
        'kernels', 'benchmarks', 'max_batch', 'probe', 'train', 'eval']
    probe = summary['stages']['probe']
    assert probe['fast_recipe_sec_per_step'] > 0 and probe['paper_recipe_100_epochs_hours_extrapolated'] > 0
    reports = summary['stages']['eval']['reports']
    assert all(isinstance(r, dict) and r['n'] == 16 for r in reports.values()), reports
    with tarfile.open(tmp_path / 'out' / 'results.tar.gz') as tar:
        names = set(tar.getnames())
    assert {'results/run/export/README.md', 'results/run/export/config.json', 'results/eval_0/report.json'} <= names
    assert not any(n.endswith('.safetensors') for n in names)  # weights stay on the machine
    assert len(summary['stages']['train']['weights_sha256']) == 64
