"""The optional members of backends and stop policies, read in one place.

`BackendBase` and `PolicyBase` (`tandem.types`) declare them with their defaults, and the project's
backends and policies inherit those. A third-party backend or policy written against the `Backend`
/ `StopPolicy` Protocols alone may have none of them, or some: callers read every optional member
through the helper here, which falls back to the base class's default.
"""

from __future__ import annotations

from typing import Any

from .types import Backend, BackendBase, PolicyBase, StopPolicy

__all__ = ["cascade_threshold", "max_in_flight", "reset_cache", "route_threshold", "tokenize", "uses_shadow",
           "uses_trial"]

_BACKEND = BackendBase()
_POLICY = PolicyBase()


def max_in_flight(backend: Backend) -> int | None:
    """How many calls `backend` takes at once (None: no limit of its own)."""
    return getattr(backend, "max_in_flight", _BACKEND.max_in_flight)


def max_concurrency(*backends: Backend) -> int | None:
    """How many calls the backends take at once (None: no limit of their own). A backend says so with
    a `max_in_flight` attribute; one that does not is taken to allow one call at a time."""
    limits = [max_in_flight(b) for b in backends]
    bounded = [n for n in limits if n is not None]
    return min(bounded) if bounded else None


def reset_cache(backend: Backend) -> None:
    """Make `backend` forget its cached prompt state, if it keeps any."""
    getattr(backend, "reset_cache", _BACKEND.reset_cache)()


def tokenize(backend: Backend, text: str) -> list[Any] | None:
    """The tokens of `text` in `backend`'s model, or None when the backend cannot say."""
    return getattr(backend, "tokenize", _BACKEND.tokenize)(text)


def uses_shadow(policy: StopPolicy) -> bool:
    """Whether `policy` reads the SLM's shadow features."""
    return bool(getattr(policy, "uses_shadow", _POLICY.uses_shadow))


def uses_trial(policy: StopPolicy) -> bool:
    """Whether `policy` reads the SLM's trial answers."""
    return bool(getattr(policy, "uses_trial", _POLICY.uses_trial))


def reads_prefix(policy: StopPolicy) -> bool:
    """Whether checkpoints pay for the SLM reading the LLM's text so far: in the shadow pass where the
    policy reads its features, else in the trial requests where it reads trial answers."""
    return uses_shadow(policy) or uses_trial(policy)


def route_threshold(policy: StopPolicy) -> float | None:
    """`policy`'s calibrated `route` threshold, or None."""
    return getattr(policy, "route_threshold", _POLICY.route_threshold)


def cascade_threshold(policy: StopPolicy) -> float | None:
    """`policy`'s calibrated `cascade` threshold, or None."""
    return getattr(policy, "cascade_threshold", _POLICY.cascade_threshold)
