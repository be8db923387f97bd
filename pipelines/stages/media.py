"""Pictures and videos of frames: reconstruction grids (PNG) and episodes (MP4)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.atomic import atomic_write


def write_reconstruction_grid(grid: np.ndarray, path: Path) -> None:
    """``(rows, N, C, H, W)`` uint8 → one PNG: a row per kind (previous, real next, reconstructed)."""
    import imageio.v3 as iio

    rows, n, c, h, w = grid.shape
    if n == 0:
        image = np.zeros((8, 8, 3), dtype=np.uint8)
    else:
        pad = 2
        image = np.full((rows * (h + pad) + pad, n * (w + pad) + pad, c), 255, dtype=np.uint8)
        for r in range(rows):
            for i in range(n):
                y, x = pad + r * (h + pad), pad + i * (w + pad)
                image[y : y + h, x : x + w] = grid[r, i].transpose(1, 2, 0)
    atomic_write(path, lambda f: f.write(iio.imwrite("<bytes>", image, extension=".png")))


def write_video(frames: np.ndarray, path: Path, fps: int = 15) -> None:
    """``(T, C, H, W)`` uint8 frames → an H.264 MP4 (scaled ×4 with nearest pixels, for viewing)."""
    import imageio.v3 as iio

    video = frames.transpose(0, 2, 3, 1).repeat(4, axis=1).repeat(4, axis=2)
    data = iio.imwrite("<bytes>", video, extension=".mp4", fps=fps, codec="libx264", macro_block_size=1)
    atomic_write(path, lambda f: f.write(data))
