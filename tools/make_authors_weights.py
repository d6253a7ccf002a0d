"""Write lwta_zoo/weights/wrn34_1_lwta.authors_pgd/ (card, config.json, reports) from the WRN paper authors' checkpoint.

No licence was found in their repository, so lwta_zoo does not redistribute the converted weights: the folder
holds no model.safetensors, and its config.json records how a user converts the checkpoint
(``provenance.conversion``: the ``lwta-zoo import`` command and the sha256 of the checkpoint and of
the converted weights, which the import checks; lwta_zoo.hub.conversion reads it).

Imports the checkpoint (``lwta-zoo import --layout authors-lwta``: torch.load(weights_only=True),
keys mapped, learned temperatures kept as metadata), measures the clean accuracy of the converted
weights on the shipped CIFAR-10 subset (lwta_zoo/data/cifar10_test_500.npz) with L=1 sample (the
paper's setting), seeds 0-2, both with exact samples (the paper) and with the authors' test-time
relaxation at temperature 0.01, then exports again with those measurements in the model card and
keeps the card and config.json. Deterministic on CPU: rerunning it rewrites the same files.

``--reports DIR ...`` publishes ``lwta-zoo eval`` reports with the weights: their results go into
the model card and each DIR/report.json (+ report.md) is copied to eval/<DIR name>/ beside them.
The shipped reports came from (see each report's ``command``; the weights converted into $LWTA_ZOO_WEIGHTS)::

    lwta-zoo eval wrn34_1_lwta.authors_pgd --eval-tau 0.01 --data lwta_zoo/data/cifar10_test_500.npz \
        --n 100 --batch-size 50 --output runs/authors_tau0.01_n100 --adaptive-steps 20 --threads 1 \
        --attacks pgd20,pgd_mean,pgd_max,pgd_ste,apgd_mean --random-inputs 1000 --no-progress
    lwta-zoo eval wrn34_1_lwta.authors_pgd --data lwta_zoo/data/cifar10_test_500.npz \
        --n 100 --batch-size 50 --output runs/authors_exact_n100 --adaptive-steps 20 --threads 1 \
        --attacks pgd20,pgd_mean,pgd_ste,apgd_mean --random-inputs 1000 --no-progress

(the data file's name gives the CIFAR-10 budgets, eps 8/255; ``--preset papers`` adds the papers'
AutoAttack, APGD-CE/DLR + EoT and the AISTATS attacks, at hours of CPU per 100 examples.)

    python tools/make_authors_weights.py [--source PATH] [--reports runs/authors_tau0.01_n100 runs/authors_exact_n100]

The shipped copies of those reports republish as they are (W=lwta_zoo/weights/wrn34_1_lwta.authors_pgd)::

    python tools/make_authors_weights.py --reports $W/eval/authors_tau0.01_n100 $W/eval/authors_exact_n100
"""
import argparse
import shutil
import tempfile
from pathlib import Path

import torch

from lwta_zoo.data import read_npz
from lwta_zoo.hub import (
    CARD_FILE, CONFIG_FILE, MIRROR_ENV, WEIGHTS_FILE, file_sha256, import_checkpoint, tensors_sha256, load_pretrained,
)
from publishing import ROOT, clean_result, copy_reports, report_results

NAME = 'wrn34_1_lwta.authors_pgd'
DATA = 'lwta_zoo/data/cifar10_test_500.npz'
DATA_NOTE = ': the first 50 images of each class, from a public JPEG re-encoding of the CIFAR-10 test set'
AUTHORS_CODE = 'https://github.com/konpanousis/Adversarial-LWTA-AutoAttack'
SUMMARY = (
    "The authors' public checkpoint for the WRN paper (Panousis, Chatzis and Theodoridis, 2021): WideResNet-34-1 "
    'with stochastic LWTA (U=2), PGD adversarial training on CIFAR-10, epoch 100, from their code '
    f'({AUTHORS_CODE}). No licence was found in their repository, so lwta_zoo does not redistribute the weights; '
    'Model Usage below converts the checkpoint with one command (`lwta-zoo import --layout authors-lwta`, which '
    'checks the sha256 of the checkpoint and of the result). The conversion renames the activations lwta1/lwta2/'
    "lwta to relu1/relu2/relu, drops TRADES' unused sub_block1 and keeps the learned temperatures (below); the "
    'figures below are our measurements of the converted weights. The '
    "authors' code differs from the paper: it does not add the KL term to its loss, learns a temperature per "
    'layer, and at test time draws the relaxation at temperature 0.01 rather than exact samples. This model '
    "draws exact samples by default (the paper); `lwta_args={'eval_tau': 0.01}` reproduces the authors' test "
    'protocol. The paper reports 87.0% natural accuracy (L=1, full CIFAR-10 test set, its Table 1); the figures '
    'below are our measurements on a 500-image JPEG re-encoded subset, which costs about 1-3 points. '
    "Robustness: the results set the WRN paper's protocol (PGD-20 on the model's own gradient) beside "
    'adaptive attacks (PGD and APGD through the mean and max surrogates, straight-through gradients), under '
    "the authors' test-time relaxation and with exact samples; the per-example worst case over all of them "
    'is the figure to rely on, not the paper protocol alone.')
TRAINING = {  # what the paper and the authors' public code say; neither reports the training time
    'recipe': "PGD adversarial training (Madry et al.) on CIFAR-10, batch 128, SGD at learning rate 0.1 halved "
              "every epoch after the 75th (the WRN paper, Section 3); the authors' train_cifar10.py (commit "
              "92edbe26642917e50f6147908e33b022eca80674) adds momentum 0.9, weight decay 2e-4 and a training attack "
              "of 10 steps of 0.007 at eps 0.031, and its main() as committed trains width 10, not this width-1 "
              'network. This checkpoint is the state after epoch 100.',
    'hardware': 'one NVIDIA Quadro P6000 (the WRN paper)',
    'time': 'not reported',
    'license': f'unknown: the public repository ({AUTHORS_CODE}) has no licence file, so the right to '
               'redistribute these weights is not established and lwta_zoo does not redistribute them; the sha256 '
               'of the source checkpoint and of the converted weights are recorded under conversion',
}


def conversion_record(source: Path, weights: Path) -> dict:
    """The record by which lwta_zoo.hub tells a user how to convert the checkpoint, and checks the result."""
    return {'reason': f"no licence was found in the authors' repository, {AUTHORS_CODE}, so the right to "
                      'redistribute the weights is not established',
            'source': f"the WRN paper authors' public checkpoint {source.name} (their code: {AUTHORS_CODE})",
            'command': f'lwta-zoo import {source.name} --model {NAME} --layout authors-lwta '
                       f'--output ${MIRROR_ENV}/{NAME}',
            'checkpoint_sha256': file_sha256(source), 'tensors_sha256': tensors_sha256(weights)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--source', type=Path, default=ROOT.parent / 'shared/data/authors_wrn34_1_lwta_cifar10_pgd.pt')
    p.add_argument('--reports', type=Path, nargs='*', default=[], help='lwta-zoo eval output folders to publish')
    args = p.parse_args()
    torch.set_num_threads(1)
    out = ROOT / 'lwta_zoo/weights' / NAME
    images, y = read_npz(ROOT / DATA)
    x = images.float() / 255
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = import_checkpoint(args.source, NAME, Path(tmp) / 'converted', layout='authors-lwta', verify=False)
        for eval_tau in (None, 0.01):
            model = load_pretrained(folder, samples=1, lwta_args={'eval_tau': eval_tau} if eval_tau else None)
            results.append(clean_result(model.eval(), x, y, data=DATA + DATA_NOTE, eval_tau=eval_tau))
            print(results[-1]['name'], results[-1]['per_seed'])
        results += report_results(args.reports, {DATA: DATA + DATA_NOTE})
        metrics = {'dataset': 'cifar10', 'dataset_name': 'CIFAR-10', 'split': 'test', 'results': results}
        provenance = {'summary': SUMMARY, 'training': TRAINING,
                      'conversion': conversion_record(args.source, folder / WEIGHTS_FILE)}
        card = import_checkpoint(args.source, NAME, Path(tmp) / 'card', layout='authors-lwta', metrics=metrics,
                                 provenance=provenance, verify=False)
        out.mkdir(parents=True, exist_ok=True)
        for file in (CONFIG_FILE, CARD_FILE):  # not the weights
            shutil.copy(card / file, out / file)
    copy_reports(args.reports, out)
    print(f'wrote {out.relative_to(ROOT)} (card, config.json and reports; the weights are not redistributed)')


if __name__ == '__main__':
    main()
