"""Fixtures of the nnU-Net integration tests."""
import pytest


@pytest.fixture
def rwkvsss_network():
    """The network class the trainers must build: the package's public nnunet_sss.RWKVSSSUNet."""
    import nnunet_sss

    return nnunet_sss.RWKVSSSUNet
