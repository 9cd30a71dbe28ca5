"""Per-thread policies: thread-id glob patterns (first match wins) or your own resolver.

`sweep`, `prune_thread`, the scheduler, the CLI and the API accept a `RetentionPolicy`,
a `ThreadRules`, or any callable from a thread id to a policy or `EXEMPT` (leave the
thread alone), e.g. one that looks the user up in your own database.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Final, Literal, TypeAlias

from langgraph_retention.policy import RetentionPolicy

__all__ = ["EXEMPT", "PolicySource", "Resolution", "Resolver", "ThreadRules", "resolver_of"]

#: What a resolver returns for a thread no prune may touch.
EXEMPT: Final = "exempt"
Resolution: TypeAlias = RetentionPolicy | Literal["exempt"]
Resolver: TypeAlias = Callable[[str], Resolution]


@dataclass(frozen=True, slots=True)
class ThreadRules:
    """Policies by thread-id glob (`fnmatch`, case-sensitive; `*` also matches `:` and
    `/`): the first pattern that matches decides, `default` decides for the rest.

    >>> rules = ThreadRules(
    ...     RetentionPolicy(keep_last=10),
    ...     [("support:*", RetentionPolicy(keep_last=50)), ("vip:*", EXEMPT)],
    ... )
    """

    default: Resolution
    rules: Sequence[tuple[str, Resolution]] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "rules", tuple(self.rules))
        for resolution in (self.default, *(r for _p, r in self.rules)):
            if resolution != EXEMPT and not isinstance(resolution, RetentionPolicy):
                raise TypeError(
                    f"a rule's policy must be a RetentionPolicy or EXEMPT, got {resolution!r}"
                )
        for pattern, _resolution in self.rules:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"a rule's pattern must be a non-empty glob, got {pattern!r}")

    def resolve(self, thread_id: str) -> Resolution:
        """The policy for `thread_id`, or EXEMPT."""
        for pattern, resolution in self.rules:
            if fnmatchcase(thread_id, pattern):
                return resolution
        return self.default

    def __call__(self, thread_id: str) -> Resolution:
        return self.resolve(thread_id)


PolicySource: TypeAlias = RetentionPolicy | ThreadRules | Resolver


def resolver_of(source: PolicySource) -> Resolver:
    """A resolver for a policy, rules or resolver; TypeError for anything else."""
    if isinstance(source, RetentionPolicy):
        return lambda _thread_id: source
    if callable(source):
        return source
    raise TypeError(
        "policy must be a RetentionPolicy (e.g. RetentionPolicy(keep_last=10)), a "
        f"ThreadRules, or a callable from thread id to policy; got {type(source).__name__}"
    )
