"""The transfer tests keep the cache of dataset checks in a temporary folder, never in the user's home."""
import pytest


@pytest.fixture(scope="session", autouse=True)
def dataset_check_cache(tmp_path_factory):
    """``$SSL_D2_TRANSFER_CACHE`` for the session (subprocesses and submitit jobs inherit it)."""
    from transfer.data.check_cache import CACHE_ENV

    mp = pytest.MonkeyPatch()
    folder = tmp_path_factory.mktemp("dataset_check_cache")
    mp.setenv(CACHE_ENV, str(folder))
    yield folder
    mp.undo()
