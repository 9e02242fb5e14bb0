"""fixed_numerics: the render's thread count and cuDNN flags hold inside, and are restored after, even on error."""

import pytest
import torch

from loupe.pipeline.featurevis import fixed_numerics


def test_settings_hold_inside_and_are_restored_even_on_error():
    saved = torch.get_num_threads()
    cudnn = torch.backends.cudnn
    before = (cudnn.deterministic, cudnn.benchmark)
    try:
        torch.set_num_threads(2)
        cudnn.benchmark = True
        with pytest.raises(RuntimeError, match="boom"):
            with fixed_numerics(1):
                assert torch.get_num_threads() == 1
                assert cudnn.deterministic and not cudnn.benchmark
                raise RuntimeError("boom")
        assert torch.get_num_threads() == 2 and cudnn.benchmark and cudnn.deterministic == before[0]
    finally:
        torch.set_num_threads(saved)
        cudnn.deterministic, cudnn.benchmark = before
