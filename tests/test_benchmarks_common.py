"""The benchmarks' shared helpers (the timings themselves are not unit-tested)."""

import math

from benchmarks import common


def test_cpu_busy_is_a_fraction_and_in_the_load_line():
    busy = common.cpu_busy(0.2)
    assert math.isnan(busy) or 0.0 <= busy <= 1.0
    assert "busy over 1 s" in common.load_str(0.25) and "25%" in common.load_str(0.25)


def test_write_section_replaces_only_its_own_section(tmp_path):
    path = str(tmp_path / "results.md")
    common.write_section("A", "first a", path)
    common.write_section("B", "only b", path)
    common.write_section("A", "second a", path)
    text = open(path).read()
    assert text.startswith(common.HEADER)
    assert "second a" in text and "first a" not in text and "only b" in text
    assert text.index("## A") < text.index("## B")
    assert [p.name for p in tmp_path.iterdir()] == ["results.md"]        # no temporary left
