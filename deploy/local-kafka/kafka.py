#!/usr/bin/env python3
"""Run a real single-node Apache Kafka broker (KRaft) from Maven Central jars, without Docker.

Why this exists: the test suite and local development need a *real* Kafka broker (faust and
aiokafka behave differently against fakes), but Docker is not available everywhere. Kafka is
plain Java, so we resolve its jars with Maven (``pom.xml`` beside this file) and start
``kafka.Kafka`` directly. A broker is typically ready in about two seconds.

Why stdlib only: it must run with a bare ``python3`` before any virtualenv exists (for example
in CI bootstrap scripts), and the test suite imports it with ``importlib`` from its path.

CLI::

    python3 deploy/local-kafka/kafka.py jars                   # resolve jars, print lib dir
    python3 deploy/local-kafka/kafka.py run [--data-dir D]     # foreground until Ctrl-C
    python3 deploy/local-kafka/kafka.py start --state-dir D    # detached, reused if alive
    python3 deploy/local-kafka/kafka.py stop --state-dir D

``run`` and ``start`` print ``KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:<port>`` and
``KAFKA_START_SECONDS=<s>`` on stdout, so their output can be ``eval``-ed by a shell.

Library::

    with LocalKafka() as kafka:
        print(kafka.bootstrap_servers, kafka.start_seconds)
        kafka.restart()  # kill -9, then the same broker again: same address, same data

Environment: ``RECEIPT_STREAMS_KAFKA_CACHE`` overrides the jar cache directory (default
``deploy/local-kafka/.cache/kafka-<version>``); ``JAVA_HOME`` selects the JVM if set.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import signal
import socket
import string
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
POM = HERE / "pom.xml"
TEMPLATE = HERE / "server.properties.template"
LOG4J = HERE / "log4j.properties"

CACHE_ENV = "RECEIPT_STREAMS_KAFKA_CACHE"
READY_MARKER = "Kafka Server started"
STAMP_NAME = "pom.sha256"
TAIL_LINES = 40

# Small heap and C1-only JIT: a test broker handles little traffic, and C1 roughly halves the
# JVM warm-up time, which dominates the broker start time.
JVM_OPTS = (
    "-Xms256m",
    "-Xmx768m",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:TieredStopAtLevel=1",
    "-Djava.awt.headless=true",
)


class LocalKafkaError(RuntimeError):
    """The broker could not be resolved, started, probed or stopped; the message says why."""


# --------------------------------------------------------------------------------------------
# Jar resolution
# --------------------------------------------------------------------------------------------


def kafka_version(pom: Path = POM) -> str:
    """Kafka version declared in ``pom.xml``; names the cache dir so upgrades never mix jars."""
    match = re.search(r"<kafka\.version>\s*([^<\s]+)\s*</kafka\.version>", pom.read_text())
    if not match:
        raise LocalKafkaError(f"{pom}: no <kafka.version> property")
    return match.group(1)


def cache_dir() -> Path:
    """Jar cache: ``$RECEIPT_STREAMS_KAFKA_CACHE`` or ``.cache/kafka-<version>`` beside this."""
    override = os.environ.get(CACHE_ENV)
    if override:
        return Path(override).expanduser().resolve()
    return HERE / ".cache" / f"kafka-{kafka_version()}"


def lib_dir() -> Path:
    return cache_dir() / "lib"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` if set, else ``java`` on PATH; a clear error if neither."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    java = shutil.which("java")
    if not java:
        raise LocalKafkaError(
            "java not found (PATH or $JAVA_HOME): the local Kafka broker needs a JDK/JRE 17+, "
            "e.g. `apt-get install openjdk-17-jre-headless`"
        )
    return java


def ensure_jars(*, quiet: bool = True) -> Path:
    """Resolve Kafka's runtime jars into ``<cache>/lib`` with Maven; return that directory.

    Skipped when ``<cache>/pom.sha256`` matches the current ``pom.xml``, so only the first run
    (or a pom change) pays for Maven. A file lock makes concurrent callers wait for one
    resolution instead of racing on the same directory.
    """
    cache = cache_dir()
    lib = cache / "lib"
    stamp = cache / STAMP_NAME
    want = _sha256(POM)
    if stamp.is_file() and stamp.read_text().strip() == want and any(lib.glob("*.jar")):
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.is_file() and stamp.read_text().strip() == want and any(lib.glob("*.jar")):
            return lib  # another process resolved while we waited for the lock
        mvn = shutil.which("mvn")
        if not mvn:
            raise LocalKafkaError(
                "mvn not found on PATH: the local Kafka broker resolves its jars from Maven "
                "Central with Maven, e.g. `apt-get install maven`, or set "
                f"${CACHE_ENV} to a directory whose lib/ already holds the jars"
            )
        find_java()  # fail early with the clearer message; mvn itself needs java too
        stamp.unlink(missing_ok=True)
        if lib.exists():
            shutil.rmtree(lib)  # never mix jars of two pom versions on one classpath
        cmd = [
            mvn,
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={lib}",
        ]
        if not quiet:
            print(f"resolving Kafka jars: {' '.join(cmd)}", file=sys.stderr, flush=True)
        try:
            result = subprocess.run(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            raise LocalKafkaError(
                f"mvn timed out after 900 s resolving Kafka jars:\n{_tail(out)}"
            ) from exc
        if result.returncode != 0 or not any(lib.glob("*.jar")):
            raise LocalKafkaError(
                f"mvn failed (exit {result.returncode}) resolving Kafka jars from {POM}:\n"
                f"{_tail(result.stdout)}"
            )
        stamp.write_text(want + "\n")
        return lib


# --------------------------------------------------------------------------------------------
# Small helpers: ports, cluster id, config rendering
# --------------------------------------------------------------------------------------------


def free_ports(count: int = 2, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct free TCP ports, found by binding to port 0.

    All sockets stay open until every port is known, so the ports differ from each other. The
    OS may hand a port out again before the broker binds it; ``LocalKafka.start`` retries on
    "Address already in use".
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes as unpadded base64url (22 chars).

    Like Kafka's ``Uuid.randomUuid()``, ids starting with ``-`` are rejected because they read
    as an option on the command line.
    """
    while True:
        cid = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not cid.startswith("-"):
            return cid


def render_server_properties(*, broker_port: int, controller_port: int, log_dirs: Path) -> str:
    """``server.properties.template`` with ports and data directory filled in."""
    return string.Template(TEMPLATE.read_text()).substitute(
        broker_port=broker_port, controller_port=controller_port, log_dirs=str(log_dirs)
    )


# --------------------------------------------------------------------------------------------
# Minimal Kafka protocol client: one Metadata request
# --------------------------------------------------------------------------------------------


def _parse_host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    for prefix in ("PLAINTEXT://", "plaintext://"):
        first = first.removeprefix(prefix)
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed by broker mid-response")
        buf += chunk
    return bytes(buf)


def probe_metadata(bootstrap: str, timeout: float = 2.0) -> list[tuple[int, str, int]]:
    """Send a Metadata v1 request (all topics) and return the brokers as (node_id, host, port).

    Readiness is proven by the protocol, not by an open port: a broker accepts TCP before it
    can serve requests. Raises ``OSError`` or ``ValueError`` when the broker does not answer
    correctly.
    """
    host, port = _parse_host_port(bootstrap)
    correlation_id = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
    client_id = b"receipt-streams-probe"
    # Request header v1: api_key, api_version, correlation_id, client_id (nullable string).
    # Metadata v1 body: topics array; length -1 (null) means "all topics".
    payload = (
        struct.pack(">hhih", 3, 1, correlation_id, len(client_id))
        + client_id
        + struct.pack(">i", -1)
    )
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack(">i", len(payload)) + payload)
        (size,) = struct.unpack(">i", _recv_exact(sock, 4))
        if not 0 < size < 64 * 1024 * 1024:
            raise ValueError(f"implausible Metadata response size {size}")
        body = _recv_exact(sock, size)

    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from(fmt, body, offset)
        offset += struct.calcsize(fmt)
        return value

    def take_string() -> str | None:
        nonlocal offset
        length = take(">h")
        if length < 0:
            return None
        value = body[offset : offset + length].decode("utf-8")
        offset += length
        return value

    got = take(">i")
    if got != correlation_id:
        raise ValueError(f"correlation id mismatch: sent {correlation_id}, got {got}")
    brokers = []
    for _ in range(take(">i")):
        node_id = take(">i")
        broker_host = take_string() or ""
        broker_port = take(">i")
        take_string()  # rack
        brokers.append((node_id, broker_host, broker_port))
    if not brokers:
        raise ValueError("Metadata response lists no brokers")
    return brokers


def wait_for_metadata(bootstrap: str, timeout: float) -> list[tuple[int, str, int]]:
    """Retry ``probe_metadata`` every 0.1 s until it succeeds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return probe_metadata(bootstrap, timeout=min(2.0, max(0.2, timeout)))
        except (OSError, ValueError, struct.error) as exc:
            if time.monotonic() >= deadline:
                raise LocalKafkaError(
                    f"no Kafka Metadata answer from {bootstrap} in {timeout:.0f} s: {exc}"
                ) from exc
            time.sleep(0.1)


# --------------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------------


def _read_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        return _tail(path.read_text(errors="replace"), lines)
    except OSError:
        return "(missing)"


def _pid_is_alive(pid: int) -> bool:
    """True if ``pid`` runs and is not a zombie (a zombie's group can no longer be signalled
    usefully, and nobody may reap it when the launcher that spawned it has exited)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): trust kill(0)
    return stat.rpartition(")")[2].split()[0] != "Z"


def _pid_is_our_kafka(pid: int, props: Path) -> bool:
    """Guard against pid reuse: the process must be ``kafka.Kafka`` on our properties file."""
    if not _pid_is_alive(pid):
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return True  # no procfs: best effort
    return b"kafka.Kafka" in cmdline and str(props).encode() in cmdline


def _terminate_group(pid: int, timeout: float) -> None:
    """SIGTERM the process group led by ``pid`` (Kafka shuts down cleanly), SIGKILL if it
    outlives ``timeout``. Works for processes that are not our children (``stop`` CLI)."""
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not _pid_is_alive(pid):
                return
            time.sleep(0.1)


def _set_parent_death_signal() -> None:
    """Linux only: SIGTERM the broker when the launching process dies (even by SIGKILL), so an
    aborted test run does not leave an orphaned JVM behind. Runs in the child before exec."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------
# The broker
# --------------------------------------------------------------------------------------------


class LocalKafka:
    """One single-node KRaft broker in a child JVM; a context manager.

    ``workdir`` holds ``server.properties``, ``logs/server.log``, ``kafka.stdout.log`` and (unless
    ``data_dir`` is given to ``start``) ``data/``. Without ``workdir`` a temporary directory is
    used and removed by ``stop()``.

    ``die_with_parent`` (Linux) makes the JVM exit when this Python process dies, even by
    SIGKILL; the detached ``start`` CLI turns it off. The kernel ties this to the *thread* that
    called ``start()``, so call ``start()`` from a long-lived thread (not ``asyncio.to_thread``).
    """

    def __init__(self, workdir: Path | None = None, *, die_with_parent: bool = True) -> None:
        self._requested_workdir = Path(workdir).resolve() if workdir else None
        self._die_with_parent = die_with_parent
        self._workdir: Path | None = None
        self._owns_workdir = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._broker_port: int | None = None
        self._start_seconds: float | None = None
        self._data_dir: Path | None = None  # kept by start() for restart()
        self._lock = threading.Lock()

    # -- properties ---------------------------------------------------------------------------

    @property
    def bootstrap_servers(self) -> str:
        if self._broker_port is None:
            raise LocalKafkaError("broker not started")
        return f"127.0.0.1:{self._broker_port}"

    @property
    def start_seconds(self) -> float:
        """Seconds from ``start()`` (after jar resolution) until the broker answered Metadata."""
        if self._start_seconds is None:
            raise LocalKafkaError("broker not started")
        return self._start_seconds

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def workdir(self) -> Path | None:
        return self._workdir

    @property
    def props_path(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "server.properties"

    @property
    def server_log(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "logs" / "server.log"

    @property
    def stdout_log(self) -> Path:
        assert self._workdir is not None
        return self._workdir / "kafka.stdout.log"

    # -- lifecycle ----------------------------------------------------------------------------

    def __enter__(self) -> LocalKafka:
        if self._proc is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self, data_dir: Path | None = None, timeout: float = 60) -> LocalKafka:
        """Resolve jars, format storage (first time only), start the JVM, wait until ready.

        Ready means ``server.log`` says "Kafka Server started" *and* a Metadata request over
        the wire lists a broker. Raises ``LocalKafkaError`` with the log tails otherwise.
        """
        if self._proc is not None:
            raise LocalKafkaError(f"already started (pid {self._proc.pid})")
        java = find_java()
        lib = ensure_jars()
        began = time.monotonic()
        if self._requested_workdir:
            self._workdir = self._requested_workdir
            self._workdir.mkdir(parents=True, exist_ok=True)
        else:
            self._workdir = Path(tempfile.mkdtemp(prefix="local-kafka-"))
            self._owns_workdir = True
        try:
            data = Path(data_dir).resolve() if data_dir else self._workdir / "data"
            data.mkdir(parents=True, exist_ok=True)
            (self._workdir / "logs").mkdir(exist_ok=True)
            deadline = began + timeout
            for attempt in range(3):
                broker_port, controller_port = free_ports(2)
                self.props_path.write_text(
                    render_server_properties(
                        broker_port=broker_port, controller_port=controller_port, log_dirs=data
                    )
                )
                if attempt == 0 and not (data / "meta.properties").exists():
                    self._format_storage(java, lib, deadline - time.monotonic())
                try:
                    self._launch(java, lib, broker_port, deadline)
                    self._data_dir = data
                    break
                except LocalKafkaError as exc:
                    # Another process grabbed a port between free_ports() and the bind.
                    if "Address already in use" not in str(exc) or attempt == 2:
                        raise
            self._start_seconds = time.monotonic() - began
            atexit.register(self.stop)
            return self
        except BaseException:
            self.stop()
            raise

    def _java_base(self, java: str, lib: Path, jvm_opts: tuple[str, ...] = ()) -> list[str]:
        assert self._workdir is not None
        return [
            java,
            *jvm_opts,
            f"-Dlog4j.configuration=file:{LOG4J}",
            f"-Dkafka.logs.dir={self._workdir / 'logs'}",
            "-cp",
            f"{lib}/*",
        ]

    def _format_storage(self, java: str, lib: Path, timeout: float) -> None:
        """``kafka-storage.sh format``: KRaft refuses to start on an unformatted log dir."""
        cmd = [
            *self._java_base(java, lib),
            "kafka.tools.StorageTool",
            "format",
            "-t",
            new_cluster_id(),
            "-c",
            str(self.props_path),
        ]
        try:
            result = subprocess.run(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=max(timeout, 5),
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError("kafka StorageTool format timed out") from exc
        if result.returncode != 0:
            raise LocalKafkaError(
                f"kafka StorageTool format failed (exit {result.returncode}):\n"
                f"{_tail(result.stdout)}\n--- server.log ---\n{_read_tail(self.server_log)}"
            )

    def _launch(self, java: str, lib: Path, broker_port: int, deadline: float) -> None:
        log_offset = self.server_log.stat().st_size if self.server_log.exists() else 0
        cmd = [*self._java_base(java, lib, JVM_OPTS), "kafka.Kafka", str(self.props_path)]
        with open(self.stdout_log, "ab") as out:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self._workdir,
                start_new_session=True,  # own process group: stop() signals the whole tree
                preexec_fn=_set_parent_death_signal
                if self._die_with_parent and sys.platform == "linux"
                else None,
            )
        self._broker_port = broker_port
        bootstrap = self.bootstrap_servers
        marker_seen = False
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise LocalKafkaError(self._failure(f"broker exited with code {code}"))
            if not marker_seen:
                marker_seen = self._log_has_marker(log_offset)
            if marker_seen:
                try:
                    probe_metadata(bootstrap, timeout=1.0)
                    return
                except (OSError, ValueError, struct.error):
                    pass
            if time.monotonic() >= deadline:
                detail = "no 'Kafka Server started'" if not marker_seen else "no Metadata answer"
                message = self._failure(f"broker not ready before the timeout ({detail})")
                self._kill()
                raise LocalKafkaError(message)
            time.sleep(0.1)

    def _log_has_marker(self, offset: int) -> bool:
        try:
            with open(self.server_log, "rb") as f:
                f.seek(offset)
                return READY_MARKER.encode() in f.read()
        except OSError:
            return False

    def _failure(self, what: str) -> str:
        return (
            f"local Kafka failed to start: {what} (workdir {self._workdir})\n"
            f"--- last {TAIL_LINES} lines of {self.server_log} ---\n"
            f"{_read_tail(self.server_log)}\n"
            f"--- last {TAIL_LINES} lines of {self.stdout_log} ---\n"
            f"{_read_tail(self.stdout_log)}"
        )

    def _kill(self, timeout: float = 15) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def kill(self) -> None:
        """SIGKILL the broker's process group at once, as a crash would; idempotent.

        The ports, ``server.properties`` and data stay, so ``restart()`` brings the same broker
        back on the same address.
        """
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, timeout: float = 60) -> LocalKafka:
        """Kill the broker if it is alive, then start it again on the same broker and
        controller ports and the same data dir; wait until it is ready.

        For fault tests: clients keep their bootstrap address, and the topics, offsets and
        transactions on disk survive (after an unclean shutdown the broker recovers its logs).
        The JVM is tied to the calling thread (``die_with_parent``), as for ``start()``.
        """
        if self._workdir is None or self._broker_port is None or self._data_dir is None:
            raise LocalKafkaError("restart() needs a broker that start() started")
        self.kill()
        java, lib = find_java(), ensure_jars()
        began = time.monotonic()
        deadline = began + timeout
        while True:
            try:
                self._launch(java, lib, self._broker_port, deadline)
                break
            except LocalKafkaError as exc:
                # The dead JVM's sockets may linger a moment; the ports must stay the same.
                if "Address already in use" not in str(exc) or time.monotonic() >= deadline:
                    raise
                time.sleep(0.5)
        self._start_seconds = time.monotonic() - began
        return self

    def detach(self) -> int:
        """Leave the broker running after this object is gone (``start`` CLI); return its pid."""
        if self._proc is None:
            raise LocalKafkaError("broker not started")
        pid = self._proc.pid
        self._proc = None
        self._owns_workdir = False
        atexit.unregister(self.stop)
        return pid

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM the broker's process group, SIGKILL after ``timeout``; idempotent.

        Removes the work directory only if ``start`` created it as a temporary directory.
        """
        with self._lock:
            atexit.unregister(self.stop)
            self._kill(timeout)
            if self._owns_workdir and self._workdir is not None:
                shutil.rmtree(self._workdir, ignore_errors=True)
                self._owns_workdir = False


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _print_ready(bootstrap: str, seconds: float | None) -> None:
    print(f"KAFKA_BOOTSTRAP_SERVERS={bootstrap}")
    if seconds is not None:
        print(f"KAFKA_START_SECONDS={seconds:.2f}")
    sys.stdout.flush()


def _cmd_jars(_: argparse.Namespace) -> int:
    print(ensure_jars(quiet=False))
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    """Foreground broker: block until SIGINT/SIGTERM (or the broker dies), then stop it."""
    stop_requested = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop_requested.set()

    kafka = LocalKafka()
    try:
        kafka.start(data_dir=args.data_dir, timeout=args.timeout)
        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        _print_ready(kafka.bootstrap_servers, kafka.start_seconds)
        print(f"# pid {kafka.pid}, workdir {kafka.workdir}; Ctrl-C stops", file=sys.stderr)
        while not stop_requested.wait(0.5):
            if kafka._proc is None or kafka._proc.poll() is not None:
                print(kafka._failure("broker exited unexpectedly"), file=sys.stderr)
                return 1
        return 0
    finally:
        kafka.stop()


def _state_files(state_dir: Path) -> tuple[Path, Path, Path]:
    return state_dir / "bootstrap", state_dir / "pid", state_dir / "server.properties"


def _cmd_start(args: argparse.Namespace) -> int:
    """Detached broker whose work dir is the state dir; a live, answering one is reused."""
    state_dir = args.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    bootstrap_file, pid_file, props = _state_files(state_dir)
    with open(state_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two concurrent `start`s must not both launch
        if pid_file.exists() and bootstrap_file.exists():
            pid = int(pid_file.read_text().strip() or 0)
            bootstrap = bootstrap_file.read_text().strip()
            if pid and _pid_is_our_kafka(pid, props):
                try:
                    wait_for_metadata(bootstrap, timeout=10)
                    _print_ready(bootstrap, None)
                    print(f"# reusing running broker (pid {pid})", file=sys.stderr)
                    return 0
                except LocalKafkaError:
                    print(f"# broker pid {pid} does not answer; restarting", file=sys.stderr)
                    _terminate_group(pid, timeout=15)
        pid_file.unlink(missing_ok=True)
        bootstrap_file.unlink(missing_ok=True)
        kafka = LocalKafka(workdir=state_dir, die_with_parent=False)
        kafka.start(data_dir=args.data_dir or state_dir / "data", timeout=args.timeout)
        pid = kafka.detach()
        pid_file.write_text(f"{pid}\n")
        bootstrap_file.write_text(kafka.bootstrap_servers + "\n")
        _print_ready(kafka.bootstrap_servers, kafka.start_seconds)
        print(f"# pid {pid}, logs in {state_dir / 'logs'}", file=sys.stderr)
        return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    """Stop the broker recorded in the state dir; nothing running is not an error."""
    state_dir = args.state_dir.resolve()
    bootstrap_file, pid_file, props = _state_files(state_dir)
    if not pid_file.exists():
        print(f"# no broker recorded in {state_dir}", file=sys.stderr)
        return 0
    pid = int(pid_file.read_text().strip() or 0)
    if pid and _pid_is_our_kafka(pid, props):
        _terminate_group(pid, timeout=args.timeout)
        if _pid_is_alive(pid):
            raise LocalKafkaError(f"broker pid {pid} survived SIGTERM and SIGKILL")
        print(f"# stopped broker pid {pid}", file=sys.stderr)
    else:
        print(f"# broker pid {pid} was not running", file=sys.stderr)
    pid_file.unlink(missing_ok=True)
    bootstrap_file.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kafka.py", description="Local single-node Kafka (KRaft) from Maven Central jars."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("jars", help="resolve the Kafka jars and print the lib directory")

    run = sub.add_parser("run", help="run a broker in the foreground until Ctrl-C/SIGTERM")
    run.add_argument("--data-dir", type=Path, help="persistent log dir (default: temporary)")
    run.add_argument("--timeout", type=float, default=60, help="start timeout in seconds")

    start = sub.add_parser("start", help="start a detached broker recorded in a state dir")
    start.add_argument("--state-dir", type=Path, required=True)
    start.add_argument("--data-dir", type=Path, help="log dir (default: STATE_DIR/data)")
    start.add_argument("--timeout", type=float, default=60, help="start timeout in seconds")

    stop = sub.add_parser("stop", help="stop the broker recorded in a state dir")
    stop.add_argument("--state-dir", type=Path, required=True)
    stop.add_argument("--timeout", type=float, default=15, help="SIGTERM grace in seconds")

    args = parser.parse_args(argv)
    handlers = {"jars": _cmd_jars, "run": _cmd_run, "start": _cmd_start, "stop": _cmd_stop}
    try:
        return handlers[args.command](args)
    except LocalKafkaError as exc:
        raise SystemExit(f"kafka.py {args.command}: {exc}") from None


if __name__ == "__main__":
    sys.exit(main())
