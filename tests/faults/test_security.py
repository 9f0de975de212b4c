"""Security properties, checked against the real broker and the real CLI.

(a) The broker password never shows: not in the worker's banner or logs (debug level), not in CLI
    output, not in error messages (broker down, wrong credentials), not in reprs.
(b) Only registered tasks run: a message naming anything else — ``os.system``, ``builtins.eval``,
    a function of the app's module that is not a task — is dead-lettered as unknown, and nothing runs.
(c) Nothing in the library unpickles or evaluates message content (a static scan with ``ast``).
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.conftest import Broker
from tests.faults.raw import DIRECT_REPLY_TO, raw_publisher
from tests.faults.scenario import Workdir, imported, make_module, stop_worker, workdir
from tests.integration.workerproc import WorkerProcess, drain, queue_counts, wait_for

PACKAGE = Path(__file__).resolve().parents[2] / "amqptasks"


def closed_port() -> int:
    """A local TCP port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Secret:
    """A broker user with a distinctive password, and URLs using it (and a wrong one)."""

    user: str
    password: str
    marker: str  # the part of the password that must never show (it survives any quoting)
    wrong_marker: str
    host: str
    port: int

    def url(self, *, password: str | None = None, port: int | None = None) -> str:
        return f"amqp://{self.user}:{quote(password or self.password, safe='')}@{self.host}:{port or self.port}/%2F"

    @property
    def wrong_url(self) -> str:
        return self.url(password=f"Wrong{self.wrong_marker}#/@")

    def leaks(self, text: str) -> list[str]:
        """Lines of ``text`` that contain either password."""
        return [line for line in text.splitlines() if self.marker in line or self.wrong_marker in line]


@pytest.fixture
def secret(broker: Broker) -> Iterator[Secret]:
    """A user of the broker under test with a distinctive password; deleted afterwards.

    Adding a user is non-destructive; it goes through that broker's rabbitmqctl (``broker.ctl``).
    """
    marker = uuid.uuid4().hex
    user = f"fk-sec-{uuid.uuid4().hex[:8]}"
    # Characters that need quoting in a URL, so that both the raw and the %-quoted forms are exercised.
    password = f"Pw{marker}#/@:%"
    broker.ctl("add_user", user, password)
    try:
        broker.ctl("set_permissions", "-p", "/", user, ".*", ".*", ".*")
        yield Secret(user, password, marker, uuid.uuid4().hex, broker.host, broker.port)
    finally:
        broker.ctl("delete_user", user)


def _cli(*args: str, env_url: str | None = None, cwd: Path | None = None, timeout: float = 60) -> tuple[int, str]:
    """``python -m amqptasks ARGS``: exit code and stdout + stderr."""
    env = dict(os.environ)
    env.pop("AMQPTASKS_BROKER_URL", None)
    if env_url:
        env["AMQPTASKS_BROKER_URL"] = env_url
    env["AMQPTASKS_CONNECT_TIMEOUT"] = "3"
    done = subprocess.run([sys.executable, "-m", "amqptasks", *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def _close_connections(needle: str, broker: Broker) -> int:
    """Close this test's own connections (names containing ``needle``) through the management API."""
    closed = 0
    for connection in broker.api("/api/connections"):
        if needle in ((connection.get("client_properties") or {}).get("connection_name") or ""):
            broker.api(f"/api/connections/{quote(connection['name'], safe='')}", method="DELETE")
            closed += 1
    return closed


def _error_text(exc: BaseException) -> str:
    """Everything an exception can show: str, repr, the printed traceback, and (even though it is
    not printed) the suppressed context chain."""
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        texts += [str(current), repr(current), repr(current.args)]
        current = current.__cause__ or current.__context__
    return "\n".join(texts)


SEC_TASKS = """
@app.task(queue=QUEUE, bind=True)
def ping(self, n):
    record(f"{self.request.id} {int(self.request.redelivered)}")
    return n

def helper(path):
    # A plain function of the app's module that is NOT a task: no message may call it.
    open(path, "w").close()
"""


@pytest.mark.timeout(180)
def test_the_password_never_shows(workdir: Workdir, secret: Secret, broker: Broker, broker_url: str) -> None:
    """Worker banner and debug logs (through a forced reconnect), every CLI command, and the errors
    for a closed port and for wrong credentials: no trace of either password."""
    module = "fk_sec_pw"
    topology = make_module(workdir, module, SEC_TASKS)
    good = secret.url()
    down = secret.url(port=closed_port())
    outputs: dict[str, str] = {}

    # The worker: banner, debug log, a task, a connection cut (reconnect messages), a clean stop.
    worker = WorkerProcess(workdir.path, good, "-A", module, "--queues", workdir.queue, "--processes", "1", "--loglevel", "debug")
    try:
        worker.wait_consuming(workdir.queue)
        with imported(module) as tasks:
            tasks.app.configured(broker=good)
            assert tasks.ping.delay(5).get(timeout=10) == 5
        assert wait_for(lambda: _close_connections(f"amqptasks worker {module}", broker) >= 1, 15, interval=0.5)
        assert wait_for(lambda: "connection lost" in worker.log, 10), worker.log
        worker.wait_consuming(workdir.queue)
        stop_worker(worker)
    finally:
        worker.stop()
    outputs["worker (banner, debug log, reconnect)"] = worker.log
    assert "[config]" in worker.log and f"{secret.user}:***@" in worker.log, worker.log

    for label, url in (("wrong password", secret.wrong_url), ("closed port", down)):
        failed = WorkerProcess(workdir.path, url, "-A", module, "--queues", workdir.queue, "--processes", "1", "--loglevel", "debug",
                               "--no-wait")  # the closed port: exit instead of waiting for a broker
        try:
            code = failed.wait(timeout=60)
        finally:
            failed.stop()
        assert code != 0, failed.log
        outputs[f"worker, {label}"] = failed.log
    code, out = _cli("worker", "-A", module, "--queues", workdir.queue, "--broker", secret.wrong_url, cwd=workdir.path)
    outputs["worker --broker, wrong password"] = out

    # The CLI, with the URL in the environment and as --broker; good, wrong and unreachable.
    dead_queue = workdir.dead
    codes: dict[str, int] = {}
    for label, url in (("good", good), ("wrong password", secret.wrong_url), ("closed port", down)):
        outputs[f"topology validate ({label})"] = _cli("topology", "validate", str(topology), env_url=url)[1]
        outputs[f"topology plan ({label})"] = _cli("topology", "plan", str(topology), env_url=url)[1]
        outputs[f"topology plan --broker ({label})"] = _cli("topology", "plan", str(topology), "--broker", url)[1]
        codes[label], outputs[f"topology apply ({label})"] = _cli("topology", "apply", str(topology), "-v", env_url=url)
        outputs[f"dlq list ({label})"] = _cli("dlq", "list", dead_queue, env_url=url)[1]
        outputs[f"dlq list --broker ({label})"] = _cli("dlq", "list", dead_queue, "--broker", url)[1]
    mgmt = f"http://{secret.user}:{quote(secret.password, safe='')}@{broker.host}:{broker.management_port}"
    mgmt_down = f"http://{secret.user}:{quote(secret.password, safe='')}@127.0.0.1:{closed_port()}"
    for label, management in (("with credentials", mgmt), ("with credentials, unreachable", mgmt_down)):
        outputs[f"topology plan --management-url {label}"] = _cli(
            "topology", "plan", str(topology), "--management-url", management, env_url=good
        )[1]
    assert "OK:" in outputs["topology validate (good)"], outputs["topology validate (good)"]
    assert codes == {"good": 0, "wrong password": 3, "closed port": 3}, codes  # the commands really ran
    assert "refused the credentials" in outputs["dlq list (wrong password)"], outputs["dlq list (wrong password)"]
    assert "cannot reach the broker" in outputs["dlq list (closed port)"], outputs["dlq list (closed port)"]

    # The library's errors, sync and async.
    from amqptasks import App
    from amqptasks.errors import BrokerUnavailable

    for label, url in (("wrong password", secret.wrong_url), ("closed port", down)):
        app = App(f"{module}_client", broker=url)
        send = app.task(name=f"{module}.ping", queue=workdir.queue)(lambda n: n)
        with pytest.raises(BrokerUnavailable) as caught:
            send.delay(1)
        outputs[f"BrokerUnavailable, delay, {label}"] = _error_text(caught.value)
        with pytest.raises(BrokerUnavailable) as caught:
            asyncio.run(_adelay(send))
        outputs[f"BrokerUnavailable, adelay, {label}"] = _error_text(caught.value)
        outputs[f"repr(app), {label}"] = repr(app)
        app.close()

    leaks = {label: lines for label, text in outputs.items() if (lines := secret.leaks(text))}
    checked = ", ".join(outputs)
    print(f"\nSECURITY password: {len(outputs)} outputs checked ({checked}); leaks in {len(leaks)}")
    assert not leaks, "the password shows in:\n" + "\n".join(f"  {label}: {lines[0][:300]}" for label, lines in leaks.items())


async def _adelay(task) -> None:  # type: ignore[no-untyped-def]
    try:
        await task.adelay(1)
    finally:
        await task.app.aclose()


def test_reprs_do_not_show_the_password() -> None:
    """Settings and addresses end up in logs, tracebacks and debuggers by their repr."""
    from amqptasks import App
    from amqptasks.settings import Settings

    marker = uuid.uuid4().hex
    url = f"amqp://someone:Pw{marker}@127.0.0.1:5672/%2F"
    settings = Settings(broker_url=url)
    shown = {
        "repr(App)": repr(App("x", broker=url)),
        "repr(Settings)": repr(settings),
        "repr(Settings.address)": repr(settings.address),
        "str(Settings)": str(settings),
    }
    leaks = {label: text for label, text in shown.items() if marker in text}
    print(f"\nSECURITY reprs: {len(shown)} checked, leaks in {sorted(leaks)}")
    assert not leaks, "the password shows in " + "; ".join(f"{label}: {text[:160]}" for label, text in leaks.items())


# --- (b) only registered tasks run ---------------------------------------------------------------


@pytest.mark.timeout(90)
def test_only_registered_tasks_run(workdir: Workdir, broker_url: str, tmp_path: Path) -> None:
    """Messages naming real functions that are not tasks are dead-lettered as unknown; none runs."""
    module = "fk_sec_names"
    make_module(workdir, module, SEC_TASKS)
    marker = tmp_path / "pwned"
    attempts: list[tuple[str, list[object]]] = [
        ("os.system", [f"touch {marker}"]),
        ("posix.system", [f"touch {marker}"]),
        ("subprocess.run", [["touch", str(marker)]]),
        ("subprocess.check_call", [["touch", str(marker)]]),
        ("builtins.exec", [f"open({str(marker)!r}, 'w').close()"]),
        ("builtins.eval", [f"__import__('os').system('touch {marker}')"]),
        ("eval", [f"__import__('os').system('touch {marker}')"]),
        ("pickle.loads", ["cos\nsystem\n(S'touch x'\ntR."]),
        (f"{module}.helper", [str(marker)]),  # in the app's module, not registered
        (f"{module}.app", []),
        (f"{module}.record", [f"x {marker}"]),
        (f"{module}.os.system", [f"touch {marker}"]),
        (f"{module}:helper", [str(marker)]),
        (f"{module}.ping.__globals__", []),
        ("amqptasks.worker.locate.load_app", [module, str(tmp_path)]),
    ]
    worker = WorkerProcess(workdir.path, broker_url, "-A", module, "--queues", workdir.queue, "--processes", "1", "--loglevel", "info")
    try:
        worker.wait_consuming(workdir.queue)
        with raw_publisher(broker_url, f"security {workdir.queue}") as raw, imported(module) as tasks:
            for n, (name, args) in enumerate(attempts):
                task_id = f"attempt-{n}"
                raw.publish(
                    workdir.queue, json.dumps({"args": args, "kwargs": {}}).encode(),
                    {"amqptasks": 1, "task": name, "id": task_id}, content_type="application/json",
                    message_id=task_id, correlation_id=task_id, reply_to=DIRECT_REPLY_TO,
                )  # fmt: skip
            assert tasks.ping.delay(1).get(timeout=10) == 1  # a registered task still runs
            assert wait_for(lambda: queue_counts(broker_url, workdir.dead)[0] >= len(attempts), 20)
            deadline = time.monotonic() + 10
            while len(raw.replies) < len(attempts) and time.monotonic() < deadline:
                raw.pump(0.2)
            replies = {json.loads(body)["id"]: json.loads(body) for _, body in raw.replies}
        stop_worker(worker)
    finally:
        worker.stop()
    dead = {str(p.headers.get("id")): str(p.headers.get("x-amqptasks-reason")) for p, _ in drain(broker_url, workdir.dead)}
    print(f"\nSECURITY names: {len(attempts)} non-task names sent, {len(dead)} dead-lettered, "
          f"{sum(r.get('exc_type') == 'UnknownTask' for r in replies.values())} UnknownTask replies, ran: {marker.exists()}")  # fmt: skip
    assert not marker.exists(), "a message that names no registered task RAN something"
    for n, (name, _args) in enumerate(attempts):
        assert dead.get(f"attempt-{n}", "").startswith("unknown task "), (name, dead.get(f"attempt-{n}"))
        assert replies.get(f"attempt-{n}", {}).get("exc_type") == "UnknownTask", (name, replies.get(f"attempt-{n}"))
        assert f"Received task: {name}[" not in worker.log
    assert queue_counts(broker_url, workdir.queue)[0] == 0


# --- (c) nothing unpickles or evaluates ------------------------------------------------------------

FORBIDDEN_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle", "jsonpickle", "runpy"}
FORBIDDEN_CALLS = {
    "eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec", "builtins.compile",
    "builtins.__import__", "importlib.import_module", "importlib.__import__", "pydoc.locate",
    "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all",
}  # fmt: skip
# The one dynamic import there must be: the worker imports the module named by ``-A`` (or
# AMQPTASKS_APP, or pyproject.toml) — the operator's choice, made before any message is read.
# Message content never reaches it: a task name is only ever looked up in ``app.tasks``.
ALLOWED = {
    ("worker/locate.py", "load_app", "importlib.import_module"),
    # marshal.dumps only: it tells exact built-in types apart (the strict JSON check); never loads
    ("core/jsonvalues.py", "<module>", "import marshal"),
}


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``a.b.c`` for a Name/Attribute chain, with import aliases resolved."""
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _scan(path: Path) -> list[tuple[str, str, str, int]]:
    """(file, enclosing function, what, line) for every forbidden import or call in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    relative = path.relative_to(PACKAGE).as_posix()
    aliases: dict[str, str] = {}
    found: list[tuple[str, str, str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for name in node.names:
                aliases[name.asname or name.name.split(".")[0]] = name.name if name.asname else name.name.split(".")[0]
                if name.name.split(".")[0] in FORBIDDEN_MODULES:
                    found.append((relative, "<module>", f"import {name.name}", node.lineno))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for name in node.names:
                aliases[name.asname or name.name] = f"{node.module}.{name.name}"
            if node.module.split(".")[0] in FORBIDDEN_MODULES:
                found.append((relative, "<module>", f"from {node.module} import ...", node.lineno))

    def visit(node: ast.AST, function: str) -> None:
        for child in ast.iter_child_nodes(node):
            inner = child.name if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef) else function
            if isinstance(child, ast.Call):
                name = _dotted(child.func, aliases)
                if name in FORBIDDEN_CALLS:
                    found.append((relative, function, name, child.lineno))
            visit(child, inner)

    visit(tree, "<module>")
    return found


def test_nothing_unpickles_or_evaluates() -> None:
    """No pickle/marshal/shelve/dill, no eval/exec/compile/__import__/import_module and no unsafe
    YAML loader anywhere in the package, except the worker's ``-A`` import."""
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 20, f"found only {len(files)} files under {PACKAGE}"
    found = [hit for path in files for hit in _scan(path)]
    unexpected = [hit for hit in found if (hit[0], hit[1], hit[2]) not in ALLOWED]
    print(f"\nSECURITY scan: {len(files)} files, allowed: {sorted(set(found) - set(unexpected))}")
    assert not unexpected, "forbidden in amqptasks/: " + "; ".join(f"{f}:{line} in {fn}: {what}" for f, fn, what, line in unexpected)
    jsonvalues = (PACKAGE / "core" / "jsonvalues.py").read_text(encoding="utf-8")
    assert set(re.findall(r"marshal\.\w+", jsonvalues)) == {"marshal.dumps"}, "core/jsonvalues.py may only marshal.dumps"
    # The allowed import takes the module name from the CLI/env/pyproject reference, never a message.
    command = (PACKAGE / "worker" / "command.py").read_text(encoding="utf-8")
    assert "load_app(app_reference(" in command
    callers = [p.relative_to(PACKAGE).as_posix() for p in files if "load_app(" in p.read_text(encoding="utf-8")]
    assert sorted(callers) == ["worker/command.py", "worker/locate.py"], callers
