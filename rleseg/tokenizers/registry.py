"""One registry for every tokenizer: ``register_tokenizer``, ``create_tokenizer``, ``list_tokenizers``.

>>> from rleseg.tokenizers import create_tokenizer, list_tokenizers
>>> "lac" in list_tokenizers("*lac*")
True
>>> tok = create_tokenizer("lac", num_classes=3, shape=(4, 4))
>>> tok.vocab_size == tok.vocab.size
True
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable
from typing import TypeVar

from rleseg.tokenizers.base import Tokenizer, TokenizerError

T = TypeVar("T", bound=type[Tokenizer])

_REGISTRY: dict[str, type[Tokenizer]] = {}


def register_tokenizer(name: str | None = None) -> Callable[[T], T]:
    """Class decorator adding a :class:`Tokenizer` subclass to the registry under ``name``.

    The name defaults to the class attribute ``name``; registering a name twice is an error (re-running
    the same class definition, as a module reload does, replaces it).
    """

    def wrap(cls: T) -> T:
        key = name or cls.name
        if not key:
            raise TokenizerError(f"{cls.__name__} needs a registry name")
        old = _REGISTRY.get(key)
        if old is not None and (old.__module__, old.__qualname__) != (cls.__module__, cls.__qualname__):
            raise TokenizerError(
                f"tokenizer {key!r} is already registered by {old.__module__}.{old.__qualname__}"
            )
        cls.name = key
        _REGISTRY[key] = cls
        return cls

    return wrap


def list_tokenizers(pattern: str = "*") -> list[str]:
    """Sorted registered names matching the shell-style ``pattern`` (``fnmatch``), e.g. ``"video_*"``."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def tokenizer_class(name: str) -> type[Tokenizer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise TokenizerError(
            f"unknown tokenizer {name!r}; registered: {', '.join(list_tokenizers())}"
        ) from None


def create_tokenizer(name: str, **cfg) -> Tokenizer:
    """Build the registered tokenizer ``name`` with keyword configuration ``cfg``.

    An unknown name, or an option the tokenizer does not take, raises :class:`TokenizerError` listing
    the valid choices.
    """
    cls = tokenizer_class(name)
    options = accepted_options(cls)
    unknown = sorted(set(cfg) - set(options))
    if unknown:
        raise TokenizerError(f"tokenizer {name!r} has no option(s) {unknown}; options are {options}")
    return cls(**cfg)


def accepted_options(cls: type[Tokenizer]) -> list[str]:
    """Keyword options of ``cls``: the named parameters of every ``__init__`` along the MRO that passes
    ``**kwargs`` on, down to the first one that does not."""
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names += [
            p.name for p in params if p.name != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))
