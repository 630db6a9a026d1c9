"""The one exception class for expected user mistakes.

Commands (through `nd3d_jax.config_cli`) print a `UserError` as one line on stderr and exit
with code 2, before any compilation; every other exception is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(ValueError):
    """A bad input the user can fix: a missing folder, a wrong value, a mismatched workdir.

    The message names what is wrong and what to do (for example the override to set)."""
