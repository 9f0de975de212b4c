"""TLS settings: read from AMQPTASKS_TLS_*, checked when the settings are made, turned into a context."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from amqptasks.errors import ConfigurationError
from amqptasks.settings import BrokerAddress, Settings, find_tls_error

TLS_URL = "amqps://guest:guest@localhost:5671/%2F"


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A file that exists (content is only read when a context is built)."""
    path = tmp_path / "ca.pem"
    path.write_text("not a certificate\n")
    return path


def test_defaults_are_off_and_plain_amqp_has_no_context() -> None:
    settings = Settings.from_env(env={})
    assert (settings.tls_ca_file, settings.tls_cert_file, settings.tls_key_file) == (None, None, None)
    assert settings.ssl_context() is None


def test_environment_is_read(pem: Path) -> None:
    env = {
        "AMQPTASKS_BROKER_URL": TLS_URL,
        "AMQPTASKS_TLS_CA_FILE": str(pem),
        "AMQPTASKS_TLS_CERT_FILE": str(pem),
        "AMQPTASKS_TLS_KEY_FILE": str(pem),
    }
    settings = Settings.from_env(env=env)
    assert settings.tls_ca_file == settings.tls_cert_file == settings.tls_key_file == str(pem)


def test_empty_variables_mean_unset() -> None:
    settings = Settings.from_env(env={"AMQPTASKS_TLS_CA_FILE": "", "AMQPTASKS_TLS_CERT_FILE": ""})
    assert settings.tls_ca_file is None and settings.tls_cert_file is None


def test_tls_files_with_a_plain_amqp_url_are_refused(pem: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"AMQPTASKS_TLS_CA_FILE.*not amqps://"):
        Settings.from_env(env={"AMQPTASKS_BROKER_URL": "amqp://localhost/", "AMQPTASKS_TLS_CA_FILE": str(pem)})


def test_missing_file_is_named(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigurationError, match=r"tls_ca_file \(AMQPTASKS_TLS_CA_FILE\) '.*nope.pem': no such file"):
        Settings(broker_url=TLS_URL, tls_ca_file=missing)


@pytest.mark.parametrize("given", ["tls_cert_file", "tls_key_file"])
def test_client_certificate_needs_both_halves(pem: Path, given: str) -> None:
    with pytest.raises(ConfigurationError, match="needs both tls_cert_file"):
        Settings(broker_url=TLS_URL, **{given: str(pem)})


def test_amqps_without_a_ca_verifies_against_the_system_store() -> None:
    context = Settings(broker_url=TLS_URL).ssl_context()
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_a_ca_file_that_is_not_pem_is_a_configuration_error(pem: Path) -> None:
    with pytest.raises(ConfigurationError, match="is not a PEM CA bundle"):
        Settings(broker_url=TLS_URL, tls_ca_file=str(pem)).ssl_context()


def test_a_bad_client_certificate_is_a_configuration_error(pem: Path) -> None:
    with pytest.raises(ConfigurationError, match="cannot load the client certificate"):
        Settings(broker_url=TLS_URL, tls_cert_file=str(pem), tls_key_file=str(pem)).ssl_context()


def test_with_broker_keeps_tls_and_rechecks(pem: Path) -> None:
    settings = Settings(broker_url=TLS_URL)
    assert settings.with_broker("amqps://other:5671/").address.host == "other"
    with pytest.raises(ConfigurationError, match="not amqps://"):
        Settings(broker_url=TLS_URL, tls_ca_file=str(pem)).with_broker("amqp://other/")


def test_a_wrapped_verification_error_is_found_and_explained() -> None:
    cause = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    cause.verify_message = "self-signed certificate in certificate chain"
    wrapper = ConnectionError("connect failed", cause)
    wrapped_again = RuntimeError("outer")
    wrapped_again.__cause__ = wrapper
    assert find_tls_error(wrapped_again) is cause
    assert find_tls_error(ConnectionError("refused")) is None
    message = BrokerAddress.parse(TLS_URL).tls_failed(cause)
    assert "localhost:5671" in message and "self-signed certificate" in message and "AMQPTASKS_TLS_CA_FILE" in message
    assert "guest" not in message


def test_an_alert_pika_keeps_only_as_text_is_found() -> None:
    # pika reports a client certificate the broker refused as IncompatibleProtocolError whose
    # argument is the text of the StreamLostError (see tests/faults/test_tls.py).
    text = "StreamLostError: (\"Stream connection lost: SSLError(1, '[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)')\",)"
    found = find_tls_error(ConnectionError(text))
    assert isinstance(found, ssl.SSLError) and not isinstance(found, ssl.SSLCertVerificationError)
    assert "tlsv1 alert unknown ca" in BrokerAddress.parse(TLS_URL).tls_failed(found)
    verify = find_tls_error(ConnectionError("[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: x (_ssl.c:1)"))
    assert isinstance(verify, ssl.SSLCertVerificationError)
    assert find_tls_error(ConnectionError("SSL is mentioned but no alert")) is None


def test_a_handshake_the_broker_cut_short_is_a_tls_failure() -> None:
    # TLS 1.3: a broker refusing our certificate may close the socket before its alert is read;
    # pika then reports only an EOF (seen in tests/faults/test_tls.py as IncompatibleProtocolError).
    text = "StreamLostError: (\"Stream connection lost: SSLEOFError(8, 'EOF occurred in violation of protocol (_ssl.c:2427)')\",)"
    found = find_tls_error(ConnectionError(text))
    assert isinstance(found, ssl.SSLEOFError)
    message = BrokerAddress.parse(TLS_URL).tls_failed(found)
    assert message.startswith("TLS handshake with the broker at localhost:5671 failed")
    assert "AMQPTASKS_TLS_CERT_FILE" in message
