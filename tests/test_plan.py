from polling.gateways import Point
from polling.plan import plan_requests


def p(name, address, type_="uint16", register="holding", count=None, device_id=None):
    return Point(name, register, address, type_, count=count, device_id=device_id)


def spans(requests):
    return [(r.device_id, r.register, r.address, r.count) for r in requests]


def test_adjacent_registers_merge_into_one_request():
    points = [p("a", 0, "float32"), p("b", 2, "float32"), p("c", 4)]
    assert spans(plan_requests(points, default_device_id=1)) == [(1, "holding", 0, 5)]


def test_near_adjacent_registers_merge_up_to_the_gap():
    points = [p("a", 0), p("b", 9), p("c", 30)]
    # gap between a and b is 8 registers (1..8): merged; c is 20 past b: separate
    assert spans(plan_requests(points, default_device_id=1, max_gap=8)) == [
        (1, "holding", 0, 10),
        (1, "holding", 30, 1),
    ]
    assert len(plan_requests(points, default_device_id=1, max_gap=0)) == 3


def test_requests_never_exceed_125_registers():
    points = [p(f"r{i}", i * 2, "float32") for i in range(100)]  # 200 registers
    requests = plan_requests(points, default_device_id=1)
    assert [r.count for r in requests] == [124, 76]
    assert sum(len(r.points) for r in requests) == 100


def test_bits_merge_up_to_2000():
    points = [p(f"c{i}", i, "bool", "coil") for i in range(2500)]
    requests = plan_requests(points, default_device_id=1)
    assert [r.count for r in requests] == [2000, 500]


def test_devices_and_register_kinds_never_mix():
    points = [
        p("a", 0),
        p("b", 1, register="input"),
        p("c", 1, device_id=2),
        p("d", 2),
        p("e", 3, "bool", "coil"),
    ]
    assert spans(plan_requests(points, default_device_id=1)) == [
        (1, "coil", 3, 1),
        (1, "holding", 0, 3),
        (1, "input", 1, 1),
        (2, "holding", 1, 1),
    ]


def test_overlapping_points_share_registers():
    points = [p("whole", 10, "uint32"), p("high", 10), p("label", 10, "string", count=4)]
    [request] = plan_requests(points, default_device_id=1)
    assert (request.address, request.count, len(request.points)) == (10, 4, 3)


def test_configurable_limit():
    points = [p(f"r{i}", i) for i in range(100)]
    assert [r.count for r in plan_requests(points, default_device_id=1, max_registers=40)] == [
        40,
        40,
        20,
    ]
