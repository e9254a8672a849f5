import pytest

from polling.errors import ConfigError
from polling.settings import Settings, mask_url


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


def test_secrets_are_masked():
    settings = Settings(
        database_url="postgresql://app:s3cret@db/poll", redis_url="redis://:pw@r:6379/0"
    )
    shown = settings.masked()
    assert shown["POLLING_DATABASE_URL"] == "postgresql://app:***@db/poll"
    assert shown["POLLING_REDIS_URL"] == "redis://:***@r:6379/0"
    assert "s3cret" not in repr(settings) and "pw@" not in repr(settings)
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_max_interval_follows_the_visibility_timeout():
    assert Settings(visibility_timeout=7200).max_interval == 3600
