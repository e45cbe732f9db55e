"""Config dataclasses <-> command-line flags and files.

A command's configuration is one dataclass whose field docstrings (the string literal
under each field) are the flags' ``--help`` text, so the two cannot drift apart (the
CleanRL / tyro pattern). Python keeps no attribute docstrings at run time, so they are
read from the class source with ``ast``; this small reader avoids a dependency for ~30
lines of code.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import logging
import textwrap
from pathlib import Path
from typing import Any, TypeVar

import yaml

logger = logging.getLogger(__name__)

T = TypeVar("T")


def field_docs(cls: type) -> dict[str, str]:
    """Map field name -> docstring written under it in the class body."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(getattr(nxt, "value", None), ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def add_dataclass_args(parser: argparse.ArgumentParser, cls: type, skip: tuple[str, ...] = ()) -> None:
    """Add one ``--flag`` per scalar field of ``cls`` (dict/list fields are file-only)."""
    docs = field_docs(cls)
    group = parser.add_argument_group(f"{cls.__name__} (also settable in --config FILE)")
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        typ = type(default) if default is not None else str
        if typ not in (int, float, str, bool):
            continue
        flag = "--" + f.name.replace("_", "-")
        # argparse %-formats help strings: escape literal percent signs in docstrings
        help_ = f"{docs.get(f.name, '')} (default: {default})".replace("%", "%%")
        if typ is bool:
            group.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            group.add_argument(flag, dest=f.name, type=typ, default=None, help=help_)


def load_config_file(path: str | Path) -> dict[str, Any]:
    """A YAML (or, for ``.json``, JSON) file's mapping of field names to values.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file cannot be parsed or does not hold a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot parse config file {path}: {' '.join(str(exc).split())}") from None  # one line
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must hold a mapping of field names to values")
    return data


def config_from_dict(cls: type[T], data: dict[str, Any], source: str = "config", unknown: str = "error") -> T:
    """``cls(**data)``; a key of ``data`` that is not a field of ``cls`` is an error
    (``unknown="error"``: ValueError naming ``source``, the key and the known fields) or
    is left out with a logged warning (``unknown="ignore"``)."""
    if unknown not in ("error", "ignore"):
        raise ValueError(f"unknown must be 'error' or 'ignore', got {unknown!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    extra = sorted(set(data) - names)
    if extra and unknown == "error":
        raise ValueError(f"unknown field(s) in {source}: {', '.join(extra)}; known: {', '.join(sorted(names))}")
    if extra:
        logger.warning("%s: ignoring setting(s) that %s does not have: %s", source, cls.__name__, ", ".join(extra))
    return cls(**{k: v for k, v in data.items() if k in names})


def build_config(cls: type[T], args: argparse.Namespace, config_file: str | None = None) -> T:
    """Defaults <- config file <- command-line flags (later wins). Unknown keys are an error."""
    names = {f.name for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    if config_file:
        values.update(load_config_file(config_file))
    for name in names:
        v = getattr(args, name, None)
        if v is not None:
            values[name] = v
    return config_from_dict(cls, values, str(config_file), unknown="error")
