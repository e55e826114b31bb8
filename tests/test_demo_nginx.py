"""``eventtrail demo --producer nginx``: Debian's nginx in front of the demo's
services, its JSON access log followed into the store, and never an nginx
process left behind (on --duration, Ctrl-C, SIGKILL or a failed start)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.config import load_settings
from eventtrail.demo.nginx import LOG_FORMAT, NginxFailed, NginxGateway, find_nginx
from eventtrail.demo.stack import gateway_config
from eventtrail.gateway.config import parse_gateway_config
from tests.cli import eventtrail_env, run, stored_calls
from tests.servers import ROOT

NGINX = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")

needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt install nginx-light)")

#: nginx's $request_id: 16 random bytes in hex.
NGINX_REQUEST_ID = re.compile(r"[0-9a-f]{32}")


# -- processes ----------------------------------------------------------------------------


def _session_members(session: int) -> list[int]:
    """Live (not zombie) processes of ``session``: nginx leads its own, so
    its master and workers are all there."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited while we looked
        # The command name is in parentheses and may hold spaces.
        state, _ppid, _group, member_of = stat[stat.rindex(")") + 2 :].split()[:4]
        if int(member_of) == session and state != "Z":
            members.append(int(entry.name))
    return members


def _commands_naming(folder: Path) -> list[str]:
    """Command lines of the running processes that name ``folder``."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if entry.name.isdigit() and str(folder) in command:
            found.append(command)
    return found


def _wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s"
        time.sleep(0.05)


def _nginx_master(data_dir: Path, demo: subprocess.Popen[str]) -> int:
    """The pid nginx wrote once it listened."""
    pid_file = data_dir / "nginx" / "nginx.pid"

    def written() -> bool:
        assert demo.poll() is None, demo.communicate()
        return pid_file.exists() and pid_file.read_text().strip().isdigit()

    _wait_until(written, 30, "nginx's pid file")
    return int(pid_file.read_text())


def _demo(data_dir: Path, *args: str) -> subprocess.Popen[str]:
    """The demo in its own process group, as a terminal runs it."""
    return subprocess.Popen(
        [sys.executable, "-m", "eventtrail", "demo", "--producer", "nginx", "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=eventtrail_env(data_dir),
        cwd=data_dir,
        start_new_session=True,
    )


def _finished(demo: subprocess.Popen[str], timeout: float = 90) -> tuple[str, str]:
    try:
        return demo.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(demo.pid, signal.SIGKILL)
        out, err = demo.communicate()
        raise AssertionError(f"the demo still ran after {timeout}s:\n{out}\n{err}") from None


# -- what reached the store ---------------------------------------------------------------


def _logged_ids(data_dir: Path) -> list[str]:
    lines = (data_dir / "nginx" / "logs" / "access.json").read_text().splitlines()
    return [json.loads(line)["request_id"] for line in lines]


def _stored(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    """Each stored request's events: (type, service)."""
    return stored_calls(data_dir, lambda event: str(event.data["Name"]))


def _assert_every_logged_call_stored(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    logged = _logged_ids(data_dir)
    flows = _stored(data_dir)
    assert logged and len(set(logged)) == len(logged)
    assert all(NGINX_REQUEST_ID.fullmatch(request_id) for request_id in logged)
    # One call per line, nothing more, nothing twice.
    assert set(flows) == set(logged)
    for request_id, events in flows.items():
        kinds = sorted(kind for kind, _ in events)
        assert kinds in ([REQUEST, RESPONSE], [ERROR, REQUEST]), (request_id, events)
    return flows


# -- the demo ------------------------------------------------------------------------------


def test_the_example_log_format_is_the_demos() -> None:
    example = (ROOT / "examples" / "nginx-eventtrail.conf").read_text()
    found = re.search(r"^log_format eventtrail.*?';$", example, re.DOTALL | re.MULTILINE)
    assert found is not None
    assert found.group(0) == LOG_FORMAT


@needs_nginx
@pytest.mark.slow
def test_the_nginx_demo_names_service_b_and_stores_what_nginx_logged(tmp_path: Path) -> None:
    demo = _demo(tmp_path, "--duration", "8", "--traffic", "4", "--gateway-port", "0", "--seed", "3")
    master = _nginx_master(tmp_path, demo)
    _wait_until(lambda: len(_session_members(master)) >= 2, 10, "nginx's worker")
    running = _session_members(master)
    assert len(_commands_naming(tmp_path / "nginx")) == 1  # the master; workers name no folder
    out, err = _finished(demo)

    assert demo.returncode == 0, out + err
    assert "Traceback" not in err
    verdict = next(line for line in out.splitlines() if line.startswith("verdict:"))
    assert "Microservice B is faulty" in verdict and "Microservice A" not in verdict, out
    assert re.search(r"Microservice A and B behind nginx on http://127\.0\.0\.1:\d+ \(/a and /b\)", err)
    totals = re.search(
        r"([\d,]+) demo requests \(([\d,]+) calls, [\d,]+ failed\); ([\d,]+) lines of nginx's log read,"
        r" ([\d,]+) events queued, ([\d,]+) stored",
        err,
    )
    assert totals, err
    calls, lines, queued, stored = (int(totals.group(n).replace(",", "")) for n in (2, 3, 4, 5))
    # Every call the traffic made went through nginx and was logged once.
    assert calls == lines == len(_logged_ids(tmp_path))
    assert queued == stored == 2 * lines

    flows = _assert_every_logged_call_stored(tmp_path)
    services = {(kind, service) for events in flows.values() for kind, service in events}
    assert {(REQUEST, "Microservice A"), (RESPONSE, "Microservice A")} <= services
    assert {(REQUEST, "Microservice B"), (RESPONSE, "Microservice B"), (ERROR, "Microservice B")} <= services

    # nginx is gone: master and workers, and its pid file with them.
    assert master in running
    assert _session_members(master) == []
    assert _commands_naming(tmp_path / "nginx") == []
    assert all(not Path(f"/proc/{pid}").exists() for pid in running)
    assert not (tmp_path / "nginx" / "nginx.pid").exists()


@needs_nginx
@pytest.mark.slow
def test_ctrl_c_stops_nginx_and_stores_its_last_lines(tmp_path: Path) -> None:
    demo = _demo(tmp_path, "--traffic", "2", "--gateway-port", "0", "--rate", "30")
    master = _nginx_master(tmp_path, demo)
    log = tmp_path / "nginx" / "logs" / "access.json"
    # In the middle: after the verdict, while the traffic still flows.
    assert demo.stdout is not None
    for line in demo.stdout:
        if line.startswith("verdict:"):
            break
    size = log.stat().st_size
    _wait_until(lambda: log.stat().st_size > size, 10, "more traffic after the verdict")
    # A terminal's Ctrl-C: SIGINT to the whole foreground group.
    os.killpg(demo.pid, signal.SIGINT)
    out, err = _finished(demo)

    assert demo.returncode == 0, out + err
    assert "Traceback" not in err
    assert "stopping nginx, reading the rest of its log" in err
    totals = re.search(r"([\d,]+) lines of nginx's log read, ([\d,]+) events queued, ([\d,]+) stored", err)
    assert totals, err
    lines, queued, stored = (int(totals.group(n).replace(",", "")) for n in (1, 2, 3))
    assert lines == len(_logged_ids(tmp_path)) and queued == stored == 2 * lines
    _assert_every_logged_call_stored(tmp_path)
    assert _session_members(master) == []


@needs_nginx
def test_a_killed_demo_takes_nginx_with_it(tmp_path: Path) -> None:
    demo = _demo(tmp_path, "--traffic", "30", "--gateway-port", "0")
    master = _nginx_master(tmp_path, demo)
    assert master in _session_members(master)
    demo.send_signal(signal.SIGKILL)
    demo.communicate(timeout=10)
    _wait_until(lambda: _session_members(master) == [], 15, "nginx gone after the demo was killed")


@needs_nginx
@pytest.mark.slow
def test_a_rerun_resumes_the_log_where_the_last_run_stopped(tmp_path: Path) -> None:
    for run_number in (1, 2):
        demo = _demo(tmp_path, "--duration", "2", "--traffic", "1", "--gateway-port", "0")
        out, err = _finished(demo)
        assert demo.returncode == 0, (run_number, out + err)
        totals = re.search(r"\(([\d,]+) calls, .*; ([\d,]+) lines of nginx's log read", err)
        assert totals, err
        # Only this run's lines are read: the last run's were, before it stopped.
        assert totals.group(1) == totals.group(2), err
    _assert_every_logged_call_stored(tmp_path)


def test_missing_nginx_is_one_clear_error(tmp_path: Path) -> None:
    result = run(
        tmp_path, "demo", "--producer", "nginx", "--nginx", str(tmp_path / "no-nginx"), "--port", "0"
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: --producer nginx needs nginx (apt install nginx-light): {tmp_path / 'no-nginx'}"
        " is not an executable file\n"
    )
    # Nothing was started: no prefix folder, no store.
    assert not (tmp_path / "nginx").exists()


def test_nginx_without_its_producer_is_refused(tmp_path: Path) -> None:
    result = run(tmp_path, "demo", "--nginx", "/usr/sbin/nginx", "--port", "0")
    assert result.returncode == 2
    assert result.stderr == "error: --nginx goes with --producer nginx\n"


def test_nginx_is_found_outside_the_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if not Path("/usr/sbin/nginx").exists():
        pytest.skip("Debian's nginx is not installed in /usr/sbin (apt install nginx-light)")
    # A normal user's PATH has no /usr/sbin.
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_nginx() == Path("/usr/sbin/nginx")
    with pytest.raises(NginxFailed, match="is not an executable file"):
        find_nginx(tmp_path)


@needs_nginx
@pytest.mark.slow
def test_a_taken_gateway_port_is_nginxs_own_error_and_nothing_runs(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(
            tmp_path,
            "demo",
            "--producer",
            "nginx",
            "--duration",
            "1",
            "--port",
            "0",
            "--gateway-port",
            str(port),
        )
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: nginx did not start: [emerg] bind() to 127.0.0.1:{port} failed (98: Address already in use);"
        " --gateway-port 0 picks a free one"
    ]
    assert not (tmp_path / "nginx" / "nginx.pid").exists()
    assert _commands_naming(tmp_path / "nginx") == []


def _gateway(tmp_path: Path, routes: list[dict[str, object]]) -> NginxGateway:
    assert NGINX is not None
    return NginxGateway(
        parse_gateway_config({"routes": routes}, origin="test"),
        load_settings({"data_dir": str(tmp_path)}),
        executable=Path(NGINX),
    )


@needs_nginx
def test_a_configuration_nginx_refuses_is_its_own_error_and_nothing_runs(tmp_path: Path) -> None:
    gateway = _gateway(
        tmp_path, [{"prefix": "/a", "service": "A", "upstream": "http://127.0.0.1:0", "timeout": 1.0}]
    )
    with pytest.raises(NginxFailed, match=r"^nginx did not start: \[emerg\] .*127\.0\.0\.1:0"):
        gateway.start()
    assert gateway.pid is None
    assert _commands_naming(gateway.prefix) == []
    assert gateway.stop().lines == 0


_FOLDER_NAMES = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="/\x00"), min_size=1, max_size=24
).filter(lambda name: name not in (".", ".."))


@needs_nginx
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(folder=_FOLDER_NAMES, service=st.text(min_size=1, max_size=40))
def test_any_data_folder_and_service_name_make_a_configuration_nginx_accepts(
    tmp_path: Path, folder: str, service: str
) -> None:
    """The data folder's name never enters nginx's syntax (paths are relative
    to the prefix); a service name is quoted, or refused when nginx cannot
    hold it ($ always starts a variable)."""
    data_dir = tmp_path / folder
    data_dir.mkdir(exist_ok=True)
    routes = gateway_config("http://127.0.0.1:9001", "http://127.0.0.1:9002/base").routes
    route = {"prefix": "/s", "service": service, "upstream": "http://127.0.0.1:9003", "timeout": 1.5}
    gateway = _gateway(
        data_dir,
        [
            *(
                {"prefix": r.prefix, "service": r.service, "upstream": r.upstream, "timeout": r.timeout}
                for r in routes
            ),
            route,
        ],
    )
    unfit = "$" in service or any(ord(char) < 0x20 or ord(char) == 0x7F for char in service)
    event("refused" if unfit else "checked by nginx -t")
    if unfit:
        with pytest.raises(ValueError, match="cannot be written in nginx's configuration"):
            gateway.prepare()
        return
    config = gateway.prepare()
    assert NGINX is not None
    checked = subprocess.run(
        [NGINX, "-t", "-q", "-p", f"{gateway.prefix}/", "-c", str(config), "-e", "logs/error.log"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert checked.returncode == 0, checked.stderr
