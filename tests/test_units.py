# SPDX-License-Identifier: GPL-3.0-or-later
"""The systemd units, checked by the real systemd-analyze.

`systemd-analyze verify` exits 0 even when it complains (unknown keys, unparsable values), so
"clean" here means: it printed nothing at all.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYSTEM_UNIT = REPO / "systemd" / "audiod.service"
PROMETHEUS_DROPIN = REPO / "systemd" / "audiod.service.d" / "prometheus.conf"
USER_UNIT = REPO / "systemd" / "audiod-user.service"
SYSTEM_EXEC = "/usr/local/bin/audiod"
MAX_EXPOSURE = 1.5

ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze missing (Debian package: systemd)")


# systemd-analyze, run as root, touches this marker the way a booting manager would.
UNITS_LOAD_MARKER = Path("/run/systemd/systemd-units-load")


@pytest.fixture(autouse=True, scope="module")
def _no_marker_left_behind() -> Iterator[None]:
    existed = UNITS_LOAD_MARKER.exists()
    yield
    if not existed:
        UNITS_LOAD_MARKER.unlink(missing_ok=True)


def _analyze(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    # No colours, no pager: the output is parsed.
    run_env = {**(env if env is not None else os.environ), "SYSTEMD_COLORS": "0", "SYSTEMD_PAGER": ""}
    return subprocess.run([ANALYZE, *args], capture_output=True, text=True, env=run_env, timeout=60)


def _fake_executable(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def _system_unit_with_exec(tmp_path: Path) -> Path:
    """A copy of audiod.service whose ExecStart binary exists on this machine.

    verify insists that ExecStart's binary exists, and audiod is not installed where tests
    run. --root= does not help (the alternate root then also lacks sysinit.target and every
    other unit the service depends on), so only the binary's path is swapped; the copy keeps
    the file name, since verify takes the unit name from it. test_system_unit_lacks_only_its_binary
    shows the swap hides nothing else.
    """
    text = SYSTEM_UNIT.read_text()
    marker = f"ExecStart={SYSTEM_EXEC} "
    assert text.count(marker) == 1, "expected exactly one ExecStart= running the installed audiod"
    fake = _fake_executable(tmp_path / "bin" / "audiod")
    copy = tmp_path / "unit" / SYSTEM_UNIT.name
    copy.parent.mkdir()
    copy.write_text(text.replace(marker, f"ExecStart={fake} "))
    return copy


def test_system_unit_verifies_cleanly(tmp_path: Path) -> None:
    r = _analyze("verify", "--man=no", str(_system_unit_with_exec(tmp_path)))
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_system_unit_lacks_only_its_binary() -> None:
    r = _analyze("verify", "--man=no", str(SYSTEM_UNIT))
    if os.access(SYSTEM_EXEC, os.X_OK):
        assert (r.returncode, r.stdout + r.stderr) == (0, "")
    else:
        complaint = f"audiod.service: Command {SYSTEM_EXEC} is not executable: No such file or directory"
        assert (r.stdout + r.stderr).splitlines() == [complaint]


def test_verify_harness_notices_mistakes(tmp_path: Path) -> None:
    # Guards the "printed nothing" criterion above: a typo must show up in the output.
    unit = _system_unit_with_exec(tmp_path)
    broken = unit.read_text().replace("ProtectSystem=strict", "ProtectSystem=strickt\nProtectSytem=yes")
    unit.write_text(broken)
    r = _analyze("verify", "--man=no", str(unit))
    out = r.stdout + r.stderr
    assert "Failed to parse protect system value" in out
    assert "Unknown key 'ProtectSytem'" in out


def test_user_unit_verifies_cleanly_in_a_user_manager(tmp_path: Path) -> None:
    # --user verify needs $XDG_RUNTIME_DIR, and resolves %h from $HOME, so a throwaway home
    # lets the unit be checked exactly as written: ExecStart=%h/.local/bin/audiod.
    home, runtime = tmp_path / "home", tmp_path / "run"
    runtime.mkdir(mode=0o700)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(tmp_path / "config"),
    }
    home.mkdir()
    r = _analyze("--user", "verify", "--man=no", str(USER_UNIT), env=env)
    # Before the binary exists, the complaint proves %h expanded to our $HOME.
    missing = f"Command {home}/.local/bin/audiod is not executable: No such file or directory"
    assert (r.stdout + r.stderr).splitlines() == [f"{USER_UNIT.name}: {missing}"]

    _fake_executable(home / ".local" / "bin" / "audiod")
    r = _analyze("--user", "verify", "--man=no", str(USER_UNIT), env=env)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def _systemd_version() -> int:
    r = _analyze("--version")
    match = re.match(r"systemd (\d+)", r.stdout)
    assert match, r.stdout
    return int(match.group(1))


def test_system_unit_exposure(tmp_path: Path) -> None:
    if _systemd_version() < 250:
        pytest.skip("systemd-analyze security --offline= needs systemd >= 250")
    # A copy on its own: beside the shipped file, systemd-analyze would also apply the optional drop-ins in
    # audiod.service.d/ and score the unit with them.
    alone = tmp_path / SYSTEM_UNIT.name
    alone.write_text(SYSTEM_UNIT.read_text())
    # --threshold counts in tenths (exposure 1.5 == 15); the exit code is the tool's own verdict,
    # the parsed number makes a failure readable.
    r = _analyze("security", "--offline=true", f"--threshold={round(MAX_EXPOSURE * 10)}", str(alone))
    match = re.search(r"Overall exposure level for audiod\.service: (\d+\.\d+)", r.stdout)
    assert match, r.stdout + r.stderr
    exposure = float(match.group(1))
    assert exposure <= MAX_EXPOSURE, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr
    print(f"\nexposure of the unit alone: {exposure}")


def _with_prometheus_dropin(unit: Path) -> Path:
    """The drop-in beside the unit copy, where systemd-analyze looks for ``<unit>.d/*.conf``."""
    dropins = unit.parent / f"{unit.name}.d"
    dropins.mkdir()
    (dropins / PROMETHEUS_DROPIN.name).write_text(PROMETHEUS_DROPIN.read_text())
    return unit


def test_prometheus_dropin_verifies_cleanly(tmp_path: Path) -> None:
    r = _analyze("verify", "--man=no", str(_with_prometheus_dropin(_system_unit_with_exec(tmp_path))))
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_prometheus_dropin_opens_localhost_only_and_keeps_the_exposure_low(tmp_path: Path) -> None:
    if _systemd_version() < 250:
        pytest.skip("systemd-analyze security --offline= needs systemd >= 250")
    unit = _with_prometheus_dropin(_system_unit_with_exec(tmp_path))
    r = _analyze("security", "--offline=true", f"--threshold={round(MAX_EXPOSURE * 10)}", str(unit))
    match = re.search(r"Overall exposure level for audiod\.service: (\d+\.\d+)", r.stdout)
    assert match, r.stdout + r.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, r.stdout
    assert r.returncode == 0, r.stdout + r.stderr
    # The drop-in was applied (not silently ignored), and it opens exactly what the listener needs.
    lines = {line.split()[1]: line for line in r.stdout.splitlines() if line.startswith(("✓", "✗"))}
    assert lines["PrivateNetwork="].startswith("✗")
    assert "allow list with only localhost entries" in lines["IPAddressDeny="]
    assert lines["RestrictAddressFamilies=~AF_(INET|INET6)"].startswith("✗")
    assert lines["RestrictAddressFamilies=~AF_PACKET"].startswith("✓")
    assert lines["RestrictAddressFamilies=~AF_NETLINK"].startswith("✓")
    print(f"\nexposure with the Prometheus drop-in: {match.group(1)}")
