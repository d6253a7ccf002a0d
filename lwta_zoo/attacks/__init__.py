"""Attacks on stochastic models: PGD with model, surrogate, straight-through and EoT gradients."""
from .pgd import GRADIENTS, gradient_surrogate, input_gradient, pgd
