"""RWKV-SSS for nnU-Net v2."""
__version__ = "0.1.0"

__all__ = ["RWKVSSSUNet"]


def __getattr__(name):
    # the network pulls in torch; import it on first use so that `import nnunet_sss` (the CLI) stays cheap
    if name == "RWKVSSSUNet":
        from .network.unet import RWKVSSSUNet

        return RWKVSSSUNet
    raise AttributeError(f"module 'nnunet_sss' has no attribute {name!r}")
