"""rleseg: segmentation as language modelling with run-length-encoded mask tokens.

Importing the package is cheap: it pulls in numpy only. Torch, Lightning and the data sources are
imported by the submodules that need them.

>>> import numpy as np
>>> from rleseg import create_tokenizer
>>> tok = create_tokenizer("lac", num_classes=3, shape=(4, 4))
>>> mask = np.array([[0, 1, 1, 0], [2, 2, 1, 1], [1, 1, 1, 1], [0, 0, 2, 2]], dtype=np.uint8)
>>> bool((tok.decode(tok.encode(mask)) == mask).all())
True
"""

from rleseg.tokenizers import create_tokenizer, list_tokenizers, register_tokenizer

__all__ = ["create_tokenizer", "list_tokenizers", "load_segmenter", "register_tokenizer", "__version__"]
__version__ = "0.1.0"


def __getattr__(name: str):
    # load_segmenter needs torch: imported on first use so that `import rleseg` stays numpy-only
    if name == "load_segmenter":
        from rleseg.inference import load_segmenter

        return load_segmenter
    raise AttributeError(f"module 'rleseg' has no attribute {name!r}")
