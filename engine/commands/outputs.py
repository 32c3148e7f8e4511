"""Output files named on the command line: checked, and their folders made.

A command calls `prepare_output` for each file it will write before it
writes anything or connects to a service. A name that cannot be a file is
then one line naming it and what is in its way, instead of an error of
the operating system about another path: for a parent that is a file,
`mkdir` says 'File exists', and opening says 'Not a directory' about a
`.partial` file the operator never named.
"""

from __future__ import annotations

from pathlib import Path

from engine.errors import ConfigurationError

__all__ = ["prepare_output"]


def prepare_output(name: str | Path) -> Path:
    """Check that a file can be created at `name`, making its missing folders.

    Raises:
        ConfigurationError: `name` is a directory, or a folder on its way
            exists and is not a directory.
    """
    path = Path(name)
    if path.is_dir():
        raise ConfigurationError(
            f"The output {str(name)!r} is a directory, not a file."
        )
    # The nearest folder that exists decides: below it, all are made. A
    # broken link counts as there, since mkdir cannot make it either.
    existing = next((f for f in path.parents if f.exists() or f.is_symlink()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigurationError(
            f"The output {str(name)!r} cannot be created: {str(existing)!r} "
            "is not a directory."
        )

    path.parent.mkdir(parents=True, exist_ok=True)
    return path
