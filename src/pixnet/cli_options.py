"""One dataclass per command, overridable from the command line.

:func:`add_dataclass_arguments` turns a dataclass's fields into ``--field`` options
(``--no-field`` for booleans, repeated values for lists); :func:`dataclass_from_args`
builds the instance back. The resolved configuration is saved beside every run.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

DEVICE_PATTERN = r"auto|cpu|mps|cuda(:[0-9]+)?"
"""Device names the ``--device`` options accept (a full match)."""
DEVICE_HINT = "use auto, cpu, cuda, cuda:N or mps"


def _base_type(tp: Any) -> tuple[Any, bool]:
    """``(inner type, optional)`` for ``X``, ``X | None`` and ``list[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def help_meta(
    text: str,
    *,
    choices: Sequence[str] | Sequence[int] | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    multiple_of: int | None = None,
    pattern: str | None = None,
    pattern_hint: str = "",
) -> dict[str, Any]:
    """Field metadata: an option's help text and the values it accepts.

    ``field(..., metadata=help_meta("crops per batch", ge=1))``. ``choices`` (strings, or
    each element of a list option), a numeric range (``ge``/``gt``/``le``/``lt``, for a
    number or each element of a list) or a full-match regular expression ``pattern``
    (with ``pattern_hint`` saying what fits). The command line refuses other values with
    exit code 2 and a message naming the flag; :func:`check_fields` applies the same
    rules to a configuration built in Python. Floats must also be finite.
    """
    meta: dict[str, Any] = {"help": text}
    if choices is not None:
        meta["choices"] = tuple(choices)
    for key, bound in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if bound is not None:
            meta[key] = bound
    if multiple_of is not None:
        meta["multiple_of"] = multiple_of
    if pattern is not None:
        meta["pattern"] = pattern
        meta["pattern_hint"] = pattern_hint
    return meta


_BOUNDS = (
    ("ge", ">=", lambda x, b: x >= b),
    ("gt", ">", lambda x, b: x > b),
    ("le", "<=", lambda x, b: x <= b),
    ("lt", "<", lambda x, b: x < b),
)


def range_text(meta: Mapping[str, Any]) -> str:
    """``">= 1"``, ``"> 0 and < 1"``: the numeric range of a field's metadata ('' if none)."""
    parts = [f"{op} {meta[k]:g}" for k, op, _ in _BOUNDS if k in meta]
    if "multiple_of" in meta:
        parts.append(f"a multiple of {meta['multiple_of']}")
    return " and ".join(parts)


def value_problem(value: Any, meta: Mapping[str, Any]) -> str | None:
    """Why ``value`` (one scalar) breaks the rules of ``meta``, or ``None`` if it does not."""
    if "choices" in meta and value not in meta["choices"]:
        return f"{value!r} is not one of {', '.join(map(str, meta['choices']))}"
    if "pattern" in meta and not re.fullmatch(meta["pattern"], str(value)):
        return f"{value!r} is not valid; {meta['pattern_hint'] or 'expected ' + meta['pattern']}"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        for key, _, ok in _BOUNDS:
            if key in meta and not ok(value, meta[key]):
                return f"{value:g} is out of range; must be {range_text(meta)}"
        if "multiple_of" in meta and value % meta["multiple_of"]:
            return f"{value:g} is not allowed; must be {range_text(meta)}"
    return None


def checked_type(conv: Callable[[str], Any], meta: Mapping[str, Any]) -> Callable[[str], Any]:
    """An argparse ``type``: ``conv`` followed by the checks of ``meta`` (see
    :func:`help_meta`); argparse then reports the flag, e.g.
    ``argument --lr: -1 is out of range; must be > 0``, and exits with status 2."""

    def check(v: str) -> Any:
        x = conv(v)
        problem = None if x is None else value_problem(x, meta)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return x

    check.__name__ = getattr(conv, "__name__", "value")  # argparse: "invalid int value"
    return check


def _help_text(help_: str, meta: Mapping[str, Any], default: Any) -> str:
    rng = range_text(meta)
    extra = f"; {rng}" if rng else ""
    if "pattern_hint" in meta and meta["pattern_hint"]:
        extra += f"; {meta['pattern_hint']}"
    # argparse fills in %(default)s, so a parser with ArgumentDefaultsHelpFormatter does
    # not print the default a second time
    return f"{help_} (default: %(default)s{extra})"


def check_fields(obj: Any) -> None:
    """Refuse a configuration whose fields break their :func:`help_meta` rules.

    Raises:
        PixNetInputError: naming the option (``--field-name``), the value and the range.
    """
    from pixnet.errors import PixNetInputError

    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            problem = None if v is None else value_problem(v, f.metadata)
            if problem:
                raise PixNetInputError("--" + f.name.replace("_", "-"), problem)


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, fields: Collection[str] | None = None
) -> None:
    """Add one ``--name`` option per field of dataclass ``cls`` (help from metadata), or
    per field named in ``fields`` (unknown names raise ``ValueError``)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields or ()) - names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {', '.join(unknown)}")
    for f in dataclasses.fields(cls):
        if fields is not None and f.name not in fields:
            continue
        tp, optional = _base_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        help_ = f.metadata.get("help", "")
        meta = f.metadata
        choices = meta.get("choices")
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
                type=checked_type(inner, {k: v for k, v in meta.items() if k != "choices"}),
                choices=choices,
                default=default,
                help=_help_text(help_, meta, default),
            )
        else:
            conv: Callable[[str], Any] = tp
            if optional:

                def conv(v: str, _tp: Any = tp) -> Any:
                    return None if v.lower() in ("", "none") else _tp(v)

                conv.__name__ = getattr(tp, "__name__", "value")
            parser.add_argument(
                flag,
                dest=f.name,
                type=checked_type(conv, {k: v for k, v in meta.items() if k != "choices"}),
                choices=choices,
                default=default,
                help=_help_text(help_, meta, default),
            )


def dataclass_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build ``cls`` from the parsed options added by :func:`add_dataclass_arguments`."""
    obj = cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]
    check_fields(obj)
    return obj


def add_command(
    sub: argparse._SubParsersAction,
    name: str,
    help_: str,
    run: Callable[[argparse.Namespace], int],
    config: type | None = None,
) -> argparse.ArgumentParser:
    """Add ``pixnet NAME`` to the sub-command parser ``sub``; return its parser.

    ``run(args)`` executes the command and returns its exit status; ``config`` (a
    dataclass) gives one option per field (:func:`add_dataclass_arguments`). Every
    command module's ``register(sub)`` is one call of this.
    """
    parser = sub.add_parser(name, help=help_)
    if config is not None:
        add_dataclass_arguments(parser, config)
    parser.set_defaults(func=run)
    return parser


def save_config(obj: Any, path: str | Path, extra: dict[str, Any] | None = None) -> None:
    """Write the resolved dataclass ``obj`` (plus ``extra``) as JSON, atomically."""
    from pixnet.io.atomic import atomic_write_text

    d = dataclasses.asdict(obj)
    if extra:
        d.update(extra)
    atomic_write_text(path, json.dumps(d, indent=2, default=str) + "\n")
