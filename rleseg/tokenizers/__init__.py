"""Mask tokenizers: every encoding of SPEC §3–5 and §9 behind one registry.

>>> from rleseg.tokenizers import list_tokenizers
>>> list_tokenizers("video_*")
['video_lac', 'video_mc']
"""

from rleseg.tokenizers import image, panoptic, video  # noqa: F401  (registers the tokenizers)
from rleseg.tokenizers.base import (
    EOS,
    INVALID_TOKEN,
    PAD,
    PROMPTS,
    DecodeResult,
    EncodedBatch,
    Grammar,
    Tokenizer,
    TokenizerError,
    TokenRange,
    Transition,
    VocabLayout,
    as_token_array,
)
from rleseg.tokenizers.registry import create_tokenizer, list_tokenizers, register_tokenizer

__all__ = [
    "EOS",
    "INVALID_TOKEN",
    "PAD",
    "PROMPTS",
    "DecodeResult",
    "EncodedBatch",
    "Grammar",
    "TokenRange",
    "Tokenizer",
    "TokenizerError",
    "Transition",
    "VocabLayout",
    "as_token_array",
    "create_tokenizer",
    "list_tokenizers",
    "register_tokenizer",
]
