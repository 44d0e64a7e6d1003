"""The in-training MI ceiling per loss form (Lee et al.): a MoCo queue of K and a memory bank with K
negatives cap the InfoNCE bound at log(K + 1), SimCLR's NT-Xent over N pairs at log(2N - 1)."""
import math

import pytest

from pretrain.methods.base import LOSS_FORMS, mi_ceiling


@pytest.mark.parametrize("k", [1, 16, 4096, 65536])
def test_queue_and_bank_ceiling(k):
    # one positive among k + 1 candidates: the InfoNCE loss is >= 0, so the bound log(k+1) - loss is <= log(k+1)
    assert mi_ceiling("infonce", num_negatives=k) == pytest.approx(math.log(k + 1))
    assert mi_ceiling("bank", num_negatives=k) == pytest.approx(math.log(k + 1))


@pytest.mark.parametrize("n", [2, 256, 4096])
def test_ntxent_ceiling(n):
    # each anchor: 1 positive and 2n - 2 negatives among the other views of the batch
    assert mi_ceiling("ntxent", batch_size=n) == pytest.approx(math.log(2 * n - 1))


def test_bad_forms_and_arguments():
    assert set(LOSS_FORMS) == {"infonce", "bank", "ntxent"}
    with pytest.raises(ValueError, match="no MI ceiling for loss form 'nce'"):
        mi_ceiling("nce", num_negatives=10)
    with pytest.raises(ValueError, match="needs the number of negatives"):
        mi_ceiling("bank")
    with pytest.raises(ValueError, match="at least 2 pairs"):
        mi_ceiling("ntxent", batch_size=1)
