"""Dataset loading from local files, the missing-dataset error, deterministic augmentation."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lwta_zoo.data import SHIPPED_CIFAR10_TEST, DatasetNotFound, load_arrays, load_dataset


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


def test_augmentation_depends_only_on_seed_epoch_and_index() -> None:
    ds = load_dataset('cifar10', 'test', SHIPPED_CIFAR10_TEST.parent, augment=True, seed=1, download=False)
    first = torch.stack([ds[i][0] for i in range(32)])
    torch.manual_seed(123)  # the global RNG plays no part
    assert torch.equal(first, torch.stack([ds[i][0] for i in range(32)]))
    ds.set_epoch(1)
    assert not torch.equal(first, torch.stack([ds[i][0] for i in range(32)]))
    plain = load_dataset('cifar10', 'test', SHIPPED_CIFAR10_TEST.parent, download=False)
    assert not torch.equal(first, torch.stack([plain[i][0] for i in range(32)]))  # it augments
