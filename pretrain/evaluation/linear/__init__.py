"""Linear evaluation on frozen features (Wu et al. 2020, Appendix B.3).

- :mod:`.config`: the config tree of defaults, its checks and the names derived from it (task, run folder);
- :mod:`.data`: the labelled training and validation splits and the per-epoch order;
- :mod:`.loop`: one evaluation: features, the logistic regression, its outputs and resume;
- :mod:`.command`: the command line (``tools/linear_eval.py``; sweep jobs call its ``main(argv)``).
"""
