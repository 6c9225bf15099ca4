"""Where a run report is cut, and that the cut is said: the text report lists
200 decisions and counts the rest (those past the engine's 10,000 included),
and the report a scheduled run leaves in the control plane counts them too."""

from __future__ import annotations

from eco._sync import _report_text
from sidecar.sync import Decision, RunReport
from sidecar.sync.executor import report_struct


def _report(kept: int, truncated: int) -> RunReport:
    return RunReport(
        job="j",
        mode="copy",
        source="file:///a",
        destination="file:///b",
        status="completed",
        decisions=[
            Decision(f"f{i:05d}", "copy-to-destination", "new on the source") for i in range(kept)
        ],
        decisions_truncated=truncated,
    )


def test_the_text_report_counts_what_it_does_not_list() -> None:
    text = _report_text(_report(250, 0))
    assert "f00199" in text and "f00200" not in text
    assert text.splitlines()[-1] == "… and 50 more (-o json lists them all)"
    cut = _report_text(_report(10_000, 1234))
    assert cut.splitlines()[-1] == "… and 11,034 more (-o json lists the first 10,000)"
    assert "more" not in _report_text(_report(200, 0))


def test_a_stored_report_counts_every_decision() -> None:
    stored = report_struct(_report(10_000, 1234))
    assert stored.fields["decisions_total"].number_value == 11_234
    assert stored.fields["decisions_truncated"].number_value == 1234
    assert len(stored.fields["decisions"].list_value.values) == 100
