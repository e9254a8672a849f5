import os
import subprocess
import sys
from pathlib import Path

import pytest

from polling import settings as settings_module
from polling.errors import ConfigError
from polling.settings import Settings, mask_url

ROOT = Path(__file__).resolve().parent.parent


def test_environment_overrides_env_file(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("# comment\nexport POLLING_FAILURE_THRESHOLD=7\nPOLLING_MAX_GAP='3'\n")
    settings = Settings.from_env({"POLLING_MAX_GAP": "5"}, env_file=env_file)
    assert (settings.failure_threshold, settings.max_gap) == (7, 5)
    assert not settings.redis_url_explicit


def test_bad_values_name_the_variable():
    with pytest.raises(ConfigError, match="POLLING_RECONCILE_SECONDS='soon': expected float"):
        Settings.from_env({"POLLING_RECONCILE_SECONDS": "soon"}, env_file="/nonexistent")
    with pytest.raises(ConfigError, match="POLLING_MAX_REGISTERS must be between 1 and 125"):
        Settings.from_env({"POLLING_MAX_REGISTERS": "200"}, env_file="/nonexistent")
    with pytest.raises(ConfigError, match="POLLING_GC_REFREEZE_SECONDS must be >= 0"):
        Settings.from_env({"POLLING_GC_REFREEZE_SECONDS": "-1"}, env_file="/nonexistent")


@pytest.mark.parametrize(
    ("name", "raw"),
    [
        ("POLLING_BATCH_WINDOW", "nan"),
        ("POLLING_RECONCILE_SECONDS", "inf"),
        ("POLLING_OVERDUE_GRACE", "-5"),
        ("POLLING_HEALTH_WINDOW", "0"),
        ("POLLING_HEALTH_WINDOW", "-10"),
        ("POLLING_CANARY_TIMEOUT", "-1"),
        ("POLLING_TIMER_PRECISION", "0"),
        ("POLLING_DIAGNOSTICS_SECONDS", "0"),
        ("POLLING_MIN_INTERVAL", "-1"),
        ("POLLING_BACKLOG_WARNING", "-3"),
        ("POLLING_BACKLOG_CRITICAL", "1"),
        ("POLLING_FAILURE_RATE_WARNING", "0.9"),
    ],
)
def test_a_period_or_threshold_out_of_range_is_refused_naming_it(name, raw):
    # Each was taken before: validate then said "no polls shed in the last -10 s", beat
    # would run diagnostics in a loop, a worker's timer would spin.
    with pytest.raises(ConfigError, match=name):
        Settings.from_env({name: raw}, env_file="/nonexistent")


def test_a_misspelt_setting_is_refused_naming_it_and_the_likely_one(tmp_path):
    # A typo'd name was ignored: POLLING_DATABSE_URL left the units on sqlite:///pollctl.db.
    env_file = tmp_path / "pollctl.env"
    env_file.write_text("POLLING_REDIS_URL=redis://127.0.0.1:6379/0\nPOLLING_DATABSE_URL=x\n")
    with pytest.raises(ConfigError) as raised:
        Settings.from_env({}, env_file=env_file)
    assert str(raised.value) == (
        f"{env_file}: POLLING_DATABSE_URL is no setting (did you mean POLLING_DATABASE_URL?)"
    )
    with pytest.raises(ConfigError, match=r"^environment: POLLING_BATCH_WINDWO is no setting"):
        Settings.from_env({"POLLING_BATCH_WINDWO": "0.2"}, env_file="/nonexistent")
    # The settings file's own variable, and other programs' names, are not settings' typos.
    Settings.from_env(
        {"POLLING_ENV_FILE": str(env_file), "FLOWER_BASIC_AUTH": "a:b"}, env_file="/nonexistent"
    )


def test_a_settings_file_saved_with_a_byte_order_mark_is_read_whole(tmp_path):
    # Its first name was read as "\ufeffPOLLING_FAILURE_THRESHOLD" and silently ignored.
    env_file = tmp_path / "pollctl.env"
    env_file.write_bytes("POLLING_FAILURE_THRESHOLD=7\r\nPOLLING_MAX_GAP=3\r\n".encode("utf-8-sig"))
    settings = Settings.from_env({}, env_file=env_file)
    assert (settings.failure_threshold, settings.max_gap) == (7, 3)


def test_secrets_are_masked():
    settings = Settings(
        database_url="postgresql://app:s3cret@db/poll", redis_url="redis://:pw@r:6379/0"
    )
    shown = settings.masked()
    assert shown["POLLING_DATABASE_URL"] == "postgresql://app:***@db/poll"
    assert shown["POLLING_REDIS_URL"] == "redis://:***@r:6379/0"
    assert "s3cret" not in repr(settings) and "pw@" not in repr(settings)
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_alert_urls_are_split_and_masked():
    settings = Settings(alert_urls="slack://TokA/TokB/TokC, json://127.0.0.1:8080/hook\n")
    assert settings.alert_url_list == ["slack://TokA/TokB/TokC", "json://127.0.0.1:8080/hook"]
    assert settings.masked()["POLLING_ALERT_URLS"] == "slack://*** json://***"
    assert "TokA" not in repr(settings)
    with pytest.raises(ConfigError, match="POLLING_ALERT_COOLDOWN must be >= 0"):
        Settings.from_env({"POLLING_ALERT_COOLDOWN": "-1"}, env_file="/nonexistent")


def test_max_interval_follows_the_visibility_timeout():
    assert Settings(visibility_timeout=7200).max_interval == 3600


def test_the_settings_file_named_must_exist(tmp_path):
    missing = tmp_path / "nope.env"
    with pytest.raises(ConfigError, match=f"POLLING_ENV_FILE={missing}: no such file"):
        Settings.from_env({"POLLING_ENV_FILE": str(missing)})
    with pytest.raises(ConfigError, match="is a directory"):
        Settings.from_env({"POLLING_ENV_FILE": str(tmp_path)})


def test_the_system_file_is_read_when_there_is_no_local_one(tmp_path, monkeypatch):
    """On a server the operator's `pollctl` reads the file the units read."""
    system = tmp_path / "etc" / "pollctl.env"
    system.parent.mkdir()
    system.write_text("POLLING_DATABASE_URL=postgresql://pollctl@db/pollctl\n")
    monkeypatch.setattr(settings_module, "SYSTEM_ENV_FILE", system)
    monkeypatch.chdir(tmp_path)  # no ./.env here
    settings = Settings.from_env({})
    assert settings.database_url == "postgresql://pollctl@db/pollctl"
    assert settings.env_file == str(system)
    (tmp_path / ".env").write_text("POLLING_MAX_GAP=2\n")  # a local file wins
    local = Settings.from_env({})
    assert (local.max_gap, local.env_file) == (2, ".env")
    assert local.database_url != settings.database_url


def test_config_and_db_upgrade_say_which_file_and_database(tmp_path):
    env_file = tmp_path / "pollctl.env"
    database = tmp_path / "here.db"
    env_file.write_text(f"POLLING_DATABASE_URL=sqlite:///{database}\n")
    env = {**os.environ, "POLLING_ENV_FILE": str(env_file), "PYTHONPATH": str(ROOT)}
    env.pop("POLLING_DATABASE_URL", None)

    def pollctl(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-c", "from cli import main; main()", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)

    config = pollctl("config")
    assert config.stdout.splitlines()[0] == f"# settings file: {env_file}"
    upgraded = pollctl("db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.startswith(f"database sqlite:///{database} at revision")
    env["POLLING_ENV_FILE"] = str(tmp_path / "missing.env")
    refused = pollctl("db", "upgrade")
    assert refused.returncode != 0 and "missing.env: no such file" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert not (tmp_path / "pollctl.db").exists()


@pytest.mark.parametrize(
    ("variable", "url", "said"),
    [
        ("POLLING_REDIS_URL", "garbage", "POLLING_REDIS_URL=garbage: not a Redis URL"),
        ("POLLING_REDIS_URL", "http://host", "scheme http:// is not Redis's"),
        ("POLLING_REDIS_URL", "redis://:pw@/0", "POLLING_REDIS_URL=redis://:***@/0: no host"),
        ("POLLING_REDIS_URL", "redis://h:99999/0", "Port out of range"),
        ("POLLING_REDIS_URL", "redis://h/abc", "database 'abc' is not a number"),
        ("POLLING_DATABASE_URL", "garbage", "POLLING_DATABASE_URL=garbage: not a database URL"),
        ("POLLING_DATABASE_URL", "mysql://u:pw@h/db", "mysql://u:***@h/db: mysql is not supported"),
        ("POLLING_DATABASE_URL", "postgresql+asyncpg://u@h/db", "driver asyncpg is not"),
        ("POLLING_DATABASE_URL", "postgresql://u@h", "no database name"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_variable_and_the_accepted_forms(
    tmp_path, variable, url, said
):
    env = {**os.environ, "POLLING_ENV_FILE": os.devnull, variable: url, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-c", "from cli import main; main()", "db", "upgrade"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and said in line and "(expected " in line, line
    assert "pw" not in line
    assert list(tmp_path.iterdir()) == []  # nothing created


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:6379/0", "rediss://:pw@r.example:6380/2", "unix:///run/redis.sock?db=1"],
)
def test_good_redis_urls_pass(url):
    assert Settings.from_env({"POLLING_REDIS_URL": url}, env_file="/nonexistent").redis_url == url


@pytest.mark.parametrize("role", [["worker", "-Q", "polling"], ["beat"]])
def test_a_celery_process_with_a_bad_url_refuses_to_start_with_the_same_line(tmp_path, role):
    env = {
        **os.environ,
        "POLLING_ENV_FILE": os.devnull,
        "POLLING_REDIS_URL": "redis://:pw@/0",
        "PYTHONPATH": str(ROOT),
    }
    command = [sys.executable, "-m", "celery", "-A", "workers.app", *role]
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: POLLING_REDIS_URL=redis://:***@/0: no host (expected redis://[:PASSWORD@]HOST"
        "[:PORT][/DB], rediss://... (TLS) or unix:///PATH?db=N)"
    ]
