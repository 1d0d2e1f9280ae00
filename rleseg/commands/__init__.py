"""Sub-commands of the ``rleseg`` console script (besides fit/validate/test/predict).

Each module exposes ``add_parser(subparsers)`` (registering its argparse sub-parser with
``set_defaults(func=run)``) and ``run(args) -> int``; :mod:`rleseg.cli` mounts them all by module name.
"""
