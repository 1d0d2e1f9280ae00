"""Models: the Pix2Seq token model (image and video), the dense baseline, and generation.

``models`` knows nothing of Lightning or data sources: it takes tensors, and for constrained decoding a
tokenizer's :class:`~rleseg.tokenizers.base.Grammar`.

>>> import torch
>>> from rleseg.models import Pix2Seq
>>> model = Pix2Seq.from_preset("tiny", vocab_size=64, max_seq_len=32)
>>> model.generate(torch.zeros(1, 3, 64, 64), prompt=2, max_len=6).tokens.shape
torch.Size([1, 6])
"""

from rleseg.models.backbones import (
    BackboneError,
    create_backbone,
    create_feature_pyramid,
    load_backbone_weights,
)
from rleseg.models.dense import DenseSegmenter, SmpDenseSegmenter, build_dense_model, dense_archs
from rleseg.models.generation import (
    GenerationError,
    GenerationOutput,
    GrammarConstraint,
    KVCache,
    generate_tokens,
)
from rleseg.models.pix2seq import ModelConfigError, Pix2Seq, TokenDecoder, VisualEncoder

__all__ = [
    "BackboneError",
    "DenseSegmenter",
    "GenerationError",
    "GenerationOutput",
    "GrammarConstraint",
    "KVCache",
    "ModelConfigError",
    "Pix2Seq",
    "SmpDenseSegmenter",
    "TokenDecoder",
    "VisualEncoder",
    "build_dense_model",
    "create_backbone",
    "create_feature_pyramid",
    "dense_archs",
    "generate_tokens",
    "load_backbone_weights",
]
