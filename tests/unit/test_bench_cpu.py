"""The benchmark's CPU per result: the services' CPU seconds over a window / results."""

import math

from tests.bench.load import SERVICE_SIDE, cpu_ms_per_item, cpu_ms_text
from tests.bench.phases import Fixture, plates


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
