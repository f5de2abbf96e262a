"""Section 4.1 of Sobolev Training (Czarnecki et al. 2017): regression on seven 2-D benchmarks.

``functions`` holds the targets with their exact gradients; ``benchmark`` trains values-only and
Sobolev MLPs on them with :func:`policy_distill.losses.value_and_gradient_loss` and writes the
table and figure in ``docs/regression``.
"""
