"""One dataclass per command, overridable from the command line.

:func:`add_dataclass_arguments` turns a dataclass's fields into ``--field`` options
(``--no-field`` for booleans, repeated values for lists); :func:`dataclass_from_args`
builds the instance back. The resolved configuration is saved beside every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``(inner type, optional)`` for ``X``, ``X | None`` and ``list[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def help_meta(text: str) -> dict[str, str]:
    """Field metadata holding an option's help text: ``field(..., metadata=help_meta("..."))``."""
    return {"help": text}


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one ``--name`` option per field of dataclass ``cls`` (help from metadata)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        else:
            default = f.default_factory()  # type: ignore[misc,operator]
        if tp is bool:
            parser.add_argument(
                flag,
                dest=f.name,
                action=argparse.BooleanOptionalAction,
                default=default,
                help=help_,
            )
        elif typing.get_origin(tp) is list:
            (inner,) = typing.get_args(tp)
            parser.add_argument(
                flag,
                dest=f.name,
                nargs="*",
                type=inner,
                default=default,
                help=f"{help_} (default: {default})",
            )
        else:
            conv = tp
            if optional:

                def conv(v: str, _tp: Any = tp) -> Any:
                    return None if v.lower() in ("", "none") else _tp(v)

            parser.add_argument(
                flag, dest=f.name, type=conv, default=default, help=f"{help_} (default: {default})"
            )


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed options added by :func:`add_dataclass_arguments`."""
    return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


def save_config(obj: Any, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved dataclass ``obj`` (plus ``extra``) as JSON, atomically."""
    from pixnet.io.atomic import atomic_write_text

    d = dataclasses.asdict(obj)
    if extra:
        d.update(extra)
    atomic_write_text(path, json.dumps(d, indent=2, default=str) + "\n")
