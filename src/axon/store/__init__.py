"""The repository format: what a model version on disk is, and the only code that reads or writes one.

Spec and layout (where a version lives), manifest (what it holds), integrity (is it what the manifest
says), containment and fd-based tree steps (nofollow), atomic writes, and fastio (copy and hash at the
machine's limit). Both axon and MLOS Core rely on it; it imports nothing else of the project but the
one error tree, ``axon.errors`` (a test enforces it).
"""
