"""Building blocks, one concept per file. No registry, no training, no I/O."""
from .probe_point import ProbePoint
from .alrnn_cell import ALRNNCell

__all__ = ["ProbePoint", "ALRNNCell"]
