"""Weights that travel: export, load (folder, local-dir:, HF cache offline, torch.hub), push, import, refusals."""
import argparse
import json
import pickle
import re
import shutil
from pathlib import Path

import httpx2  # huggingface_hub's HTTP client
import huggingface_hub.constants
import pytest
import timm
import torch
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors.torch import load_file

from conftest import AUTHORS, AUTHORS_CHECKPOINT
from lwta_zoo import hub
from lwta_zoo.models.small_cnn import smallcnn_mnist_lwta

ROOT = Path(__file__).resolve().parents[1]
FMNIST_LWTA = 'aistats_softmax_mnist.lwta_u2_fmnist_pgd'  # shipped weights with a pretrained tag
EXPORT_FILES = {'model.safetensors', 'config.json', 'README.md'}
X = torch.rand(4, 1, 28, 28)


def outputs(model, seed=0, x=X):
    torch.manual_seed(seed)
    with torch.no_grad():
        return model.eval()(x)


@pytest.fixture
def model():
    """A stochastic model with non-default behaviour args, built by the entrypoint (not create_model)."""
    m = smallcnn_mnist_lwta(lwta_args={'tau': 0.5})
    m.num_samples = 3
    return m


@pytest.fixture
def export(model, tmp_path):
    return hub.save_pretrained(model, tmp_path / 'smallcnn_mnist_lwta')


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with an empty HF cache (HF_HUB_CACHE) and no local mirror."""
    cache = tmp_path / 'hf-cache'
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_OFFLINE', True)
    monkeypatch.setattr(huggingface_hub.constants, 'HF_HUB_CACHE', str(cache))
    monkeypatch.setattr(hub, 'SHIPPED_WEIGHTS', tmp_path / 'no-mirror')
    monkeypatch.delenv(hub.MIRROR_ENV, raising=False)
    return cache


def put_in_cache(cache: Path, repo_id: str, folder: Path, revision: str, main: bool = True) -> None:
    """Lay ``folder`` out as huggingface_hub's cache does: snapshots/<commit>/..., refs/main."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / 'snapshots' / revision)
    if main:
        (repo / 'refs').mkdir(exist_ok=True)
        (repo / 'refs/main').write_text(revision)


# --- export ------------------------------------------------------------------------------------


def test_export_writes_safetensors_timm_config_and_card(model, export):
    assert {p.name for p in export.iterdir()} == EXPORT_FILES
    assert set(load_file(export / 'model.safetensors')) == set(model.state_dict())
    config = json.loads((export / 'config.json').read_text())
    assert config['architecture'] == 'smallcnn_mnist_lwta'
    assert config['num_classes'] == 10 and config['num_features'] == model.num_features
    # recorded at build time although the entrypoint was called directly; L is the model's current one
    assert config['model_args']['lwta_args'] == {'tau': 0.5} and config['model_args']['samples'] == 3
    assert config['pretrained_cfg']['input_size'] == [1, 28, 28]
    card = ModelCard.load(export / 'README.md')
    assert card.data.library_name == 'timm' and 'stochastic-lwta' in card.data.tags
    assert not card.data.eval_results and 'none are claimed' in card.text


def test_card_model_index_holds_exactly_the_measured_metrics(model, tmp_path):
    flat = {'test_clean_acc': 0.61, 'test_n': 200, 'test_pgd_acc': 0.32, 'test_pgd_n': 50, 'samples': 3,
            'pgd': {'eps': 0.1, 'steps': 20}, 'dataset': 'fashion_mnist', 'steps_trained': 7}
    folder = hub.save_pretrained(model, tmp_path / 'e', recipe={'model': {'name': 'smallcnn_mnist_lwta'}},
                                 metrics=flat)
    results = {r.metric_name: r for r in ModelCard.load(folder / 'README.md').data.eval_results}
    assert {n: r.metric_value for n, r in results.items()} == {'clean accuracy': 0.61, 'pgd accuracy': 0.32}
    assert results['pgd accuracy'].metric_args == {'threat_model': 'Linf', 'n': 50, 'L': 3, 'eps': 0.1, 'steps': 20}
    assert results['pgd accuracy'].metric_type == 'robust_accuracy'
    assert results['clean accuracy'].metric_type == 'accuracy'
    clean = results['clean accuracy']
    assert clean.dataset_type == 'fashion_mnist' and clean.dataset_split == 'test'
    config = json.loads((folder / 'config.json').read_text())
    assert config['metrics'] == flat and config['recipe'] == {'model': {'name': 'smallcnn_mnist_lwta'}}
    with pytest.raises(ValueError, match='measured'):
        hub.save_pretrained(model, tmp_path / 'f', metrics={'dataset': 'x', 'results': [{'name': 'clean'}]})


def test_export_refuses_models_the_zoo_cannot_rebuild(tmp_path):
    with pytest.raises(ValueError, match='not a model of lwta_zoo'):
        hub.save_pretrained(timm.create_model('resnet18', num_classes=2), tmp_path)


# --- load --------------------------------------------------------------------------------------


def test_folder_and_local_dir_round_trip_give_identical_outputs(model, export):
    for loaded in (hub.load_pretrained(export), timm.create_model(f'local-dir:{export}', pretrained=True)):
        assert loaded.num_samples == 3 and loaded.pretrained_cfg['file'] == str(export / 'model.safetensors')
        assert torch.equal(outputs(loaded), outputs(model))
    assert not torch.equal(outputs(model, seed=0), outputs(model, seed=1))  # the equality above is not trivial


def test_hf_cache_offline_hf_hub_prefix_revisions_and_registered_name(model, export, offline, tmp_path):
    old = smallcnn_mnist_lwta(lwta_args={'tau': 0.5})
    old.num_samples = 3
    put_in_cache(offline, 'lwta-zoo/smallcnn_mnist_lwta', hub.save_pretrained(old, tmp_path / 'old'), 'a' * 40,
                 main=False)
    put_in_cache(offline, 'lwta-zoo/smallcnn_mnist_lwta', export, 'b' * 40)
    cases = {'hf-hub:lwta-zoo/smallcnn_mnist_lwta': model, f"hf-hub:lwta-zoo/smallcnn_mnist_lwta@{'a' * 40}": old,
             'smallcnn_mnist_lwta': model}  # a registered name: its pretrained_cfg's hf_hub_id
    for name, expected in cases.items():
        loaded = hub.load_pretrained(name, samples=3)
        assert torch.equal(outputs(loaded), outputs(expected)), name
    assert not torch.equal(outputs(old), outputs(model))


def test_pretrained_tag_resolves_through_the_hf_cache_offline(offline):
    shipped = ROOT / 'lwta_zoo/weights' / FMNIST_LWTA
    put_in_cache(offline, f'lwta-zoo/{FMNIST_LWTA}', shipped, 'c' * 40)
    loaded = timm.create_model(FMNIST_LWTA, pretrained=True)
    assert 'hf-cache' in loaded.pretrained_cfg['file']
    expected = load_file(shipped / 'model.safetensors')
    assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())


def test_torch_hub_local_pretrained_reads_the_mirror_folder(model, export, offline, monkeypatch):
    monkeypatch.setenv(hub.MIRROR_ENV, str(export.parent))
    loaded = torch.hub.load(str(ROOT), 'smallcnn_mnist_lwta', source='local', pretrained=True, samples=3)
    assert loaded.num_samples == 3 and torch.equal(outputs(loaded), outputs(model))


def test_torch_hub_and_robustbench_names_load_the_converted_authors_weights(authors_weights):
    expected = load_file(authors_weights / 'model.safetensors')
    by_hub = torch.hub.load(str(ROOT), 'wrn34_1_lwta', source='local', pretrained=True,
                            pretrained_cfg='authors_pgd', samples=2)
    by_robustbench = timm.create_model('wrn34_1_lwta_cifar10_linf', num_classes=10, pretrained=True,
                                       checkpoint_path='')  # what robustbench.load_model calls
    for loaded in (by_hub, by_robustbench):
        assert all(torch.equal(v, expected[k]) for k, v in loaded.state_dict().items())
    assert by_hub.num_samples == 2


def test_weights_not_redistributed_say_how_to_convert_them(fresh_clone):
    """On a fresh clone the authors' folder is a card without weights; every way to ask for them gets the command."""
    record = hub.conversion(AUTHORS)
    assert {p.name for p in (fresh_clone / AUTHORS).iterdir()} == {'config.json', 'README.md', 'eval'}
    assert all(re.fullmatch(r'[0-9a-f]{64}', record[k]) for k in ('checkpoint_sha256', 'tensors_sha256'))
    assert record['command'].startswith(f'lwta-zoo import {AUTHORS_CHECKPOINT.name} --model {AUTHORS} ')
    assert record['command'].endswith(f'--output ${hub.MIRROR_ENV}/{AUTHORS}')
    loads = {'tag': lambda: timm.create_model(AUTHORS, pretrained=True),
             'default tag': lambda: timm.create_model('wrn34_1_lwta', pretrained=True),
             'RobustBench name': lambda: timm.create_model('wrn34_1_lwta_cifar10_linf', pretrained=True),
             'torch.hub': lambda: torch.hub.load(str(ROOT), 'wrn34_1_lwta', source='local', pretrained=True),
             'torch.hub tag': lambda: torch.hub.load(str(ROOT), AUTHORS, source='local', pretrained=True)}
    for how, load in loads.items():
        with pytest.raises(hub.MissingWeightsError) as e:
            load()
        message = str(e.value)
        assert message.startswith(f'No weights for {AUTHORS}: lwta_zoo does not redistribute them'), how
        assert f"\n    {record['command']}\n" in message and record['checkpoint_sha256'] in message, how
        assert f'first set {hub.MIRROR_ENV}' in message and 'recipes/' not in message, how


def test_model_without_weights_says_so_and_names_its_recipe(offline, monkeypatch):
    with pytest.raises(hub.MissingWeightsError, match=r'not in the Hugging Face cache.*recipes/\S*wrn34_10_lwta\S*\.yaml'):
        timm.create_model('wrn34_10_lwta', pretrained=True)

    def not_on_hub(repo_id, filename, **kwargs):
        response = httpx2.Response(404, request=httpx2.Request('HEAD', f'https://hf.co/{repo_id}'))
        raise RepositoryNotFoundError('404', response=response)

    monkeypatch.setattr(hub, 'hf_hub_download', not_on_hub)
    with pytest.raises(hub.MissingWeightsError, match=r'wrn34_10: it has no published weights'):
        timm.create_model('wrn34_10', pretrained=True)


# --- refusals ----------------------------------------------------------------------------------


class Payload:
    """Unpickling this would create ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f'open({self.marker!r}, "w").close()',)


def test_pickle_disguised_as_safetensors_is_refused_unexecuted(export, tmp_path):
    marker = tmp_path / 'ran'
    for write in (lambda f: torch.save({'x': Payload(marker)}, f),
                  lambda f: f.write_bytes(pickle.dumps(Payload(marker)))):
        write(export / 'model.safetensors')
        with pytest.raises(ValueError, match='pickle checkpoint, not safetensors'):
            hub.load_pretrained(export)
    assert not marker.exists()


def test_truncated_safetensors_is_refused(export):
    data = (export / 'model.safetensors').read_bytes()
    (export / 'model.safetensors').write_bytes(data[:len(data) - 100])
    with pytest.raises(ValueError, match='not a valid safetensors file'):
        hub.load_pretrained(export)


def test_config_naming_another_architecture_is_refused(export, offline, monkeypatch):
    config = json.loads((export / 'config.json').read_text())
    (export / 'config.json').write_text(json.dumps({**config, 'architecture': 'smallcnn_mnist'}))
    monkeypatch.setenv(hub.MIRROR_ENV, str(export.parent))  # the mirror folder of smallcnn_mnist_lwta
    with pytest.raises(ValueError, match="names architecture 'smallcnn_mnist', not 'smallcnn_mnist_lwta'"):
        timm.create_model('smallcnn_mnist_lwta', pretrained=True)
    (export / 'config.json').write_text(json.dumps({**config, 'architecture': 'vgg16_cifar_lwta', 'model_args': {}}))
    with pytest.raises(ValueError, match=r'do not fit vgg16_cifar_lwta: missing keys \d+ \[.*unexpected keys \d+ \[conv'):
        hub.load_pretrained(export)
    (export / 'config.json').write_text(json.dumps({**config, 'architecture': 'resnet18'}))
    with pytest.raises(ValueError, match="'resnet18', which is not a model of lwta_zoo"):
        hub.load_pretrained(export)


def test_import_of_weights_not_redistributed_refuses_another_checkpoint_unread(model, tmp_path):
    pt = tmp_path / AUTHORS_CHECKPOINT.name
    torch.save({'model_state_dict': model.state_dict()}, pt)
    expected = hub.conversion(AUTHORS)['checkpoint_sha256']
    with pytest.raises(ValueError, match=f'is not the checkpoint {AUTHORS} is converted from: its sha256 is '
                                         f'{hub.file_sha256(pt)}, .* has {expected}'):
        hub.import_checkpoint(pt, AUTHORS, tmp_path / 'out', layout='authors-lwta')
    assert not (tmp_path / 'out').exists()


def test_import_checks_the_converted_weights_and_completes_the_folder_from_the_card(model, tmp_path, monkeypatch):
    """A card of weights not redistributed (config.json with a conversion record, eval/, no weights)."""
    pt = tmp_path / 'm.pt'
    torch.save({'model_state_dict': model.state_dict()}, pt)
    weights = hub.import_checkpoint(pt, 'smallcnn_mnist_lwta', tmp_path / 'plain') / 'model.safetensors'
    record = {'checkpoint_sha256': hub.file_sha256(pt), 'tensors_sha256': '0' * 64, 'reason': 'a test',
              'source': 'm.pt', 'command': 'lwta-zoo import m.pt --model smallcnn_mnist_lwta --output OUT'}
    card = tmp_path / 'cards/smallcnn_mnist_lwta'

    def publish(record):
        hub.save_pretrained(model, card, provenance={'conversion': record})
        (card / 'model.safetensors').unlink()
        (card / 'eval/run').mkdir(parents=True, exist_ok=True)
        (card / 'eval/run/report.md').write_text('a report')

    monkeypatch.setattr(hub, 'SHIPPED_WEIGHTS', card.parent)
    publish(record)
    got = hub.tensors_sha256(weights)
    with pytest.raises(ValueError, match=f'gave tensors with sha256 {got}, not the recorded 0{{64}}'):
        hub.import_checkpoint(pt, 'smallcnn_mnist_lwta', tmp_path / 'out')
    assert not (tmp_path / 'out/model.safetensors').exists()  # never left where pretrained=True would find it
    publish({**record, 'tensors_sha256': got})
    out = hub.import_checkpoint(pt, 'smallcnn_mnist_lwta', tmp_path / 'out')
    assert (out / 'model.safetensors').read_bytes() == weights.read_bytes()
    assert all((out / f).read_bytes() == (card / f).read_bytes()
               for f in ('config.json', 'README.md', 'eval/run/report.md'))


def test_checkpoint_with_code_objects_is_refused_unexecuted(model, tmp_path):
    marker, pt = tmp_path / 'ran', tmp_path / 'evil.pt'
    torch.save({'model_state_dict': model.state_dict(), 'extra': Payload(marker)}, pt)
    with pytest.raises(ValueError, match='loading it would run code'):
        hub.import_checkpoint(pt, 'smallcnn_mnist_lwta', tmp_path / 'out')
    assert not marker.exists() and not (tmp_path / 'out').exists()


# --- push --------------------------------------------------------------------------------------


@pytest.fixture
def stub_hub(monkeypatch):
    """HfApi patched at its boundary: record the repo created and the files one commit would send."""
    sent = {}

    def create_repo(self, repo_id, **kwargs):
        sent['repo'] = (repo_id, kwargs)
        return argparse.Namespace(repo_id=repo_id)

    def create_commit(self, *, repo_id, operations, **kwargs):
        sent['files'] = {op.path_in_repo: op.path_or_fileobj if isinstance(op.path_or_fileobj, bytes)
                         else Path(op.path_or_fileobj).read_bytes() for op in operations}
        sent['upload'] = dict(repo_id=repo_id, **kwargs)
        return argparse.Namespace(commit_url=f'https://hf.co/{repo_id}/commit/1')

    monkeypatch.setattr(HfApi, 'create_repo', create_repo)
    monkeypatch.setattr(HfApi, 'create_commit', create_commit)
    monkeypatch.setattr(hub, 'get_token', lambda: 'hf_test')  # push checks that there is one before going online
    return sent


def test_push_uploads_exactly_the_exported_folder(model, export, stub_hub, capsys):
    (export / 'pytorch_model.bin').write_bytes(b'stray pickle, never uploaded')
    parser = argparse.ArgumentParser()
    hub.configure_push(parser)
    args = parser.parse_args([str(export), 'me/smallcnn', '--revision', 'v1'])
    args.func(args)
    assert capsys.readouterr().out.strip() == 'https://hf.co/me/smallcnn/commit/1'
    assert stub_hub['repo'][0] == 'me/smallcnn' and stub_hub['upload']['revision'] == 'v1'
    assert set(stub_hub['files']) == EXPORT_FILES
    assert all(stub_hub['files'][f] == (export / f).read_bytes() for f in EXPORT_FILES - {'README.md'})
    # the card is written for the repo it goes to
    assert "hf-hub:me/smallcnn'" in stub_hub['files']['README.md'].decode()
    hub.push_to_hub(model, 'me/direct')  # a model is exported first, to the same files
    assert set(stub_hub['files']) == EXPORT_FILES
    assert stub_hub['files']['model.safetensors'] == (export / 'model.safetensors').read_bytes()


# --- import ------------------------------------------------------------------------------------


def test_import_of_the_authors_checkpoint_gives_the_recorded_weights(authors_mirror, tmp_path):
    """The card's command, as printed (with $LWTA_ZOO_WEIGHTS and the checkpoint's path filled in)."""
    record = hub.conversion(AUTHORS)
    command = record['command'].replace(f'${hub.MIRROR_ENV}', str(tmp_path)).split()
    assert command[:2] == ['lwta-zoo', 'import'] and command[2] == AUTHORS_CHECKPOINT.name
    parser = argparse.ArgumentParser()
    hub.configure_import(parser)
    args = parser.parse_args([str(AUTHORS_CHECKPOINT), *command[3:]])
    args.func(args)
    weights = tmp_path / AUTHORS / 'model.safetensors'
    assert hub.tensors_sha256(weights) == record['tensors_sha256']
    assert weights.read_bytes() == (authors_mirror / AUTHORS / 'model.safetensors').read_bytes()
    provenance = json.loads((tmp_path / AUTHORS / 'config.json').read_text())['provenance']
    assert provenance['checkpoint']['entries'] == {'epoch': 100}
    temps = provenance['learned_temperatures']['temp']
    assert len(temps) == 31 and temps['block1.layer.0.relu1'] == pytest.approx(1.8398, abs=1e-4)
    card = json.loads((hub.SHIPPED_WEIGHTS / AUTHORS / 'config.json').read_text())
    assert card['provenance']['learned_temperatures'] == provenance['learned_temperatures']
    with pytest.raises(ValueError, match=r"unexpected keys 31 \[block1\.layer\.0\.lwta1\.temp"):
        hub.import_checkpoint(AUTHORS_CHECKPOINT, 'wrn34_1_lwta', tmp_path / 'x', layout='trades')
