"""Sweeps on a PostgreSQL server: two workers on one study, a sweep killed with SIGKILL and resumed, and the
one-line errors of a storage that cannot be opened (driver missing, server unreachable, wrong password,
no such database).

The server is ``RLESEG_TEST_POSTGRES_URL`` (``postgresql://USER:PASSWORD@HOST:PORT/DB``; ``.ci/run`` starts
one and sets it), else the one ``.ci/run --postgres-only`` creates on 127.0.0.1:5432 if it answers; without
either, the tests that need a server skip (set but unreachable: they fail). Each test works in a schema of
its own, dropped afterwards, so reruns and parallel runs never share a study. The sweeps reuse the tiny
experiment of ``test_sweep_runs.py`` (one epoch on 32x32 composites, seconds per trial).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from test_sweep_runs import _wait, base_file, tiny_base, write_sweep  # noqa: F401 - base_file: a fixture

from rleseg.cli import main
from rleseg.sweep import SweepSpec, open_storage, storage_url, study_progress

pytestmark = pytest.mark.postgres

ENV = "RLESEG_TEST_POSTGRES_URL"
#: the server `.ci/run --postgres-only` starts (tried when the variable is unset)
LOCAL_URL = "postgresql://rleseg_ci:rleseg_ci_pw@127.0.0.1:5432/rleseg_test"
HOW = (
    f"set {ENV}=postgresql://USER:PASSWORD@HOST:PORT/DB, "
    'or start one with: eval "$(sudo .ci/run --postgres-only)"'
)


def _connect(url: str, **kwargs: object):
    import psycopg
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return psycopg.connect(
        host=u.host or "localhost",
        port=u.port or 5432,
        user=u.username,
        password=u.password,
        dbname=u.database,
        connect_timeout=3,
        **kwargs,
    )


@pytest.fixture(scope="session")
def pg_server() -> str:
    """The server's URL (``postgresql://``, no driver named: the sweep picks psycopg 3 itself)."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg 3 is not installed: pip install -e '.[dev,postgres]'")
    url = os.environ.get(ENV)
    try:
        with _connect(url or LOCAL_URL):
            pass
    except Exception as err:  # noqa: BLE001
        reason = " ".join(str(err).split())
        if url:  # asked for explicitly: a broken server is a failure, not a skip
            pytest.fail(f"{ENV} is set but its server does not answer: {reason}")
        pytest.skip(f"no PostgreSQL server ({ENV} unset, none at 127.0.0.1:5432: {reason}); {HOW}")
    return url or LOCAL_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A URL whose tables go to a fresh schema of this test (dropped afterwards)."""
    from sqlalchemy.engine import make_url

    schema = f"rleseg_test_{uuid.uuid4().hex[:12]}"
    with _connect(pg_server, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    url = make_url(pg_server).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with _connect(pg_server, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def _study(spec: SweepSpec, url: str) -> optuna.Study:
    return optuna.load_study(study_name=spec.study_name, storage=open_storage(url, heartbeat=False))


# ---------------------------------------------------------------------------------------- workers
def test_two_workers_on_one_postgres_study_never_train_a_grid_point_twice(
    pg_url: str,  # first: without a server, skip before the data is prepared
    base_file: Path,  # noqa: F811
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
):
    space = {"data.init_args.tokenizer": ["lac", "mc"], "data.init_args.tokenizer_args.subsample": [4, 8]}
    path = write_sweep(tmp_path, base_file, "pgworkers", search_space=space)
    assert main(["sweep", "--config", str(path), "--workers", "2", "--storage", pg_url]) == 0
    spec = SweepSpec.load(path)
    study = _study(spec, pg_url)
    assert storage_url(pg_url).startswith("postgresql+psycopg://")
    trials = study.get_trials()
    assert all(t.state.is_finished() for t in trials)
    trained = [t for t in trials if "train_seconds" in t.user_attrs]
    points = Counter((t.params["tokenizer"], t.params["subsample"]) for t in trained)
    assert set(points) == {(k, s) for k in ("lac", "mc") for s in (4, 8)}
    assert set(points.values()) == {1}, points  # each grid point trained exactly once
    assert all(t.state == TrialState.COMPLETE for t in trained)
    for t in trials:  # any extra trial is a duplicate drawn in a race, pruned before training
        if "train_seconds" not in t.user_attrs:
            assert t.state == TrialState.PRUNED and "duplicate_of" in t.user_attrs, t
    workers = {t.user_attrs["worker"] for t in trained}
    assert all(w.rsplit(":", 1)[1] != str(os.getpid()) for w in workers)  # trained by the workers
    assert study_progress(study).done == 4
    out = capfd.readouterr()
    assert "storage postgresql://" in out.out and ":***@" in out.out
    assert _password(pg_url) not in out.out + out.err


# -------------------------------------------------------------------------------- SIGKILL, resume
def test_postgres_sweep_killed_mid_trial_resumes_exactly(pg_url: str, base_file: Path, tmp_path: Path):  # noqa: F811
    # Trial 1 waits at its training start while `hold` exists (tests/sweep_gate.py): the kill lands
    # mid-trial by construction. Inline runner: the trial trains in the sweep process the kill ends.
    hold = tmp_path / "hold"
    gate = {"class_path": "sweep_gate.HoldTrial", "init_args": {"trial": "trial_0001", "hold": str(hold)}}
    path = write_sweep(
        tmp_path,
        base_file,
        "pgkilled",
        search_space={"data.init_args.tokenizer": ["lac", "mc"]},
        overrides={"trainer.callbacks": [gate]},
        storage={"url": pg_url, "heartbeat_interval": 1, "grace_period": 2},
    )
    spec = SweepSpec.load(path)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(Path(__file__).parent), os.environ.get("PYTHONPATH")])
        ),
    }
    hold.touch()
    try:
        with open(tmp_path / "first.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "rleseg", "sweep", "--config", str(path)],
                cwd=tmp_path,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            _wait(lambda: Path(f"{hold}.trial_0001").exists(), proc, "trial 1 to start training")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    finally:
        hold.unlink()
    before = _study(spec, pg_url).get_trials()
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]
    done, interrupted = before

    sys.path.insert(0, str(Path(__file__).parent))  # the resumed (inline) trial imports sweep_gate
    try:
        assert main(["sweep", "--config", str(path), "--resume"]) == 0
    finally:
        sys.path.remove(str(Path(__file__).parent))
    after = _study(spec, pg_url).get_trials()
    # Every trial finished; the completed one is kept as it was, the killed one failed (stale heartbeat)
    # and was retried once, to completion: three trials, each grid point completed exactly once.
    assert len(after) == 3 and all(t.state.is_finished() for t in after)
    assert after[0].state == TrialState.COMPLETE and after[0].datetime_complete == done.datetime_complete
    assert after[0].user_attrs == done.user_attrs
    assert after[1].state == TrialState.FAIL and after[1].params == interrupted.params
    assert after[2].state == TrialState.COMPLETE and after[2].params == interrupted.params
    assert after[2].system_attrs["retry_history"] == [interrupted.number]
    completed = Counter(t.params["tokenizer"] for t in after if t.state == TrialState.COMPLETE)
    assert completed == {"lac": 1, "mc": 1}
    progress = study_progress(_study(spec, pg_url))
    assert (progress.done, progress.running, progress.waiting) == (2, 0, 0)


# ------------------------------------------------------------------------------- one-line errors
def _password(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).password or "\0"


def _sweep_error(tmp_path: Path, url: str, capsys: pytest.CaptureFixture[str]) -> str:
    """``rleseg sweep --storage URL``'s stderr: exit status 2, one message line, no traceback."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump(tiny_base(tmp_path / "data"), sort_keys=False))
    path = write_sweep(tmp_path, base, "pgerror")
    capsys.readouterr()
    assert main(["sweep", "--config", str(path), "--storage", url]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert (
        len(lines) == 2
        and lines[0].startswith("rleseg sweep: error: storage ")
        and "RLESEG_DEBUG" in lines[1]
    ), err
    assert "Traceback" not in err and _password(url) not in err, err
    return lines[0]


def test_missing_driver_is_one_line_naming_the_extra(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setitem(sys.modules, "psycopg", None)  # `import psycopg` now fails as if not installed
    line = _sweep_error(tmp_path, "postgresql://me:s3cr3t-pw@127.0.0.1:5432/sweeps", capsys)
    assert "driver 'psycopg' is not installed" in line and "pip install 'rleseg[postgres]'" in line, line
    assert "postgresql+psycopg://me:***@127.0.0.1:5432/sweeps" in line


def test_unreachable_server_is_one_line_naming_host_and_port(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed: pip install -e '.[dev,postgres]'")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    line = _sweep_error(tmp_path, f"postgresql://me:s3cr3t-pw@127.0.0.1:{port}/sweeps", capsys)
    assert f"cannot reach the database server at 127.0.0.1:{port}" in line, line
    assert "Connection refused" in line


def test_wrong_password_is_one_line(pg_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from sqlalchemy.engine import make_url

    u = make_url(pg_server)
    wrong = u.set(password=f"wrong-{uuid.uuid4().hex[:8]}").render_as_string(hide_password=False)
    line = _sweep_error(tmp_path, wrong, capsys)
    assert f"authentication failed for user {u.username!r} on {u.host}:{u.port or 5432}" in line, line


def test_missing_database_is_one_line(pg_server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    from sqlalchemy.engine import make_url

    name = f"rleseg_nodb_{uuid.uuid4().hex[:8]}"
    line = _sweep_error(tmp_path, make_url(pg_server).set(database=name).render_as_string(False), capsys)
    assert f"database {name!r} does not exist" in line, line
