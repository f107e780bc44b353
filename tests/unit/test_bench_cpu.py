"""The benchmark's CPU per result: the services' CPU seconds over a window / results."""

import asyncio
import math

from lotgate.lots.v1 import lots_pb2
from tests.bench.load import SERVICE_SIDE, WriteWindow, cpu_ms_per_item, cpu_ms_text
from tests.bench.phases import Fixture, expected_states, plates


def test_cpu_per_result_sums_the_services_and_leaves_out_the_driver_and_the_rest():
    seconds = {"results": 4.5, "lots": 1.9, "postgres": 1.6, "nats": 0.4, "suppliers": 0.0,
               "client": 9.0, "foreign": 3.0, "kernel": 2.0, "echo": 1.0}
    total, each = cpu_ms_per_item(seconds, 1000)
    assert math.isclose(total, 8.4)
    assert list(each) == ["results", "lots", "postgres", "nats", "suppliers"]
    assert cpu_ms_text(each) == "results 4.5, lots 1.9, postgres 1.6, nats 0.4, suppliers 0.0"


def test_a_process_not_seen_counts_as_none_and_the_client_can_be_asked_alone():
    total, each = cpu_ms_per_item({"results": 1.0, "client": 0.5}, 500)
    assert math.isclose(total, 2.0)
    assert set(each) == set(SERVICE_SIDE)
    client, _ = cpu_ms_per_item({"results": 1.0, "client": 0.5}, 500, ("client",))
    assert math.isclose(client, 1.0)


def test_no_result_gives_no_number_rather_than_a_division_by_zero():
    total, each = cpu_ms_per_item({"results": 1.0}, 0)
    assert math.isnan(total)
    assert all(math.isnan(ms) for ms in each.values())


def test_a_plate_holds_every_test_of_its_lots_and_a_short_last_plate_is_left_out():
    lots = [f"L{i}" for i in range(7)]
    made = plates(lots, 3)
    assert len(made) == 2
    assert made[0] == [(lot, test) for lot in ("L0", "L1", "L2")
                       for test in ("IDENTITY", "PURITY", "STERILITY")]
    assert all(len(plate) == 9 for plate in made)
    assert {lot for plate in made for lot, _ in plate} == {f"L{i}" for i in range(6)}


def test_lots_of_one_pair_share_one_supplier_and_material_while_the_others_take_turns():
    fixture = Fixture("RUN")
    mixed = fixture.new_lots(8)
    assert {fixture.lots[lot] for lot in mixed} == {fixture.pair(i) for i in range(4)}
    one = fixture.new_lots(5, pair=0)
    assert {fixture.lots[lot] for lot in one} == {fixture.pair(0)}
    assert not set(one) & set(mixed)


def test_a_lot_is_expected_released_with_all_three_results_else_waiting_for_the_rest():
    checks = expected_states({"A": {"IDENTITY", "PURITY", "STERILITY"}, "B": {"IDENTITY"},
                              "C": {"PURITY"}}, failed_lots={"C"})
    assert set(checks) == {"A", "B"}  # C's failed post may or may not be stored
    released_ = lots_pb2.ReleaseStatus(status=lots_pb2.LOT_STATUS_RELEASED)
    waiting = lots_pb2.ReleaseStatus(status=lots_pb2.LOT_STATUS_QUARANTINE, unmet=[
        lots_pb2.UnmetCondition(code="PURITY_MISSING"),
        lots_pb2.UnmetCondition(code="STERILITY_MISSING")])
    assert checks["A"](released_) and not checks["A"](waiting)
    assert checks["B"](waiting) and not checks["B"](released_)


def test_the_write_window_stays_open_until_the_work_is_done_not_only_idle():
    answers = iter([False, False, True])

    async def done() -> bool:
        return next(answers)

    async def run() -> WriteWindow:
        window = WriteWindow({}).open()  # no process to watch: idle at once
        await window.close(done)
        return window

    window = asyncio.run(run())
    assert window.asked == 3
    assert window.closed > 0 and window.text.startswith(("CPU", "WARNING"))
