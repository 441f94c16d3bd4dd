"""paperzoo's model registry. Importing ``zoo`` registers every family.

``zoo`` imports nothing from ``weights`` at import time (``weights`` builds on ``zoo``); the calls that load
checkpoints (``pretrained=True``, ``model_info``) import it when they run."""
__version__ = "0.1.0"

from ._registry import Paper, create_model, list_models, model_info, register_model  # noqa: E402
from . import alrnn  # noqa: F401,E402  (registers the family)
from . import grassmann, nli_head, transformer_lm  # noqa: F401,E402  (Grassmann LMs, Transformer baseline, NLI heads)
from . import coord_attention  # noqa: F401,E402  (registers the family, also with timm)
from . import hopfield  # noqa: F401,E402
from . import sigma_reparam  # noqa: F401,E402  (sigmaReparam ViTs, also registered with timm, and LMs)
from . import pvrnn  # noqa: F401,E402
from . import ib_mlp  # noqa: F401,E402  (the information-plane MLPs)
from . import facet  # noqa: F401,E402  (the Facet interatomic potentials)

__all__ = ["create_model", "list_models", "model_info", "register_model", "Paper", "__version__"]
