"""Turn config dataclasses into argparse options, with each field's docstring as its help.

The convention for every command: its settings are frozen dataclasses that validate themselves
in ``__post_init__`` with messages in field terms (:class:`policy_distill.errors.ConfigError`);
this module maps their fields to flags (``learning_rate`` -> ``--learning-rate``, booleans on
by default to ``--x/--no-x`` and off by default to a plain ``--x`` switch, fields without a
default to required flags) and builds them back from the parsed options. Config classes
document every field with a string literal right under it (CleanRL's style); the help text is
read from the source, so help and code cannot drift.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def flag(field_name: str) -> str:
    """The command-line spelling of a config field: ``learning_rate`` -> ``--learning-rate``."""
    return "--" + field_name.replace("_", "-")


def field_docs(cls: type) -> dict[str, str]:
    """Map each field of a dataclass (and of the dataclasses it extends) to the docstring under it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    *,
    skip: tuple[str, ...] = (),
    required: tuple[str, ...] = (),
) -> None:
    """Add a flag for every field of the dataclass ``cls``.

    Args:
        parser: The (sub)command's parser.
        cls: A config dataclass.
        skip: Fields the command sets itself.
        required: Fields that are required on the command line although they have a default.
    """
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        hint = hints[f.name]
        has_default = f.default is not dataclasses.MISSING
        default = f.default if has_default else None
        # A None default is resolved by the config itself (its docstring says how): not shown.
        shown = "" if not has_default or f.name in required or default is None else f" (default: {default})"
        # argparse %-formats help strings, so a literal % (as in "x%") must be doubled.
        help_text = f"{docs.get(f.name, '')}{shown}".replace("%", "%%")
        must = f.name in required or not has_default
        names = (flag(f.name), *f.metadata.get("aliases", ()))  # e.g. a spelling torchrun leaves alone
        if hint is bool and f.default is not True:
            # Off by default: a plain switch. (BooleanOptionalAction would read a field named
            # no_x, flag --no-x, as the negation of an --x and set it False.)
            parser.add_argument(*names, dest=f.name, action="store_true", default=None, help=help_text)
        elif hint is bool:
            if f.name.startswith("no_"):
                raise TypeError(f"{cls.__name__}.{f.name}: a no_ switch must default to False")
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            base = (
                typing.get_args(hint)[0]
                if typing.get_origin(hint) in (typing.Union, types.UnionType)
                else hint
            )
            parser.add_argument(
                *names,
                dest=f.name,
                type=base,
                default=None,
                required=must,
                help=help_text,
                metavar=f.name.upper(),
            )


def config_from_args(cls: type[T], args: argparse.Namespace, **overrides: Any) -> T:
    """Build ``cls`` from parsed options, keeping defaults for options not given."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if getattr(args, f.name, None) is not None
    }
    values.update(overrides)
    return cls(**values)
