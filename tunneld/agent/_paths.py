"""Confining request paths to the configured roots.

A path is refused if it contains a ``..`` component, or if — after every symlink in it
is resolved — it lies outside every root. That catches ``../``, absolute paths elsewhere,
symlinks pointing out and symlinked parent directories. Relative paths are taken relative
to the first root. The check and the later open are not atomic: a process on the agent
host that can rewrite symlinks inside a root between the two can race it; callers of the
agent cannot, since the agent only writes regular files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tunneld.agent._errors import OperationError
from tunneld.proto.agentrpc import ErrorCode

__all__ = ["PathPolicy"]


class PathPolicy:
    """Resolves request paths and refuses those outside ``roots`` (``path_outside_roots``)."""

    def __init__(self, roots: Sequence[Path]) -> None:
        # Roots are resolved once: a root that is itself a symlink names its target.
        self.roots = tuple(Path(os.path.realpath(os.path.abspath(r))) for r in roots)
        # The same as strings, for the per-request check (string tests, not pathlib:
        # a good share of a small read's cost otherwise). "/" stays "/", others get
        # a trailing separator so "/srv/a" does not contain "/srv/ab".
        self._root_strs = tuple(str(r) for r in self.roots)
        self._prefixes = tuple(r if r.endswith(os.sep) else r + os.sep for r in self._root_strs)

    def resolve(self, path: str) -> Path:
        """The resolved absolute path for ``path`` (see :meth:`resolve_str`)."""
        return Path(self.resolve_str(path))

    def resolve_str(self, path: str) -> str:
        """The resolved absolute path for ``path``, as a string (no pathlib objects on
        the per-request path).

        Raises:
            OperationError: ``path_outside_roots`` when no roots are configured, the path
                has a ``..`` component, or it resolves outside every root.
        """
        if not self.roots:
            raise OperationError(
                ErrorCode.PATH_OUTSIDE_ROOTS, f"{path}: no file roots are configured"
            )
        if ".." in path.split(os.sep):
            raise OperationError(ErrorCode.PATH_OUTSIDE_ROOTS, f"{path}: '..' is not allowed")
        candidate = path if os.path.isabs(path) else os.path.join(self._root_strs[0], path)
        resolved = os.path.realpath(candidate)
        if resolved not in self._root_strs and not resolved.startswith(self._prefixes):
            raise OperationError(
                ErrorCode.PATH_OUTSIDE_ROOTS,
                f"{path}: resolves to {resolved}, outside the agent's roots",
            )
        return resolved

    def default_cwd(self) -> Path | None:
        """Where commands run when the request names no ``cwd``: the first root, if any."""
        return self.roots[0] if self.roots else None
