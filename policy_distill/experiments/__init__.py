"""The experiments built on the library: the paper's studies, their sweeps and their reports.

- :mod:`.sweep`: the Figure-4 grid (games x fractions x methods x seeds), resumable, one
  results row per finished run (``policy_distill reproduce``).
- :mod:`.report`: the results table -> a page with figures, tables and claims (``report``).
- :mod:`.train_vs_heldout`: training vs held-out KL of the grid's runs (overfitting evidence).
- :mod:`.regression`: the section 4.1 regression benchmark (``regression-benchmark``).

Nothing in the core library imports this package.
"""
