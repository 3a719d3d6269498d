"""Hypothesis profiles of the fuzz tests.

``make test`` runs the ``ci`` profile: few examples per property, derandomized (the same
examples on every run, so CI never flakes), no example database.  ``make fuzz`` selects the
``long`` profile (``OPENBITS_FUZZ_PROFILE=long``): random examples, ``OPENBITS_FUZZ_EXAMPLES``
of them per property (20,000 by default), failures kept in ``.hypothesis/`` to be replayed.

The profiles are used only as decorators (``@FUZZ``) of the tests in this directory: loading
one globally would change the settings of every other hypothesis test of the session.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

_EXAMPLES = os.environ.get("OPENBITS_FUZZ_EXAMPLES", "")
_SLOW_OK = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]

settings.register_profile(
    "ci",
    max_examples=int(_EXAMPLES) if _EXAMPLES.isdecimal() else 200,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)
settings.register_profile(
    "long",
    max_examples=int(_EXAMPLES) if _EXAMPLES.isdecimal() else 20_000,
    derandomize=False,
    deadline=None,
    suppress_health_check=_SLOW_OK,
    print_blob=True,
)

#: the settings of every fuzz property: ``@FUZZ`` above ``@given``
FUZZ = settings.get_profile(os.environ.get("OPENBITS_FUZZ_PROFILE", "ci"))
