"""Whether this installation of `lane` shares a top-level package name with another one.

The wheel installs five top-level packages: `lane`, `scanner`, `barrier`, `uplink` and `sim`
(the source layout, kept as it is). Python has one namespace of top-level names per
environment: another distribution that also ships, say, `sim` would overwrite our files (or
we its), and whichever import wins breaks the other. Installing `lane` into a virtual
environment of its own (docs/operations.md) makes that impossible; this check makes it visible
where that advice was not followed (`lane --version`, `lane doctor`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib.metadata import packages_distributions

DISTRIBUTION = "lane"
TOP_LEVEL = ("lane", "scanner", "barrier", "uplink", "sim")


def clashes(owners: Mapping[str, Sequence[str]] | None = None) -> list[str]:
    """One line per top-level name of ours that another installed distribution also provides.

    `owners`: top-level name -> distributions (default: what this environment says).
    """
    owners = packages_distributions() if owners is None else owners
    found = []
    for name in TOP_LEVEL:
        others = sorted({d for d in owners.get(name, ()) if d.lower() != DISTRIBUTION})
        if others:
            found.append(
                f"top-level package {name!r} is also installed by {', '.join(others)}: "
                "install lane in a virtual environment of its own"
            )
    return found
