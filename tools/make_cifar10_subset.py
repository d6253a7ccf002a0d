"""Write the CIFAR-10 test subset the repo ships (lwta_zoo/data/cifar10_test_500.npz).

Takes the first ``--per-class`` images of each class from a larger .npz of the same format
(``images`` uint8 N x H x W x C, ``labels``), by default ../shared/data/cifar10_test_1k.npz,
itself 100 images a class of the CIFAR-10 test set from a public JPEG re-encoding.

    python tools/make_cifar10_subset.py [--source PATH] [--per-class 50]
"""
import argparse
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--source', default=ROOT.parent / 'shared/data/cifar10_test_1k.npz', type=Path)
    p.add_argument('--per-class', default=50, type=int)
    args = p.parse_args()
    data = np.load(args.source)
    images, labels = data['images'], data['labels']
    keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:args.per_class] for c in np.unique(labels)]))
    out = ROOT / f'lwta_zoo/data/cifar10_test_{len(keep)}.npz'
    np.savez_compressed(out, images=images[keep], labels=labels[keep])
    print(f'wrote {out.relative_to(ROOT)}: {len(keep)} images from {args.source}')


if __name__ == '__main__':
    main()
