"""Mutual TLS on the gRPC port: the client certificate names an instrument."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lotgate.results.v1 import results_pb2 as pb
from lotgate.results.v1 import results_pb2_grpc as pb_grpc
from shared.runtime import RunningService
from tests.support import auth
from tests.support.services import ref, start_in_process

pytestmark = pytest.mark.integration


@dataclass
class Issued:
    cert: bytes
    key: bytes


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class Authority:
    """A certificate authority for this test only."""

    def __init__(self, name: str) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        self.cert = self._build(self.name, self.key.public_key(), ca=True).sign(
            self.key, hashes.SHA256())

    def _build(self, subject: x509.Name, public_key: object, *, ca: bool
               ) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(self.name)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + dt.timedelta(days=1))
                .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))

    @property
    def pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, common_name: str, *, server: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = self._build(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]),
                              key.public_key(), ca=False)
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@dataclass
class Setup:
    service: RunningService
    ca: Authority
    instrument: Issued
    stranger: Issued


@pytest.fixture(scope="module")
async def mtls(databases, nats_server, tmp_path_factory) -> AsyncIterator[Setup]:
    folder: Path = tmp_path_factory.mktemp("tls")
    ca = Authority("Lotgate test CA")
    server = ca.issue("results", server=True)
    for name, data in (("server.pem", server.cert), ("server.key", server.key),
                       ("clients-ca.pem", ca.pem)):
        (folder / name).write_bytes(data)
    service = await start_in_process(
        "results", databases=databases, nats=nats_server,
        grpc_tls_cert_file=str(folder / "server.pem"),
        grpc_tls_key_file=str(folder / "server.key"),
        grpc_tls_client_ca_file=str(folder / "clients-ca.pem"))
    yield Setup(service, ca, ca.issue("instrument:HPLC-TLS"),
                Authority("Another CA").issue("instrument:HPLC-TLS"))
    await service.stop()


def tls_channel(setup: Setup, client: Issued | None) -> grpc.aio.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=setup.ca.pem, private_key=client.key if client else None,
        certificate_chain=client.cert if client else None)
    return grpc.aio.secure_channel(setup.service.address, credentials)


def post(instrument_id: str) -> pb.RecordResultRequest:
    return pb.RecordResultRequest(lot_id=ref("LOT"), test=pb.TEST_KIND_STERILITY,
                                  instrument_id=instrument_id, instrument_result_id=ref("R"),
                                  sterility=pb.STERILITY_OUTCOME_NO_GROWTH)


async def status_of(call: object) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code()
    return grpc.StatusCode.OK


@pytest.mark.req("ACC-004", "INS-003")
async def test_an_instrument_certificate_posts_as_that_instrument_only(mtls: Setup) -> None:
    async with tls_channel(mtls, mtls.instrument) as channel:
        stub = pb_grpc.ResultServiceStub(channel)
        as_itself = await status_of(stub.RecordResult(post("HPLC-TLS")))
        with pytest.raises(grpc.aio.AioRpcError) as as_other:
            await stub.RecordResult(post("HPLC-OTHER"))
        # The certificate gives no other role.
        reading = await status_of(stub.ListLotResults(pb.ListLotResultsRequest(lot_id="L")))

    # Let in: the service itself answers (the instrument is not registered).
    assert as_itself not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    assert as_other.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "may not post results as 'HPLC-OTHER'" in as_other.value.details()
    assert reading == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.req("ACC-004")
async def test_a_token_still_names_the_caller_over_mutual_tls(mtls: Setup) -> None:
    token = (("authorization", f"Bearer {auth.token('auditor', 'auditor.kim')}"),)
    async with tls_channel(mtls, mtls.instrument) as channel:
        reading = await status_of(pb_grpc.ResultServiceStub(channel).ListLotResults(
            pb.ListLotResultsRequest(lot_id="L"), metadata=token))

    assert reading not in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@pytest.mark.req("ACC-004")
@pytest.mark.parametrize("client", ["none", "untrusted"])
async def test_without_a_certificate_of_our_authority_no_call_gets_through(
        mtls: Setup, client: str) -> None:
    issued = None if client == "none" else mtls.stranger
    async with tls_channel(mtls, issued) as channel:
        code = await status_of(pb_grpc.ResultServiceStub(channel).RecordResult(
            post("HPLC-TLS"), timeout=10))

    assert code == grpc.StatusCode.UNAVAILABLE
