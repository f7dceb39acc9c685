"""ResourceInfo: the property map user code gets for each device."""
from __future__ import annotations

import copy
import pickle

import pytest

from beam_gpu_runner.resources.api import ResourceInfo


def test_properties_read_as_the_repr_shows_them() -> None:
    info = ResourceInfo.of(index=0, uuid="GPU-1234", name="NVIDIA H100 80GB HBM3",
                           **{"memory-total": 80})
    assert repr(info) == ("ResourceInfo(index='0', memory-total='80', "
                          "name='NVIDIA H100 80GB HBM3', uuid='GPU-1234')")
    assert (info.index, info.uuid, info.name) == ("0", "GPU-1234", "NVIDIA H100 80GB HBM3")
    assert info.memory_total == "80"
    assert info.get_property("memory-total") == "80"


def test_missing_properties() -> None:
    bare = ResourceInfo.of(index=2)
    assert bare.name is None and bare.uuid is None    # the standard three: None
    with pytest.raises(AttributeError, match=r"no property 'vendor'; it has 'index'"):
        bare.vendor
    assert not hasattr(bare, "vendor")


def test_still_pickles_copies_and_compares() -> None:
    info = ResourceInfo.of(index=1, uuid="u", name="n")
    assert pickle.loads(pickle.dumps(info)) == info
    assert copy.deepcopy(info) == info and hash(copy.copy(info)) == hash(info)
