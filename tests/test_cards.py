"""The shipped model folders as a Hugging Face Hub user meets them: card metadata, config.json,
the usage snippet run as printed (offline, from an HF cache), and a push that carries every file
the card links to."""
import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from huggingface_hub import ModelCard

from lwta_zoo import hub
from lwta_zoo.layers.stochastic import stochastic_modules
from lwta_zoo.models.small_cnn import smallcnn_mnist_lwta
from test_hub import put_in_cache, stub_hub  # noqa: F401  (a fixture)

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = hub.shipped_weights()
PAPER_IDS = {'arXiv:2101.01121', 'arXiv:2112.02671'}  # the AISTATS paper, the WRN paper
TRAIN_SIZE = {'fashion_mnist': 60_000, 'cifar10': 50_000}


def _card(name):
    folder = hub.SHIPPED_WEIGHTS / name
    return folder, ModelCard.load(folder / 'README.md'), json.loads((folder / 'config.json').read_text())


TRAINED = [n for n in SHIPPED if 'steps_trained' in (_card(n)[2].get('provenance') or {})]  # by this repo


def _links(text):
    """Targets of the card's markdown links that point inside the folder (not at a web address)."""
    return {t for t in re.findall(r'\]\(([^)\s]+)\)', text) if not re.match(r'[a-z]+://', t)}


def _usage(text):
    """The card's install line and its python snippet, exactly as printed."""
    usage = text.split('## Model Usage', 1)[1].split('\n## ', 1)[0]
    return (re.search(r'```bash\n(.*?)\n```', usage, re.S).group(1),
            re.search(r'```python\n(.*?)\n```', usage, re.S).group(1))


def test_every_lwta_folder_is_shipped_with_a_card():
    folders = sorted(p.name for p in hub.SHIPPED_WEIGHTS.iterdir() if p.is_dir())
    assert SHIPPED == folders and all(n in timm.list_pretrained() for n in SHIPPED)  # each a registered arch.tag
    assert all((hub.SHIPPED_WEIGHTS / n / 'README.md').is_file() for n in SHIPPED)


@pytest.mark.parametrize('name', SHIPPED)
def test_shipped_card_and_config_hold_what_a_hub_user_needs(name):
    folder, card, config = _card(name)
    cfg = config['pretrained_cfg']
    assert card.data.library_name == 'timm' and card.data.pipeline_tag == 'image-classification'
    assert card.data.license == cfg['license']
    # every network with stochastic layers is tagged (the AISTATS ones store `method`, not `act`)
    model = timm.create_model(config['architecture'], **config['model_args'])
    stochastic = next(stochastic_modules(model), None) is not None
    assert ('stochastic-lwta' in card.data.tags) == stochastic
    # timm's config.json fields: class names by index, both papers, the source of third-party weights
    assert len(config['label_names']) == config['num_classes'] == 10
    assert set(cfg['paper_ids']) == PAPER_IDS and cfg['paper_name']
    assert ('origin_url' in cfg) == name.endswith('authors_pgd')
    install, snippet = _usage(card.text)
    assert install == f'pip install "lwta_zoo @ git+{hub.CODE_REPOSITORY}"'
    source = name if hub.conversion(name) else f'hf-hub:lwta-zoo/{name}'  # not redistributed: converted locally
    assert snippet.index('import lwta_zoo') < snippet.index(f"timm.create_model('{source}', pretrained=True)")
    chans = cfg['input_size'][0]
    assert f"{chans}-channel" in card.text and f".convert('{'L' if chans == 1 else 'RGB'}')" in snippet
    for section in ('## Limitations', '## Citation', '## Results'):
        assert section in card.text
    bibtex = re.findall(r'```bibtex\n(.*?)\n```', card.text, re.S)
    assert {f"arXiv:{re.search(r'eprint = {(.*?)}', b).group(1)}" for b in bibtex} == PAPER_IDS
    links = _links(card.text)  # to its reports, where it has them
    assert bool(links) == any((folder / 'eval').glob('*/report.md')) and all((folder / x).is_file() for x in links)
    assert 'runs/' not in ''.join(_links(card.text))


@pytest.mark.parametrize('name', TRAINED)
def test_trained_cards_state_the_steps_that_ran_and_the_training_time(name):
    _, card, config = _card(name)
    steps, train = config['provenance']['steps_trained'], config['recipe']['train']
    per_epoch = TRAIN_SIZE[config['recipe']['data']['name']] // train['batch_size']  # drop_last: 468 of 128
    guard_stopped = 'restored_epoch' in config['provenance']['training_run_final_eval'].get('guard', {})
    assert steps == train['epochs'] * per_epoch or (guard_stopped and steps % per_epoch == 0)
    assert f'{steps} optimizer steps of batch {train["batch_size"]}' in card.text
    assert not re.search(rf'\b(?!{steps}\b)\d+ steps of {train["batch_size"]}\b', card.text)
    provenance = config['provenance']
    if 'train_step_hours' in provenance:  # the cost and the machines, from the run's log
        assert f"{provenance['train_step_hours']:.1f} h of training steps" in card.text
        assert provenance['machines'] and all(m in card.text for m in provenance['machines'])
        per_machine = [re.search(r'\((\d+\.\d) h\)$', m) for m in provenance['machines']]
        if all(per_machine):  # the hours on each machine setting add up to the whole (to rounding)
            total = sum(float(h[1]) for h in per_machine)
            assert abs(total - provenance['train_step_hours']) <= 0.05 * len(per_machine)
    else:  # runs from before the log recorded machines
        per_step = provenance['seconds_per_step_median']
        assert f'about {steps * per_step / 60:.0f} min of training' in card.text
        assert 'CPU model was not recorded' in card.text  # said, not guessed


def test_authors_card_states_recipe_hardware_and_unknown_licence():
    folder, card, config = _card('wrn34_1_lwta.authors_pgd')
    assert card.data.license == 'unknown' and 'Licence unknown' in card.text
    training = config['provenance']['training']
    assert 'Quadro P6000' in training['hardware'] and training['time'] == 'not reported'
    assert 'no licence file' in training['license']
    # not redistributed: the card says so and gives the one command that converts the checkpoint, and both checksums
    record = config['provenance']['conversion']
    assert record == hub.conversion('wrn34_1_lwta.authors_pgd')
    assert record['checkpoint_sha256'] == config['provenance']['checkpoint']['sha256']
    usage = card.text.split('## Model Usage', 1)[1].split('\n## ', 1)[0]
    assert 'lwta_zoo does not redistribute these weights' in usage and f"\n{record['command']}\n" in usage
    assert record['checkpoint_sha256'] in usage and record['tensors_sha256'] in usage
    assert 'lwta_zoo ships these weights' not in card.text


@pytest.mark.parametrize('name', SHIPPED)
def test_model_index_tells_robust_from_clean_with_threat_model_budget_and_subset(name):
    _, card, config = _card(name)
    results, rows = card.data.eval_results, config['metrics']['results']
    assert len(results) == len(rows)
    # the card's model-index groups results by subset (huggingface_hub keeps the first appearance's order)
    subsets = [(row['data'], row['examples'], hub.report_folder(row)) for row in rows]
    rows = [rows[i] for i in sorted(range(len(rows)), key=lambda i: (subsets.index(subsets[i]), i))]
    for r, row in zip(results, rows):
        args = r.metric_args
        robust = 'clean' not in r.metric_name
        assert r.metric_type == ('robust_accuracy' if robust else 'accuracy')
        assert ('threat_model' in args) == robust and args['n'] == r.dataset_args['n'] == row['examples']
        assert r.dataset_config.endswith(f"-n{row['examples']}") and r.dataset_args['data'] == row['data']
        if 'report' in row:  # from an lwta-zoo eval report: R, L and the sampling protocol travel
            assert {'R', 'L', 'eval_tau'} <= set(args)
            assert r.dataset_args['indices'] == f'{hub.report_folder(row)}/report.json'
        if args.get('attack') in hub.L2_ATTACKS:
            assert args['threat_model'] == 'L2' and 'eps' not in args
        elif robust and 'over' not in args:
            assert args['threat_model'] == 'Linf' and args['eps'] > 0


def test_model_index_passes_the_estimator_fields_through(tmp_path):
    rows = [{'name': 'clean accuracy (exact samples, n=50)', 'value': 0.9, 'threat_model': None, 'examples': 50,
             'repeats': 7, 'samples': 1, 'eval_tau': None, 'interval': [0.8, 0.96], 'interval_method': 'wilson',
             'rule': 'majority of 7', 'report': 'eval/x/report.md'},
            {'name': 'pgd robust accuracy (exact samples, n=50)', 'value': 0.5, 'threat_model': 'Linf', 'eps': 0.1,
             'attack': 'pgd', 'examples': 50, 'repeats': 7, 'samples': 1, 'eval_tau': 0.01, 'interval': [0.36, 0.64],
             'interval_method': 'wilson', 'rule': 'majority of 7'},
            {'name': 'cw robust accuracy (exact samples, n=50)', 'value': 0.7, 'attack': 'cw_l2', 'examples': 50},
            {'name': 'worst-case robust accuracy (exact samples, n=50)', 'value': 0.4, 'examples': 50,
             'over': ['cw', 'pgd']}]
    for row in rows:
        row['protocol_label'] = 'exact samples, n=50'
    folder = hub.save_pretrained(smallcnn_mnist_lwta(), tmp_path / 'm', metrics={
        'dataset': 'fashion_mnist', 'split': 'test', 'results': rows})
    card = ModelCard.load(folder / 'README.md')
    clean, pgd, cw, worst = card.data.eval_results
    assert clean.metric_type == 'accuracy' and 'threat_model' not in clean.metric_args
    assert pgd.metric_args == {'threat_model': 'Linf', 'eps': 0.1, 'attack': 'pgd', 'n': 50, 'R': 7, 'L': 1,
                               'eval_tau': 0.01, 'interval': [0.36, 0.64], 'interval_method': 'wilson',
                               'rule': 'majority of 7', 'protocol_label': 'exact samples, n=50'}
    assert cw.metric_args['threat_model'] == 'L2'  # derived from the attack when the row does not say
    assert worst.metric_args['threat_model'] == 'L2+Linf'  # an old report's worst case mixed them
    assert '| 0.5 | [0.36, 0.64] (wilson) | Linf, eps 0.1 |' in card.text
    assert json.loads((folder / 'config.json').read_text())['label_names'][0] == 'T-shirt/top'


def _run_snippets(names, cwd, mirror, cache=None):
    """Run each card's usage snippet, as printed, in its own fresh interpreter (all at once), offline, with
    ``mirror`` as $LWTA_ZOO_WEIGHTS and ``cache`` as the HF cache; check the top-3 labels it prints.
    No card to run is a failure: a test that ran none would pass without checking anything."""
    assert names, 'no card selected: the shipped weights these snippets come from are missing'
    env = {**os.environ, 'HF_HUB_OFFLINE': '1', 'HF_HUB_CACHE': str(cache or cwd / 'hf-cache'),
           'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1', hub.MIRROR_ENV: str(mirror)}
    runs = {name: subprocess.Popen([sys.executable, '-c', _usage(_card(name)[1].text)[1]], env=env, cwd=cwd,
                                   text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for name in names}
    for name, run in runs.items():
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, f'{name}: {err}'
        top = ast.literal_eval(out.strip().splitlines()[-1])  # the snippet prints [(label, probability), ...]
        assert len(top) == 3 and all(label in _card(name)[2]['label_names'] for label, _ in top), name


def test_every_card_usage_snippet_runs_as_printed_in_a_fresh_interpreter(tmp_path):
    """The shipped weights from an HF cache holding their folders (no local mirror)."""
    cache, mirror = tmp_path / 'hf-cache', tmp_path / 'no-mirror'
    mirror.mkdir()
    shipped = [name for name in SHIPPED if not hub.conversion(name)]
    for name in shipped:
        _, snippet = _usage(_card(name)[1].text)
        put_in_cache(cache, re.search(r"'hf-hub:([^']+)'", snippet).group(1), hub.SHIPPED_WEIGHTS / name, 'd' * 40)
    _run_snippets(shipped, tmp_path, mirror, cache)


def test_usage_snippet_of_weights_not_redistributed_runs_once_they_are_converted(authors_mirror, tmp_path):
    """The card's conversion command was run (the fixture): its snippet finds the weights in $LWTA_ZOO_WEIGHTS."""
    _run_snippets([name for name in SHIPPED if hub.conversion(name)], tmp_path, authors_mirror)


def test_push_sends_every_file_the_card_links_and_a_card_for_that_repo(stub_hub):
    folder = hub.SHIPPED_WEIGHTS / 'aistats_softmax_mnist.lwta_u2_fmnist_pgd'
    hub.push_to_hub(folder, 'someone/fmnist-lwta', code_repository='https://example.org/fork/lwta')
    sent = stub_hub['files']
    assert set(sent) == {'model.safetensors', 'config.json', 'README.md'} | {
        p.relative_to(folder).as_posix() for p in (folder / 'eval').rglob('*') if p.is_file()}
    card = sent['README.md'].decode()
    assert _links(card) and _links(card) <= set(sent)
    assert all(sent[f] == (folder / f).read_bytes() for f in sent if f != 'README.md')
    install, snippet = _usage(card)
    assert install == 'pip install "lwta_zoo @ git+https://example.org/fork/lwta"'
    assert "timm.create_model('hf-hub:someone/fmnist-lwta'" in snippet
