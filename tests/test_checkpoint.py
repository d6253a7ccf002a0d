"""Training checkpoints: a nested state survives a safetensors round trip; pickles are refused."""
import pytest
import torch

from lwta_zoo.checkpoint import load_state, save_state


def test_round_trip_of_an_optimizer_and_mixed_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {'model': model.state_dict(), 'optimizer': opt.state_dict(), 'rng': [{'cpu': torch.get_rng_state()}],
             'epoch': 3, 'lr': 0.5, 'note': None, 'flags': [True, 'x']}
    save_state(state, tmp_path / 'c.safetensors')
    back = load_state(tmp_path / 'c.safetensors')
    assert list(back['optimizer']['state']) == [0, 1]  # int keys stay ints
    assert torch.equal(back['optimizer']['state'][0]['exp_avg'], opt.state_dict()['state'][0]['exp_avg'])
    assert torch.equal(back['rng'][0]['cpu'], state['rng'][0]['cpu'])
    assert (back['epoch'], back['lr'], back['note'], back['flags']) == (3, 0.5, None, [True, 'x'])
    fresh = torch.optim.Adam(model.parameters(), lr=1e-3)
    fresh.load_state_dict(back['optimizer'])  # what --resume does
    assert not list(tmp_path.glob('*.tmp'))


def test_pickle_or_foreign_file_is_refused(tmp_path):
    torch.save({'a': torch.ones(1)}, tmp_path / 'x.safetensors')
    with pytest.raises(ValueError, match='not a lwta_zoo training checkpoint'):
        load_state(tmp_path / 'x.safetensors')
    with pytest.raises(TypeError, match='cannot store'):
        save_state({'f': object()}, tmp_path / 'y.safetensors')
