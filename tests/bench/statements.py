"""SQL statements the services execute per write (not a timing benchmark).

    python -m tests.bench.statements [N]      # DATABASE_URL, else a SQLite file

Counts, with SQLAlchemy's `before_cursor_execute`, the statements the lots service runs
to apply one ResultRecorded that decides a lot, and one QualificationChanged that decides
N lots (10 by default), including the commit's outbox and audit writes (not the inbox's
own bookkeeping). It drives the service through its bootstrap's event handlers and its
gRPC servicer, in process, so that it measures whatever the service's layout is.

And the statements per result of the results service for 32 RecordResult calls in
flight at once (on 4 lots, from 2 instruments), with group commit and without, and of
one more call alone: its gRPC servicer called in process, so that the 32 calls are all
waiting when the first group is taken (the best case; under a closed loop groups are
smaller).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import events_pb2 as result_events
from lotgate.results.v1 import results_pb2
from lotgate.suppliers.v1 import events_pb2 as supplier_events
from lotgate.suppliers.v1 import suppliers_pb2
from services.lots import bootstrap
from services.lots.tables import tables
from shared import migrations
from shared.clock import Clock, ManualClock
from shared.db import make_engine
from shared.protoconv import to_timestamp
from shared.runtime import Infrastructure
from shared.uow import UnitOfWorkFactory

SUPPLIER, SITE, MATERIAL = "SUP-1", "SITE-1", "MAT-1"


def _qualification(status: int, version: int, now: datetime) -> Any:
    q = suppliers_pb2.Qualification(
        supplier_id=SUPPLIER, site_id=SITE, material_code=MATERIAL, status=status,
        version=version, valid_until=to_timestamp(now + timedelta(days=365)))
    return supplier_events.QualificationChanged(event_id=str(uuid.uuid4()), qualification=q)


def _result(lot_id: str, test: int, number: int, now: datetime) -> Any:
    r = results_pb2.Result(
        result_id=f"{lot_id}-R{number}", lot_id=lot_id, material_code=MATERIAL, test=test,
        verdict=results_pb2.VERDICT_PASS, sequence=number, spec_version=1,
        recorded_at=to_timestamp(now), lot_result_number=number,
        state=results_pb2.RESULT_STATE_VALID)
    return result_events.ResultRecorded(event_id=str(uuid.uuid4()), result=r)


@dataclass
class LotsService:
    """The lots service in process, on a migrated database: its unit-of-work factory, the
    inbox's batch handlers of ResultRecorded and QualificationChanged, and its servicer."""

    engine: AsyncEngine
    uow: UnitOfWorkFactory
    on_results: Any
    on_qualifications: Any
    api: Any


async def lots_service(url: str, clock: Clock) -> LotsService:
    await migrations.migrate("lots", url)
    engine = make_engine(url)
    uow = UnitOfWorkFactory(engine, tables.outbox, clock)
    infra = Infrastructure(settings=SimpleNamespace(expiry_check_seconds=3600,
                                                     status_cache_mb=40.0,
                                                     group_commit=True), clock=clock,
                           engine=engine, uow=uow, gate=None)  # type: ignore[arg-type]
    parts = bootstrap.build(infra)
    on_results = next(s.batch_handler for s in parts.subscriptions
                      if s.message_type is result_events.ResultRecorded)
    on_qualifications = next(s.batch_handler for s in parts.subscriptions
                             if s.message_type is supplier_events.QualificationChanged)
    return LotsService(engine, uow, on_results, on_qualifications, _api(parts, infra))


async def measure(url: str, lots: int) -> dict[str, int]:
    clock = ManualClock(datetime(2026, 1, 5, 9, 0, tzinfo=UTC))
    service = await lots_service(url, clock)
    engine, uow, api = service.engine, service.uow, service.api
    on_results, on_qualifications = service.on_results, service.on_qualifications
    now = clock.now()
    await _consume(on_qualifications, uow, [_qualification(
        suppliers_pb2.QUALIFICATION_STATUS_QUALIFIED, 1, now)])
    lot_ids = [f"LOT-{i:03d}" for i in range(lots + 1)]
    for lot_id in lot_ids:
        await api.ReceiveLot(lots_pb2.ReceiveLotRequest(
            lot_id=lot_id, material_code=MATERIAL, supplier_id=SUPPLIER,
            supplier_site_id=SITE, supplier_lot_number="S-1",
            quantity=lots_pb2.Quantity(value=1.0, unit="kg"), container_count=1,
            expiry_date="2027-01-01", requested_by="warehouse"), None)
    decided = lot_ids[0]
    await _consume(on_results, uow, [_result(decided, results_pb2.TEST_KIND_IDENTITY, 1, now),
                             _result(decided, results_pb2.TEST_KIND_PURITY, 2, now)])

    counted: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counted.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        await _consume(on_results, uow, [_result(decided, results_pb2.TEST_KIND_STERILITY, 3, now)])
        one_result = len(counted)
        if os.environ.get("SHOW_STATEMENTS"):
            print("\n".join(" ".join(s.split())[:150] for s in counted))
        counted.clear()
        await _consume(on_qualifications, uow, [_qualification(
            suppliers_pb2.QUALIFICATION_STATUS_SUSPENDED, 2, now)])
        qualification = len(counted)
        if os.environ.get("SHOW_STATEMENTS"):
            print("\n".join(" ".join(s.split())[:150] for s in counted))
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    status = await api.GetReleaseStatus(lots_pb2.GetReleaseStatusRequest(lot_id=decided), None)
    assert status.release_status.status == lots_pb2.LOT_STATUS_RELEASED, status
    await engine.dispose()
    return {"result": one_result, "qualification": qualification}


CONCURRENT_POSTS = 32


class Call:
    """The servicer's call context, as far as the results service reads it."""

    def invocation_metadata(self) -> tuple[()]:
        return ()


async def results_service(url: str, clock: Clock, *, group_commit: bool,
                          instruments: Sequence[str], lot_ids: Sequence[str]
                          ) -> tuple[Any, AsyncEngine]:
    """The results service's servicer on a migrated database, in process: a material's
    specification in force (identity, purity 98-102 %, sterility), the `instruments`
    registered and calibrated, the `lot_ids` known; and its engine, to dispose of after."""
    from lotgate.results.v1 import results_pb2 as rpb
    from services.results import handlers as result_handlers
    from services.results import repository as result_repository
    from services.results.api import ResultApi
    from services.results.domain.results import KnownLot
    from services.results.domain.specifications import approved
    from services.results.tables import tables as result_tables

    await migrations.migrate("results", url)
    engine = make_engine(url)
    uow = UnitOfWorkFactory(engine, result_tables.outbox, clock)
    api = ResultApi(uow, group_commit=group_commit)
    now, today = clock.now(), clock.now().date()
    draft = await api.CreateSpecificationDraft(rpb.CreateSpecificationDraftRequest(
        material_code=MATERIAL, change_reason="first", requested_by="qa.author",
        tests=[rpb.TestCriterion(test=rpb.TEST_KIND_PURITY, method="HPLC", range=rpb.RangeCriterion(
                   lower=rpb.Bound(value=98.0), upper=rpb.Bound(value=102.0), unit="%")),
               rpb.TestCriterion(test=rpb.TEST_KIND_IDENTITY, method="FTIR",
                                 identity=rpb.IdentityCriterion(reference="RS-1")),
               rpb.TestCriterion(test=rpb.TEST_KIND_STERILITY, method="Ph. Eur. 2.6.1",
                                 sterility=rpb.SterilityCriterion(method="membrane"))]), None)
    for instrument_id in instruments:
        await api.RegisterInstrument(rpb.RegisterInstrumentRequest(
            instrument_id=instrument_id, type="HPLC", location="lab",
            calibrated_on=(today - timedelta(days=10)).isoformat(),
            calibration_due=(today + timedelta(days=300)).isoformat(),
            certificate_ref="CAL-1", requested_by="qc.lead"), None)
    async with uow() as unit:
        spec = await result_repository.get_specification(
            unit.conn, material_code=MATERIAL, version=draft.specification.version)
        assert spec is not None
        await result_repository.make_effective(unit.conn, spec=approved(
            spec.spec, approved_by="qa.approver", effective_from=now - timedelta(days=1),
            now=now))
        for lot_id in lot_ids:
            await result_handlers.learn_lot(unit, KnownLot(lot_id, MATERIAL, now))
        await unit.commit()
    return api, engine


async def measure_results(url: str, *, group_commit: bool) -> tuple[float, int]:
    """Statements per result for CONCURRENT_POSTS RecordResult calls at once, and the
    statements of one more call alone (a new result)."""
    from lotgate.results.v1 import results_pb2 as rpb

    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    instruments, lot_ids = ["HPLC-1", "HPLC-2"], [f"LOT-{i}" for i in range(4)]
    api, engine = await results_service(url, clock, group_commit=group_commit,
                                        instruments=instruments, lot_ids=lot_ids)
    now = clock.now()

    requests = [rpb.RecordResultRequest(
        lot_id=lot_ids[n % len(lot_ids)], test=rpb.TEST_KIND_PURITY,
        instrument_id=instruments[n % len(instruments)], instrument_result_id=f"RUN-{n}",
        quantity=rpb.Quantity(value=99.0, unit="%"), measured_at=to_timestamp(now))
        for n in range(CONCURRENT_POSTS)]
    counted: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counted.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        answers = await asyncio.gather(*(api.RecordResult(r, Call()) for r in requests))
        concurrent = len(counted)
        # Then one post alone, of a new result.
        lone = rpb.RecordResultRequest()
        lone.CopyFrom(requests[0])
        lone.instrument_result_id = "RUN-LONE"
        await api.RecordResult(lone, Call())
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
    if os.environ.get("SHOW_STATEMENTS"):
        print("\n".join(" ".join(s.split())[:150] for s in counted))
    numbers = sorted((a.result.lot_id, a.result.lot_result_number) for a in answers)
    assert numbers == sorted((lot, n + 1) for lot in lot_ids
                             for n in range(CONCURRENT_POSTS // len(lot_ids))), numbers
    await engine.dispose()
    return concurrent / CONCURRENT_POSTS, len(counted) - concurrent


async def _consume(handler: Any, uow: UnitOfWorkFactory, events: list[Any]) -> None:
    """What the inbox does around a batch handler: one unit of work, committed."""
    unit = uow()
    async with unit:
        await handler(unit, events)
        await unit.commit()


def _api(parts: Any, infra: Infrastructure) -> Any:
    servers: list[Any] = []

    class Server:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, name: str, handlers: Any) -> None:
            pass

    from lotgate.lots.v1 import lots_pb2_grpc
    original = lots_pb2_grpc.add_LotServiceServicer_to_server

    def capture(servicer: Any, server: Any) -> None:
        servers.append(servicer)

    lots_pb2_grpc.add_LotServiceServicer_to_server = capture
    try:
        parts.register(Server())
    finally:
        lots_pb2_grpc.add_LotServiceServicer_to_server = original
    return servers[0]


def main() -> None:
    lots = int(sys.argv[1]) if len(sys.argv) > 1 else 10
    asyncio.run(_main(lots, os.environ.get("DATABASE_URL")))


async def _main(lots: int, admin_url: str | None) -> None:
    from pathlib import Path

    from tests.support.databases import Databases
    with tempfile.TemporaryDirectory() as tmp:
        databases = Databases(admin_url=admin_url, workdir=Path(tmp))
        try:
            found = await measure(await databases.create("statements"), lots)
            grouped = await measure_results(await databases.create("grouped"),
                                            group_commit=True)
            alone = await measure_results(await databases.create("alone"),
                                          group_commit=False)
        finally:
            await databases.drop_all()
    print(f"statements to apply one ResultRecorded that decides a lot: {found['result']}")
    print(f"statements to apply one QualificationChanged deciding {lots} lots: "
          f"{found['qualification']}")
    print(f"statements per result, {CONCURRENT_POSTS} concurrent RecordResult calls: "
          f"{grouped[0]:.1f} with group commit, {alone[0]:.1f} without")
    print(f"statements of one RecordResult alone (a new result): {grouped[1]}")


if __name__ == "__main__":
    main()
