"""The dashboard job: a static site of a run's analysed features, a page per feature.

From a store (local or on S3), a run whose analysis is complete, its SAEs (or K-SVD
dictionaries) and the neurons as the baseline, it writes plain HTML, CSS and JavaScript files
(:mod:`vsae.dashboard.site`) to ``{store}/dashboards/{run}/`` or ``out_uri``. The index pages
and plots are small and written here; the feature pages are cut into blocks of
``features_per_block`` that the executor writes in parallel (Ray tasks on a cluster), each block
reading its examples' images once. Sections of other jobs' results (:mod:`vsae.dashboard.sections`)
are added where the store holds them.

Sections: ``visualize_run``, ``tuning_run`` and ``graph_run`` name the runs of those jobs shown
(default: ``run``); ``toy_uri`` a toy experiment folder.

Report data: ``out_uri``, ``units`` (per ``hook/unit``: features, dead, dense), ``pages``,
``images``, ``unreadable`` (example images that could not be read), ``sections``, ``seconds``.
"""

from __future__ import annotations

import time
from dataclasses import field
from functools import partial

from vsae.config import config_class, to_dict
from vsae.errors import ConfigError, UnknownRun
from vsae.executor import Executor
from vsae.jobs.common import check_uri, check_writable, open_published, weights_note
from vsae.report import Report
from vsae.resources import Resources
from vsae.store.names import validate_location, validate_name
from vsae.store.paths import Location, StoreLayout
from vsae.store.spec import validate_hook_name


@config_class
class DashboardJob:
    """Write the feature dashboard of one analysed run."""

    store_uri: str = "runs/demo/inception_v1.zarr"
    """The published store whose analysis is shown."""
    run: str = "default"
    """The run whose analysis (``{store}/analysis/{run}``) is shown."""
    saes: tuple[str, ...] = ()
    """Names of the run's SAEs or dictionaries to show (default: every one analysed)."""
    hooks: tuple[str, ...] = ()
    """Hooks to show (default: every hook analysed)."""
    neurons: bool = True
    """Also show the hooks' neurons (the baseline), where they were analysed."""
    out_uri: str = ""
    """Where the site goes (default ``{store}/dashboards/{run}``); a local folder or any fsspec URI."""
    source_uri: str = ""
    """Where the dataset's images are read from for crops (default: where the store's listing says)."""
    crop_px: int = 112
    """Side of each example crop in pixels (the receptive field, resized)."""
    n_classes: int = 10
    """Class means shown per feature, largest first."""
    dense_frac: float = 0.1
    """A unit firing on more than this fraction of the stored rows is flagged dense."""
    features_per_block: int = 256
    """Feature pages per unit of work."""
    visualize_run: str = ""
    """Run of the ``visualize`` job whose images and activations are shown (default: ``run``)."""
    tuning_run: str = ""
    """Run of the ``tuning`` job whose tuning curves are shown (default: ``run``)."""
    graph_run: str = ""
    """Run of the ``graph`` job whose concept graph is shown (default: ``run``)."""
    toy_uri: str = ""
    """A ``toy`` experiment folder (``{experiment_uri}/{name}``, anywhere) whose sweep is shown."""
    resources: Resources = field(default_factory=Resources)
    """``max_in_flight`` blocks at once, ``num_cpus_per_task`` per block, ``max_retries``."""

    def __post_init__(self) -> None:
        validate_location(self.store_uri, "store_uri")
        validate_location(self.out_uri, "out_uri", required=False)
        validate_location(self.source_uri, "source_uri", required=False)
        validate_name(self.run, "run")
        for name in (self.visualize_run, self.tuning_run, self.graph_run):
            if name:
                validate_name(name, "run")
        validate_location(self.toy_uri, "toy_uri", required=False)
        for name in self.saes:
            validate_name(name, "SAE name")
        for hook in self.hooks:
            validate_hook_name(hook)
        if self.crop_px < 16 or self.n_classes < 1 or self.features_per_block < 1 or not 0 < self.dense_frac <= 1:
            raise ConfigError(f"crop_px must be >= 16 (got {self.crop_px}), n_classes >= 1 (got {self.n_classes}), "
                              f"features_per_block >= 1 (got {self.features_per_block}), dense_frac in (0, 1] "
                              f"(got {self.dense_frac})")

    def out(self, store_uri: str) -> Location:
        """Where the site goes."""
        return Location.of(self.out_uri) if self.out_uri else StoreLayout(store_uri).dashboards(self.run)


def check(job: DashboardJob):
    """The store is published, the run's analysis complete, every named hook and SAE analysed in
    it, and the output writable. Returns ``(store, units)`` (:class:`~vsae.dashboard.site.SiteUnit`).

    Raises:
        UnknownRun: no complete analysis of the run, or a named hook or SAE is not in it.
    """
    from vsae.analysis.results import NEURONS
    from vsae.dashboard.site import SiteUnit

    store = open_published(job.store_uri)
    layout = StoreLayout(store.uri)
    index = layout.analysis_index(layout.analysis(job.run)).read_json_or_none()
    if index is None:
        raise UnknownRun(f"no complete analysis of run {job.run!r} in {store.uri}: run "
                         f"`vsae analyze --store_uri {store.uri} --run {job.run}` first")
    analysed = index["hooks"]
    for hook in job.hooks:
        if hook not in analysed:
            raise UnknownRun(f"hook {hook!r} was not analysed in run {job.run!r}; analysed: {sorted(analysed)}")
    names = {u for units in analysed.values() for u in units}
    for name in job.saes:
        if name not in names:
            raise UnknownRun(f"no {name!r} in the analysis of run {job.run!r}; analysed: {sorted(names - {NEURONS})}")
    counts = {(u["hook"], u["unit"]): u["n_features"] for u in index["units"]}
    units = []
    for hook in job.hooks or sorted(analysed):
        for unit in analysed[hook]:
            wanted = job.neurons if unit == NEURONS else (not job.saes or unit in job.saes)
            if wanted:
                units.append(SiteUnit(hook, unit, counts[(hook, unit)]))
    if not units:
        raise ConfigError(f"nothing to show: no analysed unit of run {job.run!r} matches hooks={list(job.hooks)}, "
                          f"saes={list(job.saes)}, neurons={job.neurons}")
    out = job.out(store.uri)
    check_uri(out.uri, "out_uri")
    check_writable(out, "out_uri")
    return store, tuple(units)


def _block_unit(block, *, settings):
    from vsae.dashboard.site import write_block

    return write_block(block, settings)


def run(job: DashboardJob, executor: Executor) -> Report:
    """Write the site; a failed block fails the report and names its features."""
    from vsae.dashboard import site

    store, units = check(job)
    started = time.perf_counter()
    out = job.out(store.uri)
    report = Report("dashboard", to_dict(job), store_uri=store.uri,
                    notes=weights_note(store.spec.weights, store.spec.model_id))
    layout = StoreLayout(store.uri)
    digest = layout.analysis_index(layout.analysis(job.run)).read_json()["inputs_digest"]
    settings = site.Settings(store.uri, job.run, out.uri, units, job.source_uri or None, job.crop_px,
                             job.n_classes, job.dense_frac, digest, job.visualize_run, job.tuning_run,
                             job.graph_run, job.toy_uri)
    client = site.client_for(store.uri, digest)
    site.write_assets(out)
    counts = {(u.hook, u.unit): site.write_unit_index(client, settings, u, out) for u in units}
    for hook in dict.fromkeys(u.hook for u in units):
        site.write_mono_plot(client, settings, hook, out)
    sections = site.write_sections(client, settings, out)
    site.write_index(client, settings, counts, sections, out)
    seconds = {"indexes": time.perf_counter() - started}
    tally = {"pages": 0, "images": 0, "unreadable": 0}
    t0 = time.perf_counter()
    for outcome in executor.map(partial(_block_unit, settings=settings), site.blocks(settings, job.features_per_block),
                                desc="feature pages"):
        b = outcome.item
        if outcome.ok:
            for k in tally:
                tally[k] += outcome.value[k]
        else:
            report.fail(f"{b.hook} {b.unit} features {b.start}-{b.stop - 1}", outcome.error)
    seconds["pages"] = time.perf_counter() - t0
    report.data = {"out_uri": out.uri, **tally, "sections": [title for title, _ in sections],
                   "units": {f"{h}/{u}": c for (h, u), c in counts.items()}, "seconds": seconds}
    report.lines += [f"site           {out.uri}/index.html",
                     f"pages          {tally['pages']} feature pages, {tally['images']} example images"
                     + (f", {tally['unreadable']} images unreadable" if tally["unreadable"] else ""),
                     *(f"{h:<14} {u:<26} {c['features']:>6} units, {c['dead']} dead, {c['dense']} dense"
                       for (h, u), c in counts.items()),
                     *([] if layout.listing.exists() else
                       [f"examples       values only, no crops: {store.uri} has no dataset listing (no images)"]),
                     f"sections       {', '.join(report.data['sections']) or 'none present'}",
                     "view           python -m http.server --directory <site folder>, or open index.html",
                     "took           " + ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())]
    report.seconds = time.perf_counter() - started
    report.save(StoreLayout(store.uri))
    return report
