"""axon: install models into a per-user dev cache, verify them, and promote them to production."""

__version__ = "0.1.0"
