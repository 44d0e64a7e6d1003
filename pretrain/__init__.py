"""Contrastive pretraining of ResNets (MoCo v1/v2, InfoMin) and its analysis tools."""
