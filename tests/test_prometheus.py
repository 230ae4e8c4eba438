"""The Prometheus exposition: every metric from a real status file, scraped over HTTP and parsed as the text
format; the listener's settings and failures."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon import __version__, _config, _status
from daemon._config import ConfigError, PrometheusSettings
from daemon._histogram import BOUNDS_S, HISTOGRAMS, quantile
from daemon._prometheus import (
    COUNTERS,
    DROP_REASONS,
    GAUGES,
    HISTOGRAM_METRICS,
    NOT_EXPORTED,
    Exporter,
    ExporterError,
    exported_fields,
)
from daemon._status import FIELDS, RUNNING, Status
from daemon._vmic import VirtualMic


def scrape(port: int) -> dict[str, Any]:
    """GET /metrics and parse it: metric family name -> family."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = r.read().decode()
    return {m.name: m for m in text_string_to_metric_families(text)}


def value(families: dict[str, Any], name: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    raise AssertionError(f"no sample {name}{labels}")


@pytest.fixture
def status(tmp_path: Path) -> Iterator[Status]:
    st = Status.create(tmp_path / "status")
    yield st
    st.close()


def test_every_status_field_is_exported_or_said_where_it_goes() -> None:
    assert exported_fields() | set(NOT_EXPORTED) == set(FIELDS)
    assert not exported_fields() & set(NOT_EXPORTED)
    assert set(HISTOGRAM_METRICS) == set(HISTOGRAMS)


def test_a_scrape_shows_the_status_block(status: Status) -> None:
    # Distinct values in every field, so a metric wired to the wrong field shows.
    for i, name in enumerate(FIELDS):
        getattr(status, name).store(1000 + 7 * i)
    status.state.store(RUNNING)
    status.inference_time_ms.store(300)
    status.inference_audio_ms.store(1200)
    for ms in (20, 30, 30, 45, 2000):
        status.latency.capture.observe_ms(ms)
    for ms in (700, 800, 950):
        status.latency.transcript.observe_ms(ms)
    status.latency.inference.observe_ms(400)
    snap, lat = status.snapshot(), status.latencies()
    assert status.path is not None
    with Exporter(PrometheusSettings(enabled=True, port=0), status.path) as exporter:
        families = scrape(exporter.port)

    for name, _, field, divisor in COUNTERS:
        assert families[name].type == "counter"
        assert value(families, name + "_total") == getattr(snap, field) / divisor, name
    for reason, field in DROP_REASONS:
        assert value(families, "audiod_audio_chunks_dropped_total", reason=reason) == getattr(snap, field)
    for name, _, field, divisor in GAUGES:
        assert families[name].type == "gauge"
        assert value(families, name) == getattr(snap, field) / divisor, name
    assert value(families, "audiod_real_time_factor") == 0.25
    assert value(families, "audiod_ring_fill_blocks") == snap.ring_written - snap.ring_read
    assert value(families, "audiod_state", state="running") == 1
    assert value(families, "audiod_state", state="loading") == 0
    assert value(families, "audiod_build_info", version=__version__, python=sys.version.split()[0]) == 1
    started = _status.read(status.path).started_us / 1e6
    assert value(families, "audiod_start_time_seconds") == pytest.approx(started, abs=1e-6)

    for key, (name, _) in HISTOGRAM_METRICS.items():
        h = getattr(lat, key)
        assert families[name].type == "histogram"
        buckets = [
            (float(s.labels["le"]), s.value) for s in families[name].samples if s.name == name + "_bucket"
        ]
        assert [le for le, _ in buckets] == [*BOUNDS_S, float("inf")]
        assert [n for _, n in buckets] == h.cumulative()
        assert value(families, name + "_count") == h.count
        assert value(families, name + "_sum") == pytest.approx(h.sum_us / 1e6)
        # PromQL's histogram_quantile() over the scraped buckets is what `audiod status` shows.
        for q in (0.5, 0.95, 0.99):
            assert quantile(q, [n for _, n in buckets], BOUNDS_S) == h.quantile(q)
    assert value(families, "audiod_capture_latency_seconds_count") == 5
    assert value(families, "audiod_transcript_latency_seconds_sum") == pytest.approx(2.45)


def test_without_a_status_file_a_scrape_has_only_build_info(tmp_path: Path) -> None:
    with Exporter(PrometheusSettings(enabled=True, port=0), tmp_path / "status") as exporter:
        families = scrape(exporter.port)
    assert list(families) == ["audiod_build_info"]


def test_off_by_default_and_local_only() -> None:
    s = _config.Settings().metrics.prometheus
    assert (s.enabled, s.address) == (False, "127.0.0.1")
    with Exporter(s, Path("/nonexistent")) as exporter:
        assert exporter.port == 0
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", s.port)) != 0, "nothing listens when disabled"


def test_listener_binds_loopback_only(tmp_path: Path) -> None:
    with Exporter(PrometheusSettings(enabled=True, port=0), tmp_path / "status") as exporter:
        server_address = exporter._server.server_address
        assert server_address[0] == "127.0.0.1"
        scrape(exporter.port)
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", exporter.port or server_address[1])) != 0, "closed on exit"


def test_a_busy_port_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with (
            pytest.raises(ExporterError) as e,
            Exporter(PrometheusSettings(enabled=True, port=port), tmp_path / "status"),
        ):
            pass
    assert str(e.value) == f"metrics.prometheus: cannot listen on 127.0.0.1:{port}: Address already in use"


@pytest.mark.e2e
def test_daemon_with_a_busy_port_exits_78(vmic: VirtualMic, tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        config = tmp_path / "audiod.toml"
        config.write_text(
            f'[capture]\ndevice = "pulse"\n[metrics.prometheus]\nenabled = true\nport = {port}\n'
        )
        env = {**vmic.client_env(), "XDG_RUNTIME_DIR": str(tmp_path / "run")}
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "daemon",
                "run",
                "--config",
                str(config),
                "--transcript",
                str(tmp_path / "t"),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 78
    assert (
        out.stderr
        == f"audiod: metrics.prometheus: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[metrics.prometheus]\nenabled = 1\n", "metrics.prometheus.enabled = 1: expected bool"),
        ("[metrics.prometheus]\nport = 0\n", "metrics.prometheus.port = 0: must be >= 1"),
        ("[metrics.prometheus]\nport = true\n", "metrics.prometheus.port = True: expected int"),
        ("[metrics.prometheus]\nprot = 1\n", "unknown key metrics.prometheus.prot"),
        ("[metrics]\nprometheus = 1\n", "metrics.prometheus must be a table, got 1"),
        ("[metrics.grafana]\n", "unknown key metrics.grafana"),
    ],
)
def test_bad_prometheus_settings_name_file_key_and_value(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as e:
        _config.load(path)
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)


def test_prometheus_settings_are_read_from_their_nested_table(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[metrics.prometheus]\nenabled = true\naddress = "::1"\nport = 9100\n')
    assert _config.load(path).metrics.prometheus == PrometheusSettings(True, "::1", 9100)
