"""Pictures for people: frames scaled up, captions, grids, MP4 videos and PNG files.

Frames enter as uint8 ``(C, H, W)`` (stored) or float in [0, 1] (decoded); images leave as uint8
``(H, W, 3)``. Video sizes are multiples of 16 so that every H.264 encoder takes them as they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
MACRO_BLOCK = 16


def to_image(frame: np.ndarray | torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` uint8 or float in [0, 1] → ``(H, W, 3)`` uint8 (grey frames are repeated)."""
    array = frame.detach().cpu().numpy() if isinstance(frame, torch.Tensor) else np.asarray(frame)
    if array.dtype != np.uint8:
        array = (np.clip(array, 0.0, 1.0) * 255).round().astype(np.uint8)
    image = np.moveaxis(array, 0, -1)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image


def upscale(image: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour scaling: every pixel of the 64×64 frames stays visible as a block."""
    return image.repeat(factor, axis=0).repeat(factor, axis=1)


def font(size: int = 12) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def caption(width: int, lines: Sequence[str], size: int = 12, line_height: int = 16) -> np.ndarray:
    """A ``(len(lines)·line_height, width, 3)`` strip of text lines."""
    canvas = Image.new("RGB", (width, max(1, len(lines)) * line_height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for k, line in enumerate(lines):
        draw.text((4, k * line_height + 1), line, fill=TEXT, font=font(size))
    return np.asarray(canvas)


def fit_lines(items: Sequence[str], width: int, size: int = 12, separator: str = "  ") -> list[str]:
    """``items`` joined into as few lines as fit ``width`` pixels (an item wider than that gets a
    line of its own)."""
    measure = font(size)
    lines: list[str] = []
    current = ""
    for item in items:
        candidate = f"{current}{separator}{item}" if current else item
        if current and measure.getlength(candidate) > width - 8:
            lines.append(current)
            current = item
        else:
            current = candidate
    return [*lines, current] if current else lines


def border(image: np.ndarray, color: tuple[int, int, int], width: int = 3) -> np.ndarray:
    """A copy of ``image`` framed in ``color`` (marks terminations)."""
    out = image.copy()
    out[:width], out[-width:], out[:, :width], out[:, -width:] = color, color, color, color
    return out


def hstack(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    height = max(i.shape[0] for i in images)
    spacer = np.full((height, gap, 3), BACKGROUND, np.uint8)
    parts: list[np.ndarray] = []
    for k, image in enumerate(images):
        padded = np.full((height, image.shape[1], 3), BACKGROUND, np.uint8)
        padded[: image.shape[0]] = image
        parts += [spacer, padded] if k else [padded]
    return np.concatenate(parts, axis=1)


def vstack(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    width = max(i.shape[1] for i in images)
    spacer = np.full((gap, width, 3), BACKGROUND, np.uint8)
    parts: list[np.ndarray] = []
    for k, image in enumerate(images):
        padded = np.full((image.shape[0], width, 3), BACKGROUND, np.uint8)
        padded[:, : image.shape[1]] = image
        parts += [spacer, padded] if k else [padded]
    return np.concatenate(parts, axis=0)


def pad_to_macro_block(image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    H, W = -(-h // MACRO_BLOCK) * MACRO_BLOCK, -(-w // MACRO_BLOCK) * MACRO_BLOCK
    out = np.full((H, W, 3), BACKGROUND, np.uint8)
    out[:h, :w] = image
    return out


def write_png(image: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path


def write_mp4(frames: Sequence[np.ndarray], path: Path, fps: float = 5.0) -> Path:
    """One H.264 video; frames of different sizes are padded to the largest."""
    import imageio.v2 as imageio

    assert frames, "a video needs at least one frame"
    height = max(f.shape[0] for f in frames)
    width = max(f.shape[1] for f in frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer: Any = imageio.get_writer(path, fps=fps, codec="libx264", macro_block_size=1, quality=8)
    with writer:
        for frame in frames:
            canvas = np.full((height, width, 3), BACKGROUND, np.uint8)
            canvas[: frame.shape[0], : frame.shape[1]] = frame
            writer.append_data(pad_to_macro_block(canvas))
    return path


def count_video_frames(path: Path) -> int:
    import imageio.v2 as imageio

    reader: Any = imageio.get_reader(path)
    with reader:
        return len([None for _ in reader])
