from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.settings import Settings, StackSettings, default_state_dir, suite_state_dir
from bridge.stack.launcher import link_checkout_var
from bridge.stack.render import world_traversable

GOOD = {
    "BRIDGE_JWT_SECRET": "x" * 40,
    "BRIDGE_IMAP_MASTER_USER": "bridge",
    "BRIDGE_IMAP_MASTER_PASSWORD": "secret",
}


def test_defaults_and_overrides() -> None:
    s = Settings.from_env({**GOOD, "BRIDGE_HTTP_PORT": "9999", "BRIDGE_CORS_ORIGINS": "https://a.test, https://b.test"})
    assert s.http_port == 9999
    assert s.cors_origins == ("https://a.test", "https://b.test")
    assert s.redis_url.startswith("redis://127.0.0.1:")
    assert "secret" not in repr(s)  # secrets never reach logs through repr


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BRIDGE_JWT_SECRET": "short"}, "BRIDGE_JWT_SECRET"),
        ({"BRIDGE_HTTP_PORT": "eighty"}, "BRIDGE_HTTP_PORT must be an integer"),
        ({"BRIDGE_HTTP_PORT": "70000"}, "between 0 and 65535"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL"),
        ({"MONGODB_URL": "postgres://x"}, "MONGODB_URL"),
        ({"BRIDGE_IMAP_MASTER_USER": ""}, "BRIDGE_IMAP_MASTER_USER"),
        ({"BRIDGE_CORS_ORIGINS": "*"}, "'*' is refused"),
        ({"BRIDGE_LOG_LEVEL": "chatty"}, "BRIDGE_LOG_LEVEL"),
    ],
)
def test_bad_settings_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env({**GOOD, **env})


def test_stack_ports_must_differ(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BRIDGE_SMTP_PORT and BRIDGE_HTTP_PORT are both 4000"):
        StackSettings.from_env({"BRIDGE_HTTP_PORT": "4000", "BRIDGE_SMTP_PORT": "4000"}, repo_dir=tmp_path)


def test_stack_state_dir_override(tmp_path: Path) -> None:
    s = StackSettings.from_env({"BRIDGE_STATE_DIR": str(tmp_path / "st")}, repo_dir=tmp_path)
    assert s.state_dir == (tmp_path / "st").resolve()
    assert s.external_mongodb_url is None


@pytest.fixture
def private_clone(tmp_path: Path) -> Path:
    """A checkout as root clones it into its 0700 home, or into `mktemp -d`."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    home.chmod(0o700)
    clone = home / "mail-bridge"
    clone.mkdir()
    return clone


def test_state_of_a_private_checkout_moves_where_the_mail_user_reaches(private_clone: Path) -> None:
    run_state = default_state_dir(private_clone)
    assert run_state.parent == Path("/var/tmp") and run_state.name.startswith("mail-bridge-")
    assert world_traversable(run_state.parent)
    # Each clone its own directory, the same one every time.
    other = private_clone.parent / "other-clone"
    assert default_state_dir(other) != run_state
    assert default_state_dir(private_clone) == run_state
    assert StackSettings.from_env({}, repo_dir=private_clone).state_dir == run_state
    # The test suite's stack sits beside make run's, in the same reachable place.
    assert suite_state_dir(private_clone) == run_state / "test-stack"


def test_state_of_a_reachable_checkout_stays_in_its_var(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    reachable = Path("/var/tmp") / f"mail-bridge-test-{tmp_path.name}"
    reachable.mkdir(mode=0o755)
    try:
        assert default_state_dir(reachable) == reachable / "var"
        assert suite_state_dir(reachable) == reachable / "var" / "test-stack"
        assert StackSettings.from_env({}, repo_dir=reachable).state_dir == reachable / "var"
    finally:
        reachable.rmdir()


def test_a_private_checkout_links_its_var_to_the_state(private_clone: Path) -> None:
    root = default_state_dir(private_clone)
    try:
        link_checkout_var(private_clone, suite_state_dir(private_clone))
        assert (private_clone / "var").is_symlink()
        assert (private_clone / "var").resolve() == root
        link_checkout_var(private_clone, root)  # a second stack: the link stays as it is
        assert (private_clone / "var").resolve() == root
    finally:
        (private_clone / "var").unlink(missing_ok=True)
        root.rmdir()


def test_a_var_the_user_made_is_left_alone(private_clone: Path) -> None:
    (private_clone / "var").mkdir()
    state = Path("/var/tmp") / "elsewhere-not-the-default"
    link_checkout_var(private_clone, state)
    assert not (private_clone / "var").is_symlink()
    assert not default_state_dir(private_clone).exists()


def test_asymmetric_own_tokens_need_key_files(tmp_path: Path) -> None:
    env = {**GOOD, "BRIDGE_JWT_SECRET": "", "BRIDGE_JWT_ALGORITHM": "ES256"}
    with pytest.raises(ConfigError, match="BRIDGE_JWT_PRIVATE_KEY_FILE"):
        Settings.from_env(env)
    (tmp_path / "k").write_text("x")
    (tmp_path / "p").write_text("y")
    env.update(BRIDGE_JWT_PRIVATE_KEY_FILE=str(tmp_path / "k"), BRIDGE_JWT_PUBLIC_KEY_FILE=str(tmp_path / "p"))
    assert Settings.from_env(env).jwt_algorithm == "ES256"
    with pytest.raises(ConfigError, match="BRIDGE_JWT_ALGORITHM must be one of"):
        Settings.from_env({**GOOD, "BRIDGE_JWT_ALGORITHM": "none"})


@pytest.mark.parametrize(
    ("name", "url"),
    [
        ("MONGODB_URL", "mongodb://db1:27017,db2:27017,db3:27017/?replicaSet=rs0"),
        ("MONGODB_URL", "mongodb+srv://cluster0.example.org/?retryWrites=true"),
        ("REDIS_URL", "rediss://redis.example.org:6380/0"),
        ("REDIS_URL", "unix:///run/redis/redis.sock?db=0"),
    ],
)
def test_production_urls_are_accepted(name: str, url: str) -> None:
    s = Settings.from_env({**GOOD, name: url})
    assert (s.mongodb_url if name == "MONGODB_URL" else s.redis_url) == url


def test_each_node_names_its_consumer() -> None:
    s = Settings.from_env({**GOOD, "BRIDGE_CONSUMER_NAME": "bridge-2", "BRIDGE_SOCKET_MAX_QUEUED": "500"})
    assert (s.consumer_name, s.socket_max_queued) == ("bridge-2", 500)


def test_a_bare_stack_keeps_only_known_parts_of_ours(tmp_path: Path) -> None:
    s = StackSettings.from_env({"BRIDGE_STACK_BARE": "1", "BRIDGE_STACK_BARE_WITH": "hook, dedupe"}, repo_dir=tmp_path)
    assert s.bare and s.bare_with == {"hook", "dedupe"}
    with pytest.raises(ConfigError, match="BRIDGE_STACK_BARE_WITH: unknown part 'filter' \\(known: hook, dedupe\\)"):
        StackSettings.from_env({"BRIDGE_STACK_BARE_WITH": "hook,filter"}, repo_dir=tmp_path)
