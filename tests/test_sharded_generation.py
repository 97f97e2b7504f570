"""Gathering sharded weights for generation (ZeRO-3, FSDP), checked at the boundary with fakes."""

import contextlib
import sys
import types

import torch
from accelerate.utils import DistributedType

from hypo.modeling import gathered_for_generation


class FakeAccelerator:
    def __init__(self, kind, zero_stage=None):
        self.distributed_type = kind
        plugin = types.SimpleNamespace(zero_stage=zero_stage) if zero_stage is not None else None
        self.state = types.SimpleNamespace(deepspeed_plugin=plugin)

    def unwrap_model(self, model):
        return getattr(model, "module", model)


def wrapped():
    inner = torch.nn.Linear(2, 2)
    return types.SimpleNamespace(module=inner, parameters=inner.parameters), inner


def test_zero3_gathers_all_parameters_once(monkeypatch):
    events = []

    @contextlib.contextmanager
    def gathered(params, modifier_rank=None):
        events.append(("gather", len(params), modifier_rank))
        yield
        events.append(("release",))

    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=gathered)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    model, inner = wrapped()
    with gathered_for_generation(FakeAccelerator(DistributedType.DEEPSPEED, zero_stage=3), model) as m:
        assert m is inner
        assert events == [("gather", 2, None)]  # weight and bias, read-only
    assert events[-1] == ("release",)


def test_zero2_and_ddp_do_not_gather(monkeypatch):
    monkeypatch.setitem(sys.modules, "deepspeed", None)  # importing it would fail
    model, inner = wrapped()
    for acc in (FakeAccelerator(DistributedType.DEEPSPEED, zero_stage=2),
                FakeAccelerator(DistributedType.MULTI_CPU), FakeAccelerator(DistributedType.NO)):
        with gathered_for_generation(acc, model) as m:
            assert m is inner


def test_fsdp_summons_full_params_without_writeback(monkeypatch):
    from torch.distributed.fsdp import FullyShardedDataParallel

    events = []

    @contextlib.contextmanager
    def summon(module, writeback=True, recurse=True, **kwargs):
        events.append((module, writeback, recurse))
        yield

    monkeypatch.setattr(FullyShardedDataParallel, "summon_full_params", staticmethod(summon))
    model, inner = wrapped()
    with gathered_for_generation(FakeAccelerator(DistributedType.FSDP), model) as m:
        assert m is inner
    assert events == [(model, False, True)]
