"""MLOS Core: the inference server that serves models from the production repository."""

__version__ = "0.1.0"
