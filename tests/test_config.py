import os
import stat

import pytest

from searchfs.config import Settings, ensure_private_dir, load_settings
from searchfs.errors import ConfigError


def test_layers_defaults_toml_env_flags(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nname = "ViT-B-16"\nbatch_size = 8\n[search]\nlimit = 10\n[index]\nexclude = ["junk"]\n')
    env = {"SEARCHFS_HOME": str(tmp_path / "h"), "SEARCHFS_SEARCH_LIMIT": "20"}
    s = load_settings(config, env=env)
    assert (s.model_name, s.model_batch_size, s.search_limit, s.index_exclude) == ("ViT-B-16", 8, 20, ("junk",))
    assert s.model_device == "auto"  # default kept
    s = load_settings(config, env=env, search_limit=5, model_name=None)
    assert s.search_limit == 5 and s.model_name == "ViT-B-16"  # None flags do not override


def test_env_config_and_xdg_paths(tmp_path):
    config = tmp_path / "x.toml"
    config.write_text("[mount]\nallow_other = true\n")
    s = load_settings(env={"SEARCHFS_CONFIG": str(config), "XDG_DATA_HOME": str(tmp_path / "data")})
    assert s.mount_allow_other is True
    assert s.home == tmp_path / "data" / "searchfs"
    assert s.catalog_path == tmp_path / "data" / "searchfs" / "libraries" / "default" / "catalog.sqlite"


@pytest.mark.parametrize(
    "text, message",
    [
        ("[nope]\nx = 1\n", "unknown section"),
        ("[model]\ncolour = 1\n", "unknown key"),
        ("[model]\nbatch_size = 'many'\n", "model_batch_size"),
        ("[model]\ndevice = 'tpu'\n", "device"),
        ("not toml [", "cannot read config"),
    ],
)
def test_bad_config_says_what_is_wrong(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_settings(config, env={"SEARCHFS_HOME": str(tmp_path)})


def test_missing_explicit_config_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "missing.toml", env={})


def test_bool_and_list_from_env(tmp_path):
    s = load_settings(
        env={"SEARCHFS_HOME": str(tmp_path), "SEARCHFS_INDEX_HIDDEN": "yes", "SEARCHFS_INDEX_EXCLUDE": "a, b"}
    )
    assert s.index_hidden is True and s.index_exclude == ("a", "b")
    with pytest.raises(ConfigError):
        load_settings(env={"SEARCHFS_HOME": str(tmp_path), "SEARCHFS_INDEX_HIDDEN": "maybe"})


def test_library_name_is_validated(tmp_path):
    with pytest.raises(ConfigError):
        load_settings(env={"SEARCHFS_HOME": str(tmp_path)}, library="../escape")


def test_private_dir_is_0700_even_when_it_existed(tmp_path):
    path = tmp_path / "a" / "b"
    path.mkdir(parents=True, mode=0o755)
    os.chmod(path, 0o755)
    ensure_private_dir(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o700


def test_replace_coerces(tmp_path):
    s = Settings(home=tmp_path).replace(search_limit="7")
    assert s.search_limit == 7
