"""titus-canary without a cell: flags refused with exit 2, the success ratio over its window."""

from __future__ import annotations

import pytest

from canary.main import main
from canary.probe import CanaryMetrics, Outcome, ProbeResult


def test_ratio_is_over_the_window() -> None:
    m = CanaryMetrics(window=2)
    for o in (Outcome.SUCCESS, Outcome.FAILED, Outcome.SUCCESS):
        m.record(ProbeResult(o))
    assert m.registry.get_sample_value("titus_canary_success_ratio") == 0.5
    m.record(ProbeResult(Outcome.UNREACHABLE))
    assert m.registry.get_sample_value("titus_canary_scheduler_unreachable") == 1
    assert m.registry.get_sample_value("titus_canary_probes_total", {"outcome": "success"}) == 2


@pytest.mark.parametrize("argv", [["--interval", "0"], ["--window", "0"], ["--bogus"]])
def test_bad_flags_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "titus-canary: cannot start:" in capsys.readouterr().err
