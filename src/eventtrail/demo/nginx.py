"""nginx as the demo's gateway (``eventtrail demo --producer nginx``).

Debian's nginx proxies the demo's routes and writes the JSON access log of
``examples/nginx-eventtrail.conf``; a follower thread reads that log with the
machinery of ``eventtrail ingest nginx --follow`` (:meth:`Ingestor.follow`),
so the events go log -> queue -> worker -> store like those of any nginx.

nginx runs as a child in its own prefix folder inside the data folder
(``<data_dir>/nginx``: its configuration, pid file, logs, temporary files and
the follower's positions). The configuration names every path relative to
that prefix, so the data folder's name, whatever characters it holds, never
enters nginx's configuration syntax. The log and the positions outlive a run:
the next run's follower resumes where the last one stopped.
"""

from __future__ import annotations

import logging
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from eventtrail.config import Settings, open_queue
from eventtrail.gateway.config import GatewayConfig, Route
from eventtrail.ingest import FORMATS, IngestCounts, Ingestor, Line
from eventtrail.ingest.nginx import LOG_FORMAT
from eventtrail.processes import terminate_with_parent
from eventtrail.queue import QueueError
from eventtrail.retry import Backoff

__all__ = ["LOG_FORMAT", "NginxFailed", "NginxGateway", "find_nginx", "nginx_config"]

log = logging.getLogger(__name__)

#: Paths inside the prefix folder.
CONFIG_FILE = "nginx.conf"
PID_FILE = "nginx.pid"
ACCESS_LOG = "logs/access.json"
ERROR_LOG = "logs/error.log"
STARTUP_OUTPUT = "logs/startup.txt"
POSITIONS = "ingest"
_TEMP_PATHS = ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")

#: nginx tries a taken port five times, half a second apart, before it gives up.
START_SECONDS = 15.0
#: How long in-flight requests may take to finish once nginx is asked to stop.
SHUTDOWN_SECONDS = 5
#: How long the follower may take to read the rest of the log at the end.
FINISH_SECONDS = 30.0


class NginxFailed(RuntimeError):
    """nginx is missing, or did not start; the message is nginx's own when it said why."""


def find_nginx(given: Path | None = None) -> Path:
    """The nginx executable: ``given``, else ``nginx`` on ``PATH``, else
    ``/usr/sbin/nginx`` (Debian's, outside a normal user's ``PATH``)."""
    if given is not None:
        if given.is_file() and os.access(given, os.X_OK):
            return given
        raise NginxFailed(f"{given} is not an executable file")
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if found is None:
        raise NginxFailed("it is neither on PATH nor in /usr/sbin")
    return Path(found)


def _nginx_string(text: str, what: str) -> str:
    """``text`` as a double-quoted nginx string. ``$`` always starts a
    variable there (nginx has no escape for it), so it is refused."""
    if "$" in text or any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError(f"{what} {text!r} cannot be written in nginx's configuration ($ or a control char)")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _milliseconds(seconds: float) -> str:
    return f"{max(1, round(seconds * 1000))}ms"


def _location(route: Route) -> str:
    upstream = route.upstream_url
    # proxy_pass with a URI replaces the location's prefix by it: /a/orders/1 -> /orders/1,
    # as the recording gateway strips the route's prefix.
    target = f"{upstream.origin()}{route.base_path}/"
    return f"""
    location {_nginx_string(route.bare_prefix + "/", "prefix")} {{
      set $service {_nginx_string(route.service, "service")};
      proxy_set_header X-Request-Id $request_id;
      proxy_connect_timeout {_milliseconds(route.connect_timeout)};
      proxy_send_timeout {_milliseconds(route.timeout)};
      proxy_read_timeout {_milliseconds(route.timeout)};
      proxy_pass {_nginx_string(target, "upstream")};
    }}"""


def nginx_config(routes: GatewayConfig, host: str, port: int) -> str:
    """The configuration of the demo's nginx: ``routes`` proxied on
    ``host:port``, each call logged in :data:`LOG_FORMAT`. Paths are relative
    to the prefix folder (``nginx -p``)."""
    # A master running as root would hand its workers to `nobody`, who cannot
    # enter the data folder (0700); they run as the demo's own user instead.
    user = f"user {pwd.getpwuid(0).pw_name};\n" if os.geteuid() == 0 else ""
    temp = "".join(f"  {name}_temp_path temp/{name};\n" for name in _TEMP_PATHS)
    locations = "".join(_location(route) for route in routes.routes)
    return f"""daemon off;
master_process on;
worker_processes 1;
worker_shutdown_timeout {SHUTDOWN_SECONDS}s;
pid {PID_FILE};
error_log {ERROR_LOG} warn;
{user}events {{ worker_connections 1024; }}
http {{
{temp}  {LOG_FORMAT}
  access_log {ACCESS_LOG} eventtrail;
  server {{
    listen {host}:{port};
    # A location without its own `set $service` is named by its upstream's address.
    set $service "";
    # The id under which `eventtrail flow` finds the call.
    add_header X-Request-Id $request_id always;
{locations}
  }}
}}
"""


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class NginxGateway:
    """nginx in front of ``routes`` on ``host:port`` (0: a free port, picked
    before nginx starts), its access log followed into the queue.

    :meth:`start` returns once nginx listens, or raises :class:`NginxFailed`
    with nginx's message, leaving nothing running. :meth:`stop` lets nginx
    finish its requests, reads the log to its end, and returns what the
    log's lines became. nginx dies with the thread that started it: start it
    from the one that lives as long as the demo.
    """

    def __init__(
        self,
        routes: GatewayConfig,
        settings: Settings,
        *,
        executable: Path,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.settings = settings
        self.executable = executable
        self.host = host
        self.port = port
        self.prefix = Path(settings.data_dir).resolve() / "nginx"
        self._routes = routes
        self._process: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._finish = threading.Event()
        self._idle_passes = 0
        # Cuts the follower's retries of a queue that stays down, at the very end.
        self._abandon = threading.Event()
        self._follower = threading.Thread(target=self._follow, name="eventtrail-demo-nginx-log", daemon=True)
        self.counts = IngestCounts()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def access_log(self) -> Path:
        return self.prefix / ACCESS_LOG

    @property
    def pid(self) -> int | None:
        """The nginx master's process id while it runs."""
        return self._process.pid if self._process is not None and self._process.poll() is None else None

    # -- starting ----------------------------------------------------------------------

    def start(self) -> Self:
        try:
            self._start_nginx()
        except BaseException:
            self._stop_nginx()
            raise
        self._follower.start()
        return self

    def prepare(self) -> Path:
        """The prefix folder with its configuration (port 0 replaced by a free
        port): what ``nginx -p PREFIX/ -c CONFIG`` reads. Its path is returned."""
        if self.port == 0:
            self.port = _free_port(self.host)
        for folder in [self.prefix, self.prefix / "logs", self.prefix / "temp"]:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        config = self.prefix / CONFIG_FILE
        config.write_text(nginx_config(self._routes, self.host, self.port))
        return config

    def _start_nginx(self) -> None:
        config = self.prepare()
        # A pid file left by a killed nginx must not pass for the new one's.
        (self.prefix / PID_FILE).unlink(missing_ok=True)
        startup = self.prefix / STARTUP_OUTPUT
        with startup.open("wb") as output:
            self._process = subprocess.Popen(
                [str(self.executable), "-p", f"{self.prefix}/", "-c", str(config), "-e", ERROR_LOG],
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=output,
                # Ctrl-C in a terminal signals the whole foreground group: nginx
                # stays out of it, and stops when and how the demo says.
                start_new_session=True,
                # nginx gets SIGTERM (a fast shutdown) when the demo dies,
                # even by SIGKILL, so it is never orphaned.
                preexec_fn=terminate_with_parent,
            )
        self._wait_until_listening(self._process, startup)

    def _wait_until_listening(self, process: subprocess.Popen[bytes], startup: Path) -> None:
        """nginx writes its pid file once its listening socket is bound."""
        pid_file = self.prefix / PID_FILE
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise NginxFailed(f"nginx did not start: {_said(startup, process.returncode)}")
            try:
                if pid_file.read_text().strip() == str(process.pid):
                    return
            except FileNotFoundError:
                pass
            time.sleep(0.02)
        raise NginxFailed(f"nginx did not start in {START_SECONDS:g} s: {_said(startup, None)}")

    # -- the log ---------------------------------------------------------------------------

    def _follow(self) -> None:
        settings = self.settings
        try:
            with open_queue(settings) as queue:
                ingestor = Ingestor(
                    FORMATS["nginx"],
                    queue,
                    max_body_bytes=settings.max_body_bytes,
                    on_bad=_report_bad_line,
                    backoff=Backoff(attempts=None, base=0.5, cap=15.0, sleep=self._abandon.wait),
                )
                self.counts = ingestor.counts
                ingestor.follow(
                    [self.access_log],
                    self.prefix / POSITIONS,
                    self._stop,
                    finish=self._finish,
                    on_idle=self._count_idle_pass,
                )
        except QueueError as error:
            log.error("reading nginx's log stopped: %s", error)

    def _count_idle_pass(self) -> None:
        self._idle_passes += 1

    def caught_up(self) -> Callable[[], bool]:
        """Whether every line logged before this call is on the queue, asked later.

        An idle pass counted after this call may have begun before it; the
        one after that began after it, and found every line logged before it
        already sent."""
        target = self._idle_passes + 2
        return lambda: self._idle_passes >= target

    # -- stopping ----------------------------------------------------------------------------

    def stop(self) -> IngestCounts:
        """Stop nginx (its requests finish first), read its log to the end,
        stop following; what the lines became."""
        self._stop_nginx()
        if self._follower.is_alive():
            self._finish.set()
            self._follower.join(FINISH_SECONDS)
            if self._follower.is_alive():
                log.error("nginx's log was not read to its end in %g s: giving up", FINISH_SECONDS)
                self._stop.set()
                self._abandon.set()
                self._follower.join()
        return self.counts

    def _stop_nginx(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        try:
            # SIGQUIT: a graceful shutdown, bounded by worker_shutdown_timeout.
            process.send_signal(signal.SIGQUIT)
            process.wait(SHUTDOWN_SECONDS + 5)
        except subprocess.TimeoutExpired:
            log.warning("nginx did not stop in %d s: killing it", SHUTDOWN_SECONDS + 5)
        finally:
            if process.poll() is None:
                # Its workers too: they share the session nginx leads.
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _said(startup: Path, returncode: int | None) -> str:
    """nginx's own reason, from what it printed at startup."""
    try:
        printed = startup.read_text(errors="replace").splitlines()
    except OSError:
        printed = []
    said = [re.sub(r"^nginx: ", "", line).strip() for line in printed if line.strip()]
    serious = [line for line in said if re.match(r"\[(emerg|alert|crit)\]", line)]
    if serious or said:
        return (serious or said)[0]
    return "it printed nothing" if returncode is None else f"it exited with code {returncode}"


def _report_bad_line(line: Line, reason: str) -> None:
    log.warning("%s:%d: %s", line.path, line.number, reason)
