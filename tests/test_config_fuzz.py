"""Property-based: whatever a config file holds, audiod accepts it, or says in one line naming the file, the
key and the value what is wrong, and exits 78. Never a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon import _config
from daemon._config import ConfigError, Settings

SECTIONS = {f.name: [g.name for g in fields(getattr(Settings(), f.name))] for f in fields(Settings)}

scalars = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.booleans(),
)
values = st.one_of(
    scalars, st.lists(scalars, max_size=3), st.dictionaries(st.text(max_size=5), scalars, max_size=2)
)
names = st.one_of(st.sampled_from(sorted(SECTIONS)), st.text(min_size=1, max_size=10))


@st.composite
def documents(draw: st.DrawFn) -> dict[str, object]:
    doc: dict[str, object] = {}
    for section in draw(st.lists(names, max_size=4, unique=True)):
        keys = [*SECTIONS.get(section, []), "typo_key"]
        doc[section] = draw(st.dictionaries(st.sampled_from(keys) | st.text(max_size=8), values, max_size=4))
    if draw(st.booleans()):
        doc[draw(names)] = draw(scalars)  # a bare value where a table belongs
    return doc


@given(documents())
@settings(max_examples=400, deadline=None)
def test_any_mapping_is_accepted_or_refused_in_one_line(doc: dict[str, object]) -> None:
    try:
        result = _config.from_mapping(doc, "f.toml")
    except ConfigError as e:
        message = str(e)
        assert message.startswith("f.toml: ") and "\n" not in message
        assert any(json.dumps(k)[1:-1] in message for k in doc), message  # names the section or key at fault
        return
    assert isinstance(result, Settings)


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if v != v else ("inf" if v == float("inf") else "-inf" if v == float("-inf") else repr(v))
        )
    if isinstance(v, int):
        return str(v)
    return json.dumps(str(v))


lines = st.one_of(
    st.tuples(st.sampled_from(sorted(SECTIONS)), st.text(max_size=12), scalars).map(
        lambda t: f"[{t[0]}]\n{json.dumps(t[1])} = {toml_value(t[2])}\n"
    ),
    st.builds(
        lambda section, key, value: f"[{section}]\n{key} = {toml_value(value)}\n",
        st.sampled_from(sorted(SECTIONS)),
        st.sampled_from(sorted({k for ks in SECTIONS.values() for k in ks})),
        scalars,
    ),
    st.text(max_size=30),  # not TOML at all
)


@given(st.lists(lines, min_size=1, max_size=3).map("".join))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_cli_never_tracebacks_on_a_bad_config(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "audiod.toml"
        path.write_text(text, errors="surrogatepass") if text.isprintable() else path.write_bytes(
            text.encode("utf-8", "surrogatepass")
        )
        try:
            _config.load(path)
        except ConfigError:
            out = subprocess.run(
                [sys.executable, "-m", "daemon", "run", "--config", str(path)], capture_output=True, text=True
            )
            assert out.returncode == 78
            assert out.stderr.startswith(f"audiod: {path}: ") and out.stderr.count("\n") == 1
            assert "Traceback" not in out.stderr


def test_unknown_keys_suggest_the_near_miss() -> None:
    try:
        _config.from_mapping({"vad": {"min_silence": 300}}, "f.toml")
    except ConfigError as e:
        assert str(e) == "f.toml: unknown key vad.min_silence: did you mean 'min_silence_ms'?"
    else:
        raise AssertionError("accepted an unknown key")
