"""Case-insensitive, ordered, multi-valued HTTP header fields (RFC 9110 §5)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

__all__ = ["Headers"]


class Headers:
    """Request header fields in the order they arrived, names compared case-insensitively.

    Iterating yields ``(name, value)`` pairs with the name as the client spelled it.
    Immutable once built: handlers read headers, they do not rewrite them.
    """

    __slots__ = ("_index", "_items")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: tuple[tuple[str, str], ...] = tuple(items)
        # Lower-cased name -> values, built once: a request's headers are looked up
        # a dozen times (framing, routing, MCP checks), each a scan without it.
        index: dict[str, list[str]] = {}
        for key, value in self._items:
            lowered = key.lower()
            values = index.get(lowered)
            if values is None:
                index[lowered] = [value]
            else:
                values.append(value)
        self._index = index

    def get(self, name: str, default: str | None = None) -> str | None:
        """All values of ``name`` joined with ``", "`` (RFC 9110 §5.3), or ``default``.

        Joining is how a recipient may combine repeated list-valued fields; a field
        that must appear once (``Authorization``) therefore fails to parse when
        repeated, which is the safe outcome.
        """
        values = self._index.get(name.lower())
        if values is None:
            return default
        return values[0] if len(values) == 1 else ", ".join(values)

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in arrival order (empty if absent)."""
        return list(self._index.get(name.lower(), ()))

    def get_tokens(self, name: str) -> list[str]:
        """The comma-separated, lower-cased tokens of a list field such as ``Connection``."""
        tokens: list[str] = []
        for value in self.get_all(name):
            tokens.extend(t.strip().lower() for t in value.split(",") if t.strip())
        return tokens

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return name.lower() in self._index

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return [(k.lower(), v) for k, v in self._items] == [(k.lower(), v) for k, v in other._items]

    def __hash__(self) -> int:
        return hash(tuple((k.lower(), v) for k, v in self._items))

    def __repr__(self) -> str:
        # Values are left out: they may carry credentials (Authorization, Cookie).
        return f"Headers(names={[k for k, _ in self._items]!r})"
