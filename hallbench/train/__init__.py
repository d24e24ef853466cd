"""The training stage. Built so far: the evidence modules (``evidence.py``, see docs/method.md); `hallbench train` itself is not built yet and says so."""
