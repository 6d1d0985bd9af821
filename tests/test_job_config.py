"""Job config loading: relative paths, unknown keys, bad files."""

import pytest

from jobs.config import load_config, spark_conf_pairs


def test_relative_paths_are_relative_to_the_config_file(tmp_path, monkeypatch):
    (tmp_path / "conf").mkdir()
    path = tmp_path / "conf" / "job.toml"
    path.write_text('warehouse = "wh"\nmodel = "../q"\n')
    monkeypatch.chdir(tmp_path)  # a scheduler starts jobs from anywhere
    cfg = load_config(str(path))
    assert cfg.warehouse == str(tmp_path / "conf" / "wh")
    assert cfg.model == str(tmp_path / "conf" / "../q")
    assert load_config(str(path), model="cli/override").model == "cli/override"  # command-line overrides stay as given


def test_unknown_keys_and_bad_toml_name_the_problem(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('warehous = "x"\n')
    with pytest.raises(ValueError, match=r"unknown keys \['warehous'\]"):
        load_config(str(path))
    path.write_text("warehouse = \n")
    with pytest.raises(ValueError, match="not valid TOML"):
        load_config(str(path))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_config(str(tmp_path / "missing.toml"))


def test_spark_conf_pairs_split_at_the_first_equals_and_name_a_bad_one():
    conf = spark_conf_pairs(["spark.driver.extraJavaOptions=-XX:A=1 -XX:+B", "spark.master=local[2]"])
    assert conf == {"spark.driver.extraJavaOptions": "-XX:A=1 -XX:+B", "spark.master": "local[2]"}
    with pytest.raises(ValueError, match="'spark.master' is not of the form key=value"):
        spark_conf_pairs(["spark.master"])


@pytest.mark.parametrize("line, message", [
    ('spark = "x"', r"spark = 'x' is not a table"),
    ('max_candidates_per_call = "4096"', r"max_candidates_per_call = '4096' is not an integer"),
    ("users_per_batch = 0", r"users_per_batch = 0, must be at least 1"),
    ("partitions = 2.5", r"partitions = 2.5 is not an integer"),
    ("task_gpus = true", r"task_gpus = True is not a number"),
    ('device = "gpu"', r"device = 'gpu', expected auto, cpu, cuda or cuda:N"),
])
def test_bad_values_are_named_with_the_file(tmp_path, line, message):
    path = tmp_path / "job.toml"
    path.write_text(line + "\n")
    with pytest.raises(ValueError, match=f"job config {path}: {message}"):
        load_config(str(path))


def test_good_values_pass(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('device = "cuda:1"\ntask_gpus = 1\npartitions = 0\n[spark]\n"spark.master" = "local[2]"\n')
    cfg = load_config(str(path))
    assert (cfg.device, cfg.task_gpus, cfg.spark) == ("cuda:1", 1, {"spark.master": "local[2]"})


@pytest.mark.parametrize("hook", ['fail_once_marker = "/tmp/x"', 'fail_days = ["2026-11-01"]'])
def test_a_job_config_cannot_set_test_hooks(tmp_path, hook):
    path = tmp_path / "job.toml"
    path.write_text(hook + "\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_config(str(path))


def test_faults_come_from_one_environment_variable(monkeypatch):
    from jobs import faults

    monkeypatch.delenv(faults.ENV, raising=False)
    assert faults.worker_exit_marker() == ""
    faults.check_day("2026-11-01")  # no fault set: nothing happens
    monkeypatch.setenv(faults.ENV, "fail-day=2026-11-01,worker-exit-once=/tmp/m,fail-day=2026-11-03")
    assert faults.worker_exit_marker() == "/tmp/m"
    for ds in ("2026-11-01", "2026-11-03"):
        with pytest.raises(RuntimeError, match=f"injected failure for ds={ds}"):
            faults.check_day(ds)
    faults.check_day("2026-11-02")


@pytest.mark.parametrize("key", ["spark.driver.extraJavaOptions", "spark.executor.extraJavaOptions", "spark.jars",
                                 "spark.jars.packages", "spark.driver.extraClassPath", "spark.files",
                                 "spark.executor.resource.gpu.discoveryScript", "spark.executorEnv.LD_PRELOAD"])
def test_a_config_file_cannot_make_spark_run_code(tmp_path, monkeypatch, key):
    monkeypatch.delenv("UGSEP_ALLOW_JVM_CONF", raising=False)
    path = tmp_path / "job.toml"
    path.write_text(f'[spark]\n"{key}" = "x"\n"spark.sql.shuffle.partitions" = "4"\n')
    with pytest.raises(ValueError, match=rf"\[spark\] may not set \['{key}'\].*UGSEP_ALLOW_JVM_CONF=1"):
        load_config(str(path))
    monkeypatch.setenv("UGSEP_ALLOW_JVM_CONF", "1")  # the operator's choice
    assert load_config(str(path)).spark[key] == "x"


def test_configs_are_read_only_under_the_config_root(tmp_path, monkeypatch):
    (tmp_path / "allowed").mkdir()
    inside, outside = tmp_path / "allowed" / "job.toml", tmp_path / "job.toml"
    for p in (inside, outside):
        p.write_text("partitions = 2\n")
    monkeypatch.setenv("UGSEP_CONFIG_ROOT", str(tmp_path / "allowed"))
    assert load_config(str(inside)).partitions == 2
    with pytest.raises(ValueError, match="outside .*allowed"):
        load_config(str(outside))
    with pytest.raises(ValueError, match="outside"):
        load_config(str(tmp_path / "allowed" / ".." / "job.toml"))
