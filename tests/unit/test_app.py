"""App and Task without a broker: naming, registry, plain calls, checks that fail before any I/O."""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime
from pathlib import Path

import pytest

import amqptasks
from amqptasks import (
    App,
    AsyncResult,
    ConfigurationError,
    ResultUnavailable,
    Task,
    TopologyError,
    UnknownTask,
)
from amqptasks.core.envelope import failure, success
from amqptasks.core.topology import Topology
from amqptasks.errors import TaskError


def closed_port_url() -> str:
    """A broker URL nobody listens on: any send attempt would fail loudly with BrokerUnavailable."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"amqp://guest:secret@127.0.0.1:{port}/%2F"


@pytest.fixture
def app() -> App:
    return App("tasks", broker=closed_port_url())


def test_task_names_default_to_module_and_function(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.name == f"{__name__}.add"
    assert app.tasks == {add.name: add} and app.get_task(add.name) is add


def test_main_module_tasks_take_the_app_main_name(app: App) -> None:
    namespace: dict[str, object] = {"__name__": "__main__", "app": app}
    exec("@app.task\ndef add(x, y):\n    return x + y\n", namespace)
    assert "tasks.add" in app.tasks


def test_explicit_name_and_options(app: App) -> None:
    @app.task(name="emails.send", queue="emails", ignore_result=True)
    def send_email(to: str) -> None: ...

    assert isinstance(send_email, Task)
    assert send_email.name == "emails.send" and send_email.options.queue == "emails"
    assert send_email.options.ignore_result and app.get_task("emails.send") is send_email


def test_plain_call_runs_locally(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add(3, 4) == 7
    assert add.fn(3, 4) == 7 and add.__name__ == "add" and add.__wrapped__ is add.fn  # type: ignore[attr-defined]


def test_bound_task_gets_itself(app: App) -> None:
    @app.task(bind=True)
    def whoami(self: Task, suffix: str) -> str:
        return self.name + suffix

    assert whoami("!") == f"{whoami.name}!"
    whoami.signature_check(("x",), {})  # self is skipped
    with pytest.raises(TypeError):
        whoami.signature_check(("x", "y"), {})


def test_bind_without_a_parameter_is_a_configuration_error(app: App) -> None:
    with pytest.raises(ConfigurationError, match="bind=True needs a first parameter"):
        @app.task(bind=True)
        def nothing() -> None: ...


def test_async_tasks_are_marked(app: App) -> None:
    @app.task
    async def fetch(url: str) -> str:
        return url

    @app.task
    def plain() -> None: ...

    assert fetch.is_async and not plain.is_async
    assert asyncio.run(fetch("u")) == "u"


@pytest.mark.parametrize(
    ("args", "kwargs", "fits"),
    [((1, 2), {}, True), ((1,), {"y": 2}, True), ((1,), {}, False), ((1, 2, 3), {}, False), ((), {"x": 1, "z": 2}, False)],
)
def test_signature_check(app: App, args: tuple[int, ...], kwargs: dict[str, int], fits: bool) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    if fits:
        add.signature_check(args, kwargs)
    else:
        with pytest.raises(TypeError):
            add.signature_check(args, kwargs)


def test_signature_check_with_defaults_and_varargs(app: App) -> None:
    @app.task
    def flexible(a: int, b: int = 2, *rest: int, **named: int) -> None: ...

    flexible.signature_check((1,), {})
    flexible.signature_check((1, 2, 3, 4), {"k": 1})
    with pytest.raises(TypeError):
        flexible.signature_check((), {})


def test_bad_options_fail_at_decoration(app: App) -> None:
    with pytest.raises(ConfigurationError, match="did you mean 'queue'"):
        @app.task(queu="x")
        def t() -> None: ...


def test_two_functions_with_one_name_are_refused(app: App) -> None:
    @app.task(name="dup")
    def one() -> None: ...

    with pytest.raises(ConfigurationError, match="two tasks are named 'dup'"):
        @app.task(name="dup")
        def two() -> None: ...


def test_unknown_task_lists_the_known_ones(app: App) -> None:
    @app.task(name="a.b")
    def t() -> None: ...

    with pytest.raises(UnknownTask, match=r"no task named 'nope' in app 'tasks' \(known: a.b\)"):
        app.get_task("nope")


def test_wrong_arguments_fail_before_connecting(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(TypeError):
        add.delay(1)
    with pytest.raises(TypeError, match=r"args\[1\]: object is not JSON"):
        add.delay(1, object())
    with pytest.raises(TypeError, match="args must be a list or tuple"):
        add.apply_async("12")
    assert app._sync is None  # nothing tried to connect


def test_send_options_fail_before_connecting(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(ConfigurationError, match="countdown must not be negative"):
        add.apply_async((1, 2), countdown=-1)
    with pytest.raises(ConfigurationError, match="aware datetime"):
        add.apply_async((1, 2), eta=datetime(2030, 1, 1))
    with pytest.raises(ConfigurationError, match="unsupported send option"):
        add.apply_async((1, 2), link="x")
    with pytest.raises(ConfigurationError, match="did you mean 'routing_key'"):
        add.send((1, 2), routing_keys="x")
    with pytest.raises(ConfigurationError, match="priority"):
        add.signature((1, 2), priority=1000)
    assert app._sync is None


def test_broker_defaults_to_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AMQPTASKS_BROKER_URL", "amqp://u:p@envhost:5673/v")
    assert App("x").settings.broker_url == "amqp://u:p@envhost:5673/v"
    assert App("x", broker="amqp://h/").settings.broker_url == "amqp://h/"
    monkeypatch.delenv("AMQPTASKS_BROKER_URL")
    assert App("x").settings.broker_url == "amqp://guest:guest@localhost:5672/%2F"


def test_repr_masks_the_password(app: App) -> None:
    assert "secret" not in repr(app) and "***" in repr(app)


def test_default_topology_is_built_in_loaded_lazily_and_cached(app: App) -> None:
    assert app._topology is None
    topology = app.topology
    assert isinstance(topology, Topology) and "celery" in topology.queues and "tasks" in topology.exchanges
    assert app.topology is topology
    assert app.topology_paths[0].name == "default_topology.yaml"


def test_missing_topology_file_fails_when_the_app_is_made(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"nope\.yaml.*file not found"):
        App("x", topology=str(tmp_path / "nope.yaml"))


def test_topology_paths_relative_to_the_app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "topology").mkdir()
    (tmp_path / "topology" / "t.yaml").write_text("queues:\n  jobs: {}\n")
    module = tmp_path / "mod.py"
    module.write_text("from amqptasks import App\napp = App('mod', topology='topology/t.yaml')\n")
    namespace: dict[str, object] = {"__file__": str(module), "__name__": "mod"}
    monkeypatch.chdir("/")
    exec(compile(module.read_text(), str(module), "exec"), namespace)
    loaded = namespace["app"]
    assert isinstance(loaded, App) and "jobs" in loaded.topology.queues


def test_a_list_of_topology_files_merges(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("queues:\n  a: {}\n")
    (tmp_path / "b.yaml").write_text("queues:\n  b: {}\nroutes:\n  'x.*': {queue: b}\n")
    app = App("x", topology=[tmp_path / "a.yaml", str(tmp_path / "b.yaml")])
    assert set(app.topology.queues) == {"a", "b"} and app.topology.routes[0].queue == "b"


def test_invalid_topology_raises_topology_error_on_first_use(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("queues:\n  a: {typo: 1}\n")
    app = App("x", topology=tmp_path / "bad.yaml")
    with pytest.raises(TopologyError):
        _ = app.topology


def test_configured_changes_the_app_in_place(app: App, tmp_path: Path) -> None:
    (tmp_path / "t.yaml").write_text("queues:\n  jobs: {}\n")
    _ = app.topology
    same = app.configured(broker="amqp://other:5672/%2F", topology=[str(tmp_path / "t.yaml")])
    assert same is app and app.settings.address.host == "other" and "jobs" in app.topology.queues


def test_apps_share_nothing() -> None:
    first, second = App("a", broker=closed_port_url()), App("b", broker=closed_port_url())

    @first.task
    def t() -> None: ...

    assert second.tasks == {} and first.settings is not second.settings


def test_batches_do_not_nest(app: App) -> None:
    with pytest.raises(ConfigurationError, match="do not nest"):
        with app.batch():
            with app.batch():
                pass


def test_a_failing_batch_block_sends_nothing(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    with pytest.raises(RuntimeError):
        with app.batch():
            result = add.delay(1, 2)
            raise RuntimeError("stop")
    assert app._sync is None
    with pytest.raises(ResultUnavailable, match="has not been sent yet"):
        result.get()


def test_send_many_of_nothing_is_nothing(app: App) -> None:
    assert app.send_many([]) == []
    assert asyncio.run(app.asend_many([])) == []


def test_signatures(app: App) -> None:
    @app.task
    def add(x: int, y: int) -> int:
        return x + y

    sig = add.s(1, y=2)
    assert sig.task is add and sig.args == (1,) and sig.kwargs == {"y": 2}
    item = add.signature((1, 2), queue="other", priority=3).prepare()
    assert item.destination.routing_key == "other" and item.properties.priority == 3


# --- AsyncResult without a broker ---------------------------------------------------------------


class FakeSource:
    """A result source whose replies the test controls."""

    def __init__(self) -> None:
        self.kept: dict[str, object] = {}
        self.forgotten: list[str] = []

    def poll(self, task_id: str):  # type: ignore[no-untyped-def]
        return self.kept.get(task_id)

    def wait(self, task_id: str, timeout: float | None):  # type: ignore[no-untyped-def]
        return self.kept[task_id]

    async def await_(self, task_id: str, timeout: float | None):  # type: ignore[no-untyped-def]
        return self.kept[task_id]

    def forget(self, task_id: str) -> None:
        self.forgotten.append(task_id)


def test_async_result_states() -> None:
    source = FakeSource()
    result = AsyncResult("id-1", "tasks.add", source)
    assert repr(result) == "<AsyncResult: id-1>"
    assert result.status == "PENDING" and not result.ready() and result.result is None
    source.kept["id-1"] = success("id-1", 7)
    assert result.ready() and result.successful() and result.status == "SUCCESS" and result.result == 7
    assert result.get() == 7 and source.forgotten == ["id-1"]  # read once, then kept on the result


def test_async_result_failure() -> None:
    source = FakeSource()
    source.kept["i"] = failure("i", "ValueError", "boom", "tb")
    result = AsyncResult("i", "t", source)
    assert result.status == "FAILURE" and result.failed() and not result.successful()
    assert isinstance(result.result, TaskError) and result.traceback == "tb"
    with pytest.raises(TaskError, match="ValueError: boom"):
        result.get()
    with pytest.raises(TaskError):
        asyncio.run(result.aget())


def test_a_dropped_result_releases_its_reply() -> None:
    source = FakeSource()
    AsyncResult("gone", "t", source)
    assert source.forgotten == ["gone"]


def test_ignore_result_get_raises_at_once() -> None:
    result = AsyncResult("i", "emails.send", None, ignored=True)
    with pytest.raises(ResultUnavailable, match="ignore_result=True"):
        result.get(timeout=100)
    assert result.status == "PENDING" and not result.ready()


def test_public_names() -> None:
    for name in ("App", "AsyncResult", "Task", "TaskError", "ResultTimeout", "UnroutableError", "PublishError",
                 "PublishTimeout", "BrokerUnavailable", "ConfigurationError", "ResultUnavailable", "Signature"):
        assert hasattr(amqptasks, name), name
    assert issubclass(amqptasks.ResultTimeout, TimeoutError)


def test_task_ids_are_distinct_version_4_uuids() -> None:
    import uuid

    from amqptasks.task import new_task_id

    ids = [new_task_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, text)
