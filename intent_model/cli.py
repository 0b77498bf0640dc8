"""Command lines derived from a config dataclass: one `--flag` per field, its help and default
from the field, so a knob added to the config is on the command line and in `--help` with no
second list to keep in step. Lists are comma-separated; booleans take `--x` / `--no-x`; an
empty path is None."""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _scalar(kind: Any) -> Any:
    """The concrete type of `X | None`."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        return args[0]
    return kind


def _list_of(item: Any) -> Any:
    def parse(text: str) -> list[Any]:
        return [item(x.strip()) for x in text.split(",") if x.strip()]

    return parse


def _path(text: str) -> Path | None:
    """A path; the empty string is None (a setting turned off)."""
    return Path(text) if text else None


def dataclass_parser(cls: type, prog: str, description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_dataclass_arguments(parser, cls)
    return parser


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = _scalar(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        default: Any = (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        )
        help_text = f.metadata.get("help", "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text)  # fmt: skip
        elif typing.get_origin(kind) is list:
            (item,) = typing.get_args(kind)
            shown = ",".join(str(x) for x in default)
            parser.add_argument(flag, type=_list_of(item), default=default, metavar=shown or "LIST",
                                help=help_text)  # fmt: skip
        else:
            parser.add_argument(flag, type=_path if kind is Path else kind, default=default,
                                help=help_text)  # fmt: skip


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(args).items() if k in names})
