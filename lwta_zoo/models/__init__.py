"""The zoo's architectures, registered in timm's registry on import."""
from ._base import HF_ORG, SampledClassifier, zoo_model_names
from .small_cnn import SmallCNN
from .aistats import EcocCNN, EcocEnsemble
from .margin_nets import LeNet5, VGGSmall
from .vgg_cifar import VGGCifar
from .wide_resnet import WideResNet
