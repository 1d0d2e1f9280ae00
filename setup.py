"""Build hook for the parts of rleseg that pyproject.toml cannot declare.

* The optional run kernels of the flat-start tokenizers (C). ``optional=True``: where no C compiler is
  found the build warns and rleseg installs without the kernels (the numpy paths give the same tokens,
  slower on small masks). ``RLESEG_NO_EXTENSIONS=1`` skips the build.
* The experiment and sweep YAMLs (``experiments/**``, ``sweeps/**``, which live beside the package, not in
  it) are copied into the wheel as ``rleseg/_configs/``, where ``rleseg experiments`` finds them after a
  wheel install (a checkout uses its own folders).
"""

import os
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
CONFIG_FOLDERS = ("experiments", "sweeps")


def config_files(root=ROOT):
    """(source, path inside the package) of every shipped YAML and README under the config folders."""
    out = []
    for folder in CONFIG_FOLDERS:
        for path in sorted((root / folder).rglob("*")):
            if path.is_file() and path.suffix in (".yaml", ".yml", ".md"):
                out.append((path, Path("_configs") / path.relative_to(root)))
    return out


class BuildPyWithConfigs(build_py):
    def run(self):
        super().run()
        for source, inside in config_files():
            target = Path(self.build_lib) / "rleseg" / inside
            self.mkpath(str(target.parent))
            self.copy_file(str(source), str(target))


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

setup(ext_modules=ext_modules, cmdclass={"build_py": BuildPyWithConfigs})
