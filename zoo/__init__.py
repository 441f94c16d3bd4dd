"""paperzoo's model registry. Importing ``zoo`` registers every family."""
from ._registry import Paper, create_model, list_models, model_info, register_model
from . import alrnn  # noqa: F401  (registers the family)

__version__ = "0.1.0"
__all__ = ["create_model", "list_models", "model_info", "register_model", "Paper", "__version__"]
