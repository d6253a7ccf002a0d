"""The AISTATS paper's ECOC networks: registry, methods, decoding, L samples, parameter counts."""
import pytest
import timm
import torch
import torch.nn as nn

from lwta_zoo import LWTA, kl_divergence
from lwta_zoo.layers import IBPConv2d, IBPLinear, ibp_keep_fraction
from lwta_zoo.models.aistats import (
    METHODS, TAGS, TRAINED, EcocCNN, EcocDecoder, EcocEnsemble, hadamard_code, keras_param_count, param_count_table)



NAMES = [f'aistats_{n}_{d}' for n in ('softmax', 'logistic', 'logens10', 'tanh16') for d in ('mnist', 'cifar10')]


def _input(name: str, n: int = 2) -> torch.Tensor:
    return torch.rand(n, 1, 28, 28) if name.endswith('mnist') else torch.rand(n, 3, 32, 32)


def test_registry_has_one_name_per_network_and_dataset_with_method_tags():
    assert set(timm.list_models('aistats_*')) == set(NAMES)
    assert set(timm.list_pretrained('aistats_softmax_cifar10.*')) == {f'aistats_softmax_cifar10.{t}' for t in TAGS}
    assert len(TAGS) == 9 and 'lwta_ibp_u2' in TAGS and 'lwta_max_u4' in TAGS and 'relu' in TAGS
    # weights trained here add their training to the method tag; the tag still sets method and U
    trained = set(timm.list_pretrained('aistats_softmax_mnist.*')) - {f'aistats_softmax_mnist.{t}' for t in TAGS}
    assert trained == {f'aistats_softmax_mnist.{t}' for t in TRAINED['aistats_softmax_mnist']}
    model = timm.create_model('aistats_softmax_mnist.lwta_ibp_u2_fmnist_pgd')
    assert model.pretrained_cfg['tag'] == 'lwta_ibp_u2_fmnist_pgd'
    assert isinstance(model.features[0][0], IBPConv2d) and isinstance(model.features[0][1], LWTA)
    assert isinstance(timm.create_model('aistats_softmax_mnist.relu_fmnist_pgd').features[0][1], nn.ReLU)
    with pytest.raises(ValueError, match="method='lwta'"):
        timm.create_model('aistats_softmax_mnist.lwta_u2_fmnist_pgd', method='relu')
    with pytest.raises(ValueError, match='unknown pretrained tag'):
        timm.create_model('aistats_softmax_cifar10.lwta_u2_fmnist_pgd')


@pytest.mark.parametrize('name', NAMES)
def test_every_network_decodes_to_a_distribution_over_10_classes(name):
    model = timm.create_model(name)  # LWTA & IBP, U=2: the paper's model
    assert isinstance(model, EcocEnsemble if 'logens10' in name else EcocCNN)
    x = _input(name)
    model.train()
    out = model(x)
    assert out.shape == (2, 10)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))
    assert kl_divergence(model) > 0
    model.eval()
    with torch.no_grad():
        out = model.forward_single(x)  # one draw (model(x) averages the log-probabilities of S = 5)
    torch.testing.assert_close(out.exp().sum(1), torch.ones(2))
    assert model.forward_code(x).shape == (2, model.num_bits)
    assert model.num_bits == (16 if 'tanh16' in name else 10)


def test_tag_and_kwargs_build_the_same_model_and_conflicts_are_errors():
    tagged = timm.create_model('aistats_tanh16_mnist.lwta_max_u4')
    kw = timm.create_model('aistats_tanh16_mnist', method='lwta_max', U=4)
    assert (tagged.method, tagged.U) == (kw.method, kw.U) == ('lwta_max', 4)
    assert tagged.pretrained_cfg['tag'] == kw.pretrained_cfg['tag'] == 'lwta_max_u4'
    assert tagged.pretrained_cfg['hf_hub_id'].endswith('aistats_tanh16_mnist.lwta_max_u4')
    assert str(tagged) == str(kw)
    with pytest.raises(ValueError, match='method'):
        timm.create_model('aistats_tanh16_mnist.relu', method='lwta')
    with pytest.raises(ValueError, match='unknown pretrained tag'):
        timm.create_model('aistats_tanh16_mnist.lwta_u3')


@pytest.mark.parametrize('method', METHODS)
def test_methods_choose_activation_and_ibp(method):
    model = timm.create_model('aistats_softmax_mnist', method=method, U=4)
    lwtas = [m for m in model.modules() if isinstance(m, LWTA)]
    ibps = [m for m in model.modules() if isinstance(m, (IBPConv2d, IBPLinear))]
    assert bool(lwtas) == (method != 'relu')
    assert all(m.U == 4 and m.mode == ('max' if 'max' in method else 'sample') for m in lwtas)
    assert len(ibps) == (10 if method.endswith('ibp') else 0)  # 6 convs, 3 hidden dense, the output layer
    if ibps:  # IBP blocks follow the LWTA blocks; the linear layers have one-unit blocks
        assert model.features[0][0].ibp.shape == (16,) and model.fc.ibp.shape == (64, 10)
    params, _ = keras_param_count(model)
    assert params == 330_570  # U and the method leave the weights alone


def test_lwta_max_without_ibp_is_deterministic_and_ibp_makes_it_stochastic():
    x = _input('mnist')
    with torch.no_grad():
        det = timm.create_model('aistats_logistic_mnist', method='lwta_max').eval()
        torch.testing.assert_close(det(x), det(x))
        sto = timm.create_model('aistats_logistic_mnist', method='lwta_max_ibp').eval()
        for m in sto.modules():
            if isinstance(m, IBPLinear):
                m.ibp.pi_logit.fill_(0.0)  # pi~ = 1/2: half the connections dropped at random
        assert not torch.allclose(sto(x), sto(x))


def test_l_samples_each_draw_their_own_ibp_architecture():
    model = timm.create_model('aistats_softmax_mnist', samples=3).eval()
    x = _input('mnist', 4)
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(x)
        torch.manual_seed(1)
        single = torch.stack([model.forward_single(x) for _ in range(3)])
    torch.testing.assert_close(out, single.mean(0))
    assert not torch.allclose(single[0], single[1])


def test_hadamard_code_is_verma_and_swamis():
    M = hadamard_code(10, 16)
    assert M.shape == (10, 16) and set(M.unique().tolist()) == {-1.0, 1.0}
    gram = M @ M.t()
    assert (gram.diag() == 16).all()
    assert (gram - 16 * torch.eye(10) <= 0).all()  # distinct codewords never correlate positively
    assert (M.sum(0).abs() < 10).all()  # no constant bit left (the always-1 column was broken up)
    torch.testing.assert_close(hadamard_code(10, 16), M)  # seeded: the same code every time
    with pytest.raises(ValueError):
        hadamard_code(10, 12)


@pytest.mark.parametrize('output,code', [('tanh', hadamard_code(10, 16)), ('sigmoid', torch.eye(10)),
                                         ('softmax', torch.eye(10))])
def test_decoder_recovers_each_codeword_and_its_loss_is_small_there(output, code):
    decoder = EcocDecoder(code, output)
    raw = 20 * (code if output == 'tanh' else 2 * code - 1)  # the bits of each class, confidently
    log_p = decoder(raw)
    torch.testing.assert_close(log_p.exp().sum(1), torch.ones(10))
    assert (log_p.argmax(1) == torch.arange(10)).all() and (log_p.exp().diag() > 0.99).all()
    target = torch.arange(10)
    assert decoder.loss(raw, target) < 1e-3 < decoder.loss(-raw, target)


def test_decoder_rejects_mismatched_codes_and_shapes():
    with pytest.raises(ValueError, match='tanh output needs a \\+-1 code'):
        EcocDecoder(torch.eye(10), 'tanh')
    with pytest.raises(ValueError, match='0/1 code'):
        EcocDecoder(hadamard_code(), 'sigmoid')
    with pytest.raises(ValueError, match='expects \\(N, 16\\)'):
        EcocDecoder(hadamard_code(), 'tanh')(torch.zeros(2, 10))


def test_bad_u_input_and_classifier_reset_give_clear_errors():
    with pytest.raises(ValueError, match='not divisible by U=3'):
        timm.create_model('aistats_softmax_mnist', U=3)
    model = timm.create_model('aistats_logens10_mnist', method='lwta')
    with pytest.raises(ValueError, match=r'expects images \(N, 1, H, W\)'):
        model(torch.rand(2, 3, 28, 28))
    model.reset_classifier(0)
    assert model(_input('mnist')).shape == (2, 20)  # the ten branches' 2-unit pre-logits
    with pytest.raises(ValueError, match='5 code bits do not split into 2 chunks'):
        model.reset_classifier(5)  # one-hot: a bit a class, one branch a bit, two trunks
    assert model.num_classes == 0 and model.num_bits == len(model.branches) == 10  # left as it was


def test_verma_swami_tanhens16_count_and_ibp_report():
    ens = timm.create_model('aistats_logens10_mnist', method='relu', chunks=4, code='hadamard', output='tanh')
    assert keras_param_count(ens) == (401_168, 0)  # Verma & Swami's published TanhEns16 count
    model = timm.create_model('aistats_logens10_mnist')
    rows = ibp_keep_fraction(model)
    assert rows[-1]['layer'] == 'total' and rows[-1]['kept_frac'] == 1.0
    assert {r['unit'] for r in rows[:-1]} == {'kernels', 'connections'}


def test_param_count_table_quotes_the_papers_numbers(monkeypatch):
    import lwta_zoo.models.aistats as aistats
    monkeypatch.setattr(aistats, 'PAPER_PARAMS', aistats.PAPER_PARAMS[:1])
    table = param_count_table()
    assert 'MNIST Softmax (U=4)' in table and '327,380' in table and '330,570' in table and '+3,190' in table


def test_param_counts_are_pinned_and_verma_swamis_models_match_the_paper():
    """Our Keras-style counts of every row of the paper's Tables 2/3 (weights, biases, BatchNorm
    moving statistics; no IBP parameters); Verma & Swami's own models match the paper exactly."""
    import lwta_zoo.models.aistats as aistats
    ours = {label: keras_param_count(timm.create_model(name, **kwargs))[0]
            for label, name, kwargs, _ in aistats.PAPER_PARAMS}
    assert ours == {
        'MNIST Softmax (U=4)': 330_570, 'MNIST Softmax (U=2)': 330_570, 'MNIST Logistic (U=2)': 330_570,
        'MNIST LogEns10 (U=2)': 205_130, 'MNIST TanhEns16 (V&S, ReLU)': 401_168,
        'CIFAR-10 Tanh16 (U=4)': 776_208, 'CIFAR-10 Softmax (U=2)': 775_818, 'CIFAR-10 Tanh16 (U=2)': 776_208,
        'CIFAR-10 LogEns10 (U=2)': 1_197_978, 'CIFAR-10 TanhEns64 (V&S, ReLU)': 3_259_456}
    paper = {label: count for label, _, _, count in aistats.PAPER_PARAMS}
    assert all(ours[k] == paper[k] for k in paper if 'V&S' in k)


def test_prediction_averages_the_papers_five_samples_where_the_network_is_stochastic():
    assert timm.create_model('aistats_softmax_mnist').num_samples == 5  # footnote 1: S = 5
    assert timm.create_model('aistats_tanh16_cifar10', method='lwta_max_ibp').num_samples == 5
    assert timm.create_model('aistats_softmax_mnist', method='relu').num_samples == 1
    assert timm.create_model('aistats_softmax_mnist.lwta_max_u2').num_samples == 1
    assert timm.create_model('aistats_softmax_mnist', samples=2).num_samples == 2
