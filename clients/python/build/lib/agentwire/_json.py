"""A JSON view of what agent frameworks pass around, for event data."""

from __future__ import annotations

from typing import Any, Callable, Optional

Json = Any


def jsonable(value: Any, special: Optional[Callable[[Any], Optional[Json]]] = None, depth: int = 0) -> Json:
    """`value` as JSON: plain values as they are, mappings and sequences item by
    item, pydantic models and dataclasses by their fields, anything else as its
    text. `special` may answer a view of its own first (``None``: no view)."""
    if depth > 8:
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if special is not None:
        view = special(value)
        if view is not None:
            return view
    if isinstance(value, dict):
        return {str(k): jsonable(v, special, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v, special, depth + 1) for v in value]
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"), special, depth + 1)
    if hasattr(value, "__dataclass_fields__"):
        return {name: jsonable(getattr(value, name, None), special, depth + 1) for name in value.__dataclass_fields__ if not name.startswith("_")}
    return str(value)
