"""Define generated trainer variants as real module attributes.

nnU-Net finds a trainer by class name, saves that name in checkpoints, re-finds it for
prediction, and pickles nothing else; torch.multiprocessing and pickle find a class through
`__module__` + `__qualname__`. A generated class is therefore named, placed in its module's
namespace and given that module's name, exactly as if it had been written out by hand.
"""
from typing import Mapping, MutableMapping, Tuple


def define_variant(namespace: MutableMapping, name: str, bases: Tuple[type, ...], attributes: Mapping,
                   doc: str) -> type:
    """Create class `name` in the module whose globals are `namespace` and return it."""
    if name in namespace:
        raise RuntimeError(f"trainer variant {name} is defined twice")
    cls = type(name, bases, {**attributes, "__doc__": doc, "__module__": namespace["__name__"],
                             "__qualname__": name})
    namespace[name] = cls
    return cls
