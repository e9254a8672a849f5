import pytest

from polling.errors import ConfigError
from polling.gatewayfile import load_gateways, parse_gateways

GOOD = {
    "gateways": [
        {
            "name": "boiler-room",
            "host": "10.0.0.12",
            "interval": 10,
            "points": [
                {
                    "name": "supply_temp",
                    "register": "holding",
                    "address": 0,
                    "type": "float32",
                    "order": "ABCD",
                    "scale": 1.0,
                    "offset": 0.0,
                    "unit": "°C",
                    "device_id": 2,
                },
                {
                    "name": "label",
                    "register": "holding",
                    "address": 40,
                    "type": "string",
                    "count": 8,
                },
                {"name": "alarm", "register": "coil", "address": 3},
            ],
        }
    ]
}


def test_defaults_are_filled_in():
    [gateway] = parse_gateways(GOOD)
    assert (gateway.port, gateway.device_id, gateway.timeout, gateway.enabled) == (
        502,
        1,
        3.0,
        True,
    )
    temp, label, alarm = gateway.points
    assert (temp.device_id, temp.width, temp.unit) == (2, 2, "°C")
    assert (label.width, label.count) == (8, 8)
    assert (alarm.type, alarm.width) == ("bool", 1)
    assert (gateway.single_register_write, gateway.multiple_coil_write) == (False, False)


def test_data_rules_are_optional_and_kept():
    temp, label, _ = parse_gateways(_with(point_changes={"min": -5, "max": 90.5, "flatline": 6}))[
        0
    ].points
    assert (temp.min, temp.max, temp.flatline) == (-5.0, 90.5, 6)
    assert (label.min, label.max, label.flatline) == (None, None, None)


def test_default_timeout_never_exceeds_a_short_interval():
    doc = {"gateways": [{**GOOD["gateways"][0], "interval": 0.5}]}
    assert parse_gateways(doc)[0].timeout == 0.5


def _with(gateway_changes=None, point_changes=None, extra_gateway=None):
    gateway = dict(GOOD["gateways"][0], **(gateway_changes or {}))
    gateway["points"] = [
        dict(gateway["points"][0], **(point_changes or {})),
        *gateway["points"][1:],
    ]
    return {"gateways": [gateway] + ([extra_gateway] if extra_gateway else [])}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (
            _with({"interval": "ten"}),
            "gateway 'boiler-room': field 'interval': expected int or float",
        ),
        (_with({"interval": 0}), "field 'interval': must be > 0"),
        (_with({"port": 70000}), "field 'port': must be between 1 and 65535"),
        (_with({"enabled": "yes"}), "field 'enabled': expected bool"),
        (
            _with({"multiple_coil_write": "yes"}),
            "gateway 'boiler-room': field 'multiple_coil_write': expected bool",
        ),
        (_with({"timeout": 20}), "field 'timeout': 20 s is longer than the interval"),
        (_with({"adress": 1}), "field 'adress': unknown field"),
        (
            _with(point_changes={"address": 65535}),
            "point 'supply_temp': field 'address': 65535 + 2 registers runs past 65535",
        ),
        (
            _with(point_changes={"address": -1}),
            "point 'supply_temp': field 'address': must be between",
        ),
        (
            _with(point_changes={"type": "float16"}),
            "point 'supply_temp': field 'type': must be one of",
        ),
        (_with(point_changes={"order": "ABDC"}), "field 'order': must be one of"),
        (_with(point_changes={"register": "coil"}), "coil points hold single bits"),
        (
            _with(point_changes={"type": "string"}),
            "point 'supply_temp': field 'count': is required",
        ),
        (_with(point_changes={"count": 4}), "field 'count': applies to string points only"),
        (_with(point_changes={"name": "label"}), "point 'label': duplicate name"),
        (_with(extra_gateway=GOOD["gateways"][0]), "gateway 'boiler-room': duplicate name"),
        ({"gateways": [{"host": "x"}]}, "gateways[0]: field 'name': is required"),
        ({"gateways": [{"name": 12}]}, "gateways[0]: field 'name': expected a string, got 12"),
        (_with(point_changes={"name": 7}), "points[0]: field 'name': expected a string, got 7"),
        (_with({"host": ""}), "field 'host': is empty: expected an IP address or a DNS name"),
        (_with({"host": "not a host!!"}), "'not a host!!' is not an IP address or a DNS name"),
        (_with({"host": "-meter.site"}), "is not an IP address or a DNS name"),
        (_with({"host": "10.0.0.300"}), "'10.0.0.300' is not a valid IP address"),
        ({"gateway": []}, "expected a top-level 'gateways:' list"),
        (_with(point_changes={"min": "low"}), "point 'supply_temp': field 'min': expected int"),
        (_with(point_changes={"min": 5, "max": 1}), "field 'min': 5 is above max 1"),
        (_with(point_changes={"flatline": 1}), "field 'flatline': must be between 2 and"),
        (_with(point_changes={"flatline": 2.5}), "field 'flatline': expected int, got 2.5"),
        (
            _with(point_changes={"type": "string", "count": 4, "max": 3}),
            "field 'max': applies to numeric points only",
        ),
    ],
)
def test_bad_files_are_refused_naming_the_fault(doc, message):
    with pytest.raises(ConfigError) as info:
        parse_gateways(doc, source="site.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("site.yaml: ")


def test_every_fault_is_reported_one_line_each():
    doc = _with({"port": 0}, {"type": "nope"})
    with pytest.raises(ConfigError) as info:
        parse_gateways(doc, source="site.yaml")
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and all(
        line.startswith("site.yaml: gateway 'boiler-room'") for line in lines
    )


def test_interval_beyond_the_visibility_timeout_is_refused():
    with pytest.raises(ConfigError, match="exceeds the longest allowed, 3600 s"):
        parse_gateways(_with({"interval": 7200, "timeout": 3}), max_interval=3600)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_gateways(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateways: [\n  - name: x\n   host: y\n")
    with pytest.raises(
        ConfigError, match=r"bad.yaml: line 2, column 3: not valid YAML: while parsing a flow node"
    ):
        load_gateways(bad)


@pytest.mark.parametrize("host", ["10.0.0.12", "fe80::1", "meter-7.site.local", "plc_3", "gw."])
def test_hosts_are_ip_addresses_or_dns_names(host):
    (gateway,) = parse_gateways(_with({"host": host}))
    assert gateway.host == host


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ("gateways:\n  - name: café\n".encode("latin-1"), "line 2: not UTF-8 text (byte 0xe9)"),
        (bytes(range(256)), "line 2: not UTF-8 text (byte 0x80)"),
    ],
)
def test_a_file_that_is_not_utf8_is_one_line_naming_the_line(tmp_path, content, said):
    path = tmp_path / "site.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as info:
        load_gateways(path)
    assert str(info.value) == f"{path}: {said}; save it as UTF-8"


def test_a_directory_is_named_as_one(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a gateways file"):
        load_gateways(tmp_path)


def _file_of(tmp_path, n: int):
    import yaml

    document = {
        "gateways": [
            {
                "name": f"gw{i}",
                "host": "10.0.0.1",
                "interval": 10,
                "points": [
                    {"name": f"p{j}", "address": 2 * j, "type": "float32"} for j in range(10)
                ],
            }
            for i in range(n)
        ]
    }
    path = tmp_path / f"fleet{n}.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def test_streaming_a_file_costs_the_memory_of_a_batch_not_of_the_file(tmp_path):
    import tracemalloc

    from polling.gatewayfile import stream_gateways

    peaks = {}
    for n in (200, 2000):
        path = _file_of(tmp_path, n)
        tracemalloc.start()
        seen = sum(len(batch) for batch in stream_gateways(path, batch=100))
        peaks[n] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert seen == n
    assert peaks[2000] < 2 * peaks[200], peaks  # ten times the file, not ten times the memory


def test_anchors_aliases_and_merge_keys_work_across_entries(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(
        "meter: &meter\n  port: 1502\n  interval: 10\n  points: &points\n"
        "    - {name: v, address: 0, type: float32, unit: V}\n"
        "gateways:\n"
        "  - {<<: *meter, name: a, host: 10.0.0.1}\n"
        "  - {name: b, host: 10.0.0.2, interval: 5, points: *points}\n"
    )
    a, b = load_gateways(path)
    assert (a.port, a.interval, [p.name for p in a.points]) == (1502, 10.0, ["v"])
    assert (b.port, b.interval, b.points[0].unit) == (502, 5.0, "V")


def test_a_fault_late_in_a_stream_is_raised_after_the_batches(tmp_path):
    from polling.gatewayfile import stream_gateways

    path = _file_of(tmp_path, 250)
    path.write_text(path.read_text().replace("name: gw240", "name: gw1"))  # a duplicate
    batches = stream_gateways(path, batch=100)
    assert [len(next(batches)), len(next(batches))] == [100, 100]
    with pytest.raises(ConfigError, match="gateway 'gw1': duplicate name"):
        list(batches)
