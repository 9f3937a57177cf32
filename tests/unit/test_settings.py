"""Settings: declared once, validated at start, one clear line naming what is wrong."""
import subprocess
import sys
from pathlib import Path

import pytest

from conf import SETTINGS, ConfigError, configured, load_settings, parse_setting

ROOT = Path(__file__).parent.parent.parent  # the repository

VALID = {"GATEWAY_SECRET": "0123456789abcdef", "HEYGEN_API_KEY": "hk", "PETYA_BASE_URL": "http://petya.local",
         "PETYA_AUTH_TOKEN": "pt", "MONGODB_URI": "mongodb://127.0.0.1:27017/avatar"}


def test_defaults_and_parsing():
    settings = load_settings(environ={**VALID, "CORS_ORIGINS": "https://a.example, https://b.example/",
                                      "PORT": "9000"}, dotenv_path=None)
    assert settings.port == 9000 and settings.host == "127.0.0.1"
    assert settings.heygen_base_url == "https://api.heygen.com"
    assert settings.cors_origins == ("https://a.example", "https://b.example")


@pytest.mark.parametrize("name, value, words", [
    ("HEYGEN_API_KEY", None, "HEYGEN_API_KEY is required"),
    ("PORT", "eighty", "PORT='eighty' is invalid"),
    ("PETYA_BASE_URL", "petya.local", "PETYA_BASE_URL='petya.local' is invalid"),
    ("MONGODB_URI", "postgres://x", "MONGODB_URI=*** is invalid"),
    ("CORS_ORIGINS", "*,https://a.example", "CORS_ORIGINS"),
    ("GATEWAY_SECRET", "short", "GATEWAY_SECRET=*** is invalid"),
    ("HEYGEN_CONTRACT_PROVIDER", "openai", "HEYGEN_CONTRACT_PROVIDER='openai' is invalid: must be one of heygen, "
                                           "liveavatar"),
])
def test_bad_values_name_the_setting(name, value, words):
    env = dict(VALID)
    if value is None:
        del env[name]
    else:
        env[name] = value
    with pytest.raises(ConfigError) as error:
        load_settings(environ=env, dotenv_path=None)
    assert words in str(error.value)
    assert "short" not in str(error.value) or name != "GATEWAY_SECRET"


def test_dotenv_file_fills_what_the_environment_does_not(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("HEYGEN_API_KEY=from-file\nPORT=7000\n")
    env = {k: v for k, v in VALID.items() if k != "HEYGEN_API_KEY"}
    settings = load_settings(environ={**env, "PORT": "7100"}, dotenv_path=str(env_file))
    assert settings.heygen_api_key == "from-file" and settings.port == 7100


def test_heygen_contract_provider_defaults_to_heygen():
    assert load_settings(environ=VALID, dotenv_path=None).heygen_contract_provider == "heygen"
    settings = load_settings(environ={**VALID, "HEYGEN_CONTRACT_PROVIDER": " LiveAvatar "}, dotenv_path=None)
    assert settings.heygen_contract_provider == "liveavatar"


def test_configured_is_what_the_environment_and_the_file_set(tmp_path):
    """Only declared settings, unparsed; the environment wins, an empty value is unset (the file's then applies)."""
    env_file = tmp_path / ".env"
    env_file.write_text("PORT=7000\nLOG_LEVEL=debug\nSWEEP_INTERVAL=1\nNOT_A_SETTING=x\n")
    environ = {"PORT": "7100", "SWEEP_INTERVAL": "", "PATH": "/bin", "PETYA_CONFIG_TTL": "1"}
    assert configured(environ=environ, dotenv_path=str(env_file)) == {
        "PORT": "7100", "LOG_LEVEL": "debug", "SWEEP_INTERVAL": "1", "PETYA_CONFIG_TTL": "1"}
    assert configured(environ=environ, dotenv_path=str(tmp_path / "missing.env")) == {
        "PORT": "7100", "PETYA_CONFIG_TTL": "1"}
    assert parse_setting("LOG_LEVEL", "debug") == "DEBUG"
    with pytest.raises(ConfigError, match=r"^PETYA_AUTH_TOKEN=\*\*\* is invalid"):
        parse_setting("PETYA_AUTH_TOKEN", "")
    with pytest.raises(ConfigError, match=r"^NOT_A_SETTING is not a setting$"):
        parse_setting("NOT_A_SETTING", "x")


def test_env_example_lists_every_setting():
    from conf.__main__ import env_example
    example = (ROOT / "conf" / ".env.example").read_text()
    assert example == env_example(), "regenerate it: python -m conf env > conf/.env.example"
    for setting in SETTINGS:
        assert f"\n{setting.name}=" in example, setting.name


def test_bad_start_stops_with_one_clear_line(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HEYGEN_API_KEY": "x"}
    result = subprocess.run([sys.executable, "server.py", "--env-file", str(tmp_path / "none.env")],
                            cwd=str(ROOT), env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "ilianaai-avatar: GATEWAY_SECRET is required: " + next(s.doc for s in SETTINGS if s.name == "GATEWAY_SECRET")]


def test_readme_settings_table_is_current():
    from conf.__main__ import markdown
    readme = (ROOT / "README.md").read_text()
    assert markdown() in readme, "regenerate the README's table: python -m conf markdown"


def test_unreachable_mongodb_at_start_is_one_clear_line():
    from sandbox.mongo import free_port
    env = {"PATH": "/usr/bin:/bin", **VALID, "MONGODB_URI": f"mongodb://127.0.0.1:{free_port()}/x", "PORT": "0"}
    result = subprocess.run([sys.executable, "server.py", "--env-file", "/nonexistent"],
                            cwd=str(ROOT), env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == "ilianaai-avatar: MongoDB at MONGODB_URI is unreachable"
    assert "Traceback" not in result.stderr


def test_public_view_masks_every_secret():
    settings = load_settings(environ=VALID, dotenv_path=None)
    shown = settings.public()
    assert shown["HEYGEN_API_KEY"] == shown["PETYA_AUTH_TOKEN"] == shown["GATEWAY_SECRET"] == "***"
    assert shown["MONGODB_URI"] == "***" and shown["PORT"] == 8000
    assert "0123456789abcdef" not in str(shown)


def test_typed_settings_are_current():
    from conf.__main__ import typed
    generated = (ROOT / "conf" / "settings.py").read_text()
    assert generated == typed(), "regenerate it: python -m conf typed > conf/settings.py"
