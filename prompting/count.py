"""Reading a ``<count>`` value ("2girls, multiple_girls", "1girl, 1boy", "solo") as a head count."""

from __future__ import annotations

import re
from dataclasses import dataclass

# "1girl", "2girls", "6+girls", "3boys", "1other" (danbooru's count tags).
_NUMBERED = re.compile(r"([0-9]{1,3})(\+?)_?(girl|boy|other)s?")
_MULTIPLE = re.compile(r"multiple_(girl|boy|other)s?")


@dataclass(frozen=True)
class HeadCount:
    """How many people a ``<count>`` value describes.

    ``exact`` is the total when every mentioned group has an exact number, else None;
    ``at_least`` the smallest total the value allows; ``conflicts`` lists self-contradictions
    such as "1girl" next to "multiple_girls"; ``groups`` the exact number per group
    ("girl", "boy", "other") when ``exact`` is known.
    """

    exact: int | None
    at_least: int
    conflicts: tuple[str, ...] = ()
    groups: tuple[tuple[str, int], ...] = ()


def read_head_count(value: str) -> HeadCount | None:
    """The head count a ``<count>`` value states, or None when it states none we recognise."""
    exact: dict[str, int] = {}
    minimum: dict[str, int] = {}
    shown: dict[str, list[str]] = {}
    solo = no_humans = False
    for raw in value.split(","):
        item = "_".join(raw.strip().lower().split())
        if item == "solo":
            solo = True
        elif item == "no_humans":
            no_humans = True
        elif match := _NUMBERED.fullmatch(item):
            number, plus, group = int(match.group(1)), match.group(2), match.group(3)
            target = minimum if plus else exact
            target[group] = max(target.get(group, 0), number)
            shown.setdefault(group, []).append(item)
        elif match := _MULTIPLE.fullmatch(item):
            group = match.group(1)
            minimum[group] = max(minimum.get(group, 0), 2)
            shown.setdefault(group, []).append(item)
    if not (shown or solo or no_humans):
        return None
    conflicts = [
        f"{' and '.join(shown[group])} disagree"
        for group in exact
        if exact[group] < minimum.get(group, 0)
    ]
    groups = set(exact) | set(minimum)
    at_least = sum(max(exact.get(g, 0), minimum.get(g, 0)) for g in groups)
    total = sum(exact.values()) if groups and set(exact) == groups and not conflicts else None
    if solo:
        if groups and at_least > 1:
            conflicts.append(f"solo and {', '.join(i for g in groups for i in shown[g])} disagree")
        total, at_least = (1, 1) if not groups else (total, at_least)
    if no_humans:
        if groups:
            conflicts.append("no_humans next to a head count")
        else:
            total, at_least = 0, 0
    by_group = tuple(sorted(exact.items())) if total is not None and not no_humans else ()
    return HeadCount(total, at_least, tuple(conflicts), by_group)
