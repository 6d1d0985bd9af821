"""The CLI's one error boundary (cli/errors.py): every known failure is one line on stderr,
`ugsep <command>: error: ...`, with its family's exit code and no traceback unless --debug.

The commands run as a user runs them (a real subprocess). Spark is started by four of them
only, all on one warehouse that one `ugsep demo` fills (a scored day A)."""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cli.errors import FAMILIES, UNEXPECTED, explain

ROOT = Path(__file__).resolve().parents[1]
SPARK_INFO = re.compile(r"^spark \S+ \(.*\); its log: ")  # jobs/spark_session.py's one line on a quiet start
STEP = re.compile(r"^\[\S+ \d{4}-\d{2}-\d{2}\] ")  # a job's step progress ("[user-stage 2026-11-03] read ...")
# a Python warning (Feast's "experimental" RuntimeWarning; Feast resets the warning filters, so
# PYTHONWARNINGS cannot silence it): not this boundary's business
WARNING = re.compile(r"^\S+:\d+: \w*Warning: .*\n(?:[ \t]+\S.*\n)?", re.M)
DAY, EMPTY_DAY = "2026-11-02", "2026-11-03"


def ugsep(*args: str, log_dir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "UGSEP_REDIS"}
    env["UGSEP_LOG_DIR"] = str(log_dir)  # where a quiet Spark start sends the JVM's output
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=ROOT)


def one_error(p: subprocess.CompletedProcess, command: str, code: int) -> str:
    """The one error line of a failed command, checked: its exit code, nothing else on stderr
    (but Spark's start line, the job's step progress and Python warnings), no traceback."""
    assert p.returncode == code, p.stderr
    lines = [line for line in WARNING.sub("", p.stderr).splitlines()
             if line.strip() and not SPARK_INFO.match(line) and not STEP.match(line)]
    assert len(lines) == 1 and lines[0].startswith(f"ugsep {command}: error: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def write_config(path: Path, warehouse: Path, model: str) -> str:
    path.write_text(f'warehouse = "{warehouse}"\nmodel = "{model}"\nusers_per_batch = 16\npartitions = 1\n'
                    '[spark]\n"spark.master" = "local[2]"\n"spark.sql.shuffle.partitions" = "2"\n')
    return str(path)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.fixture
def empty_config(tmp_path, model_dir) -> str:
    """A config whose warehouse holds nothing (no tables, no Feast registry)."""
    return write_config(tmp_path / "job.toml", tmp_path / "warehouse", model_dir)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, model_dir) -> tuple[str, Path]:
    """(config, log dir) of a warehouse with DAY generated and scored: one Spark start."""
    root = tmp_path_factory.mktemp("scored")
    conf = write_config(root / "job.toml", root / "warehouse", model_dir)
    p = ugsep("demo", "--ds", DAY, "--users", "5", "--mean-candidates", "4", "--config", conf, log_dir=root / "logs")
    assert p.returncode == 0, p.stderr
    return conf, root / "logs"


@pytest.fixture
def corrupt_model(tmp_path, model_dir) -> str:
    ckpt = tmp_path / "corrupt"
    shutil.copytree(model_dir, ckpt)
    raw = bytearray((ckpt / "model.safetensors").read_bytes())
    raw[-100] ^= 0xFF  # still parses; the weights no longer hash to the recorded version
    (ckpt / "model.safetensors").write_bytes(bytes(raw))
    return str(ckpt)


# --- the family table, in process --------------------------------------------------------------


def test_every_family_has_its_own_documented_code():
    by_name: dict[str, set[int]] = {}
    for fam in [*FAMILIES, UNEXPECTED]:
        by_name.setdefault(fam.name, set()).add(fam.code)
    assert all(len(codes) == 1 for codes in by_name.values()), by_name
    codes = {name: codes.pop() for name, codes in by_name.items()}
    assert codes == {"unexpected": 1, "bad input": 2, "checkpoint": 3, "tables": 4, "data not ready": 5,
                     "concurrent write": 6, "feature store": 7, "interrupted": 130}
    doc = sys.modules["cli.errors"].__doc__
    for name, code in codes.items():
        assert re.search(rf"^\s+{code}\s+{name}\b", doc, re.M), f"cli/errors.py does not document {code} {name}"


def test_known_exceptions_map_to_their_family():
    from feast.errors import FeatureServiceNotFoundException, FeatureViewNotFoundException
    from pyspark.errors import AnalysisException

    from feature_store.store import OnlineStoreError
    from jobs.delta_io import ContractError, DayConflictError
    from jobs.score_stage import UserStateError
    from jobs.validation import EmptyDayError
    from serving.online_scorer import ItemFieldError, StateVersionError, UnknownUserError
    from ugsep.checkpoint import CheckpointError

    assert explain(KeyError("rows_out")) == (2, "missing key 'rows_out'")
    assert explain(ValueError("--ds 'x' is not a date")) == (2, "--ds 'x' is not a date")
    assert explain(FileNotFoundError("job config a.toml does not exist"))[0] == 2
    assert explain(ItemFieldError("a candidate item is missing field 'price'")) == (
        2, "a candidate item is missing field 'price'")
    assert explain(CheckpointError("x/config.json: no such file"))[0] == 3
    assert explain(StateVersionError("online user_state of user 1 was written by model a"))[0] == 3
    # subclasses of ValueError / RuntimeError go to their own family, not to ValueError's
    assert explain(ContractError("table candidates: no Delta table at /w/candidates")) == (
        4, "table candidates: no Delta table at /w/candidates")
    assert explain(EmptyDayError("no candidates for ds=2026-11-03"))[0] == 5
    assert explain(UserStateError("3 users of ds=2026-11-03 have valid features but no user_state"))[0] == 5
    code, msg = explain(UnknownUserError("user 42 has neither user_state nor user_features in the online store"))
    assert code == 5 and msg.startswith("user 42 has neither user_state nor user_features in the online store")
    conflict = ("/w/scores: another run committed to ds=2026-11-03 while this run (r1) was writing it "
                "(ConcurrentAppendException); nothing of this write was committed; rerun once the other run is done")
    assert explain(DayConflictError(conflict)) == (6, conflict)
    for e in (FeatureViewNotFoundException("user_state", "ugsep"), FeatureServiceNotFoundException("s", "ugsep")):
        code, msg = explain(e)
        assert code == 7 and "does not exist in project ugsep" in msg and "`ugsep features apply`" in msg
    assert explain(OnlineStoreError("the Redis online store at h:1 is unreachable (x)"))[0] == 7

    # Spark's own: the error class and first line, never the JVM stack
    code, msg = explain(AnalysisException(message="[PATH_NOT_FOUND] Path does not exist: file:/w/x. SQLSTATE: 42K03"
                                                  "\n\nJVM stacktrace:\norg.apache.spark.sql.AnalysisException: ...\n"
                                                  "\tat org.apache.spark.sql.errors..."))
    assert code == 4 and "[PATH_NOT_FOUND] Path does not exist: file:/w/x." in msg and "JVM" not in msg


def test_redis_errors_name_the_address():
    import redis

    code, msg = explain(redis.exceptions.ConnectionError("Error 111 connecting to 127.0.0.1:6399. Connection refused."))
    assert code == 7 and "the Redis online store at 127.0.0.1:6399 is unreachable" in msg
    assert "is redis-server running?" in msg
    assert explain(redis.exceptions.TimeoutError("Timeout reading from socket"))[0] == 7


def test_delta_conflicts_are_concurrent_writes_however_they_arrive():
    import delta.exceptions
    from pyspark.errors.exceptions.captured import CapturedException

    names = ("ConcurrentAppendException", "ConcurrentDeleteReadException", "ConcurrentDeleteDeleteException",
             "MetadataChangedException", "ProtocolChangedException", "ConcurrentTransactionException",
             "ConcurrentWriteException")
    for name in names:
        code, msg = explain(getattr(delta.exceptions, name)(message="Files were added to partition [ds=2026-11-03] "
                                                                    "by a concurrent update."))
        assert code == 6, name
        assert msg.startswith("the day is being written by another run") and "nothing of this run was committed" in msg
        assert "rerun after" in msg
    # as PySpark converts it from the JVM (delta.exceptions.captured)
    for name in names:  # (made without __init__, which needs a JVM)
        cls = getattr(delta.exceptions.captured, name)
        assert issubclass(cls, CapturedException) and explain(cls.__new__(cls))[0] == 6, name

    class Py4JJavaError(Exception):  # stands in for py4j's: only its text names the Java class
        pass

    wrapped = Py4JJavaError("An error occurred while calling o81.save.\n"
                            ": io.delta.exceptions.ConcurrentAppendException: [DELTA_CONCURRENT_APPEND] Files were "
                            "added to partition [ds=2026-11-03] by a concurrent update.\n"
                            "\tat io.delta.exceptions.ConcurrentAppendException.<init>(...)")
    code, msg = explain(wrapped)
    assert code == 6 and "io.delta.exceptions.ConcurrentAppendException: [DELTA_CONCURRENT_APPEND]" in msg
    assert "\tat" not in msg and "o81.save" not in msg


def test_anything_else_is_unexpected_and_points_at_debug():
    assert explain(ZeroDivisionError("division by zero")) == (
        1, "unexpected ZeroDivisionError: division by zero; rerun with --debug for the traceback")
    worker = RuntimeError("\n  An exception was thrown from the Python worker. Please see the stack trace below.\n"
                          "Traceback (most recent call last):\n"
                          "  File \"/w/jobs/workers.py\", line 49, in cached_model\n"
                          "    raise RuntimeError(\n"
                          "RuntimeError: /m holds model_version a, but this job labels its output b\n")
    code, msg = explain(worker)
    assert code == 1 and msg.endswith("RuntimeError: /m holds model_version a, but this job labels its output b; "
                                      "rerun with --debug for the traceback")


def test_an_unexpected_error_is_one_line_and_debug_raises_it(monkeypatch, capsys):
    import cli.main
    import cli.model_commands

    def boom(_):
        return 1 / 0

    monkeypatch.setattr(cli.model_commands, "cmd_eval", boom)
    assert cli.main.main(["eval", "--ckpt", "in"]) == 1
    err = capsys.readouterr().err
    assert err == ("ugsep eval: error: unexpected ZeroDivisionError: division by zero; "
                   "rerun with --debug for the traceback\n")
    with pytest.raises(ZeroDivisionError):
        cli.main.main(["--debug", "eval", "--ckpt", "in"])
    with pytest.raises(ZeroDivisionError):  # also after the command
        cli.main.main(["eval", "--ckpt", "in", "--debug"])


# --- the real command, no Spark ---------------------------------------------------------------


def test_a_corrupt_checkpoint(tmp_path, corrupt_model):
    line = one_error(ugsep("eval", "--ckpt", corrupt_model, log_dir=tmp_path), "eval", 3)
    assert "the checkpoint is corrupt or was edited" in line
    for args in (["--debug", "eval", "--ckpt", corrupt_model], ["eval", "--ckpt", corrupt_model, "--debug"]):
        p = ugsep(*args, log_dir=tmp_path)
        assert p.returncode != 0 and "Traceback" in p.stderr and "CheckpointError" in p.stderr


def test_features_apply_fails_when_redis_is_down(tmp_path, empty_config):
    port = closed_port()
    line = one_error(ugsep("features", "apply", "--config", empty_config, "--redis", f"127.0.0.1:{port}",
                           log_dir=tmp_path), "features", 7)
    assert f"the Redis online store at 127.0.0.1:{port} is unreachable" in line and "redis-server running" in line


def test_materialize_fails_when_redis_is_down(tmp_path, empty_config):
    port = closed_port()
    p = ugsep("materialize", "--ds", DAY, "--config", empty_config, "--redis", f"127.0.0.1:{port}", log_dir=tmp_path)
    assert f"127.0.0.1:{port} is unreachable" in one_error(p, "materialize", 7)
    assert "its log:" not in p.stderr  # checked before Spark starts


def test_serve_score_before_features_apply(tmp_path, empty_config):
    items = tmp_path / "items.json"
    items.write_text("[]")
    line = one_error(ugsep("serve-score", "--config", empty_config, "--user-id", "42", "--items", str(items),
                           log_dir=tmp_path), "serve-score", 7)
    assert "does not exist in project ugsep" in line and "run `ugsep features apply`" in line


def test_serve_score_of_an_unknown_user(tmp_path, empty_config):
    items = tmp_path / "items.json"
    items.write_text("[]")
    applied = ugsep("features", "apply", "--config", empty_config, log_dir=tmp_path)
    assert applied.returncode == 0, applied.stderr
    line = one_error(ugsep("serve-score", "--config", empty_config, "--user-id", "42", "--items", str(items),
                           log_dir=tmp_path), "serve-score", 5)
    assert line.startswith("ugsep serve-score: error: user 42 has neither user_state nor user_features in the "
                           "online store")


# --- the real command, with Spark (one JVM each) ----------------------------------------------


@pytest.mark.spark
def test_a_missing_input_table(tmp_path, empty_config):
    line = one_error(ugsep("user-stage", "--ds", DAY, "--config", empty_config, log_dir=tmp_path), "user-stage", 4)
    assert "no Delta table at" in line


@pytest.mark.spark
def test_a_day_without_candidates(scored):
    conf, logs = scored
    line = one_error(ugsep("run", "--ds", EMPTY_DAY, "--config", conf, log_dir=logs), "run", 5)
    assert f"no candidates for ds={EMPTY_DAY}" in line


@pytest.mark.spark
def test_show_a_day_without_scores(scored):
    conf, logs = scored
    line = one_error(ugsep("show", "--ds", EMPTY_DAY, "--config", conf, log_dir=logs), "show", 5)
    assert f"no scores for ds={EMPTY_DAY} in " in line and "scores" in line
