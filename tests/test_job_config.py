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
