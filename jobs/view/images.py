"""PNG bytes for the viewer: renders and example pictures as stored (`png`), heat maps as colour overlays."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from loupe.storage.display import png

#: A perceptual dark-to-bright ramp (black, purple, orange, pale yellow), interpolated to 256 steps.
_STOPS = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)
_RAMP = np.stack([np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_STOPS)), _STOPS[:, c])
                  for c in range(3)], axis=1).astype(np.uint8)


def heatmap_png(values: np.ndarray, scale: float, size: int) -> bytes:
    """An RGBA overlay of `size` px: activation / scale through the colour ramp, transparent where
    the unit is not active (<= 0); NaN (an empty slot) is fully transparent. Nearest-neighbour
    upsampling keeps the cells' boundaries honest."""
    values = np.asarray(values, dtype=np.float64)
    level = np.nan_to_num(values / scale if scale > 0 else np.zeros_like(values), nan=0.0).clip(0.0, 1.0)
    rgba = np.zeros((*values.shape, 4), dtype=np.uint8)
    rgba[..., :3] = _RAMP[(level * 255).astype(np.int64)]
    rgba[..., 3] = (level * 220).astype(np.uint8)
    image = Image.fromarray(rgba, mode="RGBA").resize((size, size), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


__all__ = ["heatmap_png", "png"]
