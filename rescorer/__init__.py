"""rescorer: rescoring speech-recognition lattices with acoustic word embeddings.

Heavy dependencies (k2, lhotse) are imported lazily by the modules that need them,
so training and kernels run with plain torch (1.13 to 2.x).
"""

__version__ = "0.1.0"
