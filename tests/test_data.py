"""Dataset loading from local files, the missing-dataset error, deterministic augmentation."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lwta_zoo.data import (SHIPPED_CIFAR10_TEST, VERMA_SWAMI, DatasetNotFound, VermaSwamiAugment, augmentation,
                           load_arrays, load_dataset)


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / 'cache'
    monkeypatch.setenv('LWTA_ZOO_DATA', str(cache))
    return cache


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file (the MNIST format: magic 0x08 = uint8, dimension count, big-endian sizes), gzipped."""
    header = struct.pack('>BBBB', 0, 0, 0x08, array.ndim) + struct.pack(f'>{array.ndim}I', *array.shape)
    with gzip.open(path, 'wb') as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_shipped_cifar10_npz_loads_as_nchw_in_unit_range() -> None:
    images, labels = load_arrays('cifar10', 'test', SHIPPED_CIFAR10_TEST.parent, download=False)
    assert images.shape == (500, 3, 32, 32) and images.dtype == torch.uint8
    assert labels.shape == (500,) and set(labels.tolist()) == set(range(10))
    with np.load(SHIPPED_CIFAR10_TEST) as f:  # NHWC on disk
        assert torch.equal(images[7].permute(1, 2, 0), torch.from_numpy(f['images'][7]))
    x, y = load_dataset('cifar10', 'test', SHIPPED_CIFAR10_TEST.parent, download=False)[7]
    assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1 and y == labels[7]


def test_idx_files_in_data_dir(tmp_path: Path) -> None:
    folder = tmp_path / 'fmnist'
    folder.mkdir()
    g = np.random.default_rng(0)
    for prefix, n in (('train', 12), ('t10k', 5)):
        write_idx(folder / f'{prefix}-images-idx3-ubyte.gz', g.integers(0, 256, (n, 28, 28)))
        write_idx(folder / f'{prefix}-labels-idx1-ubyte.gz', np.arange(n) % 10)
    images, labels = load_arrays('fashion_mnist', 'test', folder, download=False)
    assert images.shape == (5, 1, 28, 28) and labels.tolist() == [0, 1, 2, 3, 4]
    assert len(load_dataset('fashion_mnist', 'train', folder, download=False, limit=7)) == 7


def test_missing_dataset_names_every_place_it_looked(tmp_path: Path, private_cache: Path) -> None:
    (tmp_path / 'mine').mkdir()  # an empty data folder (one that does not exist is its own error)
    with pytest.raises(DatasetNotFound) as e:
        load_arrays('cifar10', 'train', tmp_path / 'mine', download=False)
    message = str(e.value)
    for place in (tmp_path / 'mine', private_cache, 'downloads (disabled'):
        assert str(place) in message
    assert 'cifar-10-batches-py' in message  # how to get it
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        load_arrays('svhn', 'train')


def test_bad_npz_is_a_clear_error(tmp_path: Path) -> None:
    np.savez(tmp_path / 'train.npz', images=np.zeros((4, 32, 32, 3), np.float32), labels=np.zeros(4))
    with pytest.raises(ValueError, match='must be uint8'):
        load_arrays('cifar10', 'train', tmp_path, download=False)


@pytest.mark.parametrize('augment', [True, 'verma_swami'])
def test_augmentation_depends_only_on_seed_epoch_and_index(augment) -> None:
    ds = load_dataset('cifar10', 'test', SHIPPED_CIFAR10_TEST.parent, augment=augment, seed=1, download=False)
    first = torch.stack([ds[i][0] for i in range(32)])
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(first, torch.stack([ds[i][0] for i in range(32)]))
    ds.set_epoch(1)
    assert not torch.equal(first, torch.stack([ds[i][0] for i in range(32)]))
    plain = load_dataset('cifar10', 'test', SHIPPED_CIFAR10_TEST.parent, download=False)
    assert not torch.equal(first, torch.stack([plain[i][0] for i in range(32)]))  # it augments


def test_verma_swami_noise_blend_and_geometry() -> None:
    """Each part does what it says: noise of the stated std, a convex blend with another image
    that moves the result by at most ``blend``, shifts/rotations/flips that move the content."""
    grey = torch.full((64, 1, 28, 28), 128, dtype=torch.uint8)
    x = grey[0].float() / 255
    assert torch.equal(VermaSwamiAugment(grey, 0.0, 0.0, False)(grey[0]), x)  # all off: the image itself
    noisy = torch.stack([VermaSwamiAugment(grey, 0.1, 0.0, False)(grey[0]) for _ in range(20)])
    assert 0.095 < (noisy - x).std() < 0.105
    others = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    blended = torch.stack([VermaSwamiAugment(others, 0.0, 0.3, False)(grey[0]) for _ in range(20)])
    moved = (blended - x).abs()
    assert moved.max() <= 0.3 * max(x.max(), 1 - x.min()) + 1e-6 and moved.mean() > 0.05
    # geometry alone (no noise, no blend): a bright 3x3 square at the centre lands within the shift
    # (|t| <= 4 sqrt 2, plus rounding) of it, and lands elsewhere in some draws; the fill is mid-grey
    dot = torch.zeros((1, 3, 32, 32), dtype=torch.uint8)
    dot[0, :, 15:18, 15:18] = 255
    aug = VermaSwamiAugment(dot, 0.0, 0.0, True)
    where = [torch.nonzero(aug(dot[0])[0] == 1).float().mean(0) for _ in range(40)]
    assert all(((w - 16) ** 2).sum() <= 7 ** 2 for w in where)
    assert len({tuple(w.round().tolist()) for w in where}) > 5
    assert aug(dot[0]).min() >= 0.0 and (aug(dot[0]) == 0.5).any()


def test_verma_swami_settings_and_errors() -> None:
    assert VERMA_SWAMI['mnist'] == dict(noise_std=0.3, blend=0.3, geometric=False)
    assert VERMA_SWAMI['cifar10'] == dict(noise_std=0.032, blend=0.032, geometric=True)
    with pytest.raises(ValueError, match='augment must be one of'):
        augmentation('cifar10', 'mixup')
    with pytest.raises(ValueError, match='needs the training images'):
        augmentation('cifar10', 'verma_swami')
