"""L-sample prediction: batched, averaged as eq. 10, L=1 is a plain forward, set_samples."""
import pytest
import timm
import torch
import torch.nn as nn

import lwta_zoo
from lwta_zoo import MultiSample, set_samples
from lwta_zoo.sampling import sample_average


class _RowIndex(nn.Module):
    """Adds each row's position in the batch: shows which rows were averaged together."""

    def __init__(self):
        super().__init__()
        self.batch_sizes = []

    def forward(self, x):
        self.batch_sizes.append(x.shape[0])
        return x + torch.arange(x.shape[0], dtype=x.dtype).unsqueeze(1)


def test_samples_are_folded_into_one_batch_and_averaged():
    net = _RowIndex()
    x = torch.zeros(3, 4)
    out = MultiSample(net, samples=5).eval()(x)
    assert net.batch_sizes == [15]  # one forward of L*N rows, not L forwards
    # example i is row i + l*N in sample l; its mean offset is i + N*(L-1)/2
    assert torch.allclose(out, (torch.arange(3.0) + 3 * 2).unsqueeze(1).expand(3, 4))


def test_probability_average_is_log_of_mean_softmax():
    logits = torch.randn(4, 2, 10)
    out = sample_average(lambda x: logits.flatten(0, 1), torch.zeros(2, 3), samples=4, average='probs')
    assert torch.allclose(out, logits.softmax(-1).mean(0).log(), atol=1e-6)
    assert torch.allclose(out.exp().sum(-1), torch.ones(2))


def test_one_sample_is_a_plain_forward_and_training_ignores_l():
    net = _RowIndex()
    wrapped = MultiSample(net, samples=1).eval()
    x = torch.zeros(3, 4)
    assert torch.equal(wrapped(x), net(x))
    wrapped.num_samples = 7
    wrapped.train()(x)
    assert net.batch_sizes[-1] == 3


def test_model_l_sample_average_reduces_variance():
    model = timm.create_model('smallcnn_mnist_lwta', samples=1).eval()
    x = torch.rand(1, 1, 28, 28).expand(64, -1, -1, -1).contiguous()
    with torch.no_grad():
        var1 = model(x).var(0).mean()
        set_samples(model, 16)
        var16 = model(x).var(0).mean()
    assert var16 < var1 / 4  # independent samples: variance / 16 in expectation


def test_set_samples_changes_a_loaded_model_and_rejects_bad_values():
    model = timm.create_model('wrn34_1_lwta', samples=5)
    assert model.num_samples == 5
    set_samples(model, 2, average='probs')
    assert (model.num_samples, model.sample_average) == (2, 'probs')
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match='samples'):
            set_samples(model, bad)
    with pytest.raises(ValueError, match='average'):
        timm.create_model('wrn34_1_lwta', sample_average='median')


def test_set_samples_on_a_plain_module_says_how_to_wrap_it():
    model = lwta_zoo.convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    with pytest.raises(TypeError, match='MultiSample'):
        set_samples(model, 3)
    wrapped = set_samples(MultiSample(model), 3)
    assert wrapped.num_samples == 3


def test_fold_plan_takes_whole_copies_within_the_row_cap():
    from lwta_zoo.sampling import fold_plan
    assert fold_plan(3, 5, max_batch=7) == [2, 2, 1]      # 2 copies of 3 rows fit in 7
    assert fold_plan(10, 4, max_batch=5) == [1, 1, 1, 1]  # one copy even when it alone exceeds the cap
    assert fold_plan(2, 20, max_batch=1000) == [20]
    assert fold_plan(16, 20) == [8, 8, 4] and fold_plan(16, 20, device='cuda') == [16, 4]  # 128 / 256 rows
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match='max_batch'):
            fold_plan(3, 5, max_batch=bad)


def test_folded_forwards_never_exceed_max_batch_and_average_the_same_copies():
    net = _RowIndex()
    x = torch.zeros(3, 4)
    out = MultiSample(net, samples=5, max_batch=7).eval()(x)
    assert net.batch_sizes == [6, 6, 3]
    # copy l of example i is row i + 3*(l mod 2) of its forward: offsets 0, 3, 0, 3, 0 -> mean 1.2
    assert torch.allclose(out, (torch.arange(3.0) + 1.2).unsqueeze(1).expand(3, 4))


def test_chunked_prediction_and_eot_gradient_equal_the_single_forward():
    from lwta_zoo.attacks.pgd import input_gradient
    model = timm.create_model('smallcnn_mnist_lwta', samples=6).eval()
    lwta_zoo.set_mode(model, 'mean')  # deterministic, so chunking must not change a thing
    x, y = torch.rand(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with torch.no_grad():
        whole = model(x)
        set_samples(model, 6, max_batch=8)
        assert model.max_batch == 8
        chunked = model(x)
    assert torch.allclose(whole, chunked, atol=1e-6)
    g_whole = input_gradient(model, x, y, eot_samples=5, max_batch=1000)
    rows = []
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first_conv.register_forward_pre_hook(lambda m, args: rows.append(len(args[0])))
    g_chunked = input_gradient(model, x, y, eot_samples=5)  # the model's own cap of 8 rows applies
    assert rows and max(rows) == 8
    assert torch.allclose(g_whole, g_chunked, atol=1e-6) and g_whole.abs().sum() > 0
    with pytest.raises(ValueError, match='max_batch'):
        timm.create_model('smallcnn_mnist_lwta', max_batch=0)
