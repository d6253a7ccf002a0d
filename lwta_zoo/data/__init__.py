"""Datasets for training and evaluation: CIFAR-10, MNIST and Fashion-MNIST as [0, 1] tensors.

Every source is read into one uint8 tensor of images (N, C, H, W) and one int64 tensor of
labels, wrapped in :class:`ImageDataset`. Where a split comes from, first hit wins:

1. local files in ``root`` (the recipe's ``data.root`` / ``--data-dir``), then in
   ``$LWTA_ZOO_DATA`` (default ``~/.cache/lwta_zoo/datasets``), each searched as given and
   with the dataset's name appended:

   * ``{split}.npz`` or ``{name}_{split}*.npz`` holding ``images`` (uint8 NHWC or NCHW)
     and ``labels`` (any dataset);
   * CIFAR python batches (``cifar-10-batches-py/``) or an image folder
     (``{split}/<class>/*.png``) for CIFAR-10;
   * IDX files (``train-images-idx3-ubyte[.gz]`` ...) for MNIST-like sets, also under
     Debian's ``/usr/share/datasets/<name>`` (``apt-get install dataset-fashion-mnist``);

2. downloads, if allowed: Hugging Face ``datasets`` (CIFAR-10: ``uoft-cs/cifar10``),
   then torchvision into ``$LWTA_ZOO_DATA``.

If nothing works, one :class:`DatasetNotFound` error lists every place tried and how to
get the data. A ``root`` that does not exist is an error of its own: a mistyped folder never
falls back quietly to other copies.
"""
from __future__ import annotations

import math
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Type

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import datasets as tv_datasets
from torchvision.datasets.utils import extract_archive
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as TF

SPLITS = ('train', 'test')
ENV_VAR = 'LWTA_ZOO_DATA'
SHIPPED_CIFAR10_TEST = Path(__file__).with_name('cifar10_test_500.npz')

Arrays = Tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DatasetInfo:
    """What the loader needs to know about a dataset."""

    num_classes: int
    shape: Tuple[int, int, int]  # (C, H, W)
    torchvision_cls: Type[tv_datasets.VisionDataset]
    hf_id: Optional[str] = None  # Hugging Face dataset id (image column, label column below)
    hf_columns: Tuple[str, str] = ('img', 'label')
    idx_dirs: Tuple[str, ...] = ()  # system folders that may hold IDX files
    how_to_get: str = ''


DATASETS: Dict[str, DatasetInfo] = {
    'cifar10': DatasetInfo(
        10, (3, 32, 32), tv_datasets.CIFAR10, hf_id='uoft-cs/cifar10',
        how_to_get='allow downloads (data.download=true) with network access, or put cifar-10-batches-py/ '
                   '(https://www.cs.toronto.edu/~kriz/cifar.html) or {split}.npz in --data-dir'),
    'mnist': DatasetInfo(
        10, (1, 28, 28), tv_datasets.MNIST, idx_dirs=('/usr/share/datasets/mnist',),
        how_to_get='allow downloads (data.download=true) with network access, or put the IDX files '
                   '(train-images-idx3-ubyte.gz ...) in --data-dir'),
    'fashion_mnist': DatasetInfo(
        10, (1, 28, 28), tv_datasets.FashionMNIST, idx_dirs=('/usr/share/datasets/fashion-mnist',),
        how_to_get='`apt-get install dataset-fashion-mnist` (Debian/Ubuntu, as root), allow downloads '
                   '(data.download=true) with network access, or put the IDX files in --data-dir'),
}


class DatasetNotFound(FileNotFoundError):
    """No source could provide a dataset split; the message lists where we looked."""


def data_home() -> Path:
    """Where datasets are looked up and downloaded to: ``$LWTA_ZOO_DATA`` or ``~/.cache/lwta_zoo/datasets``."""
    return Path(os.environ.get(ENV_VAR) or '~/.cache/lwta_zoo/datasets').expanduser()


def dataset_info(name: str) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``name``, or an error listing the known datasets."""
    if name not in DATASETS:
        raise ValueError(f'unknown dataset {name!r}; known: {sorted(DATASETS)}')
    return DATASETS[name]


# --------------------------------------------------------------------------- local files

def read_npz(path: os.PathLike, channels: Optional[int] = None) -> Arrays:
    """``images`` (uint8 N x H x W [x C] or N x C x H x W) and ``labels`` of an .npz, as NCHW uint8 and int64.

    Channels-last is recognised by a last axis of ``channels`` (default: 1 or 3) that the second axis is not.
    """
    broken = (OSError, EOFError, ValueError, zipfile.BadZipFile)  # numpy's own words for a file it cannot read
    if Path(path).is_file() and not zipfile.is_zipfile(path):  # numpy would go on to call it a pickle
        raise ValueError(f'{path} is not a readable .npz archive (not a zip file); write one with '
                         'numpy.savez(PATH, images=..., labels=...)')
    try:
        f = np.load(path)  # never unpickles (allow_pickle=False)
    except broken as e:
        raise ValueError(f'{path} is not a readable .npz file ({e})') from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ValueError(f'{path}: expected an .npz archive of "images" and "labels", found one {type(f).__name__}')
    with f:
        if 'images' not in f or 'labels' not in f:
            raise ValueError(f'{path}: expected arrays "images" and "labels", found {list(f.keys())}')
        try:
            arrays = {k: f[k] for k in ('images', 'labels')}
        except broken as e:
            raise ValueError(f'{path} is not a readable .npz file ({e})') from None
    images, labels = torch.from_numpy(arrays['images']), arrays['labels']
    if images.dtype != torch.uint8 or images.dim() not in (3, 4):
        raise ValueError(f'{path}: images must be uint8 (N, H, W[, C]) or (N, C, H, W), '
                         f'got {images.dtype} {tuple(images.shape)}')
    if labels.dtype.kind not in 'iu' or labels.ndim != 1:
        raise ValueError(f'{path}: labels must be a 1-d array of integers (class indices), '
                         f'got {labels.dtype} {labels.shape}')
    labels = torch.from_numpy(labels).long()
    if len(labels) == 0:
        raise ValueError(f'{path} holds no examples')
    if labels.min() < 0:
        raise ValueError(f'{path}: labels must be class indices >= 0, found {int(labels.min())}')
    if images.dim() == 3:
        images = images.unsqueeze(1)
    elif images.shape[-1] in ((channels,) if channels else (1, 3)) and images.shape[1] != images.shape[-1]:
        images = images.permute(0, 3, 1, 2)
    if len(labels) != len(images):
        raise ValueError(f'{path}: {len(images)} images but {len(labels)} labels')
    return images.contiguous(), labels


def _from_torchvision(ds: tv_datasets.VisionDataset) -> Arrays:
    """Images and labels held in memory by torchvision's CIFAR10 / MNIST-family datasets."""
    images = torch.as_tensor(ds.data)
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.as_tensor(ds.targets).long()


def _from_image_folder(folder: Path) -> Arrays:
    ds = tv_datasets.ImageFolder(str(folder), loader=tv_datasets.folder.default_loader)
    to_tensor = v2.PILToTensor()
    images = torch.stack([to_tensor(ds.loader(path)) for path, _ in ds.samples])
    return images, torch.tensor(ds.targets).long()


def _idx_files(folder: Path) -> Optional[List[Path]]:
    """The four IDX files (train/t10k images/labels, raw or .gz) in ``folder``, if all exist."""
    found = []
    for prefix in ('train', 't10k'):
        for kind in ('images-idx3', 'labels-idx1'):
            stem = folder / f'{prefix}-{kind}-ubyte'
            hit = next((p for p in (stem, stem.with_name(stem.name + '.gz')) if p.is_file()), None)
            if hit is None:
                return None
            found.append(hit)
    return found


def _from_idx(files: Sequence[Path], info: DatasetInfo, split: str) -> Arrays:
    """Read IDX files with torchvision, first placing them (decompressed) in its folder layout."""
    raw = data_home() / info.torchvision_cls.__name__ / 'raw'
    raw.mkdir(parents=True, exist_ok=True)
    for f in files:
        target = raw / f.name.removesuffix('.gz')
        if not target.is_file():
            if f.suffix == '.gz':
                extract_archive(str(f), str(raw))
            else:
                target.symlink_to(f.resolve())
    return _from_torchvision(info.torchvision_cls(str(data_home()), train=split == 'train'))


def _search_dirs(name: str, info: DatasetInfo, root: Optional[Path]) -> List[Path]:
    bases = [p for p in (root, data_home()) if p is not None]
    dirs = [d for b in bases for d in (b, b / name)]
    if info.shape[0] == 1:  # IDX datasets: torchvision's download folder and system folders
        dirs += [data_home() / info.torchvision_cls.__name__ / 'raw'] + [Path(d) for d in info.idx_dirs]
    return list(dict.fromkeys(dirs))


def _local(name: str, info: DatasetInfo, split: str, folder: Path) -> Optional[Arrays]:
    """The split from files in ``folder``, or None if the folder holds none of its formats."""
    npz = folder / f'{split}.npz'
    candidates = [npz] if npz.is_file() else sorted(folder.glob(f'{name}_{split}*.npz'))
    if candidates:
        return read_npz(candidates[0], info.shape[0])
    if name == 'cifar10' and (folder / 'cifar-10-batches-py').is_dir():
        return _from_torchvision(tv_datasets.CIFAR10(str(folder), train=split == 'train'))
    if name == 'cifar10' and (folder / split).is_dir():
        return _from_image_folder(folder / split)
    files = _idx_files(folder) if info.shape[0] == 1 else None
    return _from_idx(files, info, split) if files else None


# --------------------------------------------------------------------------- downloads

def _from_hf(info: DatasetInfo, split: str) -> Arrays:
    import datasets as hf_datasets

    ds = hf_datasets.load_dataset(info.hf_id, split=split).with_format('numpy')
    image_col, label_col = info.hf_columns
    images = torch.from_numpy(np.stack(ds[image_col]))
    images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
    return images.contiguous(), torch.from_numpy(np.asarray(ds[label_col])).long()


def _download(info: DatasetInfo, split: str) -> Arrays:
    return _from_torchvision(info.torchvision_cls(str(data_home()), train=split == 'train', download=True))


def load_arrays(name: str, split: str, root: Optional[os.PathLike] = None, download: bool = True) -> Arrays:
    """Images (uint8, N x C x H x W) and labels (int64) of ``split`` from the first source that has them."""
    info = dataset_info(name)
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}, got {split!r}')
    root = Path(root).expanduser() if root is not None else None
    if root is not None and not root.is_dir():
        raise DatasetNotFound(f'data folder {root} (data.root / --data-dir) does not exist or is not a folder')
    tried = []
    for folder in _search_dirs(name, info, root):
        found = _local(name, info, split, folder) if folder.is_dir() else None
        if found is not None:
            return _checked(found, name, info, f'{folder}')
        tried.append(f'local files in {folder}' + ('' if folder.is_dir() else ' (no such folder)'))
    sources: List[Tuple[str, Callable[[], Arrays]]] = []
    if download and info.hf_id:
        sources.append((f'Hugging Face datasets {info.hf_id!r}', lambda: _from_hf(info, split)))
    if download:
        sources.append((f'torchvision download into {data_home()}', lambda: _download(info, split)))
    for where, load in sources:
        try:
            return _checked(load(), name, info, where)
        except Exception as e:  # any failure of a download source: try the next one
            tried.append(f'{where} ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ""})')
    if not download:
        tried.append('downloads (disabled: data.download=false)')
    raise DatasetNotFound(
        f'{name} {split} split not found. Looked in:\n  - ' + '\n  - '.join(tried)
        + f'\nTo get it: {info.how_to_get.format(split=split)}; or set ${ENV_VAR}.')


def _checked(arrays: Arrays, name: str, info: DatasetInfo, where: str) -> Arrays:
    images, labels = arrays
    if tuple(images.shape[1:]) != info.shape or len(images) != len(labels):
        raise ValueError(f'{name} from {where}: expected images (N, {", ".join(map(str, info.shape))}) and N '
                         f'labels, got {tuple(images.shape)} and {len(labels)}')
    check_labels(labels, info.num_classes, f'{name} from {where}')
    return images, labels


def check_labels(labels: torch.Tensor, num_classes: int, where: str) -> None:
    """Refuse labels that are not class indices in [0, num_classes) (a model would fail on them mid-run)."""
    if labels.is_floating_point():
        raise ValueError(f'{where}: labels must be integers (class indices), got {labels.dtype}')
    if labels.numel() and not (0 <= int(labels.min()) and int(labels.max()) < num_classes):
        raise ValueError(f'{where}: labels outside [0, {num_classes}): found {int(labels.min())}..'
                         f'{int(labels.max())}')


# --------------------------------------------------------------------------- torch datasets

AUGMENTATIONS = (False, True, 'verma_swami')  # none, standard (CIFAR crop + flip), Verma & Swami's

# Verma & Swami (2019)'s training-time augmentation, per dataset, as their public code runs it
# (github.com/Gunjan108/robust-ecoc: TrainModel.py's noise_stddev, blend_factor and
# DATA_AUGMENTATION_FLAG, with DataAugmenter.py and ClassBlender.py); the AISTATS authors' code
# (konpanousis/adversarial_ecoc_lwta) runs the same layers with the same settings.
VERMA_SWAMI: Dict[str, Dict[str, object]] = {
    'mnist': dict(noise_std=0.3, blend=0.3, geometric=False),
    'fashion_mnist': dict(noise_std=0.3, blend=0.3, geometric=False),  # MNIST's settings (ours)
    'cifar10': dict(noise_std=0.032, blend=0.032, geometric=True),
}


class VermaSwamiAugment:
    """Verma & Swami's augmentation of one uint8 image (C, H, W), returned as float in [0, 1].

    In their order: additive Gaussian noise (std ``noise_std``); if ``geometric``, a random shift
    of up to ``shift`` pixels each way, then a rotation of up to ``degrees`` (both in one
    resampling, where they resample twice), then a horizontal flip
    with probability 1/2; then "class blending": a convex combination (1 - ``blend``) x + ``blend`` x'
    with x' another training image (drawn uniformly from ``images``; they permute the batch),
    noised and augmented alike, shifted again and rotated by up to 180 degrees, clipped to the valid
    range; finally the result is clipped to [0, 1]. Shifts and rotations use nearest-neighbour
    sampling and fill with mid-grey 0.5 (their zero fill in inputs centred on 0).
    """

    def __init__(self, images: torch.Tensor, noise_std: float, blend: float, geometric: bool,
                 shift: float = 4.0, degrees: float = 15.0):
        self.images, self.noise_std, self.blend, self.geometric = images, noise_std, blend, geometric
        self.shift, self.degrees = shift, degrees

    def _affine(self, x: torch.Tensor, degrees: float) -> torch.Tensor:
        """A shift by t (uniform, up to ``shift`` each way) then a rotation by a (up to ``degrees``),
        as one resampling: the rotation about the centre followed by the shift R(a) t."""
        dx, dy = ((torch.rand(2) * 2 - 1) * self.shift).tolist()
        angle = float((torch.rand(()) * 2 - 1) * degrees)
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        return TF.affine(x, angle=angle, translate=[c * dx - s * dy, s * dx + c * dy], scale=1.0, shear=[0.0, 0.0],
                         interpolation=InterpolationMode.NEAREST, fill=0.5)

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().div(255) + self.noise_std * torch.randn(x.shape)
        if self.geometric:
            x = self._affine(x, self.degrees)
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = self._jitter(x)
        other = self._jitter(self.images[int(torch.randint(len(self.images), ()))])
        other = self._affine(other, 180.0).clamp(0, 1)
        return ((1 - self.blend) * x + self.blend * other).clamp_(0, 1)

    def __repr__(self) -> str:
        return (f'{type(self).__name__}(noise_std={self.noise_std}, blend={self.blend}, geometric={self.geometric}, '
                f'shift={self.shift}, degrees={self.degrees})')


def augmentation(name: str, kind: object = True, images: Optional[torch.Tensor] = None) -> Optional[Callable]:
    """The training augmentation ``kind`` (one of ``AUGMENTATIONS``) of dataset ``name``.

    True: the standard one on uint8 images (CIFAR's random crop with padding 4 + horizontal
    flip; none for the MNIST-like sets); 'verma_swami': :class:`VermaSwamiAugment` with the
    dataset's settings in ``VERMA_SWAMI``, blending with ``images`` (the training images).
    """
    if kind not in AUGMENTATIONS:
        raise ValueError(f'augment must be one of {AUGMENTATIONS}, got {kind!r}')
    if kind == 'verma_swami':
        if name not in VERMA_SWAMI or images is None:
            raise ValueError(f"augment='verma_swami' needs the training images of one of {sorted(VERMA_SWAMI)}, "
                             f'got dataset {name!r}')
        return VermaSwamiAugment(images, **VERMA_SWAMI[name])  # type: ignore[arg-type]
    if kind and name == 'cifar10':
        return v2.Compose([v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip()])
    return None


def augment_batch(images: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """CIFAR's random crop (zero padding ``padding``) + horizontal flip on a whole uint8 batch at once.

    One gather on the batch's own device, so a training set held on a GPU is augmented there;
    ``generator`` (on that device) draws every example's offsets and flip.
    """
    n, _, h, w = images.shape
    dev = images.device
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator, device=dev)
    rows = (offsets[0, :, None] + torch.arange(h, device=dev))[:, :, None]  # (N, H, 1)
    cols = (offsets[1, :, None] + torch.arange(w, device=dev))[:, None, :]  # (N, 1, W)
    out = padded[torch.arange(n, device=dev)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)  # (N, C, H, W)
    flip = torch.rand(n, generator=generator, device=dev) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class ImageDataset(Dataset):
    """uint8 images held in memory, returned as float [0, 1] tensors with optional augmentation.

    Augmentation draws from a generator seeded by (seed, epoch, index), so that a sample's
    augmentation does not depend on workers, ranks or where a resumed run restarted.
    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Optional[Callable] = None,
                 seed: int = 0):
        self.images, self.labels, self.transform, self.seed, self.epoch = images, labels, transform, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i]
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + self.epoch) * 1_000_003 + int(i))
                x = self.transform(x)
        return (x.float().div_(255) if x.dtype == torch.uint8 else x), self.labels[i]


def subset(arrays: Arrays, n: Optional[int], seed: int = 0) -> Arrays:
    """A class-agnostic random subset of ``n`` examples (all if ``n`` is None), fixed by ``seed``."""
    images, labels = arrays
    if n is not None and n < 1:
        raise ValueError(f'a subset needs n >= 1 examples, got {n}')
    if n is None or n >= len(labels):
        return arrays
    keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))[:n].sort().values
    return images[keep], labels[keep]


def load_dataset(name: str, split: str, root: Optional[os.PathLike] = None, *, augment: object = False,
                 limit: Optional[int] = None, seed: int = 0, download: bool = True) -> ImageDataset:
    """``split`` of dataset ``name`` as an :class:`ImageDataset` (inputs in [0, 1]); ``augment``: see :func:`augmentation`."""
    images, labels = subset(load_arrays(name, split, root, download), limit, seed)
    return ImageDataset(images, labels, augmentation(name, augment, images), seed)
