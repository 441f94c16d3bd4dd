"""ProbePoint: an identity module that names an internal tensor so estimators can attach to it."""
from torch import nn


class ProbePoint(nn.Module):
    """y = x. A named place in the module tree (e.g. ``cells.z``) where a probe may read ``x``.

    It holds no parameters and does no work; with no hook attached its cost is one Python call.
    """

    def forward(self, x):
        return x
