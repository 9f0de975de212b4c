"""A private RabbitMQ node for destructive fault scenarios.

The shared broker (``rabbit@localhost``, port 5672) serves other tests and other people: nothing in
this suite may stop, block or cut it. Scenarios that restart the broker, cut connections or raise
a memory alarm do it to ``fault_broker``, a node of their own with its own name, ports, data, logs,
Erlang cookie and a TLS listener signed by a throwaway CA. Every ``rabbitmqctl`` call goes through
:meth:`FaultBroker.ctl`, which always passes ``-n <that node>``.

Using it from a scenario:

* ``fault_broker`` (session): ``.url`` / ``.tls_url`` (guest), ``.ca_file``, ``.ctl(...)``,
  ``.stop_app()`` / ``.start_app()`` / ``.restart_app(down_for)``, ``.delete(queues, exchanges)``,
  ``.client_env()`` — the ``AMQPTASKS_*`` variables every app and worker talking to the node needs
  (set them with ``monkeypatch.setenv``; workers inherit them).
* ``fault_app`` (function): a factory for a generated tasks module with task ``work(n)`` that
  records ``<task id> <redelivered>`` for :mod:`tests.faults.ledger`, its queue (``classic`` or
  ``quorum``) and ``.worker(processes=2)``; what it declares is deleted afterwards.

Set ``FAULTS_LOGLEVEL=info`` to get the workers' full logs (``worker-*.log`` in the test's tmp dir).

RabbitMQ 4: with ``AMQPTASKS_FAULTS_RABBITMQ_ROOT=/opt/amqptasks-rabbitmq4`` (the chroot of
scripts/rabbitmq4.sh) the private node runs from that root's RabbitMQ 4.x instead of the host's
3.10: same fixtures, its own name, ports, epmd, data and cookie (under the root's /tmp), global QoS
denied as 4.3 does (see :func:`_config` for transient queues). The shared 4.x node is never touched.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pika
import pytest

from tests.faults.ledger import read_done
from tests.integration.workerproc import WorkerProcess, write_app

INSTALL_HINT = "the fault suite starts a private RabbitMQ node: install rabbitmq-server (./scripts/rabbitmq.sh)"
# Debian's /usr/sbin/rabbitmq-* wrappers re-run the scripts as the ``rabbitmq`` user when called by
# root, and that user cannot read our private tmp dir; the real scripts live here.
DEBIAN_SCRIPTS = Path("/usr/lib/rabbitmq/bin")
SESSION_CASCADE = "t.faults.cascade"  # the delay cascade's prefix for clients of the private node


def free_port() -> int:
    """A TCP port nobody listens on right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scripts_dir() -> Path:
    if (DEBIAN_SCRIPTS / "rabbitmq-server").exists():
        return DEBIAN_SCRIPTS
    found = shutil.which("rabbitmq-server")
    if not found:
        pytest.fail(INSTALL_HINT)
    return Path(found).resolve().parent


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        pytest.fail("the fault suite makes a test CA with the openssl CLI: install openssl (apt-get install openssl)")
    done = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    if done.returncode != 0:
        pytest.fail(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA (``<name>-ca.pem``, ``<name>-ca.key``) in ``directory``."""
    key, cert = directory / f"{name}-ca.key", directory / f"{name}-ca.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", f"/CN=amqptasks {name} test CA",
             "-keyout", str(key), "-out", str(cert), cwd=directory)  # fmt: skip
    return cert, key


def make_signed(directory: Path, name: str, ca: tuple[Path, Path], *, server: bool) -> tuple[Path, Path]:
    """A key and certificate for ``localhost`` / 127.0.0.1 (``<name>.pem``, ``<name>.key``) signed by ``ca``."""
    key, csr, cert = directory / f"{name}.key", directory / f"{name}.csr", directory / f"{name}.pem"
    extensions = directory / f"{name}.ext"
    usage = "serverAuth" if server else "clientAuth"
    extensions.write_text(
        "basicConstraints=CA:FALSE\nsubjectAltName=DNS:localhost,IP:127.0.0.1\n"
        f"keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
    )
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr), cwd=directory)
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]), "-CAcreateserial",
             "-days", "2", "-extfile", str(extensions), "-out", str(cert), cwd=directory)  # fmt: skip
    return cert, key


@dataclass
class FaultBroker:
    """A running private RabbitMQ node; ``url`` / ``tls_url`` reach it as guest."""

    node: str
    url: str
    tls_url: str
    ca_file: Path
    port: int
    tls_port: int
    base: Path  # data, logs, certificates, cookie: all of it, removed on teardown
    scripts: Path  # as the node sees it (inside ``root`` when there is one)
    client_cert: Path
    client_key: Path
    root: Path | None = None  # a chroot holding another RabbitMQ (RabbitMQ 4); None: the host's
    epmd_port: int | None = None  # the node's own epmd (chroot nodes); None: the host's default

    def client_env(self) -> dict[str, str]:
        """Environment for amqptasks clients of this node (apps, workers, the CLI).

        The management API is switched off: this node has none, and a client must never diff the
        topology against the shared broker's API on :15672 (it would skip what only that one has).
        Every app and worker declares the delay cascade (135 queues); here it is one classic
        cascade for the session, gone with the node: RabbitMQ 3.10 has wedged after a few hundred
        quorum queues came and went, and only the delay scenario needs quorum levels (it sets its
        own prefix and type).
        """
        return {
            "AMQPTASKS_BROKER_URL": self.url,
            "AMQPTASKS_MANAGEMENT_URL": "off",
            "AMQPTASKS_DELAY_PREFIX": SESSION_CASCADE,
            "AMQPTASKS_DELAY_QUEUE_TYPE": "classic",
        }

    def inside(self, path: Path) -> str:
        """``path`` as the node sees it (under the chroot, if any)."""
        return "/" + str(path.relative_to(self.root)) if self.root is not None else str(path)

    def _env(self) -> dict[str, str]:
        # HOME holds this node's own Erlang cookie: the CLI and the node must agree on it, and
        # nobody else's cookie (or node) is touched.
        env = {"HOME": self.inside(self.base), "RABBITMQ_NODENAME": self.node}
        if self.epmd_port is not None:
            env["ERL_EPMD_PORT"] = str(self.epmd_port)
        if self.root is None:
            return dict(os.environ, **env)
        return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", **env}

    def command(self, script: str, *args: str, env: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
        """(argv, environment) running one of RabbitMQ's scripts for this node (in the chroot, if any)."""
        full = env if env is not None else self._env()
        program = f"{self.scripts}/{script}"
        if self.root is None:
            return [program, *args], full
        pairs = [f"{k}={v}" for k, v in full.items()]
        return ["chroot", str(self.root), "env", "-i", *pairs, program, *args], dict(os.environ)

    def ctl(self, *args: str, timeout: float = 60) -> str:
        """``rabbitmqctl -n <this node> ARGS``; raises AssertionError with the output on failure."""
        argv, env = self.command("rabbitmqctl", "-n", self.node, *args)
        done = subprocess.run(argv, env=env, cwd=self.base, capture_output=True, text=True, timeout=timeout, check=False)
        if done.returncode != 0:
            raise AssertionError(f"rabbitmqctl -n {self.node} {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def stop_app(self) -> None:
        """Stop the RabbitMQ application (the Erlang node stays up): every client connection drops."""
        self.ctl("stop_app")

    def start_app(self) -> None:
        """Start the application again and wait until it accepts connections."""
        self.ctl("start_app", timeout=120)
        self.await_ready()

    def restart_app(self, down_for: float = 0.0) -> None:
        """``stop_app``, stay down for ``down_for`` seconds, ``start_app``, wait until ready."""
        self.stop_app()
        time.sleep(down_for)
        self.start_app()

    def await_ready(self, timeout: float = 60) -> None:
        """``await_startup``, then a real AMQP handshake (the listener opens after boot)."""
        self.ctl("await_startup", "--timeout", str(int(timeout)), timeout=timeout + 10)
        deadline = time.monotonic() + timeout
        while True:
            try:
                pika.BlockingConnection(pika.URLParameters(self.url)).close()
                return
            except pika.exceptions.AMQPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def delete(self, queues: Iterable[str] = (), exchanges: Iterable[str] = ()) -> None:
        """Delete entities a scenario declared on this node (missing ones are fine)."""
        connection = pika.BlockingConnection(pika.URLParameters(self.url))
        try:
            for name in queues:
                channel = connection.channel()
                channel.queue_delete(name)
                channel.close()
            for name in exchanges:
                channel = connection.channel()
                channel.exchange_delete(name)
                channel.close()
        finally:
            connection.close()

    def os_pid(self) -> int | None:
        """The node's beam process id (from its pid file), if known."""
        try:
            return int((self.base / "node.pid").read_text().strip())
        except (OSError, ValueError):
            return None


def _config(broker: FaultBroker, server: tuple[Path, Path], ca: Path) -> Path:
    path = broker.base / "rabbitmq.conf"
    text = f"""\
listeners.tcp.1 = 127.0.0.1:{broker.port}
listeners.ssl.1 = 127.0.0.1:{broker.tls_port}
ssl_options.cacertfile = {broker.inside(ca)}
ssl_options.certfile = {broker.inside(server[0])}
ssl_options.keyfile = {broker.inside(server[1])}
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
log.console = false
log.file.level = info
"""
    if broker.root is not None:
        # RabbitMQ 4: global QoS denied as 4.3 does. Transient non-exclusive queues are not denied
        # here: with them denied, RabbitMQ 4.0.5 counts every queue as one at start_app and does not
        # start again once any queue exists (rabbitmq-server#12802, fixed by #12840; measured) - and
        # these scenarios restart the node. The shared 4.x node denies them (scripts/rabbitmq4.sh).
        text += "deprecated_features.permit.global_qos = false\n"
    path.write_text(text)
    return path


# RabbitMQ's at-least-once dead-letter worker (quorum queues: the delay cascade's levels) waits
# this long for a confirm before it re-publishes; the broker's default is 180 s. A delayed task
# dead-lettered while a restarting node's queues are still starting gets no confirm, so with the
# default it is ~3 minutes late (measured: tests/faults/test_delays_survive.py, docs/reliability.md).
# The suite runs the setting recommended there.
DEAD_LETTER_CONFIRM_TIMEOUT_MS = 10_000


def _advanced_config(base: Path) -> Path:
    path = base / "advanced.config"
    path.write_text(f"[{{rabbit, [{{dead_letter_worker_publisher_confirm_timeout, {DEAD_LETTER_CONFIRM_TIMEOUT_MS}}}]}}].\n")
    return path


def _wait_registered(broker: FaultBroker, timeout: float) -> None:
    """Poll ``await_startup`` until the node answers: right after ``-detached`` it is not yet in epmd."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            broker.await_ready(timeout=max(5.0, deadline - time.monotonic()))
            return
        except (AssertionError, pika.exceptions.AMQPError, subprocess.TimeoutExpired) as exc:
            last = str(exc)
            time.sleep(0.5)
    log = broker.base / "log" / f"{broker.node}.log"
    tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
    pytest.fail(f"private RabbitMQ node {broker.node} did not start in {timeout:.0f}s: {last}\n--- log tail ---\n{tail}")


def _own_epmd_pids(port: int) -> list[int]:
    """The epmd started for a chroot node: the one whose environment names its port."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "comm").read_text().strip() == "epmd" and \
                    f"ERL_EPMD_PORT={port}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def _stop(broker: FaultBroker) -> None:
    """Stop the node (and its own epmd, if it has one); kill -9 its own beam process (by pid) if
    it will not go."""
    pid = broker.os_pid()
    try:
        broker.ctl("stop", timeout=60)
    except (AssertionError, subprocess.TimeoutExpired):
        pass
    if broker.epmd_port is not None:
        for epmd in _own_epmd_pids(broker.epmd_port):
            os.kill(epmd, signal.SIGTERM)
    if pid is None:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session")
def fault_broker() -> Iterator[FaultBroker]:
    """A private, disposable RabbitMQ node (plain and TLS listeners) for destructive scenarios."""
    root = Path(os.environ["AMQPTASKS_FAULTS_RABBITMQ_ROOT"]) if os.environ.get("AMQPTASKS_FAULTS_RABBITMQ_ROOT") else None
    if root is not None:
        if not (root / DEBIAN_SCRIPTS.relative_to("/") / "rabbitmq-server").exists() or not os.path.ismount(root / "proc"):
            pytest.fail(f"AMQPTASKS_FAULTS_RABBITMQ_ROOT={root}: no RabbitMQ there, or its /proc is not mounted; "
                        "run scripts/rabbitmq4.sh first")
        scripts = DEBIAN_SCRIPTS
        (root / "tmp").mkdir(exist_ok=True)
        base = Path(tempfile.mkdtemp(prefix="amqptasks-faults-", dir=root / "tmp"))
    else:
        scripts = _scripts_dir()
        base = Path(tempfile.mkdtemp(prefix="amqptasks-faults-"))
    try:
        certs = base / "certs"
        certs.mkdir()
        ca = make_ca(certs, "test")
        server = make_signed(certs, "server", ca, server=True)
        client = make_signed(certs, "client", ca, server=False)
        port, tls_port, dist_port = free_port(), free_port(), free_port()
        node = f"amqptasks-faults-{uuid.uuid4().hex[:8]}@localhost"
        broker = FaultBroker(
            node=node,
            url=f"amqp://guest:guest@127.0.0.1:{port}/%2F",
            tls_url=f"amqps://guest:guest@localhost:{tls_port}/%2F",
            ca_file=ca[0],
            port=port,
            tls_port=tls_port,
            base=base,
            scripts=scripts,
            client_cert=client[0],
            client_key=client[1],
            root=root,
            epmd_port=free_port() if root is not None else None,
        )
        enabled_plugins = base / "enabled_plugins"
        enabled_plugins.write_text("[].\n")  # no management plugin: amqptasks falls back to declare probes
        # These override /etc/rabbitmq/rabbitmq-env.conf (NODENAME=rabbit@localhost) and the shared
        # node's config file, so nothing of the shared broker is read or written.
        env = broker._env() | {
            "RABBITMQ_NODE_PORT": str(port),
            "RABBITMQ_DIST_PORT": str(dist_port),
            "RABBITMQ_MNESIA_BASE": broker.inside(base / "mnesia"),
            "RABBITMQ_LOG_BASE": broker.inside(base / "log"),
            "RABBITMQ_PID_FILE": broker.inside(base / "node.pid"),
            "RABBITMQ_CONFIG_FILE": broker.inside(_config(broker, server, ca[0])),
            "RABBITMQ_ENABLED_PLUGINS_FILE": broker.inside(enabled_plugins),
            "RABBITMQ_ADVANCED_CONFIG_FILE": broker.inside(_advanced_config(base)),
        }
        # -detached returns at once; the node registers with epmd a few seconds later.
        argv, run_env = broker.command("rabbitmq-server", "-detached", env=env)
        subprocess.run(argv, env=run_env, cwd=base,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60, check=False)  # fmt: skip
        try:
            _wait_registered(broker, timeout=90)
            version = broker.ctl("eval", "rabbit_misc:version().").strip().strip('"')
            print(f"private node {node}: RabbitMQ {version} ({'in ' + str(root) if root else 'host binaries'})")
            yield broker
        finally:
            _stop(broker)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def duplicate_causes(done: Path, raised: set[str]) -> str:
    """Why tasks ran twice: re-sent by the caller, redelivered (ack lost), or republished by the
    producer's reconnect (confirm lost) - the three at-least-once paths."""
    runs: dict[str, list[bool]] = {}
    for task_id, again in read_done(done):
        runs.setdefault(task_id, []).append(again)
    causes = Counter(
        "re-sent after a raise" if task_id in raised else "redelivered" if any(flags) else "republished"
        for task_id, flags in runs.items()
        for _extra in range(len(flags) - 1)
    )
    return ", ".join(f"{n} {cause}" for cause, n in sorted(causes.items())) or "none"


# The task every ledger scenario runs: one line per execution, written before the ack.
LEDGER_TASKS = """
@app.task(queue=QUEUE, bind=True)
def work(self, n):
    record(f"{self.request.id} {int(self.request.redelivered)}")
"""

TOPOLOGY = """\
exchanges:
  {q}.dlx: {{type: direct}}
queues:
  {q}:
    type: {queue_type}
    dead_letter: {{exchange: {q}.dlx, routing_key: {q}.dead}}
  {q}.dead:
    bindings: [{{exchange: {q}.dlx, routing_key: {q}.dead}}]
"""


@dataclass
class FaultApp:
    """A generated tasks module (task ``work``) routed to ``queue`` on the private node."""

    broker: FaultBroker
    directory: Path
    module: str
    queue: str
    url: str

    @property
    def done(self) -> Path:
        """The ledger file: ``<task id> <redelivered>`` per execution."""
        return self.directory / "done.txt"

    def import_tasks(self) -> ModuleType:
        """Import the module in this process (its App reads AMQPTASKS_* from the environment)."""
        sys.modules.pop(self.module, None)
        importlib.invalidate_caches()
        return importlib.import_module(self.module)

    def close(self, module: ModuleType) -> None:
        """Close the module's App (its producer connections) and forget the module."""
        module.app.close()
        sys.modules.pop(self.module, None)

    def worker(self, *args: str, processes: int = 2) -> WorkerProcess:
        """``amqptasks worker`` for this module and queue; the caller stops it."""
        return WorkerProcess(
            self.directory, self.url, "-A", self.module, "--queues", self.queue,
            "--processes", str(processes), "--loglevel", os.environ.get("FAULTS_LOGLEVEL", "warning"), *args,
        )  # fmt: skip


@pytest.fixture
def fault_app(
    fault_broker: FaultBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., FaultApp]]:
    """Make a :class:`FaultApp` (``queue_type`` classic or quorum, optionally another ``url``);
    its queues, exchange and delay landing queue are deleted from the private node afterwards."""
    made: list[FaultApp] = []

    def make(queue_type: str = "classic", url: str | None = None, body: str = LEDGER_TASKS) -> FaultApp:
        token = uuid.uuid4().hex[:8]
        module, queue = f"faults_{token}", f"t.faults.{token}"
        topology = write_app(tmp_path, module, queue, f"QUEUE = {queue!r}\n" + body)
        topology.write_text(TOPOLOGY.format(q=queue, queue_type=queue_type))
        app = FaultApp(fault_broker, tmp_path, module, queue, url or fault_broker.url)
        made.append(app)
        return app

    monkeypatch.syspath_prepend(str(tmp_path))
    for name, value in fault_broker.client_env().items():
        monkeypatch.setenv(name, value)  # workers inherit the environment of this process
    yield make
    from amqptasks.core.delays import landing_queue
    from amqptasks.settings import Settings

    prefix = Settings.from_env().delay_prefix  # a test may have set its own cascade's prefix
    for app in made:
        try:
            fault_broker.delete(
                queues=(app.queue, f"{app.queue}.dead", landing_queue("", app.queue, prefix=prefix)),
                exchanges=(f"{app.queue}.dlx",),
            )
        except pika.exceptions.AMQPError as exc:  # the node may be down after a failed scenario
            print(f"cleanup of {app.queue} on {fault_broker.node} failed: {exc!r}")
