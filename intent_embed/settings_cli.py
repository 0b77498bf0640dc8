"""Command-line options from a settings class, through pydantic-settings' own CLI source.

Every field of a service's ``Settings`` becomes ``--field-name`` (kebab case); a flag overrides
the ``<PREFIX>_FIELD_NAME`` environment variable, which overrides the default, and ``--help``
lists each option with its description, default and environment variable.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import TypeVar

from pydantic_settings import BaseSettings, CliApp, CliSettingsSource

SettingsT = TypeVar("SettingsT", bound=BaseSettings)


def add_settings_options(
    parser: argparse.ArgumentParser, settings_cls: type[SettingsT]
) -> CliSettingsSource[SettingsT]:
    """Adds one option per field of `settings_cls` to `parser` (a root or a subcommand)."""
    return CliSettingsSource(
        settings_cls,
        root_parser=parser,
        cli_kebab_case=True,
        cli_show_env_vars=True,
        cli_prog_name=parser.prog,
    )


def settings_from(
    settings_cls: type[SettingsT], source: CliSettingsSource[SettingsT], args: argparse.Namespace
) -> SettingsT:
    """The settings: parsed flags over environment variables over defaults."""
    return CliApp.run(settings_cls, cli_args=args, cli_settings_source=source)


def parse_settings(
    settings_cls: type[SettingsT], argv: Sequence[str] | None, *, prog: str, description: str
) -> SettingsT:
    """A service's settings from its command line (`argv`, None: sys.argv) and environment."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = add_settings_options(parser, settings_cls)
    return settings_from(settings_cls, source, parser.parse_args(argv))
