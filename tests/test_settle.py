"""The one wording of a length of time in the log (bacnet_api.settle.span), which the meter, the VTN, the
forecaster and the schedule share."""
import pytest

from bacnet_api.settle import Flapping, span


@pytest.mark.parametrize("seconds, said", [
    (5, "5 s"), (119.4, "119 s"),
    (3610, "60 min"),                            # a clock stepped back an hour, as the samples showed it
    (7200, "2 h"), (9000, "2.5 h"),
    (86400, "24 h"),                             # a configured period reads as set, not as "24.0 h"
    (50 * 3600, "2.1 days"), (7 * 86400, "7 days"), (400 * 86400, "400 days"),
])
def test_a_length_of_time_reads_at_a_glance(seconds, said):
    assert span(seconds) == said


def test_a_restart_runs_the_settle_period_from_then_in_the_same_fault():
    f = Flapping(60)
    assert f.bad(0.0)
    f.restart(50.0)
    assert (f.open, f.times) == (True, 1)
    assert not f.good(100.0) and f.good(110.0)
