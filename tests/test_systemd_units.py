"""The units in systemd/ pass ``systemd-analyze verify`` and stay hardened."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
ANALYZE = shutil.which("systemd-analyze")

pytestmark = pytest.mark.skipif(
    ANALYZE is None, reason="systemd-analyze not installed (apt-get install systemd)"
)


def copy_units(tmp_path: Path) -> Path:
    """The units with ExecStart pointed at an existing binary (tunneld is not installed
    under /usr/bin on a test machine, and verify checks that the binary exists)."""
    for unit in UNITS.glob("tunneld*.s*"):
        text = unit.read_text().replace("ExecStart=/usr/bin/tunneld", "ExecStart=/bin/true")
        (tmp_path / unit.name).write_text(text)
    return tmp_path


def analyze(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert ANALYZE is not None
    return subprocess.run(
        [ANALYZE, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.parametrize(
    "unit",
    ["tunneld.service", "tunneld.socket", "tunneld-agent.service", "tunneld-control.service"],
)
def test_unit_verifies(tmp_path: Path, unit: str) -> None:
    copy_units(tmp_path)
    result = analyze("verify", "--man=no", f"./{unit}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # verify reports unknown keys as warnings without failing: none allowed.
    assert "Unknown key" not in result.stderr, result.stderr
    assert "Unknown section" not in result.stderr, result.stderr


@pytest.mark.parametrize(
    "unit", ["tunneld.service", "tunneld-agent.service", "tunneld-control.service"]
)
def test_service_exposure_is_low(tmp_path: Path, unit: str) -> None:
    copy_units(tmp_path)
    result = analyze("security", "--offline=true", "--no-pager", f"./{unit}", cwd=tmp_path)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= 2.5, result.stdout


def test_daemon_unit_essentials() -> None:
    service = (UNITS / "tunneld.service").read_text()
    for line in (
        "Type=notify",
        "WatchdogSec=30s",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
        "SystemCallFilter=@system-service",
        "RuntimeDirectory=tunneld",
        "StateDirectory=tunneld",
    ):
        assert line in service, line
    socket_unit = (UNITS / "tunneld.socket").read_text()
    for line in (
        "ListenStream=/run/tunneld/tunneld.sock",
        "SocketMode=0660",
        "SocketGroup=tunneld",
    ):
        assert line in socket_unit, line


def test_sysusers_and_tmpfiles_apply(tmp_path: Path) -> None:
    sysusers = shutil.which("systemd-sysusers")
    tmpfiles = shutil.which("systemd-tmpfiles")
    if sysusers is None or tmpfiles is None:
        pytest.skip("systemd-sysusers/systemd-tmpfiles not installed")
    (tmp_path / "etc").mkdir()
    subprocess.run(
        [sysusers, f"--root={tmp_path}", str(UNITS / "sysusers.d" / "tunneld.conf")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    passwd = (tmp_path / "etc" / "passwd").read_text()
    group = (tmp_path / "etc" / "group").read_text()
    assert passwd.startswith("tunneld:")
    assert group.startswith("tunneld:")
    subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", str(UNITS / "tmpfiles.d" / "tunneld.conf")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    assert (tmp_path / "run" / "tunneld").stat().st_mode & 0o777 == 0o750
    assert (tmp_path / "var" / "lib" / "tunneld").stat().st_mode & 0o777 == 0o700
