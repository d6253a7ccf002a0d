"""Write a test subset the repo ships: lwta_zoo/data/<dataset>_test_<N>.npz, the first
``--per-class`` test images of each class (``images`` uint8 N x H x W x C, ``labels``).

The source is an .npz of that format (``--source``) or the dataset's test split wherever
``lwta_zoo.data.load_arrays`` finds it locally (Debian's /usr/share/datasets, ``$LWTA_ZOO_DATA``):

    python tools/make_test_subset.py cifar10 --source ../shared/data/cifar10_test_1k.npz
        # 100 images a class of the CIFAR-10 test set from a public JPEG re-encoding -> cifar10_test_500.npz
    python tools/make_test_subset.py fashion_mnist   # apt-get install dataset-fashion-mnist -> fashion_mnist_test_500.npz
"""
import argparse
from pathlib import Path

import numpy as np

from lwta_zoo.data import load_arrays

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('dataset', help='name for the output file; the dataset to read when no --source is given')
    p.add_argument('--source', type=Path, help='.npz with images (uint8 NHWC) and labels')
    p.add_argument('--per-class', default=50, type=int)
    args = p.parse_args()
    if args.source:
        data = np.load(args.source)
        images, labels = data['images'], data['labels']
    else:
        x, y = load_arrays(args.dataset, 'test', download=False)
        images, labels = x.permute(0, 2, 3, 1).numpy(), y.numpy()
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:args.per_class] for c in np.unique(labels)]))
    out = ROOT / f'lwta_zoo/data/{args.dataset}_test_{len(keep)}.npz'
    np.savez_compressed(out, images=images[keep], labels=labels[keep])
    print(f'wrote {out.relative_to(ROOT)}: {len(keep)} images from {args.source or args.dataset + " test split"}')


if __name__ == '__main__':
    main()
