"""``rleseg experiments``: the experiment and sweep YAMLs that ship with rleseg, and one-file copies of them.

* ``rleseg experiments`` (or ``rleseg experiments list``) — every experiment and sweep, with the first
  line of its header and the folder they are read from (the repository checkout, or the copy inside an
  installed wheel).
* ``rleseg experiments show NAME`` — the experiment with its shared pieces composed into one YAML.
* ``rleseg experiments copy NAME [DEST]`` — write that one-file YAML (header comments kept) to ``DEST``
  (a folder, default ``.``, or a file name), so it runs anywhere:
  ``rleseg fit --config DEST/NAME.yaml``. For a sweep (``sweeps/NAME``) the sweep file is copied and its
  base experiment composed beside it (``bases/BASE.yaml``, ``base:`` rewritten to point there).

Experiment files are composed from shared pieces under ``experiments/shared/`` the way LightningCLI
(jsonargparse) reads them, so ``rleseg fit --config experiments/NAME.yaml`` needs nothing else:

* ``config: PATH`` (first key) includes another file; keys after it override its top-level keys;
* a dotted key (``trainer.max_epochs: 150``, ``data.init_args.tokenizer: tac``) changes one value;
* ``model: PATH`` / ``data: PATH`` read a ``class_path`` + ``init_args`` piece from a file.

Paths are relative to the file that names them. :func:`compose_experiment` gives the same configuration
as a plain dict (what sweeps start from and what ``copy`` writes); tests check that ``--print_config``
of each experiment and of its composed copy agree.

>>> import argparse
>>> parser = argparse.ArgumentParser(); sub = parser.add_subparsers()
>>> add_parser(sub)
>>> args = parser.parse_args(["experiments", "copy", "quickstart", "my_runs/"])
>>> args.experiments_command, args.name, args.dest
('copy', 'quickstart', 'my_runs/')
"""

from __future__ import annotations

import copy
import re
import sys
from pathlib import Path
from typing import Any

import yaml

#: Keys of an experiment file that may name a YAML piece (``model: shared/model_token_tiny.yaml``).
PIECE_SUFFIXES = (".yaml", ".yml")


# ------------------------------------------------------------------------------------------ where
def config_root() -> Path:
    """The folder holding ``experiments/`` and ``sweeps/``: the repository checkout rleseg runs from
    (editable installs), else the copy inside the installed package (``rleseg/_configs``)."""
    package = Path(__file__).resolve().parents[1]
    checkout = package.parent
    if (checkout / "experiments").is_dir() and (checkout / "pyproject.toml").is_file():
        return checkout
    bundled = package / "_configs"
    if (bundled / "experiments").is_dir():
        return bundled
    raise FileNotFoundError(
        "no experiments found: neither a repository checkout nor an installed copy (rleseg/_configs); "
        "reinstall rleseg from its wheel or clone the repository"
    )


def experiment_files(root: Path | None = None) -> list[Path]:
    """The experiments (``experiments/*.yaml``; the pieces under ``experiments/shared/`` are not listed)."""
    return sorted(((root or config_root()) / "experiments").glob("*.yaml"))


def sweep_files(root: Path | None = None) -> list[Path]:
    return sorted(((root or config_root()) / "sweeps").glob("*.yaml"))


def find_config(name: str, root: Path | None = None) -> Path:
    """``quickstart``, ``quickstart.yaml``, ``experiments/quickstart.yaml``, ``sweeps/encodings`` or a
    path to any YAML file. Experiments win over sweeps of the same name (use ``sweeps/NAME``)."""
    given = Path(name)
    if given.suffix in PIECE_SUFFIXES and given.is_file():
        return given
    root = root or config_root()
    stem = given.name.removesuffix(".yaml").removesuffix(".yml")
    folders = [given.parent.name] if given.parent.name in ("experiments", "sweeps") else []
    for folder in folders or ["experiments", "sweeps"]:
        path = root / folder / f"{stem}.yaml"
        if path.is_file():
            return path
    known = [p.stem for p in experiment_files(root)] + [f"sweeps/{p.stem}" for p in sweep_files(root)]
    raise FileNotFoundError(f"no experiment or sweep named {name!r}; known: {', '.join(known)}")


# ---------------------------------------------------------------------------------------- compose
class CompositionError(ValueError):
    """An experiment file that uses the shared pieces in a way this module does not reproduce."""


def _load_mapping(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    data = yaml.safe_load(path.read_text())
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise CompositionError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    return data


def _set_dotted(config: dict[str, Any], key: str, value: Any, path: Path) -> None:
    from rleseg.sweep.spec import SweepError, set_dotted

    try:
        set_dotted(config, key, value)
    except SweepError as exc:
        raise CompositionError(
            f"{path}: {exc}; in one file, give a section either as a file name or change its keys"
        ) from None


def compose_experiment(path: str | Path) -> dict[str, Any]:
    """The configuration an experiment file builds, with its shared pieces read in (a plain dict).

    What ``rleseg fit --config PATH`` parses, before defaults are filled in: ``config:`` includes
    (recursively), dotted keys, and ``model:`` / ``data:`` (any top-level key) given as a YAML file name.
    The rules an experiment may use are checked, since they are where a hand-made copy would go wrong:
    ``config:`` comes first, and a section the included file sets is changed by dotted keys, never by a
    second block (which jsonargparse would take whole, dropping the included keys).

    Raises:
        CompositionError: for a file that breaks those rules.
        FileNotFoundError: for a missing file or piece.
    """
    return _compose(Path(path).resolve(), ())


def _compose(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    if path in seen:
        chain = " -> ".join(str(p) for p in (*seen, path))
        raise CompositionError(f"{path}: includes itself ({chain})")
    data = _load_mapping(path)
    config: dict[str, Any] = {}
    from_include: set[str] = set()
    from_file: dict[str, str] = {}  # sections this file gives as a piece's file name
    for i, (key, value) in enumerate(data.items()):
        key = str(key)
        if key == "config":
            if i != 0:
                raise CompositionError(f"{path}: `config:` must be the first key (it sets the base)")
            includes = value if isinstance(value, list) else [value]
            for include in includes:
                if not isinstance(include, str):
                    raise CompositionError(f"{path}: `config:` takes a file name, got {include!r}")
                base = _compose((path.parent / include).resolve(), (*seen, path))
                config.update(base)
                from_include.update(base)
            continue
        value = copy.deepcopy(value)
        if "." in key:
            section = key.split(".", 1)[0]
            if section in from_file:  # jsonargparse refuses this too
                raise CompositionError(
                    f"{path}: {key!r} changes a key inside {section!r}, which holds {from_file[section]!r}; "
                    "in one file, give a section either as a file name or change its keys"
                )
            _set_dotted(config, key, value, path)
            continue
        if key in from_include and isinstance(config.get(key), dict):
            raise CompositionError(
                f"{path}: `{key}:` replaces the whole `{key}` section of the included file; change single "
                f"keys with dotted keys ({key}.KEY: VALUE)"
            )
        if isinstance(value, str) and value.endswith(PIECE_SUFFIXES):
            from_file[key] = value
            piece_path = (path.parent / value).resolve()
            value = _load_mapping(piece_path)
            if "config" in value:
                raise CompositionError(f"{piece_path}: a `{key}:` piece cannot include other files")
        config[key] = value
    return config


def header(path: Path) -> str:
    """The leading comment lines of a YAML file (its description and measured figures)."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line)
    return "\n".join(lines)


def pieces(path: str | Path) -> list[Path]:
    """The files an experiment reads, itself first."""
    path = Path(path).resolve()
    out = [path]
    for key, value in _load_mapping(path).items():
        if key == "config":
            for include in value if isinstance(value, list) else [value]:
                out += [p for p in pieces(path.parent / include) if p not in out]
        elif isinstance(value, str) and value.endswith(PIECE_SUFFIXES):
            piece = (path.parent / value).resolve()
            if piece not in out:
                out.append(piece)
    return out


def composed_text(path: Path, root: Path | None = None) -> str:
    """One self-contained YAML: the file's header, where it came from, the composed configuration."""
    config = compose_experiment(path)
    names = []
    for p in pieces(path):
        try:
            names.append(p.relative_to((root or config_root()).resolve()).as_posix())
        except ValueError:
            names.append(str(p))
    head = header(path)
    note = f"# Composed by `rleseg experiments copy` from {', '.join(names)}."
    body = yaml.safe_dump(config, sort_keys=False, default_flow_style=None, width=110)
    return "\n".join(x for x in (head, note) if x) + "\n" + body


# ---------------------------------------------------------------------------------------- command
def add_parser(subparsers: Any) -> None:
    """Add ``experiments`` (``list``, ``show``, ``copy``) to the ``rleseg`` sub-command parsers."""
    parser = subparsers.add_parser(
        "experiments",
        help="list the shipped experiments and sweeps; show or copy one as a single YAML",
        description=__doc__.split("\n\n")[0],
    )
    parser.set_defaults(func=run, experiments_command="list")
    verbs = parser.add_subparsers(dest="experiments_command", metavar="VERB")
    p = verbs.add_parser("list", help="the experiments and sweeps, with the first line of each header")
    p.set_defaults(func=run)
    p = verbs.add_parser("show", help="print an experiment composed with its shared pieces")
    p.add_argument("name", metavar="NAME", help="experiment name (quickstart) or path to a YAML")
    p.set_defaults(func=run)
    p = verbs.add_parser("copy", help="write an experiment (or a sweep and its base) as one YAML file")
    p.add_argument("name", metavar="NAME", help="experiment name (quickstart), sweeps/NAME, or a path")
    p.add_argument("dest", metavar="DEST", nargs="?", default=".", help="folder or file (default: .)")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.set_defaults(func=run)


def _summary(path: Path) -> str:
    first = header(path).split("\n", 1)[0].lstrip("# ").strip()
    return first if len(first) <= 90 else first[:87] + "..."


def _write(path: Path, text: str, force: bool) -> None:
    if path.exists() and not force:
        raise ValueError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")


def _target(dest: str, name: str) -> Path:
    out = Path(dest)
    if dest.endswith(("/", "\\")) or out.is_dir() or out.suffix not in PIECE_SUFFIXES:
        return out / f"{name}.yaml"
    return out


def _copy_sweep(path: Path, dest: str, force: bool, root: Path) -> None:
    text = path.read_text()
    match = re.search(r"^base:[ \t]*(\S+)[ \t]*(#.*)?$", text, flags=re.MULTILINE)
    if match is None:
        raise CompositionError(f"{path}: no `base: FILE` line to rewrite")
    base = (path.parent / match.group(1).strip("'\"")).resolve()
    target = _target(dest, path.stem)
    base_target = target.parent / "bases" / f"{base.stem}.yaml"
    for out in (target, base_target):
        if out.exists() and not force:
            raise ValueError(f"{out} exists; pass --force to overwrite it")
    _write(base_target, composed_text(base, root), force)
    start, end = match.span(1)
    _write(target, f"{text[:start]}bases/{base.stem}.yaml{text[end:]}", force)


def run(args: Any) -> int:
    root = config_root()
    verb = getattr(args, "experiments_command", None) or "list"
    if verb == "list":
        bundled = root.name == "_configs"  # the copy inside an installed wheel
        how = (
            "rleseg experiments copy NAME, then rleseg fit --config NAME.yaml"
            if bundled
            else "rleseg fit --config experiments/NAME.yaml"
        )
        print(f"experiments in {root / 'experiments'} ({how}):")
        for p in experiment_files(root):
            print(f"  {p.stem:<26} {_summary(p)}")
        sweeps = sweep_files(root)
        if sweeps:
            where = "copy sweeps/NAME first" if bundled else "rleseg sweep --config sweeps/NAME.yaml"
            print(f"sweeps in {root / 'sweeps'} ({where}):")
            for p in sweeps:
                print(f"  {p.stem:<26} {_summary(p)}")
        print("one-file copies that run anywhere: rleseg experiments copy NAME [DEST] (sweeps: sweeps/NAME)")
        return 0
    path = find_config(args.name, root)
    if verb == "show":
        sys.stdout.write(composed_text(path, root))
        return 0
    if "base" in _load_mapping(path):  # a sweep file
        _copy_sweep(path, args.dest, args.force, root)
    else:
        _write(_target(args.dest, path.stem), composed_text(path, root), args.force)
    return 0
