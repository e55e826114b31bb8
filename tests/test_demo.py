"""``eventtrail demo``: the whole pipeline on real ports, and its verdict."""

from __future__ import annotations

import json
import re
import socket
import urllib.request
from pathlib import Path

import pytest

from tests.cli import run, spawn


def _get_json(url: str) -> object:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_demo_runs_to_completion_and_names_service_b(tmp_path: Path) -> None:
    demo = spawn(tmp_path, "demo", "--duration", "20", "--port", "0", "--seed", "3")
    assert demo.stdout is not None
    ui_url = None
    printed: list[str] = []
    for line in demo.stdout:
        printed.append(line)
        if match := re.match(r"web UI: (http://\S+/)", line):
            ui_url = match.group(1)
            break
    assert ui_url, "".join(printed) + (demo.stderr.read() if demo.stderr else "")

    # While the demo runs, its UI serves what the gateway recorded.
    health = _get_json(ui_url + "api/health?window=5m")
    assert isinstance(health, dict) and health["faulty"] == ["Microservice B"]
    recent = _get_json(ui_url + "api/requests?limit=5")
    assert isinstance(recent, dict) and len(recent["requests"]) == 5

    rest, errors = demo.communicate(timeout=60)
    stdout = "".join(printed) + rest
    assert demo.returncode == 0, errors
    verdict = next(line for line in stdout.splitlines() if line.startswith("verdict:"))
    assert "Microservice B is faulty" in verdict and "Microservice A" not in verdict
    assert "sending demo traffic" in errors
    recorded = re.search(r"([\d,]+) events recorded, ([\d,]+) stored", errors)
    assert recorded and recorded.group(1) == recorded.group(2) and recorded.group(1) != "0", errors
    assert (tmp_path / "events.db").exists()


def test_a_taken_ui_port_is_one_clear_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(tmp_path, "demo", "--duration", "1", "--port", str(port))
    assert result.returncode == 2
    assert f"is port {port} taken? --port 0 picks a free one" in result.stderr
    assert "Traceback" not in result.stderr
