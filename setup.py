"""Build hook for the one compiled part of rleseg: the optional run kernels of the flat-start tokenizers.

Everything else is declared in pyproject.toml. ``optional=True``: where no C compiler is found the build
warns and rleseg installs without the kernels (the numpy paths give the same tokens, slower on small
masks). ``RLESEG_NO_EXTENSIONS=1`` skips the build.
"""

import os

from setuptools import Extension, setup

ext_modules = []
if os.environ.get("RLESEG_NO_EXTENSIONS", "") in ("", "0"):
    ext_modules.append(
        Extension(
            "rleseg.tokenizers._kernels",
            ["rleseg/tokenizers/_kernels.c"],
            extra_compile_args=["-O3"] if os.name != "nt" else [],
            optional=True,
        )
    )

setup(ext_modules=ext_modules)
