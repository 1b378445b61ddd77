"""The RWKV-SSS network (layer 2: torch, the Bi-WKV operator and dynamic-network-architectures'
building blocks; no nnU-Net import). One idea per module: scan (windows, snake orders),
shift (windowed token shift), spatial_mix, channel_mix, block (Stage-Scan block), encoder,
upsample (dynamic upsampling), decoder, unet (RWKVSSSUNet), init, cost (activation estimates).
"""
from .unet import RWKVSSSUNet

__all__ = ["RWKVSSSUNet"]
