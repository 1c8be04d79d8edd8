"""structinit: structured impulse initialization for vision transformers, studied at scale.

Importing the package loads nothing heavy (the command line answers before torch loads);
`import structinit.models` registers the paper's models with timm (every module that builds a
model imports it)."""

__version__ = "0.1.0"
