"""Export: RabbitMQ definitions JSON and Mermaid diagrams."""

from __future__ import annotations

import json
from pathlib import Path

from amqptasks.core.export import to_definitions, to_mermaid
from amqptasks.core.loader import load_topology
from amqptasks.core.topology import Binding, Exchange, Queue, Topology

CONTRACT = Path(__file__).parent / "data" / "valid" / "contract.yaml"


def test_definitions_have_the_shape_rabbitmq_imports() -> None:
    definitions = to_definitions(load_topology(CONTRACT), vhost="shop")
    assert set(definitions) == {"exchanges", "queues", "bindings"}
    json.dumps(definitions)  # plain JSON, nothing exotic
    assert definitions["exchanges"][0] == {
        "name": "tasks", "vhost": "shop", "type": "direct", "durable": True,
        "auto_delete": False, "internal": False, "arguments": {},
    }
    celery = next(q for q in definitions["queues"] if q["name"] == "celery")
    assert celery == {
        "name": "celery", "vhost": "shop", "durable": True, "auto_delete": False,
        "arguments": {
            "x-max-priority": 10, "x-message-ttl": 3_600_000, "x-max-length": 100_000,
            "x-max-length-bytes": 104_857_600, "x-overflow": "reject-publish", "x-expires": 604_800_000,
            "x-dead-letter-exchange": "dead", "x-dead-letter-routing-key": "celery.dead", "x-custom": 1,
        },
    }
    assert definitions["bindings"][0] == {
        "source": "events", "vhost": "shop", "destination": "audit", "destination_type": "exchange",
        "routing_key": "audit.#", "arguments": {},
    }
    assert [b["destination_type"] for b in definitions["bindings"]] == ["exchange", "queue", "queue", "queue"]


def test_definitions_default_vhost_quorum_type_and_no_exclusive_queues() -> None:
    topology = Topology(
        {"x": Exchange("x")},
        {"q": Queue("q", type="quorum"), "mine": Queue("mine", exclusive=True, durable=False)},
        (Binding("x", "q"), Binding("x", "mine")),
    )
    definitions = to_definitions(topology)
    assert [(q["name"], q["vhost"], q["arguments"]) for q in definitions["queues"]] == [("q", "/", {"x-queue-type": "quorum"})]
    assert [b["destination"] for b in definitions["bindings"]] == ["q"]


def test_mermaid_diagram_of_the_contract() -> None:
    assert to_mermaid(load_topology(CONTRACT)) == "\n".join([
        "flowchart LR",
        '    e_tasks{{"tasks (direct)"}}',
        '    e_events{{"events (topic)"}}',
        '    e_dead{{"dead (direct)"}}',
        '    e_audit{{"audit (fanout)"}}',
        '    q_celery[("celery")]',
        '    q_celery_dead[("celery.dead")]',
        '    q_reports[("reports")]',
        '    e_events -->|"audit.#"| e_audit',
        '    e_tasks -->|"celery"| q_celery',
        '    e_events -->|"task.*.created"| q_celery',
        '    e_dead -->|"celery.dead"| q_celery_dead',
        '    q_celery -.->|"dead-letter: celery.dead"| e_dead',
    ]) + "\n"


def test_mermaid_ids_are_unique_labels_escaped_and_built_ins_drawn() -> None:
    topology = Topology(
        {"a.b": Exchange("a.b", type="fanout"), "a_b": Exchange("a_b", type="headers")},
        {"q\"<x>": Queue("q\"<x>", dead_letter_exchange="", dead_letter_routing_key="dlq"), "dlq": Queue("dlq"),
         "r": Queue("r", dead_letter_exchange="amq.direct")},
        (Binding("a.b", "q\"<x>"), Binding("amq.topic", "dlq", routing_key='say "hi"'),
         Binding("a_b", "r", arguments={"x-match": "any", "kind": "pdf"})),
    )
    lines = to_mermaid(topology).splitlines()
    assert '    e_a_b{{"a.b (fanout)"}}' in lines
    assert '    e_a_b_2{{"a_b (headers)"}}' in lines
    assert '    q_q__x_[("q#quot;#lt;x#gt;")]' in lines
    assert "    e_a_b --> q_q__x_" in lines  # fanout: no key, no label
    assert '    e_amq_topic{{"amq.topic"}}' in lines
    assert '    e_amq_topic -->|"say #quot;hi#quot;"| q_dlq' in lines
    assert '    e_a_b_2 -->|"x-match=any, kind=pdf"| q_r' in lines
    assert '    q_q__x_ -.->|"dead-letter: dlq"| q_dlq' in lines  # default exchange: straight to the queue
    assert '    q_r -.->|"dead-letter"| e_amq_direct' in lines


def test_mermaid_of_an_empty_topology() -> None:
    assert to_mermaid(Topology()) == "flowchart LR\n"
