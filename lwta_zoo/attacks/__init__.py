"""Attacks on stochastic models and the robustness evaluation suite.

``pgd`` (model, surrogate, straight-through and batched EoT gradients), ``cw_l2`` and
``blind_spot``, pyautoattack's ``autoattack`` and ``apgd`` on any of our gradients, and
``suite`` / ``evaluate`` (``lwta-zoo eval``) that run them all and report the worst case.
"""
from .autoattack import apgd, autoattack
from .cw import blind_spot, cw_l2
from .pgd import GRADIENTS, gradient_surrogate, input_gradient, pgd
from .suite import Attack, evaluate, markdown_table, suite
