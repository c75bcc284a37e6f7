"""What a package means when it runs: its ONNX signature, the session, tokenization and prompts,
pooling and Dense layers, classification scores. One code path for ``axon run``/``test``/``validate``
and MLOS Core (the parity with the model's own library is held here). It imports only
``axon.store`` and ``axon.errors`` (a test enforces it).
"""
