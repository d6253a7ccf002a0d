"""torch.hub entrypoints: ``torch.hub.load('org/lwta', 'wrn34_10_lwta', pretrained=True, samples=5)``.

Each entrypoint builds the timm model of the same name. ``samples`` is the number L of
posterior samples averaged at prediction (eval mode); ``lwta_zoo.set_samples`` changes it later.
Other keyword arguments go to the model (``num_classes``, ``lwta_args={'U': 4}``, ...).
"""
dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub']

import timm  # noqa: E402

import lwta_zoo  # noqa: E402,F401  (registers the models)


def _load(name: str, pretrained: bool, samples: int, **kwargs):
    return timm.create_model(name, pretrained=pretrained, samples=samples, **kwargs)


def wrn34_1(pretrained=False, samples=1, **kwargs):
    """WideResNet-34-1 (ReLU), CIFAR-10."""
    return _load('wrn34_1', pretrained, samples, **kwargs)


def wrn34_5(pretrained=False, samples=1, **kwargs):
    """WideResNet-34-5 (ReLU), CIFAR-10."""
    return _load('wrn34_5', pretrained, samples, **kwargs)


def wrn34_10(pretrained=False, samples=1, **kwargs):
    """WideResNet-34-10 (ReLU), CIFAR-10."""
    return _load('wrn34_10', pretrained, samples, **kwargs)


def wrn28_10(pretrained=False, samples=1, **kwargs):
    """WideResNet-28-10 (ReLU), CIFAR-10."""
    return _load('wrn28_10', pretrained, samples, **kwargs)


def wrn34_1_lwta(pretrained=False, samples=1, **kwargs):
    """WideResNet-34-1 with stochastic LWTA (U=2), CIFAR-10."""
    return _load('wrn34_1_lwta', pretrained, samples, **kwargs)


def wrn34_5_lwta(pretrained=False, samples=1, **kwargs):
    """WideResNet-34-5 with stochastic LWTA (U=2), CIFAR-10."""
    return _load('wrn34_5_lwta', pretrained, samples, **kwargs)


def wrn34_10_lwta(pretrained=False, samples=1, **kwargs):
    """WideResNet-34-10 with stochastic LWTA (U=2), CIFAR-10."""
    return _load('wrn34_10_lwta', pretrained, samples, **kwargs)


def wrn28_10_lwta(pretrained=False, samples=1, **kwargs):
    """WideResNet-28-10 with stochastic LWTA (U=2), CIFAR-10."""
    return _load('wrn28_10_lwta', pretrained, samples, **kwargs)


def vgg16_cifar(pretrained=False, samples=1, **kwargs):
    """VGG-16 (BN) for CIFAR-10, ReLU."""
    return _load('vgg16_cifar', pretrained, samples, **kwargs)


def vgg16_cifar_lwta(pretrained=False, samples=1, **kwargs):
    """VGG-16 (BN) for CIFAR-10 with stochastic LWTA (U=2)."""
    return _load('vgg16_cifar_lwta', pretrained, samples, **kwargs)


def smallcnn_mnist(pretrained=False, samples=1, **kwargs):
    """Small CNN for 28x28 grayscale images (MNIST, Fashion-MNIST), ReLU."""
    return _load('smallcnn_mnist', pretrained, samples, **kwargs)


def smallcnn_mnist_lwta(pretrained=False, samples=1, **kwargs):
    """Small CNN for 28x28 grayscale images with stochastic LWTA (U=2)."""
    return _load('smallcnn_mnist_lwta', pretrained, samples, **kwargs)
