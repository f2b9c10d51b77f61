"""fit_once(fc, now): what fc.fit(now) leaves, fitting only what no test in this worker fitted yet.

Tests fitted the same model on the same minutes again and again (test_forecaster: six tests, two models; a fit is 2-4 s
of CPU). The same inputs fit the same model (one seed for each member), to the last bit but its fit_seconds. The key
is the whole fit job (its minutes, calendar, horizons, stride, held-out days, time and the model it follows): a test
whose data or settings differ gets a fit of its own. A test file hands it out through a module-scoped fixture, so that
conftest keeps the tests that use it on one worker; the fits are kept here, not in the fixture, as a worker that runs
another file's test between two of them sets the fixture up again."""
from __future__ import annotations

import hashlib
import pickle

from forecaster import DemandForecaster, model

_FITTED: dict[bytes, bytes] = {}     # the fit job's sha256 -> the model it fitted, pickled


def fit_once(fc: DemandForecaster, now: float) -> DemandForecaster:
    job = fc.fit_job(now)
    assert job is not None
    key = hashlib.sha256(pickle.dumps(job)).digest()
    if key not in _FITTED:
        fc.fit_done(None)       # not fitting after all: fc.fit fits it, as the test did before
        _FITTED[key] = pickle.dumps(fc.fit(now).fitted_model)
        return fc
    # the path fc.fit takes (fit_job, then fit_done with what the job fitted): needs_fit and status read as after it
    fc.fit_done(model.from_blob(_FITTED[key]))
    return fc
