"""routing/bf16_linear.py: the packed bf16 product equals F.linear, and anything it cannot pack
gets F.linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from routing.bf16_linear import packed_linear
from routing.minilm import bf16_supported


@pytest.mark.parametrize("rows", [1, 16, 117, 600])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_equals_f_linear(rows: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(rows)
    w = torch.randn(96, 64, generator=g).bfloat16()
    b = torch.randn(96, generator=g).bfloat16() if bias else None
    x = torch.randn(2, rows, 64, generator=g).bfloat16()  # 3-D, as the encoders call it
    with torch.inference_mode():
        out = packed_linear(w, b)(x)
        ref = F.linear(x, w, b)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


def test_the_packed_path_is_taken_where_bf16_is_native() -> None:
    w = torch.randn(8, 4).bfloat16()
    fn = packed_linear(w, None)
    assert (fn.__name__ == "run") == bf16_supported()


def test_fp32_and_a_failing_pack_fall_back(monkeypatch: pytest.MonkeyPatch) -> None:
    w, b = torch.randn(8, 4), torch.randn(8)
    assert packed_linear(w, b).__name__ == "<lambda>"  # fp32: plain F.linear

    def broken(*_a: object) -> None:
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", broken)
    wb, bb = w.bfloat16(), b.bfloat16()
    fn = packed_linear(wb, bb)
    x = torch.randn(3, 4).bfloat16()
    assert fn.__name__ == "<lambda>"
    torch.testing.assert_close(fn(x), F.linear(x, wb, bb))
