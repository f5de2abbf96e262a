"""Section 4.1 of Sobolev Training (Czarnecki et al. 2017): regression on seven 2-D benchmarks.

``functions`` holds the targets with their exact gradients; ``benchmark`` (the command) trains
values-only and Sobolev MLPs on them (``training``, with
:func:`policy_distill.losses.value_and_gradient_loss`) under a ``config``, summarises the seeds
and checks the paper's claims (``statistics``), and writes the table and figure (``tables``,
``figures``) in ``docs/regression``.
"""
