"""Errors meant for people: what went wrong, where, and how to fix it.

The command line prints a `RstarError` as one message and exits non-zero, without a traceback.
Anything else escaping is a bug in rstar or a plugin and keeps its traceback.
"""

from __future__ import annotations


class RstarError(Exception):
    """Base class for errors caused by input (recipes, data, arguments, environment)."""


class ConfigError(RstarError):
    """A recipe cannot be loaded or is invalid. ``problems`` lists every problem found."""

    def __init__(self, problems: list[str], source: str | None = None) -> None:
        self.problems = problems
        self.source = source
        head = f"{source}: " if source else ""
        if len(problems) == 1:
            super().__init__(head + problems[0])
        else:
            body = "\n".join(f"  - {p}" for p in problems)
            super().__init__(f"{head}{len(problems)} problems:\n{body}")


class UnknownComponentError(RstarError):
    """A recipe names a component that no installed plugin registers."""


class MissingExtraError(RstarError):
    """A component needs an optional dependency that is not installed."""

    def __init__(self, component: str, module: str, extra: str) -> None:
        super().__init__(
            f"{component} needs the Python package '{module}', which is not installed. "
            f"Install rstar's '{extra}' extra: pip install -e '.[{extra}]' in the rstar checkout "
            f"(or pip install 'rstar[{extra}]' where rstar was installed from a wheel)"
        )


class DataError(RstarError):
    """A dataset file is missing or malformed (the message names the file and line)."""
