"""Small constant tensors (sampling grids, scales) made once per key and reused by every step.

A tensor made per call from Python numbers is a host-to-device copy on a GPU: it stalls an
eager step and cannot be captured in a CUDA graph. `cached_constant` keeps one per key, made with
inference mode off (a constant first met in prediction serves training too), and under
torch.compile calls the builder itself, so that it is traced into the graph as a constant.
Treat the results as read-only.
"""
import functools

import torch


def cached_constant(maxsize: int = 64):
    """Decorator: build(*key) -> Tensor, cached per key (every argument hashable)."""

    def wrap(build):
        @functools.lru_cache(maxsize=maxsize)
        def cached(*key):
            with torch.inference_mode(False):
                return build(*key)

        @functools.wraps(build)
        def get(*key):
            return build(*key) if torch.compiler.is_compiling() else cached(*key)

        get.cache_info = cached.cache_info
        return get

    return wrap
