"""paperzoo's model registry. Importing ``zoo`` registers every family."""
from ._registry import Paper, create_model, list_models, model_info, register_model
from . import alrnn  # noqa: F401  (registers the family)
from . import grassmann, nli_head, transformer_lm  # noqa: F401  (Grassmann LMs, Transformer baseline, NLI heads)
from . import coord_attention  # noqa: F401  (registers the family, also with timm)
from . import hopfield  # noqa: F401
from . import sigma_reparam  # noqa: F401  (sigmaReparam ViTs, also registered with timm, and LMs)
from . import pvrnn  # noqa: F401
from . import ib_mlp  # noqa: F401  (the information-plane MLPs)

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "register_model", "Paper", "__version__"]
from . import facet  # noqa: F401  (the Facet interatomic potentials)
