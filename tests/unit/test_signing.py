"""Event signatures: what a consumer accepts, and what it refuses before decoding anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from lotgate_tools.dev_secrets import DevSecrets, write_public_keys
from shared.signing import (
    KEY_ID_HEADER,
    MSG_ID_HEADER,
    PRODUCER_HEADER,
    SIGNATURE_HEADER,
    TIME_HEADER,
    EventSigner,
    EventVerifier,
    PublicKey,
    PublicKeyFile,
    SignedHere,
    Unverified,
    key_id_of,
    public_key_entry,
)

SUBJECT = "lotgate.results.v1.result_recorded"
PAYLOAD = b"\x0a\x24 a serialized ResultRecorded"

results_key = Ed25519PrivateKey.generate()
lots_key = Ed25519PrivateKey.generate()
RESULTS = EventSigner("results", results_key)
LOTS = EventSigner("lots", lots_key)


def keyring(*signers: EventSigner) -> dict[str, PublicKey]:
    return {s.key_id: PublicKey(s.producer, s.private_key.public_key()) for s in signers}


VERIFIER = EventVerifier(keyring(RESULTS, LOTS))


@pytest.mark.req("EVT-002")
def test_an_event_signed_by_its_subjects_owner_is_accepted() -> None:
    headers = RESULTS.headers(SUBJECT, "e-1", PAYLOAD)

    assert VERIFIER.verify(SUBJECT, headers, PAYLOAD) == "results"
    assert headers[MSG_ID_HEADER] == "e-1"
    assert headers[KEY_ID_HEADER] == key_id_of(results_key.public_key())


@pytest.mark.req("EVT-002")
@pytest.mark.parametrize("change", [
    {"payload": PAYLOAD + b"!"},
    {"subject": "lotgate.results.v1.result_confirmed"},  # same owner, another meaning
    {MSG_ID_HEADER: "e-2"},
    {TIME_HEADER: "2020-01-01T00:00:00.000000+00:00"},
], ids=["payload", "subject", "event-id", "time"])
def test_changing_anything_signed_breaks_the_signature(change: dict[str, object]) -> None:
    headers = RESULTS.headers(SUBJECT, "e-1", PAYLOAD)
    subject = str(change.pop("subject", SUBJECT))
    payload = change.pop("payload", PAYLOAD)
    headers.update({k: str(v) for k, v in change.items()})

    with pytest.raises(Unverified, match="bad signature"):
        VERIFIER.verify(subject, headers, payload)  # type: ignore[arg-type]


@pytest.mark.req("EVT-002")
@pytest.mark.parametrize("missing", [MSG_ID_HEADER, PRODUCER_HEADER, KEY_ID_HEADER,
                                     TIME_HEADER, SIGNATURE_HEADER])
def test_an_event_without_a_signature_header_is_unsigned(missing: str) -> None:
    headers = RESULTS.headers(SUBJECT, "e-1", PAYLOAD)
    del headers[missing]

    with pytest.raises(Unverified, match=f"unsigned: missing {missing}"):
        VERIFIER.verify(SUBJECT, headers, PAYLOAD)


@pytest.mark.req("EVT-002")
def test_no_headers_at_all_is_unsigned() -> None:
    with pytest.raises(Unverified, match="unsigned"):
        VERIFIER.verify(SUBJECT, None, PAYLOAD)


@pytest.mark.req("EVT-002")
def test_a_valid_signature_of_another_producer_is_refused() -> None:
    # The lots service's own key, correctly used, on a results subject.
    headers = LOTS.headers(SUBJECT, "e-1", PAYLOAD)

    with pytest.raises(Unverified, match="producer 'lots' may not publish"):
        VERIFIER.verify(SUBJECT, headers, PAYLOAD)


@pytest.mark.req("EVT-002")
def test_a_key_of_one_producer_cannot_sign_as_another() -> None:
    # The lots key signing with the producer header saying "results".
    impostor = EventSigner("results", lots_key)
    headers = impostor.headers(SUBJECT, "e-1", PAYLOAD)

    with pytest.raises(Unverified, match="belongs to 'lots', not 'results'"):
        VERIFIER.verify(SUBJECT, headers, PAYLOAD)


@pytest.mark.req("EVT-002")
def test_an_unknown_key_is_refused() -> None:
    stranger = EventSigner("results", Ed25519PrivateKey.generate())

    with pytest.raises(Unverified, match="unknown key id"):
        VERIFIER.verify(SUBJECT, stranger.headers(SUBJECT, "e-1", PAYLOAD), PAYLOAD)


@pytest.mark.req("EVT-002")
def test_a_signature_copied_under_a_known_key_id_is_refused() -> None:
    # A forger who knows the real key id but not the key.
    forged = EventSigner("results", Ed25519PrivateKey.generate()).headers(SUBJECT, "e-1",
                                                                          PAYLOAD)
    forged[KEY_ID_HEADER] = RESULTS.key_id

    with pytest.raises(Unverified, match="bad signature"):
        VERIFIER.verify(SUBJECT, forged, PAYLOAD)


@pytest.mark.req("EVT-002")
def test_a_subject_no_service_owns_is_refused() -> None:
    headers = RESULTS.headers("lotgate.audit.v1.entry", "e-1", PAYLOAD)

    with pytest.raises(Unverified, match="may not publish"):
        VERIFIER.verify("lotgate.audit.v1.entry", headers, PAYLOAD)


@pytest.mark.req("EVT-002")
def test_a_header_with_a_line_break_cannot_shift_the_signed_fields() -> None:
    headers = RESULTS.headers(SUBJECT, "e-1", PAYLOAD)
    headers[MSG_ID_HEADER] = "e-1\nresults"

    with pytest.raises(Unverified, match="line break"):
        VERIFIER.verify(SUBJECT, headers, PAYLOAD)


@pytest.mark.req("EVT-002")
def test_a_signature_that_is_not_base64_is_refused() -> None:
    headers = RESULTS.headers(SUBJECT, "e-1", PAYLOAD)
    headers[SIGNATURE_HEADER] = "not base64!"

    with pytest.raises(Unverified, match="not base64"):
        VERIFIER.verify(SUBJECT, headers, PAYLOAD)


# Rotation through the public keys file


def _rewrite(path: Path, *signers: EventSigner) -> None:
    write_public_keys(path, [public_key_entry(s.producer, s.private_key.public_key())
                             for s in signers])


@pytest.mark.req("EVT-003")
def test_the_public_keys_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _rewrite(path, RESULTS)
    verifier = EventVerifier(PublicKeyFile(path))
    new = EventSigner("results", Ed25519PrivateKey.generate())
    old_event = RESULTS.headers(SUBJECT, "old", PAYLOAD)
    new_event = new.headers(SUBJECT, "new", PAYLOAD)

    assert verifier.verify(SUBJECT, old_event, PAYLOAD) == "results"
    with pytest.raises(Unverified, match="unknown key id"):
        verifier.verify(SUBJECT, new_event, PAYLOAD)

    _rewrite(path, RESULTS, new)  # the new key is published beside the old one
    assert verifier.verify(SUBJECT, new_event, PAYLOAD) == "results"
    assert verifier.verify(SUBJECT, old_event, PAYLOAD) == "results"

    _rewrite(path, new)  # the old key is withdrawn
    with pytest.raises(Unverified, match="unknown key id"):
        verifier.verify(SUBJECT, old_event, PAYLOAD)
    assert verifier.verify(SUBJECT, new_event, PAYLOAD) == "results"


@pytest.mark.req("EVT-003")
def test_a_broken_keys_file_keeps_the_keys_read_before(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _rewrite(path, RESULTS)
    verifier = EventVerifier(PublicKeyFile(path))
    event = RESULTS.headers(SUBJECT, "e-1", PAYLOAD)

    path.write_text('{"keys": [{"producer": "results", "public_key": "trunc')
    assert verifier.verify(SUBJECT, event, PAYLOAD) == "results"

    path.write_text('{"keys": [{"producer": "nobody", "public_key": ""}]}')
    assert verifier.verify(SUBJECT, event, PAYLOAD) == "results"


@pytest.mark.req("EVT-003")
def test_a_missing_keys_file_is_refused_at_start(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        PublicKeyFile(tmp_path / "absent.json")


@pytest.mark.req("EVT-003")
def test_development_secrets_sign_and_verify_as_each_service(tmp_path: Path) -> None:
    secrets = DevSecrets(tmp_path / "secrets").ensure()
    verifier = EventVerifier(PublicKeyFile(secrets.public_keys_file))

    for service, subject in (("suppliers", "lotgate.suppliers.v1.qualification_changed"),
                             ("lots", "lotgate.lots.v1.status_changed"),
                             ("results", SUBJECT)):
        headers = secrets.signer(service).headers(subject, "e-1", PAYLOAD)
        assert verifier.verify(subject, headers, PAYLOAD) == service
    # Private keys and passwords are readable by their owner only.
    assert os.stat(secrets.signing_key_file("lots")).st_mode & 0o077 == 0
    assert os.stat(secrets.password_file("admin")).st_mode & 0o077 == 0
    # Made once: a second run keeps the same keys.
    before = secrets.signing_key_file("lots").read_bytes()
    assert DevSecrets(tmp_path / "secrets").ensure().signing_key_file("lots").read_bytes() \
        == before


@pytest.mark.req("EVT-003")
def test_a_service_does_not_start_without_its_signing_key_or_the_public_keys() -> None:
    from shared.config import settings_for
    from shared.runtime import _event_keys

    with pytest.raises(RuntimeError, match="LOTGATE_SIGNING_KEY_FILE and "
                                           "LOTGATE_EVENT_PUBLIC_KEYS_FILE not set"):
        _event_keys(settings_for("lots", signing_key_file="", event_public_keys_file=""))


@pytest.mark.req("EVT-003")
def test_a_service_starts_with_its_development_secrets(tmp_path: Path) -> None:
    from shared.config import settings_for
    from shared.runtime import _event_keys

    secrets = DevSecrets(tmp_path / "secrets").ensure()
    signer, verifier = _event_keys(settings_for("lots", **secrets.service_settings("lots")))

    headers = signer.headers("lotgate.lots.v1.status_changed", "e-1", PAYLOAD)
    assert verifier.verify("lotgate.lots.v1.status_changed", headers, PAYLOAD) == "lots"


def _signed_here_pair(size: int = 10_000) -> tuple[EventSigner, SignedHere]:
    signed_here = SignedHere(size)
    return EventSigner("lots", lots_key, signed_here), signed_here


LOTS_SUBJECT = "lotgate.lots.v1.lot_status_changed"


def test_an_event_signed_in_this_process_is_recognised_without_verifying_it_again() -> None:
    signer, signed_here = _signed_here_pair()
    headers = signer.headers(LOTS_SUBJECT, "e-1", PAYLOAD)
    # A keyring whose key under that id would not verify the signature: only the memo of
    # what this process signed can accept it.
    other = Ed25519PrivateKey.generate().public_key()
    verifier = EventVerifier({signer.key_id: PublicKey("lots", other)}, signed_here=signed_here)

    assert verifier.verify(LOTS_SUBJECT, headers, PAYLOAD) == "lots"
    with pytest.raises(Unverified, match="bad signature"):
        EventVerifier({signer.key_id: PublicKey("lots", other)}).verify(
            LOTS_SUBJECT, headers, PAYLOAD)


@pytest.mark.parametrize("change", [{"payload": PAYLOAD + b"!"}, {"event_id": "e-2"},
                                    {"time": "2026-01-01T00:00:00.000000+00:00"}])
def test_an_own_signature_on_anything_else_is_verified_and_refused(
        change: dict[str, object]) -> None:
    signer, signed_here = _signed_here_pair()
    headers = signer.headers(LOTS_SUBJECT, "e-1", PAYLOAD)
    verifier = EventVerifier(keyring(LOTS), signed_here=signed_here)
    payload = change.get("payload", PAYLOAD)
    if "event_id" in change:
        headers = {**headers, MSG_ID_HEADER: str(change["event_id"])}
    if "time" in change:
        headers = {**headers, TIME_HEADER: str(change["time"])}

    with pytest.raises(Unverified, match="bad signature"):
        verifier.verify(LOTS_SUBJECT, headers, payload)  # type: ignore[arg-type]


def test_an_own_event_under_a_withdrawn_key_is_refused() -> None:
    signer, signed_here = _signed_here_pair()
    headers = signer.headers(LOTS_SUBJECT, "e-1", PAYLOAD)
    verifier = EventVerifier(keyring(RESULTS), signed_here=signed_here)

    with pytest.raises(Unverified, match="unknown key id"):
        verifier.verify(LOTS_SUBJECT, headers, PAYLOAD)


def test_signatures_made_here_are_remembered_up_to_a_bound() -> None:
    signer, signed_here = _signed_here_pair(size=2)
    first = signer.headers(LOTS_SUBJECT, "e-1", PAYLOAD)
    for n in range(2, 4):
        signer.headers(LOTS_SUBJECT, f"e-{n}", PAYLOAD)
    other = Ed25519PrivateKey.generate().public_key()
    verifier = EventVerifier({signer.key_id: PublicKey("lots", other)}, signed_here=signed_here)

    # The oldest is forgotten: it is verified again (here against the wrong key: refused).
    with pytest.raises(Unverified, match="bad signature"):
        verifier.verify(LOTS_SUBJECT, first, PAYLOAD)
    # and the correct keyring still accepts it, by its signature.
    assert EventVerifier(keyring(LOTS), signed_here=signed_here).verify(
        LOTS_SUBJECT, first, PAYLOAD) == "lots"
