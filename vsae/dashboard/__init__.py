"""Feature dashboards: a static site of every feature's statistics, examples and decompositions.

Researchers would rather look than read: the dashboard job (:mod:`vsae.jobs.dashboard`) turns a
run's analysis results into plain HTML, CSS and JavaScript files, a page per feature in the
manner of SAEDashboard and Neuronpedia, for vision: example crops of the unit's receptive field
with its heat map, class means with WordNet names, the activation histogram, the decoder's
neurons. No server and no network are needed to view it (:mod:`vsae.dashboard.site`); other
jobs' results join it as sections (:mod:`vsae.dashboard.sections`).
"""

from vsae.dashboard.sections import SECTIONS, Section, register_section
from vsae.dashboard.site import Settings, SiteUnit

__all__ = ["SECTIONS", "Section", "Settings", "SiteUnit", "register_section"]
