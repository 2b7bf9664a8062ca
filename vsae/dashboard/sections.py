"""Pluggable parts of the dashboard: results of other jobs that add pages and feature panels.

The core site (per hook an index of every feature and neuron, a page per feature) is drawn from
the analysis results. Other jobs write results of their own under the store (the concept graph,
tuning curves, feature visualisations, toy-model sweeps); each adds itself to the dashboard as
a :class:`Section`: it says whether its results exist for a run, writes its own pages, and may
add a panel to each feature page (a visualisation, a tuning curve, graph parents and children).
The dashboard shows every registered section whose results are present and skips the others, so
a site is complete for whatever has been run.

Sections register at import of their module (listed in :data:`SECTION_MODULES`, imported by the
dashboard job in every process that writes pages); a name registered twice raises.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from vsae.client import Client
    from vsae.dashboard.site import Settings
    from vsae.store.paths import Location, StoreLayout


@dataclass(frozen=True)
class Section:
    """One kind of result shown on the dashboard."""

    name: str
    """Unique; also the folder of its pages under the site root."""
    title: str
    """The link text on the site's index."""
    present: Callable[[StoreLayout, str], bool]
    """``present(layout, run)``: whether the store holds this section's results for the run."""
    write: Callable[[Client, Settings, Location], str]
    """``write(client, settings, folder)``: writes the section's pages into ``folder`` (the
    site's ``{name}/``); returns the entry page relative to that folder."""
    feature_panel: Callable[[Client, Settings, str, str, int, str], str | None] | None = None
    """``feature_panel(client, settings, hook, unit, feature, root)``: HTML for the feature's
    page (``root`` is the relative path to the site root), or None where it has nothing."""
    run_field: str = ""
    """The :class:`~vsae.dashboard.site.Settings` field naming this section's results: a run
    (``*_run``; empty means the dashboard's run) or a location (``toy_uri``); its value is what
    ``present`` gets as ``run``. Empty: the dashboard's run."""

    def results_run(self, settings: Settings) -> str:
        """The value ``present`` is asked about (see :attr:`run_field`)."""
        if not self.run_field:
            return settings.run
        value = getattr(settings, self.run_field)
        return value or (settings.run if self.run_field.endswith("_run") else "")


SECTIONS: dict[str, Section] = {}
SECTION_MODULES: list[str] = ["vsae.dashboard.extras"]
"""Modules whose import registers a section (the concept graph's, the tuning curves' ...)."""


def register_section(section: Section) -> Section:
    """Add a section. Raises ValueError if its name is taken."""
    if section.name in SECTIONS:
        raise ValueError(f"dashboard section {section.name!r} is already registered "
                         f"(by {SECTIONS[section.name].write.__module__})")
    SECTIONS[section.name] = section
    return section


def load_sections() -> dict[str, Section]:
    """Every registered section, after importing :data:`SECTION_MODULES`."""
    for module in SECTION_MODULES:
        importlib.import_module(module)
    return SECTIONS
