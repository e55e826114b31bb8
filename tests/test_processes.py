"""Children that do not outlive their parent (``processes.terminate_with_parent``),
as the gateway's workers and the demo's nginx use it: the parent is killed by
SIGKILL, which stops nothing in order, and the child must go too."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

# The parent: starts the child, prints its pid, and waits to be killed.
PARENTS = {
    # The way the gateway's worker processes ask, from their own code.
    "in the child": """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c",
            "from eventtrail.processes import terminate_with_parent; import time; "
            "terminate_with_parent(); print('ready', flush=True); time.sleep(60)"],
            stdout=subprocess.PIPE, text=True)
        child.stdout.readline()
        print(child.pid, flush=True)
        time.sleep(60)
    """,
    # The way the demo starts nginx: between fork and exec.
    "between fork and exec": """
        import subprocess, time
        from eventtrail.processes import terminate_with_parent
        child = subprocess.Popen(["sleep", "60"], preexec_fn=terminate_with_parent)
        print(child.pid, flush=True)
        time.sleep(60)
    """,
}


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", sorted(PARENTS))
def test_a_child_is_terminated_when_its_parent_is_killed(how: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(PARENTS[how])], stdout=subprocess.PIPE, text=True
    )
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        time.sleep(0.2)
        assert _alive(child)
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the child outlived its parent"
    finally:
        parent.kill()
        parent.wait()
        if "child" in locals() and _alive(child):
            os.kill(child, signal.SIGKILL)


# The parent of a shielded child: its first process, as the gateway's queue
# process and `up`'s worker are (multiprocessing's resource tracker is not
# running yet). The child reports the signals it was started with blocked.
SHIELDED_PARENT = """
import multiprocessing, signal, sys
from eventtrail.processes import start_shielded

def report(path):
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())
    with open(path, "w") as out:
        out.write(" ".join(sorted(sig.name for sig in blocked)))

if __name__ == "__main__":
    child = multiprocessing.get_context("spawn").Process(target=report, args=(sys.argv[1],))
    start_shielded(child, deferring=(signal.SIGTERM,))
    child.join()
"""


def test_a_shielded_child_starts_with_sigint_and_its_deferred_signals_blocked(tmp_path: Path) -> None:
    parent, found = tmp_path / "parent.py", tmp_path / "blocked"
    parent.write_text(SHIELDED_PARENT)
    subprocess.run([sys.executable, str(parent), str(found)], check=True, timeout=60)
    assert found.read_text().split() == ["SIGINT", "SIGTERM"]
