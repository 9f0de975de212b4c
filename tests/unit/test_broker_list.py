"""Several broker addresses in one setting (issue 17 item 3): parsing, masking, clear errors."""

from __future__ import annotations

import pytest

from amqptasks import App
from amqptasks.errors import ConfigurationError
from amqptasks.settings import BrokerAddress, Settings, mask_url

A = "amqp://alice:secret-a@node1:5672/%2F"
B = "amqp://bob:secret-b@node2:5673/jobs"
C = "amqp://carol:secret-c@node3/%2F"


def no_password(text: str) -> None:
    for secret in ("secret-a", "secret-b", "secret-c"):
        assert secret not in text, text


def test_semicolon_list_gives_every_node_in_order() -> None:
    settings = Settings.from_env(env={"AMQPTASKS_BROKER_URL": f"{A};{B} ; {C};"})
    assert [a.where for a in settings.addresses] == ["node1:5672", "node2:5673", "node3:5672"]
    assert [a.username for a in settings.addresses] == ["alice", "bob", "carol"]
    assert settings.addresses[1].vhost == "jobs"
    assert settings.address == settings.addresses[0]
    assert settings.where == "node1:5672, node2:5673, node3:5672"


def test_app_takes_a_list_and_masks_every_password() -> None:
    app = App("listed", broker=[A, B, C])
    assert len(app.settings.addresses) == 3
    for text in (repr(app), repr(app.settings), app.settings.masked_broker, str(app.settings.addresses)):
        no_password(text)
    assert "alice:***@node1" in repr(app) and "bob:***@node2" in repr(app) and "carol:***@node3" in repr(app)


def test_settings_broker_url_list_and_with_broker() -> None:
    assert Settings(broker_url=[A, B]).broker_url == f"{A};{B}"  # type: ignore[arg-type]
    assert Settings().with_broker([A, C]).addresses[1].host == "node3"


def test_single_url_unchanged() -> None:
    settings = Settings(broker_url=A)
    assert settings.addresses == (BrokerAddress.parse(A),)
    assert mask_url(A) == "amqp://alice:***@node1:5672/%2F"


def test_comma_joined_pair_is_refused_with_the_fix() -> None:
    # Used to be taken as one host (node1) with vhost "/,amqp://bob:secret-b@node2:5673/jobs",
    # and repr showed the second password.
    with pytest.raises(ConfigurationError) as caught:
        Settings.from_env(env={"AMQPTASKS_BROKER_URL": f"{A},{B}"})
    message = str(caught.value)
    no_password(message)
    assert "more than one URL" in message and "','" in message and "';'" in message
    assert "alice:***@node1" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{A};;{B}", "broker address #2 of 3 is empty"),
        (f";{A}", "broker address #1 of 2 is empty"),
        (f"{A};http://x:secret-b@node2/", "broker address #2 of 2 'http://x:***@node2/'"),
        (f"{A};amqp://bob:secret-b@/", "#2 of 2 'amqp://bob:***@/': broker URL has no host"),
        (f"{A};amqps://bob:secret-b@node2:5671/", "mixes amqp:// and amqps://"),
    ],
)
def test_malformed_lists_name_the_bad_item_masked(value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Settings(broker_url=value)
    assert expected in str(caught.value)
    no_password(str(caught.value))


def test_bad_list_items() -> None:
    from amqptasks.settings import split_broker_urls

    with pytest.raises(ConfigurationError, match="the broker list is empty"):
        split_broker_urls([])
    with pytest.raises(ConfigurationError, match="#2 is int"):
        split_broker_urls([A, 5])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="holds a ';'") as caught:
        App("bad", broker=[f"{A};{B}"])
    no_password(str(caught.value))


def test_mask_url_masks_every_password_in_any_text() -> None:
    no_password(mask_url(f"{A},{B}"))
    no_password(mask_url(f"{A};{B};{C}"))
    assert mask_url("amqp://node1/%2F;amqp://guest@node2/") == "amqp://node1/%2F;amqp://guest@node2/"


@pytest.mark.parametrize(
    ("url", "secret"),
    [
        ("amqp://user:p@ss@host/%2F", "@ss"),  # '@' in the password: the host follows the last one
        ("amqp://user:pa ss@host/", "pa ss"),
        ("amqp://us,er:secret@h/", "secret"),
        ("amqp://a:first@h1/%2F,amqp://b:second@h2/%2F", "second"),  # a ','-joined pair, both masked
    ],
)
def test_every_password_is_masked_whatever_it_holds(url: str, secret: str) -> None:
    masked = mask_url(url)
    assert secret not in masked and "***" in masked, masked


def test_a_semicolon_inside_a_password_is_part_of_the_url_not_a_separator() -> None:
    settings = Settings(broker_url="amqp://user:se;cret@host/%2F;amqp://u2:pw;2@h2/%2F")
    assert [a.host for a in settings.addresses] == ["host", "h2"]
    assert "se;cret" not in repr(settings) and "cret" not in repr(settings) and "pw;2" not in repr(settings)
