"""Token verification, role checks and actor binding, without a server."""

from __future__ import annotations

import http.server
import json
import threading
import time
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import results_pb2
from lotgate_tools.tokens import DevKeys, write_atomically
from shared import auth
from shared.auth import FileKeySet, Principal, TokenVerifier, VerifierConfig
from shared.errors import PermissionDenied, Unauthenticated
from tests.support.auth import AUDIENCE, ISSUER, TEST_KEYS, bad_tokens, token

RELEASE = "/lotgate.lots.v1.LotService/ReleaseLot"
RECORD = "/lotgate.results.v1.ResultService/RecordResult"
RECORD_MANY = "/lotgate.results.v1.ResultService/RecordResults"


def verifier_of(keys: DevKeys) -> TokenVerifier:
    return TokenVerifier(FileKeySet(keys.jwks_file), VerifierConfig(ISSUER, AUDIENCE))


@pytest.fixture
def keys(tmp_path: Path) -> DevKeys:
    made = DevKeys.ensure(tmp_path / "keys")
    made.issuer, made.audience = ISSUER, AUDIENCE
    return made


@pytest.mark.req("ACC-001")
async def test_a_valid_token_gives_its_subject_name_roles_and_instrument() -> None:
    minted = TEST_KEYS.mint("instrument:HPLC-1", ["instrument"], name="HPLC 1",
                            instrument_id="HPLC-1")

    principal = await verifier_of(TEST_KEYS).verify(minted)

    assert principal == Principal("instrument:HPLC-1", "HPLC 1", frozenset({"instrument"}),
                                  "HPLC-1")


@pytest.mark.req("ACC-001")
@pytest.mark.parametrize("kind", [k for k in bad_tokens("qa") if k != "no token"])
async def test_a_bad_token_is_refused_with_the_reason(kind: str) -> None:
    with pytest.raises(Unauthenticated) as refused:
        await verifier_of(TEST_KEYS).verify(bad_tokens("qa")[kind])

    expected = {"expired": "expired", "not yet valid": "not valid yet",
                "wrong audience": "audience", "wrong issuer": "issuer",
                "unknown key": "unknown key", "wrong key": "signature",
                "alg none": "'none' is refused", "HS256": "'HS256' is refused",
                "not a JWT": "not a JWT"}[kind]
    assert expected in refused.value.message


@pytest.mark.req("ACC-001")
async def test_a_token_without_expiry_is_refused() -> None:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "qa.jane", "roles": ["qa"]}
    minted = jwt.encode(claims, TEST_KEYS.private, algorithm="EdDSA",
                        headers={"kid": TEST_KEYS.kid})

    with pytest.raises(Unauthenticated, match="exp"):
        await verifier_of(TEST_KEYS).verify(minted)


@pytest.mark.req("ACC-001")
async def test_es256_keys_are_accepted_too(keys: DevKeys) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    jwk = {**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private.public_key())),
           "kid": "ec-1", "alg": "ES256"}
    write_atomically(keys.jwks_file, json.dumps({"keys": [jwk]}))
    now = int(time.time())
    minted = jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "sub": "qa.idp", "exp": now + 60,
                         "roles": ["qa"]}, private, algorithm="ES256",
                        headers={"kid": "ec-1"})

    assert (await verifier_of(keys).verify(minted)).subject == "qa.idp"


@pytest.mark.req("ACC-001")
async def test_a_key_added_to_the_file_is_used_at_once_and_a_removed_one_is_refused(
        keys: DevKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = verifier_of(keys)
    old = keys.mint("qa.jane", ["qa"])
    assert (await verifier.verify(old)).subject == "qa.jane"

    keys.rotate()  # the file now holds the new key and the old one
    new = keys.mint("qa.jane", ["qa"])
    assert (await verifier.verify(new)).subject == "qa.jane"
    assert (await verifier.verify(old)).subject == "qa.jane"

    keys.rotate(keep_previous=False)  # only the newest key is left
    monkeypatch.setattr(auth, "FILE_CHECK_SECONDS", 0.0)
    with pytest.raises(Unauthenticated, match="unknown key"):
        await verifier.verify(old)


@pytest.mark.req("ACC-002")
def test_a_caller_without_the_role_is_denied_with_the_roles_it_needs() -> None:
    warehouse = Principal("wms", "wms", frozenset({"warehouse"}))

    with pytest.raises(PermissionDenied) as denied:
        auth.authorize(RELEASE, warehouse)

    assert "wms (roles: warehouse) may not call lotgate.lots.v1.LotService/ReleaseLot" in (
        denied.value.message)
    assert "needs one of the roles qa" in denied.value.message


@pytest.mark.req("ACC-002")
def test_an_rpc_not_in_the_table_is_denied_even_to_every_role() -> None:
    everyone = Principal("root", "root", frozenset({"qa", "qc", "admin", "auditor"}))

    with pytest.raises(PermissionDenied, match="not in the access table"):
        auth.authorize("/lotgate.lots.v1.LotService/DropLots", everyone)


@pytest.mark.req("ACC-003")
def test_an_empty_actor_is_the_caller_and_another_name_is_denied() -> None:
    jane = Principal("qa.jane", "Jane", frozenset({"qa"}))
    request = lots_pb2.ReleaseLotRequest(lot_id="LOT-1", reason="ok")

    auth.bind_actor(RELEASE, request, jane)
    assert request.requested_by == "qa.jane"

    with pytest.raises(PermissionDenied, match="nobody acts in another's name"):
        auth.bind_actor(RELEASE, lots_pb2.ReleaseLotRequest(requested_by="qa.max"), jane)


@pytest.mark.req("INS-003")
def test_an_instrument_posts_only_as_itself() -> None:
    hplc = Principal("instrument:HPLC-1", "HPLC-1", frozenset({"instrument"}), "HPLC-1")
    auth.bind_actor(RECORD, results_pb2.RecordResultRequest(instrument_id="HPLC-1"), hplc)

    with pytest.raises(PermissionDenied, match="it may not post results as 'FTIR-1'"):
        auth.bind_actor(RECORD, results_pb2.RecordResultRequest(instrument_id="FTIR-1"), hplc)
    batch = results_pb2.RecordResultsRequest(results=[
        results_pb2.RecordResultRequest(instrument_id="FTIR-1"),
        results_pb2.RecordResultRequest(instrument_id="HPLC-1")])
    with pytest.raises(PermissionDenied):
        auth.bind_actor(RECORD_MANY, batch, hplc)
    # No instrument named: the service's validation refuses it, field by field.
    auth.bind_actor(RECORD, results_pb2.RecordResultRequest(), hplc)
    nameless = Principal("lims", "lims", frozenset({"instrument"}))
    with pytest.raises(PermissionDenied, match="names no instrument_id"):
        auth.bind_actor(RECORD, results_pb2.RecordResultRequest(instrument_id="X"), nameless)


@pytest.mark.req("ACC-001")
@pytest.mark.parametrize("metadata", [(), (("authorization", "Basic dXNlcg=="),),
                                      (("authorization", "Bearer "),)])
def test_a_call_without_a_bearer_token_is_unauthenticated(metadata: tuple) -> None:
    with pytest.raises(Unauthenticated):
        auth.bearer_token(metadata)


@pytest.mark.req("ACC-001")
def test_the_bearer_token_is_read_from_the_authorization_metadata() -> None:
    minted = token("qa", "qa.jane")

    assert auth.bearer_token((("x-request-id", "1"), ("authorization", f"Bearer {minted}"))
                             ) == minted


@pytest.mark.req("ACC-001")
def test_a_service_without_keys_does_not_start() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        auth.gate_from(jwks_file="", jwks_url="", issuer=ISSUER, audience=AUDIENCE,
                       leeway_seconds=0)


@pytest.mark.req("ACC-004")
def test_a_client_certificate_names_an_instrument_or_a_caller_without_roles() -> None:
    assert auth.certificate_principal("instrument:HPLC-1") == Principal(
        "instrument:HPLC-1", "HPLC-1", frozenset({"instrument"}), "HPLC-1")
    assert auth.certificate_principal("lims-bridge").roles == frozenset()


class _Jwks(http.server.BaseHTTPRequestHandler):
    """Serves the JWKS file of the server's `keys`; counts the fetches."""

    def do_GET(self) -> None:
        body = self.server.keys.jwks_file.read_bytes()  # type: ignore[attr-defined]
        self.server.fetches += 1  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.req("ACC-001")
async def test_a_jwks_url_is_cached_and_fetched_again_for_an_unknown_key(
        keys: DevKeys, monkeypatch: pytest.MonkeyPatch) -> None:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Jwks)
    server.keys, server.fetches = keys, 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        verifier = TokenVerifier(auth.UrlKeySet(url), VerifierConfig(ISSUER, AUDIENCE))
        first = keys.mint("qa.jane", ["qa"])
        assert (await verifier.verify(first)).subject == "qa.jane"
        assert (await verifier.verify(keys.mint("qa.max", ["qa"]))).subject == "qa.max"
        assert server.fetches == 1  # type: ignore[attr-defined]

        keys.rotate()
        monkeypatch.setattr(auth, "URL_MIN_REFETCH_SECONDS", 0.0)
        assert (await verifier.verify(keys.mint("qa.jane", ["qa"]))).subject == "qa.jane"
        assert server.fetches == 2  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        thread.join()
