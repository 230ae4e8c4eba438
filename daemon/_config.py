"""Settings: one frozen dataclass per subsystem, loaded from TOML and overridden by flags.

Every key is documented twice on purpose: here (for code) and in ``config/audiod.toml`` (for operators);
``tests/test_config.py`` checks that the two name the same keys.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

BUNDLED_MODEL = "bundled"


class ConfigError(Exception):
    """A setting is wrong. The message names the file, the key and the value, on one line."""


@dataclass(frozen=True, slots=True)
class CaptureSettings:
    device: str = field(
        default="", metadata={"doc": "input device: index or name substring; '' = default", "int_ok": True}
    )
    samplerate: int = field(
        default=0,
        metadata={"doc": "0 = 16000 if the device takes it, else its default", "min": 0, "max": 384000},
    )
    channels: int = field(
        default=0, metadata={"doc": "0 = mono if the device takes it, else its channels", "min": 0, "max": 64}
    )
    block_ms: int = field(
        default=50, metadata={"doc": "audio per PortAudio callback, ms", "min": 5, "max": 500}
    )


@dataclass(frozen=True, slots=True)
class RingSettings:
    capacity_s: float = field(
        default=30.0, metadata={"doc": "audio the ring holds before dropping", "min": 0.05}
    )
    max_lag_s: float = field(
        default=5.0, metadata={"doc": "the worker skips audio older than this", "min": 0.5, "max": 3600}
    )


@dataclass(frozen=True, slots=True)
class VadSettings:
    threshold: float = field(
        default=0.5, metadata={"doc": "Silero speech probability", "min": 0.01, "max": 0.99}
    )
    min_silence_ms: int = field(default=200, metadata={"doc": "silence that ends an utterance", "min": 64})
    early_decode_ms: int = field(
        default=96,
        metadata={
            "doc": "silence after which decoding starts, kept if the utterance ends; 0 = off",
            "min": 0,
        },
    )
    speech_pad_ms: int = field(default=200, metadata={"doc": "audio kept around speech", "min": 0})
    min_speech_ms: int = field(default=250, metadata={"doc": "shorter utterances are ignored", "min": 0})
    max_utterance_s: float = field(
        default=20.0, metadata={"doc": "force a cut at this length", "min": 1, "max": 30}
    )


@dataclass(frozen=True, slots=True)
class InferenceSettings:
    model: str = field(
        default=BUNDLED_MODEL, metadata={"doc": "'bundled', a model directory or a model name"}
    )
    device: str = field(
        default="cpu", metadata={"doc": "cpu, cuda or auto", "choices": ("cpu", "cuda", "auto")}
    )
    compute_type: str = field(default="int8", metadata={"doc": "CTranslate2 compute type"})
    beam_size: int = field(default=5, metadata={"doc": "beam search width", "min": 1, "max": 10})
    language: str = field(default="en", metadata={"doc": "language code; '' = detect"})
    cpu_threads: int = field(
        default=0, metadata={"doc": "CTranslate2 threads; 0 = library default", "min": 0}
    )
    no_speech_threshold: float = field(
        default=0.6, metadata={"doc": "drop text above this", "min": 0, "max": 1}
    )
    log_prob_threshold: float = field(default=-1.0, metadata={"doc": "...when avg log-prob is below this"})


@dataclass(frozen=True, slots=True)
class TranscriptSettings:
    path: str = field(default="", metadata={"doc": "JSONL file; '' = state directory/transcripts.jsonl"})


@dataclass(frozen=True, slots=True)
class PollerSettings:
    interval_ms: int = field(default=100, metadata={"doc": "snapshot + metrics log period", "min": 10})


@dataclass(frozen=True, slots=True)
class LogSettings:
    format: str = field(
        default="auto",
        metadata={"doc": "auto, json, console or journal", "choices": ("auto", "json", "console", "journal")},
    )
    level: str = field(
        default="info",
        metadata={"doc": "lowest level logged", "choices": ("debug", "info", "warning", "error", "critical")},
    )


@dataclass(frozen=True, slots=True)
class PrometheusSettings:
    enabled: bool = field(default=False, metadata={"doc": "serve /metrics for Prometheus"})
    address: str = field(default="127.0.0.1", metadata={"doc": "listen address; the default is local only"})
    port: int = field(default=9848, metadata={"doc": "listen port", "min": 1, "max": 65535})


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    prometheus: PrometheusSettings = PrometheusSettings()


@dataclass(frozen=True, slots=True)
class Settings:
    capture: CaptureSettings = CaptureSettings()
    ring: RingSettings = RingSettings()
    vad: VadSettings = VadSettings()
    inference: InferenceSettings = InferenceSettings()
    transcript: TranscriptSettings = TranscriptSettings()
    poller: PollerSettings = PollerSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()


_TYPES: dict[str, type] = {"int": int, "float": float, "str": str, "bool": bool}


def _coerce(where: str, key: str, spec: dataclasses.Field[Any], value: Any) -> Any:
    want = _TYPES[spec.type if isinstance(spec.type, str) else spec.type.__name__]
    bad = f"{where}: {key} = {value!r}:"
    if spec.metadata.get("int_ok") and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    # bool is an int subclass in Python; `block_ms = true` is a mistake, not 1.
    if isinstance(value, bool) != (want is bool) or not isinstance(
        value, (int, float) if want is float else want
    ):
        raise ConfigError(f"{bad} expected {want.__name__}")
    if isinstance(value, (int, float)) and want is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{bad} must be a finite number")
    meta = spec.metadata
    if "choices" in meta and value not in meta["choices"]:
        raise ConfigError(f"{bad} must be one of {', '.join(meta['choices'])}")
    if "min" in meta and value < meta["min"]:
        raise ConfigError(f"{bad} must be >= {meta['min']}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(f"{bad} must be <= {meta['max']}")
    return value


def _name(key: str) -> str:
    """A key as TOML would quote it when it is not a bare word, so that the error stays on one line."""
    return key if key.replace("_", "a").replace("-", "a").isalnum() and key.isascii() else json.dumps(key)


def _did_you_mean(word: str, known: Mapping[str, Any]) -> str:
    close = difflib.get_close_matches(word, list(known), n=1)
    return f": did you mean {close[0]!r}?" if close else f" (known: {', '.join(known)})"


def from_mapping(data: Mapping[str, Any], where: str = "<config>") -> Settings:
    """Build settings from parsed TOML, rejecting unknown sections and keys (typos must not pass silently)."""
    sections = {f.name: f for f in fields(Settings)}
    built: dict[str, Any] = {}
    for name, table in data.items():
        if name not in sections:
            raise ConfigError(f"{where}: unknown section [{_name(name)}]{_did_you_mean(name, sections)}")
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: {_name(name)} must be a table, got {table!r}")
        built[name] = _table(type(getattr(Settings(), name)), table, where, name)
    return Settings(**built)


def _table(cls: type[Any], table: Mapping[str, Any], where: str, name: str) -> Any:
    specs = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in table.items():
        if key not in specs:
            raise ConfigError(f"{where}: unknown key {name}.{_name(key)}{_did_you_mean(key, specs)}")
        if dataclasses.is_dataclass(specs[key].default):  # a nested table, e.g. [metrics.prometheus]
            if not isinstance(value, Mapping):
                raise ConfigError(f"{where}: {name}.{key} must be a table, got {value!r}")
            values[key] = _table(type(specs[key].default), value, where, f"{name}.{key}")
        else:
            values[key] = _coerce(where, f"{name}.{key}", specs[key], value)
    return cls(**values)


def load(path: Path | None) -> Settings:
    """Read a TOML file; ``None`` means built-in defaults."""
    if path is None:
        return Settings()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from None
    return from_mapping(data, str(path))


def override(settings: Settings, dotted: Mapping[str, Any], where: str = "command line") -> Settings:
    """Apply values keyed ``section__key``; ``None`` means the flag was not given."""
    result = settings
    for dotted_key, value in dotted.items():
        if value is None:
            continue
        section, key = dotted_key.split("__", 1)
        current = getattr(result, section)
        spec = next(f for f in fields(current) if f.name == key)
        value = _coerce(where, f"{section}.{key}", spec, value)
        result = dataclasses.replace(result, **{section: dataclasses.replace(current, **{key: value})})
    return result


def default_config_path() -> Path | None:
    """The config used when no --config is given: the user's, then the system's, else built-in defaults."""
    xdg = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    for candidate in (Path(xdg) / "audiod" / "audiod.toml", Path("/etc/audiod/audiod.toml")):
        if candidate.is_file():
            return candidate
    return None
