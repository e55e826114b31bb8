"""``eventtrail demo``, ``eventtrail demo-services`` and the README's quick
start: the whole pipeline on real ports, run as a new user would."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventtrail.cli.demo import _count
from tests.cli import eventtrail_env, run, spawn
from tests.servers import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
EXAMPLES = ROOT / "examples"

#: The article's test/message.json, byte for byte (see the wire format in the README).
ARTICLE_MESSAGE = (
    '{"id":"5b070a84-c5d5-460a-ac98-a0717cbc8e56","requestId":"677afffc-373e-42f0-8363-f24bc675bcf6",'
    '"timestamp":"2020-05-01T20:00:00Z","type":"MICROSERVICE_REQUEST","source":"Gateway",'
    '"data":{"Name":"Microservice A"}}\n'
)


def _get_json(url: str, headers: dict[str, str] | None = None) -> object:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


def _stop(process: subprocess.Popen[str], timeout: float = 30) -> tuple[str, str]:
    """Ctrl-C, as a person stops it; the output once it has exited."""
    process.send_signal(signal.SIGINT)
    try:
        return process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        raise AssertionError(f"still running {timeout}s after Ctrl-C:\n{out}\n{err}") from None


@pytest.mark.slow
def test_demo_prints_the_ui_first_and_names_service_b(tmp_path: Path) -> None:
    demo = spawn(tmp_path, "demo", "--duration", "12", "--traffic", "6", "--port", "0", "--seed", "3")
    assert demo.stdout is not None
    started = time.monotonic()
    first = demo.stdout.readline()
    seconds_to_ui = time.monotonic() - started
    match = re.match(r"web UI: (http://\S+/) ", first)
    assert match, first + (demo.stderr.read() if demo.stderr else "")
    ui_url = match.group(1)
    # Before the traffic phase ends: the UI answers while the first traffic flows.
    assert seconds_to_ui < 6
    assert isinstance(_get_json(ui_url + "api/health?window=5m"), dict)

    printed = [first]
    for line in demo.stdout:
        printed.append(line)
        if line.startswith("verdict:"):
            break
    verdict = printed[-1]
    assert "Microservice B is faulty" in verdict and "Microservice A" not in verdict, "".join(printed)
    health = _get_json(ui_url + "api/health?window=5m")
    assert isinstance(health, dict) and health["faulty"] == ["Microservice B"]
    recent = _get_json(ui_url + "api/requests?limit=5")
    assert isinstance(recent, dict) and len(recent["requests"]) == 5

    # The rest from the same reader (it may hold lines read ahead); stderr
    # stays small (a progress bar is not drawn on a pipe).
    rest = demo.stdout.read()
    _, errors = demo.communicate(timeout=60)
    assert demo.returncode == 0, errors
    assert f"web UI: {ui_url}\n" in rest
    assert "sending demo traffic" in errors
    recorded = re.search(
        r"([\d,]+) demo requests \([\d,]+ calls, [\d,]+ failed\); ([\d,]+) events recorded, ([\d,]+) stored",
        errors,
    )
    assert recorded and recorded.group(2) == recorded.group(3) and recorded.group(2) != "0", errors
    assert (tmp_path / "events.db").exists()


def test_a_taken_ui_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "demo", "--duration", "1", "--port", str(port))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"error: port {port} on 127.0.0.1 is taken (another program listens there);"
        " --port 0 picks a free one\n"
    )


def test_a_taken_gateway_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "demo", "--duration", "1", "--port", "0", "--gateway-port", str(port))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    # The last line decides; uvicorn may log its bind failure before it.
    line = result.stderr.splitlines()[-1]
    assert line.startswith("error: ") and f"port {port}" in line
    assert "--gateway-port 0 picks a free one" in line
    # The publisher opened before the gateway failed was closed: nothing is left to recover.
    assert not list(tmp_path.glob("gateway-spill.db-journal*"))


@given(st.integers(min_value=0, max_value=10**9), st.sampled_from(["event", "call", "demo request"]))
def test_counted_nouns_agree_with_their_number(number: int, noun: str) -> None:
    words = _count(number, noun)
    assert words.replace(",", "").startswith(f"{number} ")
    assert words.endswith(noun if number == 1 else noun + "s")


# -- demo-services and the example gateway --------------------------------------


@contextmanager
def _demo_services(tmp_path: Path, port_a: int, port_b: int) -> Iterator[subprocess.Popen[str]]:
    services = spawn(
        tmp_path, "demo-services", "--port-a", str(port_a), "--port-b", str(port_b), "--seed", "1"
    )
    try:
        _wait_listening(services, port_a)
        _wait_listening(services, port_b)
        yield services
    finally:
        if services.poll() is None:
            services.kill()
            services.communicate()


def _wait_listening(process: subprocess.Popen[str], port: int, timeout: float = 20) -> None:
    """Until ``port`` accepts connections; at once if ``process`` exited instead."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            out, err = process.communicate()
            raise AssertionError(f"exited with {process.returncode} before listening on {port}:\n{out}{err}")
        try:
            wait_for_port(port, timeout=0.2)
        except TimeoutError:
            continue
        return
    raise AssertionError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def _example_config(tmp_path: Path, port_a: int, port_b: int) -> Path:
    """examples/gateway.toml with its upstream ports replaced by free ones."""
    text = (EXAMPLES / "gateway.toml").read_text()
    assert "127.0.0.1:9001" in text and "127.0.0.1:9002" in text
    config = tmp_path / "gateway.toml"
    config.write_text(
        text.replace("127.0.0.1:9001", f"127.0.0.1:{port_a}").replace("127.0.0.1:9002", f"127.0.0.1:{port_b}")
    )
    return config


@pytest.mark.slow
def test_the_example_gateway_reaches_the_demo_services(tmp_path: Path) -> None:
    port_a, port_b, port_gateway = free_port(), free_port(), free_port()
    config = _example_config(tmp_path, port_a, port_b)
    with _demo_services(tmp_path, port_a, port_b) as services:
        up = spawn(tmp_path, "up", "--config", str(config), "--port", str(port_gateway))
        try:
            _wait_listening(up, port_gateway)
            request_id = "0b1c2d3e-4f50-4617-8293-a4b5c6d7e8f9"
            answer = _get_json(f"http://127.0.0.1:{port_gateway}/a/orders/42", {"X-Request-Id": request_id})
            assert answer == {"service": "Microservice A", "requestId": request_id, "order": 42, "items": 3}
        finally:
            _, up_errors = _stop(up)
        assert up.returncode == 0, up_errors
        _, services_errors = _stop(services)
    assert services.returncode == 0, services_errors
    assert f"Microservice A on http://127.0.0.1:{port_a}" in services_errors
    assert f"Microservice B on http://127.0.0.1:{port_b}" in services_errors

    stored = run(tmp_path, "flow", request_id, "--json")
    assert stored.returncode == 0, stored.stderr
    events = json.loads(stored.stdout)
    # What `up` said on the way out (the publisher's and the worker's counts) tells where events went.
    assert [event["type"] for event in events] == ["MICROSERVICE_REQUEST", "MICROSERVICE_RESPONSE"], up_errors
    assert {event["data"]["Name"] for event in events} == {"Microservice A"}
    assert events[1]["data"]["status"] == 200


def test_demo_services_on_a_taken_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "demo-services", "--port-a", "0", "--port-b", str(port), timeout=30)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f"error: Microservice B: port {port} on 127.0.0.1 is taken (another program listens there);"
        " --port-b chooses another (0: any free port)"
    )


# -- the README -----------------------------------------------------------------


def _readme_block(heading: str) -> list[str]:
    """The commands of the first ```sh block under ``heading``, comments stripped."""
    section = README.read_text().split(f"\n{heading}\n", 1)[1]
    block = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    assert block, f"no sh block under {heading}"
    commands = []
    for line in block.group(1).splitlines():
        words = shlex.split(line, comments=True)
        if words:
            commands.append(shlex.join(words))
    return commands


def _wait_for_requests(ui_url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        recent = _get_json(ui_url + "api/requests?limit=1")
        if isinstance(recent, dict) and recent["requests"]:
            return
        time.sleep(0.2)
    raise AssertionError(f"no request reached the UI at {ui_url} within {timeout}s")


def test_the_example_message_is_the_articles() -> None:
    assert (EXAMPLES / "message.json").read_text() == ARTICLE_MESSAGE


def test_the_example_files_are_valid_events(tmp_path: Path) -> None:
    result = run(tmp_path, "send", str(EXAMPLES / "message.json"), str(EXAMPLES / "flow.ndjson"))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "sent 7 messages"
    flow = [json.loads(line) for line in (EXAMPLES / "flow.ndjson").read_text().splitlines()]
    assert len({event["requestId"] for event in flow}) == 1
    assert {event["data"]["Name"] for event in flow} == {"Microservice A", "Microservice B"}
    assert {event["type"] for event in flow} == {
        "MICROSERVICE_REQUEST",
        "MICROSERVICE_RESPONSE",
        "MICROSERVICE_ERROR",
    }


@pytest.mark.slow
def test_the_quick_start_runs_as_written(tmp_path: Path) -> None:
    """Every command of the README's quick start, in one shell, from the
    checkout; the demo is stopped with Ctrl-C once it shows its address."""
    commands = _readme_block("## Quick start")
    assert commands[:2] == ["make setup", ". .venv/bin/activate"], commands
    assert any(command.startswith("eventtrail demo") for command in commands)
    # `make setup` runs for real, but only where it has nothing to do (as in CI,
    # after `make test` set up): a test never reinstalls the shared .venv.
    stamps = subprocess.run(
        ["make", "--question", ".venv/.installed", "node_modules/.installed"], cwd=ROOT, check=False
    )
    if stamps.returncode != 0:
        pytest.skip("the checkout is not set up (pyproject.toml or package.json changed): run `make setup`")
    script = tmp_path / "quick-start.sh"
    # Each command is echoed to stderr first, so the test knows which one ran.
    script.write_text(
        "set -euo pipefail\n"
        + "".join(f"echo {shlex.quote('+ ' + command)} >&2\n{command}\n" for command in commands)
    )
    data_dir = tmp_path / "data"
    env = eventtrail_env(data_dir)
    # The shell finds `eventtrail` on the PATH that `. .venv/bin/activate` sets, not ours.
    venv_bin = str(ROOT / ".venv" / "bin")
    env["PATH"] = os.pathsep.join(
        part for part in env.get("PATH", os.defpath).split(os.pathsep) if part != venv_bin
    )
    env.pop("VIRTUAL_ENV", None)
    shell = subprocess.Popen(
        ["bash", str(script)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert shell.stdout is not None
    printed = []
    deadline = time.monotonic() + 120
    for line in shell.stdout:
        printed.append(line)
        if match := re.match(r"web UI: (http://\S+/) ", line):
            # A person opens the UI, watches the first requests arrive, then
            # presses Ctrl-C: the terminal signals the whole process group.
            _wait_for_requests(match.group(1))
            os.killpg(shell.pid, signal.SIGINT)
            break
        assert time.monotonic() < deadline, "".join(printed)
    rest, errors = shell.communicate(timeout=120)
    output = "".join(printed) + rest
    assert shell.returncode == 0, output + errors
    assert "Traceback" not in errors, errors
    assert [line[2:] for line in errors.splitlines() if line.startswith("+ ")] == commands
    assert "request 677afffc-373e-42f0-8363-f24bc675bcf6" in output
    assert "Microservice A" in output
    assert (data_dir / "events.db").exists()
