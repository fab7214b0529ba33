from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from onedistill.compress.qat import (
    disable_fake_quant,
    enable_fake_quant,
    fake_quantize,
    quant_scale,
    quantization_error,
    quantization_loss,
)


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.classifier = nn.Linear(16, 3)

    def forward(self, x):
        return self.classifier(self.encoder(x))


X = torch.randn(8, 16, generator=torch.Generator().manual_seed(1))


def dequantized_copy(model, per_channel=True):
    """A plain float model whose weights are the dequantized INT8 weights."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name in ("0", "2"):
            lin = getattr(ref.encoder, name)
            lin.weight.copy_(fake_quantize(lin.weight, per_channel=per_channel))
    return ref


@pytest.mark.parametrize("per_channel", [True, False])
def test_forward_uses_dequantized_int8_weights(per_channel):
    model = Tiny()
    float_out = model(X)
    handle = enable_fake_quant(model, per_channel=per_channel)
    assert sorted(handle.modules) == ["encoder.0", "encoder.2"]  # classifier stays float
    assert not parametrize.is_parametrized(model.classifier)
    for lin in handle.modules.values():
        w, q = lin.parametrizations.weight.original, lin.weight
        scale = quant_scale(w, per_channel=per_channel)
        assert scale.numel() == (w.shape[0] if per_channel else 1)
        ints = q / scale
        torch.testing.assert_close(ints, ints.round(), atol=1e-4, rtol=0)  # on the grid
        assert ints.abs().max().round() == 127  # symmetric, absmax maps to 127
        assert (q - w).abs().max() <= scale.max() / 2 + 1e-7
    out = model(X)
    torch.testing.assert_close(out, dequantized_copy(Tiny(), per_channel)(X), atol=1e-6, rtol=0)
    assert (out - float_out).abs().max() > 1e-5


def test_straight_through_gradients_reach_master_weights():
    model = Tiny()
    enable_fake_quant(model)
    ref = dequantized_copy(Tiny())
    model(X).pow(2).sum().backward()
    ref(X).pow(2).sum().backward()
    for name in ("0", "2"):
        master = getattr(model.encoder, name).parametrizations.weight.original
        # STE: dL/d(master) == dL/d(quantized weight), computed by the float reference.
        torch.testing.assert_close(master.grad, getattr(ref.encoder, name).weight.grad)
        assert master.grad.abs().max() > 0
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = model.encoder[0].parametrizations.weight.original.detach().clone()
    opt.step()
    assert not torch.equal(model.encoder[0].parametrizations.weight.original, before)


def test_disable_restores_float_model():
    model = Tiny()
    keys = set(model.state_dict())
    float_out = model(X)
    with enable_fake_quant(model) as handle:
        assert (model(X) - float_out).abs().max() > 1e-5
        assert any("parametrizations" in k for k in model.state_dict())
    assert not handle.active and set(model.state_dict()) == keys
    assert not any(parametrize.is_parametrized(m) for m in model.modules())
    torch.testing.assert_close(model(X), float_out, atol=0, rtol=0)
    disable_fake_quant(handle)  # idempotent

    # Training under QAT updates the float master weights, which survive disabling.
    handle = enable_fake_quant(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    model(X).pow(2).sum().backward()
    opt.step()
    master = model.encoder[0].parametrizations.weight.original.detach().clone()
    disable_fake_quant(handle)
    assert torch.equal(model.encoder[0].weight, master)
    assert quantization_error(model) > 0.01  # float weights, not snapped to the grid
    with pytest.raises(RuntimeError, match="already"):
        enable_fake_quant(model)
        enable_fake_quant(model)


def test_quantization_error_in_units_of_the_step():
    model = Tiny()
    err = quantization_error(model)
    assert 0.05 < err < 0.12  # ~1/12 for weights spread evenly between grid points
    loss = quantization_loss(model)
    loss.backward()
    assert model.encoder[0].weight.grad.abs().max() > 0 and model.classifier.weight.grad is None
    with torch.no_grad():
        for lin in (model.encoder[0], model.encoder[2]):
            lin.weight.copy_(fake_quantize(lin.weight))
    assert quantization_error(model) == pytest.approx(0.0, abs=1e-8)
    assert quantization_error(model, skip=("encoder",)) > 0.01  # classifier alone: off-grid
    with torch.no_grad():  # a weight half a step off the grid: error (0.5)^2 in step units
        w = torch.zeros(4, 16)
        w[:, 0] = 127.0
        w[:, 1] = 3.5
        model.encoder[0].weight.copy_(w.repeat(8, 1))
        model.encoder[2].weight.copy_(fake_quantize(torch.randn(16, 32)))
    expected = (4 * 8 * 0.25) / (32 * 16 + 16 * 32)
    assert quantization_error(model) == pytest.approx(expected, rel=1e-5)


def test_matches_onnxruntime_dynamic_int8(tmp_path):
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    lin = nn.Sequential(nn.Linear(16, 8)).eval()
    path = tmp_path / "linear.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lin, (X,), str(path), dynamo=False, input_names=["x"])
    w = lin[0].weight.detach()
    for per_channel in (True, False):
        out = tmp_path / f"q{per_channel}.onnx"
        quantize_dynamic(str(path), str(out), per_channel=per_channel, weight_type=QuantType.QInt8)
        inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(out)).graph.initializer}
        ints = next(v for v in inits.values() if v.dtype == np.int8 and v.ndim == 2)
        scale = next(v for k, v in inits.items() if k.endswith("_scale"))
        ours = torch.round(w / quant_scale(w, per_channel=per_channel))
        np.testing.assert_array_equal(ints.T, ours.numpy().astype(np.int8))
        np.testing.assert_allclose(
            scale.ravel(), quant_scale(w, per_channel=per_channel).numpy().ravel(), rtol=1e-6
        )
