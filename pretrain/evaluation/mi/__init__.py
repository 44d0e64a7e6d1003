"""Post-training mutual-information estimation of a frozen encoder (Lee et al., "A rigorous MI analysis").

- :mod:`.bound`: the InfoNCE bound (two forms), its ceiling, the best a perfect encoder reaches;
- :mod:`.critic`: the projection-head critic trained to maximise the bound;
- :mod:`.pairs`: sources of positive pairs (same class, two views, paired rows) and their split;
- :mod:`.pairing`: the ``--pairing`` spec, joint classes of label columns and their entropy;
- :mod:`.estimate`: the protocol on features (train, validate, test the critic per seed);
- :mod:`.encoder`: the whole estimate for a weights file and an image folder (the ``mi.json`` report);
- :mod:`.command`: the command line (``tools/estimate_mi.py``; sweep jobs call its ``main(argv)``).
"""
