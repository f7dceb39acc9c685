"""Every Beam internal the runner relies on still exists in the installed Beam.

One test per internal, named after it: a Beam upgrade that moves one fails
here with the name, where it is used, why, and the Beam version, instead of as
hundreds of failing pipeline tests.
"""
from __future__ import annotations

import pytest

from beam_gpu_runner.bridge.beam import BEAM_VERSION, INTERNALS, Internal


@pytest.mark.parametrize(
    "internal", INTERNALS,
    ids=["%s.%s%s" % (i.module.rsplit(".", 1)[-1], i.name,
                      "." + i.instance_attr if i.instance_attr else "") for i in INTERNALS])
def test_beam_still_has(internal: Internal):
    problem = internal.check()
    assert problem is None, problem


def test_a_missing_name_is_reported_with_the_beam_version():
    gone = Internal("apache_beam.runners.portability.fn_api_runner.execution",
                    "NoSuchBuffer", "tests", "checking the canary's message")
    problem = gone.check()
    assert problem is not None
    assert BEAM_VERSION in problem and "NoSuchBuffer" in problem and "tests" in problem
    unset = Internal("apache_beam.runners.portability.fn_api_runner.execution",
                     "ListBuffer", "tests", "checking the canary's message",
                     instance_attr="_no_such_attribute")
    assert "_no_such_attribute" in (unset.check() or "")


def test_every_internal_is_listed_once():
    keys = [(i.module, i.name, i.instance_attr) for i in INTERNALS]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]
