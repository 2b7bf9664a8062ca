"""The ``vsae`` command: every job, ``info`` on a store, ``hooks`` of a model.

    vsae demo                                   the demo: extract, train, analyse (local Ray)
    vsae extract --config pipelines/configs/inception_v1.toml [--hooks mixed4a=mean ...]
    vsae synthetic | train | analyze | nightly --config FILE [--field value ...]
    vsae info runs/demo/inception_v1.zarr       what a store holds
    vsae hooks inception_v1.lucid ['mixed4a/*'] a model's hook table

Every job's fields are options (``--help`` lists them with their meaning and default); a TOML
file given with ``--config`` is read first, options override it. ``--resources.executor local``
runs a job in this process without Ray. An error a user can cause (a mistyped hook, a missing
store, a bad value) prints one line and a hint, and exits with status 2; ``--debug`` shows the
traceback. A job whose units failed exits with status 1; an unexpected error prints its
traceback and exits with status 1; Ctrl-C prints one line and exits with status 130. Nothing printed carries credentials: URIs are redacted
(:mod:`vsae.redact`), in tracebacks and in log records of any library.

The command lives here and knows nothing of Ray: ``cluster.cli`` hands it the Ray executor, and
the console script and ``pipelines/*.py`` call that.
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable

from vsae import config
from vsae.errors import (
    ConfigError,
    NoClassLabels,
    StaleStore,
    StoreIncomplete,
    StoreNotFound,
    UnknownHook,
    UnknownRun,
    VsaeError,
    WordNetMissing,
)
from vsae.jobs import JOBS
from vsae.redact import install_log_redaction, redact_text

USAGE_ERROR = 2
INTERRUPTED = 130
"""The shell's status for a command ended by Ctrl-C (128 + SIGINT)."""

_HINTS: tuple[tuple[type[BaseException], str], ...] = (
    (UnknownHook, "`vsae hooks MODEL` lists a model's hooks; `vsae info STORE` a store's"),
    (StoreNotFound, "check the URI; `vsae extract` (or `vsae demo`) makes a store"),
    (StoreIncomplete, "re-run the job that writes the store: it resumes and publishes"),
    (StaleStore, "extract into a new store URI"),
    (UnknownRun, "`vsae info STORE` lists the runs and SAEs of a store"),
    (WordNetMissing, "python -m vsae.analysis.wordnet install"),
    (NoClassLabels, "`--analysis.classes false` analyses statistics and dataset examples only"),
    (ConfigError, "`vsae JOB --help` lists every field with its meaning and default"),
)


def _hint(err: BaseException, job: str | None) -> str:
    for kind, hint in _HINTS:
        if isinstance(err, kind):
            return hint.replace("JOB", job) if job else hint
    return ""


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command's parser; with ``only``, just that job's options are built (a job's options
    come from its config class, whose module is imported for it)."""
    parser = argparse.ArgumentParser(prog="vsae", description="Activation stores, sparse autoencoders and "
                                     "analyses for vision interpretability.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for kind in JOBS.values():
        p = sub.add_parser(kind.name, help=kind.help, description=f"{kind.help}.")
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
        if only in (None, kind.name):
            p.description = f"{kind.help}. {_first_line(kind.config_class)}"
            config.config_parser(kind.config_class, parser=p)
    info = sub.add_parser("info", help="what a store holds: hooks, rows, tasks, runs, SAEs, analyses",
                          description="What a store holds: hooks, rows, tasks, runs, SAEs, analyses, state.")
    info.add_argument("store", help="the store's local path or URI")
    info.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    hooks = sub.add_parser("hooks", help="a model's input format and hook table",
                           description="A registered model's card: input format and hook table.")
    hooks.add_argument("model", help="a model id, e.g. inception_v1.lucid or clip_vit_b32.openai")
    hooks.add_argument("pattern", nargs="?", default="*", help="only hooks matching this glob, e.g. 'mixed4a/*'")
    hooks.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return parser


def _first_line(cls: type) -> str:
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def main(argv: list[str] | None = None, *, ray_executor: Callable | None = None) -> int:
    """Run the command line ``argv``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    install_log_redaction()
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in JOBS else None).parse_args(argv)
    command = args.command
    debug = args.debug
    try:
        if command == "info":
            from vsae.info import format_store_info, store_info

            print(redact_text(format_store_info(store_info(args.store))))
            return 0
        if command == "hooks":
            from vsae.info import hook_table

            print(redact_text(hook_table(args.model, args.pattern)))
            return 0
        return run_job(command, args, ray_executor)
    except VsaeError as err:
        if debug:
            print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        lines = str(err).strip().splitlines() or [type(err).__name__]
        print(f"vsae {command}: error: {lines[0]}", file=sys.stderr)
        for line in lines[1:]:
            print(f"  {line}", file=sys.stderr)
        hint = _hint(err, command)
        if hint:
            print(f"  hint: {hint}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        if debug:
            print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        print(f"vsae {command}: interrupted; what was already written is kept (the same command "
              "resumes the jobs that resume, see README)", file=sys.stderr)
        return INTERRUPTED
    except Exception:  # not vsae's: the traceback, with any URI in it redacted
        print(redact_text(traceback.format_exc()), file=sys.stderr, end="")
        return 1


def run_job(name: str, args: argparse.Namespace, ray_executor: Callable | None) -> int:
    """Build the job's config from the parsed options, run it on the executor its resources name,
    print its report; 0 if it succeeded, 1 if units of work failed."""
    from vsae.executor import make_executor

    kind = JOBS[name]
    module = kind.load()
    cfg = config.from_namespace(kind.config_class, args, skip=("debug", "command"))
    module.check(cfg)  # before the executor exists: a mistake costs no Ray start-up
    executor = make_executor(cfg.resources, ray_factory=ray_executor)
    report = module.run(cfg, executor)
    print(report.summary())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
