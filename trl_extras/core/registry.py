"""Named variants of the algorithms, as verl's ``@register_policy_loss`` / ``@register_adv_est`` keep them.

A config names a variant by a string (``kl_estimator="k3"``, ``loss_type="grpo"``,
``advantage_normalization="group"``, an ensemble ``penalty="min"``, a CEM elite rule). Each such string is an entry of
one :class:`Registry` in ``core/``, next to the math it names; configs validate against the registry and trainers
look the entry up and read its declared attributes (e.g. whether a KL penalty needs the full vocabulary, whether
an ensemble penalty needs calibration) instead of comparing strings. A new variant is one decorated function in
``core/`` plus its test: no trainer edit.

    from trl_extras.core.kl import KL_PENALTIES

    @KL_PENALTIES.register("k1_clipped", needs_full_vocabulary=False, direct_gradient=False)
    def k1_clipped(logprobs, ref_logprobs, exact_kl=None):
        return (logprobs - ref_logprobs).clamp(min=0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Registry", "RegistryEntry"]


@dataclass(frozen=True)
class RegistryEntry:
    """One registered variant: its ``name``, the function ``fn`` and the attributes it declared."""

    name: str
    fn: Callable
    attributes: dict[str, Any] = field(default_factory=dict)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __getattr__(self, item: str):
        attributes = self.__dict__.get("attributes", {})
        if item in attributes:
            return attributes[item]
        raise AttributeError(f"{type(self).__name__} {self.__dict__.get('name')!r} declares no attribute {item!r}")


class Registry:
    """Name → :class:`RegistryEntry` for one kind of variant.

    Args:
        kind: what the entries are, for messages (``"KL penalty"``).
        required: attribute names every entry must declare when registered (so a trainer can rely on them).

    Behaves like the tuple of its names where the package used tuples before (``name in REGISTRY``, iteration,
    ``len``, ``tuple(REGISTRY)``), in registration order.
    """

    def __init__(self, kind: str, required: tuple[str, ...] = ()):
        self.kind = kind
        self.required = tuple(required)
        self._entries: dict[str, RegistryEntry] = {}

    def register(self, name: str, **attributes) -> Callable[[Callable], Callable]:
        """Decorator: register ``fn`` under ``name`` with ``attributes``; returns ``fn`` unchanged."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"A {self.kind} needs a non-empty string name, got {name!r}.")
        missing = [a for a in self.required if a not in attributes]
        if missing:
            raise ValueError(f"{self.kind} {name!r} must declare {', '.join(missing)}.")

        def decorator(fn: Callable) -> Callable:
            if name in self._entries and self._entries[name].fn is not fn:
                raise ValueError(f"A {self.kind} named {name!r} is already registered ({self._entries[name].fn}).")
            self._entries[name] = RegistryEntry(name, fn, dict(attributes))
            return fn

        return decorator

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests that register a toy variant clean up with this)."""
        self._entries.pop(name, None)

    def get(self, name: str) -> RegistryEntry:
        """The entry named ``name``; a ``ValueError`` listing the choices otherwise."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            raise ValueError(f"Unknown {self.kind} {name!r}; expected one of {tuple(self._entries)}.") from None

    __getitem__ = get

    def check(self, value, field_name: str) -> None:
        """A config's validation: ``field_name`` must name a registered entry."""
        if not isinstance(value, str) or value not in self._entries:
            raise ValueError(f"{field_name} must be one of {tuple(self._entries)}, got {value!r}.")

    def names(self, **where) -> tuple[str, ...]:
        """Names of the entries whose attributes equal every ``where`` item (all names without filters)."""
        return tuple(n for n, e in self._entries.items() if all(e.attributes.get(k) == v for k, v in where.items()))

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return repr(tuple(self._entries))
