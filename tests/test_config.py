import re
import subprocess
import sys
import tomllib
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon import _config
from daemon._config import ConfigError, Settings

SHIPPED = Path(__file__).parents[1] / "config" / "audiod.toml"


def test_shipped_config_documents_every_key_with_its_default() -> None:
    data = tomllib.loads(SHIPPED.read_text())
    assert _config.from_mapping(data, str(SHIPPED)) == Settings()

    def check(table: dict[str, Any], defaults: Any, name: str) -> None:
        assert set(table) == {f.name for f in fields(defaults)}, name
        for f in fields(defaults):
            if is_dataclass(nested := getattr(defaults, f.name)):  # e.g. [metrics.prometheus]
                check(table[f.name], nested, f"{name}.{f.name}")

    for section in fields(Settings):
        check(data[section.name], getattr(Settings(), section.name), section.name)
    # Every key has a comment right above it.
    lines = SHIPPED.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^[a-z_]+ = ", line):
            above = next(x for x in reversed(lines[:i]) if not re.match(r"^[a-z_]+ = ", x))
            assert above.startswith("#"), line


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[capture]\nblock_ms = 1\n", "capture.block_ms = 1: must be >= 5"),
        ("[capture]\nblock_ms = true\n", "capture.block_ms = True: expected int"),
        ("[ring]\ncapacity_s = 'big'\n", "ring.capacity_s = 'big': expected float"),
        ("[ring]\ncapacity_s = inf\n", "ring.capacity_s = inf: must be a finite number"),
        ("[inference]\ndevice = 'tpu'\n", "inference.device = 'tpu': must be one of cpu, cuda, auto"),
        ("[inference]\nbeam = 2\n", "unknown key inference.beam"),
        ("[infer]\nmodel = 'x'\n", "unknown section [infer]"),
        ("[log]\nlevel = 'loud'\n", "log.level = 'loud': must be one of"),
        ("[vad\n", "invalid TOML"),
    ],
)
def test_bad_values_name_file_key_and_value(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        _config.load(path)
    assert str(e.value).startswith(f"{path}: ")
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_ints_are_accepted_for_floats_and_device_index() -> None:
    s = _config.from_mapping({"ring": {"capacity_s": 2}, "capture": {"device": 3}})
    assert s.ring.capacity_s == 2.0 and isinstance(s.ring.capacity_s, float)
    assert s.capture.device == "3"


def test_flags_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[capture]\ndevice = 'usb'\n[inference]\nbeam_size = 3\n")
    s = _config.override(_config.load(path), {"capture__device": "pulse", "inference__model": None})
    assert s.capture.device == "pulse"
    assert s.inference.beam_size == 3 and s.inference.model == "bundled"


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.toml: config file not found"):
        _config.load(tmp_path / "nope.toml")


def test_cli_exits_78_with_one_line_and_no_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[poller]\ninterval_ms = 0\n")
    out = subprocess.run(
        [sys.executable, "-m", "daemon", "run", "--config", str(path)], capture_output=True, text=True
    )
    assert out.returncode == 78
    assert out.stderr == f"audiod: {path}: poller.interval_ms = 0: must be >= 10\n"


def test_missing_model_directory_is_named_with_its_own_exit_code(tmp_path: Path) -> None:
    from daemon._inference import ModelError, model_path

    with pytest.raises(ModelError, match=f"model directory {tmp_path}/none does not exist"):
        model_path(str(tmp_path / "none"))
    assert Path(model_path("bundled"), "model.bin").is_file()
