"""Who may call what, over real gRPC: authentication, roles, actors, instruments, keys.

The matrix enumerates every RPC from the services' descriptors, so a new RPC is covered
(and refused to everyone until it is in shared/access.py).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from lotgate.audit.v1 import audit_pb2
from lotgate.lots.v1 import lots_pb2, lots_pb2_grpc
from lotgate.results.v1 import results_pb2, results_pb2_grpc
from lotgate.results.v1 import results_pb2 as rpb
from lotgate.signatures.v1 import signatures_pb2
from lotgate.suppliers.v1 import suppliers_pb2
from lotgate_tools.tokens import DevKeys, public_jwk, write_atomically
from shared import access
from shared.runtime import RunningService
from tests.support import auth
from tests.support.results import spec_tests
from tests.support.services import ref, start_in_process
from tests.support.waiting import eventually

pytestmark = pytest.mark.integration

SERVICES = {"suppliers": suppliers_pb2, "lots": lots_pb2, "results": results_pb2}
DENIED = grpc.StatusCode.PERMISSION_DENIED
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED
ADMITTED = grpc.StatusCode.NOT_FOUND


def every_rpc() -> list[tuple[str, MethodDescriptor]]:
    """(service name, method) of every RPC of the three services, each with its own
    AuditService and SignatureService."""
    return [(name, method) for name, module in SERVICES.items()
            for file in (module, audit_pb2, signatures_pb2)
            for service in file.DESCRIPTOR.services_by_name.values()
            for method in service.methods]


@pytest.fixture(scope="module")
async def services(databases, nats_server) -> AsyncIterator[dict[str, RunningService]]:
    started = {name: await start_in_process(name, databases=databases, nats=nats_server)
               for name in SERVICES}
    yield started
    for running in started.values():
        await running.stop()


def request_for(method: MethodDescriptor, instrument_id: str = "") -> object:
    """An empty request of `method`; a result's post names the instrument posting it."""
    request = message_factory.GetMessageClass(method.input_type)()
    if instrument_id and f"{method.containing_service.full_name}/{method.name}" in (
            access.INSTRUMENT_POSTS):
        if method.name == "RecordResults":
            request.results.add(instrument_id=instrument_id)
        else:
            request.instrument_id = instrument_id
    return request


async def call(address: str, method: MethodDescriptor, request: object,
               token: str) -> grpc.StatusCode:
    """The status of one call with `token` ("" for none); a stream's first message is
    enough to know it was let in."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    async with grpc.aio.insecure_channel(address) as channel:
        reply_type = message_factory.GetMessageClass(method.output_type)
        try:
            if method.server_streaming:
                stream = channel.unary_stream(
                    path, request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=reply_type.FromString)(request, metadata=metadata)
                await stream.read()
                stream.cancel()
            else:
                await channel.unary_unary(
                    path, request_serializer=lambda m: m.SerializeToString(),
                    response_deserializer=reply_type.FromString)(request, metadata=metadata)
        except grpc.aio.AioRpcError as error:
            return error.code()
    return grpc.StatusCode.OK


@pytest.mark.req("ACC-001", "ACC-002")
@pytest.mark.parametrize(("service", "method"), every_rpc(),
                         ids=[f"{n}.{m.containing_service.name}.{m.name}"
                              for n, m in every_rpc()])
async def test_every_rpc_admits_exactly_its_roles_and_no_bad_token(
        services: dict[str, RunningService], service: str, method: MethodDescriptor) -> None:
    address = services[service].address
    allowed = access.allowed_roles(f"/{method.containing_service.full_name}/{method.name}")
    wrong: list[str] = []
    for role in access.ROLES:
        instrument = "HPLC-ACCESS" if role == access.INSTRUMENT else ""
        token = auth.token(role, instrument_id=instrument)
        got = await call(address, method, request_for(method, instrument), token)
        if role in allowed and got in (UNAUTHENTICATED, DENIED):
            wrong.append(f"{role}: {got.name}, but the role is allowed")
        if role not in allowed and got != DENIED:
            wrong.append(f"{role}: {got.name}, not PERMISSION_DENIED")
        for kind, bad in auth.bad_tokens(role).items():
            got = await call(address, method, request_for(method, instrument), bad)
            if got != UNAUTHENTICATED:
                wrong.append(f"{role} with {kind}: {got.name}, not UNAUTHENTICATED")

    assert wrong == []


@pytest.mark.req("ACC-002")
async def test_a_denied_caller_is_told_why(services: dict[str, RunningService]) -> None:
    async with auth.channel(services["lots"].address, "warehouse", sub="wms.north") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await lots_pb2_grpc.LotServiceStub(ch).ReleaseLot(lots_pb2.ReleaseLotRequest(
                lot_id="LOT-1", reason="urgent"))

    assert denied.value.code() == DENIED
    assert denied.value.details() == (
        "wms.north (roles: warehouse) may not call lotgate.lots.v1.LotService/ReleaseLot; "
        "it needs one of the roles qa")


@pytest.mark.req("ACC-001")
async def test_an_expired_token_is_unauthenticated_with_the_reason(
        services: dict[str, RunningService]) -> None:
    async with auth.channel(services["lots"].address,
                            token=auth.bad_tokens("qa")["expired"]) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await lots_pb2_grpc.LotServiceStub(ch).ListLots(lots_pb2.ListLotsRequest())

    assert refused.value.code() == UNAUTHENTICATED
    assert refused.value.details() == "the token has expired"


@pytest.mark.req("ACC-002")
async def test_health_is_open_and_reflection_is_on_by_default(
        services: dict[str, RunningService]) -> None:
    async with grpc.aio.insecure_channel(services["suppliers"].address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest())
        listed = [reply async for reply in reflection_pb2_grpc.ServerReflectionStub(
            channel).ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
                list_services="")]))]

    assert health.status == health_pb2.HealthCheckResponse.SERVING
    names = [s.name for s in listed[0].list_services_response.service]
    assert "lotgate.suppliers.v1.SupplierService" in names


@pytest.mark.req("ACC-002")
async def test_reflection_is_off_when_configured_so(databases, nats_server) -> None:
    running = await start_in_process("suppliers", databases=databases, nats=nats_server,
                                     grpc_reflection=False)
    try:
        async with grpc.aio.insecure_channel(running.address) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as off:
                async for _ in reflection_pb2_grpc.ServerReflectionStub(
                        channel).ServerReflectionInfo(iter([
                            reflection_pb2.ServerReflectionRequest(list_services="")])):
                    pass
    finally:
        await running.stop()

    assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.req("SPEC-001", "ACC-003")
async def test_four_eyes_compares_subjects_not_the_names_typed(
        services: dict[str, RunningService]) -> None:
    """One person holding QC and QA may not approve their own draft under another name."""
    material = ref("MAT")
    address = services["results"].address
    async with auth.channel(address, roles=["qc", "qa"], sub="lab.jane") as jane, \
            auth.channel(address, "qa", sub="qa.max") as max_:
        as_jane = results_pb2_grpc.ResultServiceStub(jane)
        drafted = (await as_jane.CreateSpecificationDraft(rpb.CreateSpecificationDraftRequest(
            material_code=material, tests=spec_tests(), change_reason="CC-1"))).specification
        assert drafted.created_by == "lab.jane"  # the subject, though no name was typed

        approval = rpb.ApproveSpecificationRequest(material_code=material,
                                                   version=drafted.version)
        with pytest.raises(grpc.aio.AioRpcError) as other_name:
            await as_jane.ApproveSpecification(rpb.ApproveSpecificationRequest(
                material_code=material, version=drafted.version, approved_by="qa.jane"))
        with pytest.raises(grpc.aio.AioRpcError) as own_name:
            await as_jane.ApproveSpecification(approval)
        approved = (await results_pb2_grpc.ResultServiceStub(max_).ApproveSpecification(
            approval)).specification

    assert other_name.value.code() == DENIED
    assert "approved_by is 'qa.jane' but the caller is 'lab.jane'" in other_name.value.details()
    assert own_name.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "four eyes" in own_name.value.details()
    assert approved.approved_by == "qa.max"


@pytest.mark.req("INS-003")
async def test_an_instrument_posts_only_as_the_instrument_its_token_names(
        services: dict[str, RunningService]) -> None:
    post = rpb.RecordResultRequest(lot_id=ref("LOT"), test=rpb.TEST_KIND_STERILITY,
                                   instrument_id="BACT-OTHER", instrument_result_id=ref("R"),
                                   sterility=rpb.STERILITY_OUTCOME_NO_GROWTH)
    async with auth.channel(services["results"].address, "instrument",
                            instrument_id="BACT-MINE") as ch:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await results_pb2_grpc.ResultServiceStub(ch).RecordResult(post)

    assert denied.value.code() == DENIED
    assert denied.value.details() == (
        "this call comes from instrument BACT-MINE; it may not post results as 'BACT-OTHER'")


@pytest.mark.req("ACC-001")
async def test_a_new_key_is_trusted_and_a_removed_one_refused_without_a_restart(
        databases, nats_server, tmp_path: Path) -> None:
    """Rotation as an operator does it: publish the new key beside the old one, sign with
    it, withdraw the old key once its tokens have expired. The service is not restarted."""
    keys = DevKeys.ensure(tmp_path / "keys")
    keys.issuer, keys.audience = auth.ISSUER, auth.AUDIENCE
    incoming = DevKeys(tmp_path / "incoming", Ed25519PrivateKey.generate(), auth.ISSUER,
                       auth.AUDIENCE)
    running = await start_in_process("suppliers", databases=databases, nats=nats_server,
                                     auth_jwks_file=str(keys.jwks_file))
    method = suppliers_pb2.DESCRIPTOR.services_by_name["SupplierService"].methods_by_name[
        "ListAudits"]

    async def status(token: str) -> grpc.StatusCode:
        """NOT_FOUND (no such supplier) once the call is let in."""
        return await call(running.address, method,
                          suppliers_pb2.ListAuditsRequest(supplier_id="ACME"), token)

    def publish(*trusted: DevKeys) -> None:
        write_atomically(keys.jwks_file, json.dumps(
            {"keys": [public_jwk(k.private) for k in trusted]}))

    try:
        old = keys.mint("auditor.kim", ["auditor"])
        new = incoming.mint("auditor.kim", ["auditor"])
        assert await status(old) == ADMITTED
        assert await status(new) == UNAUTHENTICATED  # not published yet

        publish(keys, incoming)
        assert await status(new) == ADMITTED  # at once: its kid was unknown
        assert await status(old) == ADMITTED

        publish(incoming)  # the old key is withdrawn
        await eventually(lambda: status(old), lambda code: code == UNAUTHENTICATED)
        assert await status(new) == ADMITTED
    finally:
        await running.stop()
