"""torch.hub entrypoints: ``torch.hub.load('org/lwta', 'wrn34_10_lwta', pretrained=True, samples=5)``.

One entrypoint per model that lwta_zoo registers in timm's registry, named like it and
documented by it, and one per weights this repo ships, named ``arch.tag`` as in timm
(``torch.hub.load(repo, 'aistats_softmax_mnist.lwta_u2_fmnist_pgd', pretrained=True)``;
torch.hub finds entrypoints with getattr, which takes the dotted name). ``samples`` is the number L of posterior samples averaged at prediction
(eval mode; ``lwta_zoo.set_samples`` changes it later); other keyword arguments go to the
model (``num_classes``, ``lwta_args={'U': 4}``, ...).
"""
dependencies = ['torch', 'timm', 'safetensors', 'huggingface_hub']

import timm  # noqa: E402

import lwta_zoo  # noqa: E402  (registers the models)


def _entrypoint(name: str):
    def entrypoint(pretrained: bool = False, samples: int = 1, **kwargs):
        return timm.create_model(name, pretrained=pretrained, samples=samples, **kwargs)

    entrypoint.__name__ = entrypoint.__qualname__ = name
    entrypoint.__doc__ = (f'{timm.models.model_entrypoint(name).__doc__}\n\n'
                          'Args: pretrained (load published weights), samples (L, prediction samples), '
                          '**kwargs for timm.create_model.')
    return entrypoint


globals().update({_name: _entrypoint(_name)
                  for _name in lwta_zoo.models.zoo_model_names() + lwta_zoo.hub.shipped_weights()})
