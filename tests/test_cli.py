"""The ``vsae`` command and the pipeline scripts as a user meets them: help, mistakes, info."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from vsae.jobs import JOBS

ROOT = Path(__file__).resolve().parents[1]
VSAE = str(Path(sys.executable).parent / "vsae")
PIPELINES = sorted(p for p in (ROOT / "pipelines").glob("*.py") if not p.name.startswith("_"))


def vsae(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([VSAE, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


SUBCOMMANDS = [["--help"], *[[name, "--help"] for name in JOBS], ["info", "--help"], ["hooks", "--help"]]

# Asks every subcommand and pipeline script for its help in one Python process (each start costs
# seconds of imports): ``vsae ARGS`` as ``cluster.cli.main(ARGS)``, a script as ``python SCRIPT``
# runs it (``runpy`` as ``__main__``, its folder first on ``sys.path``).
HELP_RUNNER = """
import contextlib, io, json, runpy, sys
from cluster.cli import main
answers = {}
for kind, args in json.loads(sys.argv[1]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            if kind == "script":
                sys.argv, sys.path[0] = [args, "--help"], args.rsplit("/", 1)[0]
                runpy.run_path(args, run_name="__main__")
                rc = 0
            else:
                rc = main(args)
        except SystemExit as stop:
            rc = stop.code or 0
    answers[args if kind == "script" else " ".join(args)] = [rc, out.getvalue(), err.getvalue()]
print(json.dumps(answers))
"""


@pytest.fixture(scope="module")
def helps() -> dict[str, list]:
    """``[exit code, stdout, stderr]`` of every help, by script path or ``vsae`` arguments."""
    import json

    asks = [["vsae", args] for args in SUBCOMMANDS] + [["script", str(p)] for p in PIPELINES]
    done = subprocess.run([sys.executable, "-c", HELP_RUNNER, json.dumps(asks)], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.parametrize("args", SUBCOMMANDS, ids=lambda a: " ".join(a))
def test_every_subcommand_has_help(args, helps):
    rc, out, err = helps[" ".join(args)]
    assert rc == 0, err
    assert "usage: vsae" in out
    if args == ["--help"]:  # and the installed command itself
        done = vsae(*args)
        assert done.returncode == 0, done.stderr
        assert "usage: vsae" in done.stdout


@pytest.mark.parametrize("script", PIPELINES, ids=lambda p: p.name)
def test_every_pipeline_script_has_help(script, helps):
    rc, out, err = helps[str(script)]
    assert rc == 0, err
    assert "--resources.executor" in out and "--config" in out


def test_a_mistyped_hook_fails_at_once_with_a_suggestion_and_no_traceback(tmp_path):
    """Checked from the model's card before Ray starts or any weights load."""
    started = time.perf_counter()
    done = vsae("extract", "--hooks", "mixed4a/5x6=mean", "--store_uri", str(tmp_path / "s.zarr"))
    seconds = time.perf_counter() - started
    assert done.returncode == 2 and not done.stdout
    assert "did you mean 'mixed4a/5x5'" in done.stderr and "Traceback" not in done.stderr
    assert done.stderr.startswith("vsae extract: error: model inception_v1.lucid has no hook 'mixed4a/5x6'")
    assert "hint: `vsae hooks MODEL`" in done.stderr
    assert seconds < 10, seconds  # about 1.5 s on a loaded 2-core machine; the point is: no Ray, no model
    # the same check in-process: neither Ray nor torch was imported on the way to the error
    code = ("import sys; from cluster.cli import main; "
            f"rc = main(['extract', '--hooks', 'mixed4a/5x6=mean', '--store_uri', {str(tmp_path / 's.zarr')!r}]); "
            "assert rc == 2, rc; assert 'ray' not in sys.modules, 'ray imported'; assert 'torch' not in sys.modules, 'torch imported'")
    checked = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert checked.returncode == 0, checked.stderr


def test_bad_values_are_refused_naming_the_field_and_debug_shows_the_traceback(tmp_path):
    done = vsae("extract", "--grow", "ture")
    assert done.returncode == 2
    assert "grow: Input should be a valid boolean" in done.stderr and "(got 'ture')" in done.stderr
    assert "Traceback" not in done.stderr and "hint: `vsae extract --help`" in done.stderr
    done = vsae("train", "--train.epochs", "forty", "--saes", '[{"hook": "mixed4a"}]')
    assert done.returncode == 2 and "train.epochs: Input should be a valid number" in done.stderr
    done = vsae("--debug", "train", "--store_uri", str(tmp_path / "none.zarr"), "--saes", '[{"hook": "mixed4a"}]')
    assert done.returncode == 2 and "Traceback" in done.stderr and "StoreNotFound" in done.stderr
    done = vsae("train", "--store_uri", str(tmp_path / "none.zarr"), "--saes", '[{"hook": "mixed4a"}]')
    assert "Traceback" not in done.stderr and "no vsae store at" in done.stderr and "hint:" in done.stderr


def test_hooks_lists_a_models_card_and_hook_table():
    done = vsae("hooks", "inception_v1.lucid", "mixed4a/*")
    assert done.returncode == 0
    assert "224x224 RGB, resized with bilinear" in done.stdout and "values in [-117, 138]" in done.stdout
    assert "mixed4a/5x5 " in done.stdout and "(48, 14, 14)" in done.stdout and "12 of 123 hooks" in done.stdout
    done = vsae("hooks", "clip_vit_b32.openai")
    assert "blocks.11/resid_post" in done.stdout and "75 of 75 hooks" in done.stdout
    done = vsae("hooks", "inception_v1.lucd")
    assert done.returncode == 2 and "did you mean 'inception_v1.lucid'" in done.stderr


def test_info_shows_what_a_store_holds(demo_run):
    store, _, _ = demo_run
    done = vsae("info", store)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "RANDOM weights" in out and "published" in out and "mixed3b/5x5" in out and "magnitude:8" in out
    assert "run r1  (analysed)" in out and "topk-x2-k8" in out and "relu_l1-x2-l1_1" in out
    done = vsae("info", str(Path(store).parent / "nothing.zarr"))
    assert done.returncode == 2 and "no vsae store at" in done.stderr


def test_ctrl_c_prints_one_line_and_the_rerun_finishes_the_store(tmp_path):
    """Ctrl-C (SIGINT) mid-job: status 130, one line on stderr, no traceback; what was written is
    kept and the same command resumes and completes the store."""
    import signal

    store = tmp_path / "s.zarr"
    args = [VSAE, "synthetic", "--resources.executor", "local", "--store_uri", str(store),
            "--data.n_rows", "60000", "--data.d_in", "128", "--data.n_features", "512", "--images_per_task", "1024"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while not any(store.rglob("zarr.json")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.5)
    assert proc.poll() is None, f"the job ended before it could be interrupted: {proc.communicate()}"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, (out, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1].startswith("vsae synthetic: interrupted; what was already written is kept")
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    from vsae.store import ActivationStore

    opened = ActivationStore.open(str(store))
    assert opened.published and opened.hook("synthetic").n_rows == 60_000
