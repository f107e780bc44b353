"""The demo scenario: QA qualifies, the warehouse receives, instruments post, Lotgate decides."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from lotgate.lots.v1 import lots_pb2
from lotgate.results.v1 import results_pb2
from lotgate.suppliers.v1 import suppliers_pb2
from lotgate_tools.client import (
    DEFAULT_SITE,
    ConditionNotMet,
    Lotgate,
    identity,
    purity,
    sterility,
)
from lotgate_tools.tokens import TokenSource


async def run_demo(addresses: dict[str, str], tokens: TokenSource) -> int:
    """`tokens` signs each call as the person making it (QA, QC, warehouse, instrument)."""
    run = uuid.uuid4().hex[:4].upper()
    medium, peg = f"CELL-MEDIUM-{run}", f"PEG-4000-{run}"
    acme, nordic = f"ACME-BIO-{run}", f"NORDIC-CHEM-{run}"
    lots = {
        "released": f"LOT-{run}-001",
        "rejected": f"LOT-{run}-002",
        "unqualified": f"LOT-{run}-003",
        "waiting": f"LOT-{run}-004",
    }
    async with Lotgate.connect(addresses, tokens) as lg:
        print(f"QA: qualify {acme} for {medium}; {nordic} is registered but not qualified")
        await lg.qualify(acme, "Acme Biologicals GmbH", medium,
                         datetime.now(UTC) + timedelta(days=365))
        await lg.suppliers.CreateSupplier(suppliers_pb2.CreateSupplierRequest(
            supplier_id=nordic, name="Nordic Chemicals AB", requested_by="qa.demo"))
        print(f"QA: specifications for {medium} and {peg}: identity by FTIR, "
              "purity 98.0-102.0 %, sterility no growth")
        await lg.specify(medium)
        await lg.specify(peg)

        print("QC: register the instruments FTIR-01, HPLC-02 and BACT-03 (calibrated)")
        for instrument, kind in (("FTIR-01", "FTIR"), ("HPLC-02", "HPLC"),
                                 ("BACT-03", "BacT/ALERT")):
            await lg.register_instrument(instrument, type=kind)

        print("Warehouse: receive four lots into quarantine")
        await lg.receive(lots["released"], medium, acme)
        await lg.receive(lots["rejected"], medium, acme)
        await lg.receive(lots["unqualified"], peg, nordic)
        await lg.receive(lots["waiting"], medium, acme)

        print("Instruments: post identity, purity and sterility results")
        lot = lots["released"]
        await lg.post(identity(lot, "FTIR-01", f"{lot}-ID"))
        posted = purity(lot, "HPLC-02", f"{lot}-PUR", 99.4)
        first = await lg.post(posted)
        retried = await lg.post(posted)  # the very same request again, as a retry sends it
        same = retried.result_id == first.result_id
        print(f"  HPLC-02 posted its purity result twice (a retry): same answer {same}, "
              f"result {first.result_id[:8]}... recorded once")
        await lg.post(sterility(lot, "BACT-03", f"{lot}-STE"))

        lot = lots["rejected"]
        await lg.post(identity(lot, "FTIR-01", f"{lot}-ID"))
        await lg.post(purity(lot, "HPLC-02", f"{lot}-PUR", 99.1))
        growth = await lg.post(sterility(lot, "BACT-03", f"{lot}-STE", growth=True))
        print(f"  BACT-03 reports growth in {lot}: out of specification, the lot is on hold")
        await lg.results.ConfirmResult(results_pb2.ConfirmResultRequest(
            result_id=growth.result_id, requested_by="qa.demo",
            reason="OOS investigation INV-1: no laboratory error; growth confirmed"))
        print("  QA: the investigation finds no laboratory error; the failure is confirmed")

        lot = lots["unqualified"]
        await lg.post(identity(lot, "FTIR-01", f"{lot}-ID"))
        await lg.post(purity(lot, "HPLC-02", f"{lot}-PUR", 100.2))
        await lg.post(sterility(lot, "BACT-03", f"{lot}-STE"))

        lot = lots["waiting"]
        await lg.post(identity(lot, "FTIR-01", f"{lot}-ID"))

        # What each lot should end as: its status and the codes of its unmet conditions.
        expected = {
            "released": (lots_pb2.LOT_STATUS_RELEASED, []),
            "rejected": (lots_pb2.LOT_STATUS_REJECTED, ["STERILITY_FAILED"]),
            "unqualified": (lots_pb2.LOT_STATUS_QUARANTINE, ["SUPPLIER_NOT_QUALIFIED"]),
            "waiting": (lots_pb2.LOT_STATUS_QUARANTINE, ["PURITY_MISSING", "STERILITY_MISSING"]),
        }
        print()
        print(f"{'lot':<16} {'status':<11} why not released")
        ok = True
        for role, lot in lots.items():
            want = expected[role]
            try:
                status = await lg.wait_until(
                    lot, lambda s, want=want: (s.status, [u.code for u in s.unmet]) == want)
            except ConditionNotMet as missed:
                status = missed.last  # printed as it is, and the demo reports the miss
            name = lots_pb2.LotStatus.Name(status.status).removeprefix("LOT_STATUS_")
            reasons = "; ".join(f"{u.code}: {u.message} [{u.rule}]" for u in status.unmet) or "-"
            print(f"{lot:<16} {name:<11} {reasons}")
            ok = ok and (status.status, [u.code for u in status.unmet]) == want

        print()
        print(f"QA: a complaint; suspend {acme} (site {DEFAULT_SITE}) for {medium}")
        await lg.suppliers.SuspendQualification(suppliers_pb2.SuspendQualificationRequest(
            supplier_id=acme, site_id=DEFAULT_SITE, material_code=medium,
            reason="complaint CMP-88: particles in two containers", requested_by="qa.demo"))
        want_waiting = ["SUPPLIER_SUSPENDED", "PURITY_MISSING", "STERILITY_MISSING"]
        try:
            waiting = await lg.wait_until(lots["waiting"],
                                          lambda s: [u.code for u in s.unmet] == want_waiting)
        except ConditionNotMet as missed:
            waiting = missed.last
        print(f"  {lots['waiting']} stays in quarantine: "
              f"{', '.join(u.code for u in waiting.unmet)}")
        try:
            reviews = await lg.wait_for_reviews(acme, count=1)
        except ConditionNotMet as missed:
            reviews = missed.last
        released = await lg.status(lots["released"])
        for review in reviews:
            print(f"  {review.lot_id} was released before: it stays "
                  f"{lots_pb2.LotStatus.Name(released.status).removeprefix('LOT_STATUS_')} "
                  f"and is on QA's review list ({review.review_id}, "
                  f"{review.qualification_status})")
        ok = ok and [u.code for u in waiting.unmet] == want_waiting and [
            r.lot_id for r in reviews] == [lots["released"]] and (
            released.status == lots_pb2.LOT_STATUS_RELEASED)
        print()
        print("Demo finished as expected." if ok else "Demo did NOT end as expected.")
        return 0 if ok else 1

