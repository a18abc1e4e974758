"""Which node losses are spot interruptions, the same way for every provider.

A node that goes away is an interruption unless Peakwise asked for it: when the operator
lowers a pool's target by N nodes, the next N removals in that pool within `EXPECTED_FOR` are
its own (whichever backend removes them: kwok, a MachineDeployment, Karpenter). A node carrying
an interruption taint (the cloud's or a termination handler's notice) is an interruption at
once; one that Karpenter marks as disrupted (consolidation, drift, expiry) is a voluntary
removal, not one.

Pure: fed node events and scale-downs, it counts; the handlers report the counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

INTERRUPTION_TAINTS = frozenset(
    {
        "peakwise.dev/interrupted",
        "aws-node-termination-handler/spot-itn",
        "cloud.google.com/impending-node-termination",
        "kubernetes.azure.com/scalesetpriority-evicting",
    }
)
"""Taints cloud providers and node termination handlers put on a spot node about to go."""

VOLUNTARY_TAINTS = frozenset({"karpenter.sh/disrupted"})
"""Taints that mark a node its autoscaler is removing on purpose."""

EXPECTED_FOR = timedelta(minutes=15)
"""How long a scale-down's removals are expected (a backend that never removes the nodes,
such as a Karpenter limit lowered above what runs, must not hide later interruptions)."""


@dataclass
class InterruptionTracker:
    expected_removals: dict[str, list[datetime]] = field(default_factory=dict)
    """Per pool, until when each removal still expected from a scale-down counts as ours."""
    asked: dict[str, int] = field(default_factory=dict)
    """Per pool, the node count the operator last asked its backend for."""
    seen: dict[str, int] = field(default_factory=dict)
    """Per pool, interruptions not yet counted into the pool's status."""
    _interrupted: set[str] = field(default_factory=set)
    _voluntary: set[str] = field(default_factory=set)

    def scaled(self, pool: str, observed: int, desired: int, now: datetime) -> None:
        """The operator asked `pool`'s backend for `desired` nodes at `now`, seeing `observed`.

        Only a lower target than the last one asked adds expected removals: rounds that see a
        removal the node watch has not delivered yet ask the same target again, and must not
        expect that removal twice (a leftover would hide a real interruption). A higher target
        withdraws removals still expected: the backend need not remove those nodes now."""
        previous = self.asked.get(pool, observed)
        pending = self.expected_removals.setdefault(pool, [])
        if desired < previous:
            pending.extend([now + EXPECTED_FOR] * max(0, min(previous, observed) - desired))
        elif desired > previous:
            del pending[: desired - previous]
        self.asked[pool] = desired

    def _expected(self, pool: str, now: datetime) -> bool:
        """Consume one expected removal of `pool`, if one is still in force."""
        pending = [until for until in self.expected_removals.get(pool, []) if until >= now]
        found = bool(pending)
        self.expected_removals[pool] = pending[1:]
        return found

    def node_event(
        self, pool: str, node: str, taints: Iterable[str], deleted: bool, now: datetime
    ) -> bool:
        """A node of `pool` changed or went away at `now`; True if that is a new interruption."""
        keys = set(taints)
        if keys & VOLUNTARY_TAINTS:
            self._voluntary.add(node)
        interrupted = False
        if node not in self._interrupted:
            if keys & INTERRUPTION_TAINTS:
                interrupted = True
            elif deleted and node not in self._voluntary:
                interrupted = not self._expected(pool, now)
        if interrupted:
            self._interrupted.add(node)
            self.seen[pool] = self.seen.get(pool, 0) + 1
        if deleted:
            self._interrupted.discard(node)
            self._voluntary.discard(node)
        return interrupted

    def take(self, pool: str) -> int:
        """The interruptions of `pool` seen since the last call (to count into its status)."""
        return self.seen.pop(pool, 0)

    def forget_pool(self, pool: str) -> None:
        self.expected_removals.pop(pool, None)
        self.asked.pop(pool, None)
        self.seen.pop(pool, None)
