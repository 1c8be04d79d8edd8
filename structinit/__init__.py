"""structinit: structured impulse initialization for vision transformers, studied at scale."""
from structinit import models  # noqa: F401  (registers the paper's models with timm)

__version__ = "0.1.0"
