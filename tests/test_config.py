"""Where settings come from: flags > framework > environment > pyproject.toml, and what a
missing or wrong one says."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import pytest

from analytiq_migrations import ConfigurationError
from analytiq_migrations.config import Layer, Option, load, require

ENV = {
    "MONGODB_URI": "mongodb://env-host/envdb",
    "ANALYTIQ_MIGRATIONS_DATABASE": "env_db",
    "ANALYTIQ_MIGRATIONS_SOURCE": "env_migrations",
    "ANALYTIQ_MIGRATIONS_LOCK_WAIT": "7",
}


def write_pyproject(directory: Path, body: str) -> None:
    (directory / "pyproject.toml").write_text(
        "[project]\nname = 'someapp'\n\n[tool.analytiq_migrations]\n" + body
    )


def framework(values: dict[str, Any]) -> Layer:
    """A framework layer the way the Flask/Django hooks build one."""
    return Layer(values, lambda option: f"app.config['{option.framework_key}']")


def settings_from(tmp_path: Path, flags: Optional[dict[str, Any]] = None,
                  env: Optional[dict[str, str]] = None, app: Optional[Layer] = None) -> Any:
    settings, _ = load(flags or {}, app, environ=env or {}, directory=tmp_path)
    return settings


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    settings = settings_from(tmp_path)
    assert (settings.uri, settings.database, settings.migrations) == (None, None, None)
    assert settings.collection == "migrations"
    assert settings.transactions == "auto"
    assert (settings.lock_wait, settings.lock_ttl) == (0.0, 60.0)
    assert settings.on_drift == "error" and settings.allow_out_of_order is False
    assert settings.origin == {}


def test_environment_alone_is_enough(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, env=ENV)
    assert settings.uri == "mongodb://env-host/envdb"
    assert settings.database == "env_db"
    assert settings.migrations == "env_migrations"
    assert settings.lock_wait == 7.0
    assert settings.origin["uri"] == "environment variable MONGODB_URI"


def test_specific_uri_variable_wins_over_mongodb_uri(tmp_path: Path) -> None:
    env = {**ENV, "ANALYTIQ_MIGRATIONS_URI": "mongodb://specific/"}
    assert settings_from(tmp_path, env=env).uri == "mongodb://specific/"


def test_pyproject_alone_is_enough(tmp_path: Path) -> None:
    write_pyproject(tmp_path, 'uri = "mongodb://toml-host/"\ndatabase = "toml_db"\n'
                    'migrations = "db/migrations"\nlock_wait = 30\nallow_out_of_order = true\n'
                    'transactions = "never"\n')
    settings = settings_from(tmp_path)
    assert settings.uri == "mongodb://toml-host/"
    assert settings.database == "toml_db"
    assert settings.migrations == str(tmp_path / "db" / "migrations")  # beside the file
    assert settings.lock_wait == 30.0
    assert settings.allow_out_of_order is True
    assert settings.transactions == "never"


def test_precedence_flags_then_framework_then_environment_then_pyproject(
        tmp_path: Path) -> None:
    write_pyproject(tmp_path, 'database = "toml_db"\ncollection = "toml_coll"\n'
                    'lock_ttl = 90\non_drift = "warn"\n')
    env = {"ANALYTIQ_MIGRATIONS_DATABASE": "env_db", "ANALYTIQ_MIGRATIONS_COLLECTION": "env_coll",
           "ANALYTIQ_MIGRATIONS_LOCK_TTL": "80"}
    app = framework({"database": "app_db", "collection": "app_coll"})
    settings = settings_from(tmp_path, {"database": "flag_db"}, env, app)
    assert settings.database == "flag_db"
    assert settings.collection == "app_coll"
    assert settings.lock_ttl == 80.0
    assert settings.on_drift == "warn"
    assert settings.origin["collection"] == "app.config['COLLECTION']"


def test_empty_environment_variable_counts_as_unset(tmp_path: Path) -> None:
    write_pyproject(tmp_path, 'uri = "mongodb://toml-host/"\n')
    assert settings_from(tmp_path, env={"MONGODB_URI": ""}).uri == "mongodb://toml-host/"


def test_source_is_an_alias_in_pyproject(tmp_path: Path) -> None:
    write_pyproject(tmp_path, 'source = "pkg.migrations"\n')
    assert settings_from(tmp_path).migrations == "pkg.migrations"


def test_pyproject_without_our_table_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[project]\nname = 'x'\n[tool.black]\nline = 1\n")
    assert settings_from(tmp_path).uri is None


def test_unknown_pyproject_key_is_an_error_naming_it(tmp_path: Path) -> None:
    write_pyproject(tmp_path, 'lockwait = 3\n')
    with pytest.raises(ConfigurationError, match="Unknown setting 'lockwait'") as caught:
        settings_from(tmp_path)
    assert "lock_wait" in str(caught.value)


def test_malformed_pyproject_names_the_file(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text("[tool.analytiq_migrations\nuri = ")
    with pytest.raises(ConfigurationError, match=r"pyproject\.toml is not valid TOML"):
        settings_from(tmp_path)


@pytest.mark.parametrize(("env", "message"), [
    ({"ANALYTIQ_MIGRATIONS_LOCK_WAIT": "soon"},
     "environment variable ANALYTIQ_MIGRATIONS_LOCK_WAIT must be a number of seconds"),
    ({"ANALYTIQ_MIGRATIONS_LOCK_TTL": "-1"},
     "ANALYTIQ_MIGRATIONS_LOCK_TTL must be a number of seconds"),
    ({"ANALYTIQ_MIGRATIONS_TRANSACTIONS": "sometimes"},
     "ANALYTIQ_MIGRATIONS_TRANSACTIONS must be one of auto, always, never"),
    ({"ANALYTIQ_MIGRATIONS_ALLOW_OUT_OF_ORDER": "maybe"},
     "ANALYTIQ_MIGRATIONS_ALLOW_OUT_OF_ORDER must be true or false"),
])
def test_bad_values_name_where_they_came_from(tmp_path: Path, env: dict[str, str],
                                              message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        settings_from(tmp_path, env=env)


def test_zero_lock_ttl_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="lock TTL must be more than 0"):
        settings_from(tmp_path, {"lock_ttl": "0"})


def test_booleans_read_from_the_environment(tmp_path: Path) -> None:
    for text, expected in [("1", True), ("yes", True), ("off", False), ("FALSE", False)]:
        env = {"ANALYTIQ_MIGRATIONS_ALLOW_OUT_OF_ORDER": text}
        assert settings_from(tmp_path, env=env).allow_out_of_order is expected


def test_missing_settings_name_every_way_to_set_them(tmp_path: Path) -> None:
    settings, layers = load({}, framework({}), environ={}, directory=tmp_path)
    with pytest.raises(ConfigurationError) as caught:
        require(settings, ["uri", "database", "migrations"], layers)
    text = str(caught.value)
    assert "Missing settings: MongoDB URI, database name, migrations" in text
    for way in ["--uri", "app.config['URI']", "ANALYTIQ_MIGRATIONS_URI or MONGODB_URI",
                'uri = "..." in [tool.analytiq_migrations]', "--database",
                "ANALYTIQ_MIGRATIONS_DATABASE", "mongodb://host/NAME", "--migrations",
                "ANALYTIQ_MIGRATIONS_SOURCE", "app.config['SOURCE']"]:
        assert way in text, way


def test_database_may_come_from_the_uri_path(tmp_path: Path) -> None:
    for uri, missing in [("mongodb://h/app?replicaSet=rs0", False), ("mongodb://h/", True),
                         ("mongodb://h", True), ("mongodb://u:p@h1,h2/app", False)]:
        settings, layers = load({"uri": uri}, environ={}, directory=tmp_path)
        if missing:
            with pytest.raises(ConfigurationError, match="database name"):
                require(settings, ["uri", "database"], layers)
        else:
            require(settings, ["uri", "database"], layers)


def test_settings_description_never_shows_a_password(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, {"uri": "mongodb://admin:hunter2@db1/app"})
    assert "hunter2" not in settings.describe()
    assert "mongodb://***@db1/app (--uri)" in settings.describe()


def test_every_option_has_a_flag_an_environment_variable_and_a_framework_key() -> None:
    from analytiq_migrations.config import OPTIONS

    for option in OPTIONS:
        assert isinstance(option, Option)
        assert option.flag == "--" + option.name.replace("_", "-")
        assert option.env[0].startswith("ANALYTIQ_MIGRATIONS_")
        assert option.framework_key.isupper()


def test_without_a_toml_parser_only_our_table_needs_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Python 3.9/3.10 without tomli: a project that merely depends on us still works."""
    from analytiq_migrations import pyprojectfile

    monkeypatch.setattr(pyprojectfile, "_toml_module", lambda: None)
    (tmp_path / "pyproject.toml").write_text(
        "[project]\nname = 'shop'\ndependencies = ['analytiq_migrations>=0.1']\n")
    assert settings_from(tmp_path, env=ENV).uri == ENV["MONGODB_URI"]
    write_pyproject(tmp_path, 'database = "toml_db"\n')
    with pytest.raises(ConfigurationError, match="no TOML parser") as caught:
        settings_from(tmp_path, env=ENV)
    assert "pip install tomli" in str(caught.value)


# -- which pyproject.toml: searched upward, or named by --config -------------------------------


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """outer/pyproject.toml (settings of something else) around repo/ (a git checkout with
    its settings at the top and a service two levels down)."""
    write_pyproject(tmp_path, 'database = "outside_db"\n')
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "db" / "migrations").mkdir(parents=True)
    (repo / "services" / "api").mkdir(parents=True)
    # a pyproject of its own without our table does not stop the search
    (repo / "services" / "api" / "pyproject.toml").write_text("[project]\nname = 'api'\n")
    return repo


def test_pyproject_is_found_upward_up_to_the_repository_root(repository: Path) -> None:
    write_pyproject(repository, 'database = "repo_db"\nmigrations = "db/migrations"\n')
    settings, _ = load({}, environ={}, directory=repository / "services" / "api")
    assert settings.database == "repo_db"
    # relative to the file that says it, not to where the command runs
    assert settings.migrations == str(repository / "db" / "migrations")
    assert f"of {repository / 'pyproject.toml'}" in settings.origin["database"]


def test_search_stops_at_the_repository_root_and_says_where_it_looked(
        repository: Path) -> None:
    start = repository / "services" / "api"
    settings, layers = load({}, environ={}, directory=start)
    assert settings.database is None  # outer/pyproject.toml is outside the repository
    with pytest.raises(ConfigurationError) as caught:
        require(settings, ["uri", "database"], layers)
    assert f"none has one from {start} up to {repository} (the repository root)" \
        in str(caught.value)


def test_config_names_the_file(repository: Path, tmp_path: Path) -> None:
    other = tmp_path / "deploy.toml"
    other.write_text('[tool.analytiq_migrations]\ndatabase = "named_db"\n')
    settings, _ = load({}, environ={}, directory=repository, config=other)
    assert settings.database == "named_db"
    assert str(other) in settings.origin["database"]
    with pytest.raises(ConfigurationError, match=r"--config .*nothere\.toml: no such file"):
        load({}, environ={}, config=tmp_path / "nothere.toml")
    (tmp_path / "empty.toml").write_text("[tool.black]\nline-length = 100\n")
    with pytest.raises(ConfigurationError, match=r"has no \[tool\.analytiq_migrations\] table"):
        load({}, environ={}, config=tmp_path / "empty.toml")


def test_config_flag_on_the_command_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    from analytiq_migrations.cli import main

    for name in ("ANALYTIQ_MIGRATIONS_SOURCE", "MONGODB_URI", "ANALYTIQ_MIGRATIONS_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    settings = tmp_path / "conf" / "migrate.toml"
    settings.parent.mkdir()
    (tmp_path / "conf" / "steps").mkdir()
    settings.write_text('[tool.analytiq_migrations]\nmigrations = "steps"\n')
    assert main(["new", "add plan", "--config", str(settings)]) == 0
    assert (tmp_path / "conf" / "steps" / "0001_add_plan.py").exists()
    assert main(["--config", "missing.toml", "new", "x"]) == 2
    assert "--config missing.toml: no such file" in capsys.readouterr().err
