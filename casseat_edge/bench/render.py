"""Drawing helpers for the synthetic benchmark: a scaled PIL canvas, fonts, colours, PNG bytes.

Families draw in a fixed 336 x 336 design space; `Canvas` scales every coordinate, width and font
size to the requested image size, so layouts are written once. Text uses Pillow's built-in font
(`ImageFont.load_default(size=...)`, Pillow >= 10.1), which is embedded in Pillow and therefore
renders the same everywhere; it has no glyphs for "²" or "π", so images never use them.

    canvas = Canvas(336)
    canvas.rectangle((40, 40, 80, 200), fill=COLORS["blue"])
    canvas.text((60, 30), "12", size=18)
    png = canvas.png()
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

from casseat_edge.errors import ConfigError

BASE = 336
Point = tuple[float, float]
RGB = tuple[int, int, int]

# Named colours with clearly distinct hues: their names appear in questions and captions.
COLORS: dict[str, RGB] = {
    "red": (220, 40, 40),
    "blue": (40, 90, 220),
    "green": (30, 160, 60),
    "orange": (245, 140, 20),
    "purple": (140, 60, 180),
    "yellow": (235, 200, 20),
}
BLACK: RGB = (0, 0, 0)
WHITE: RGB = (255, 255, 255)
GREY: RGB = (150, 150, 150)
LIGHT_GREY: RGB = (225, 225, 225)


@functools.lru_cache(maxsize=64)
def font(px: int) -> ImageFont.FreeTypeFont:
    """Pillow's embedded font at `px` pixels; a Pillow without FreeType cannot size it."""
    loaded = ImageFont.load_default(size=px)
    if not isinstance(loaded, ImageFont.FreeTypeFont):
        raise ConfigError(
            "Pillow was built without FreeType; install a standard Pillow wheel >= 10.1"
        )
    return loaded


class Canvas:
    """A white RGB image with drawing methods in 336-unit design coordinates."""

    def __init__(self, size: int, background: RGB = WHITE) -> None:
        self.size = size
        self.scale = size / BASE
        self.image = Image.new("RGB", (size, size), background)
        self._draw = ImageDraw.Draw(self.image)

    def _xy(self, points: Sequence[Point]) -> list[Point]:
        return [(x * self.scale, y * self.scale) for x, y in points]

    def _box(self, box: Sequence[float]) -> list[float]:
        return [v * self.scale for v in box]

    def _w(self, width: float) -> int:
        return max(1, round(width * self.scale))

    def line(self, points: Sequence[Point], fill: RGB = BLACK, width: float = 2) -> None:
        self._draw.line(self._xy(points), fill=fill, width=self._w(width))

    def rectangle(
        self,
        box: Sequence[float],
        fill: RGB | None = None,
        outline: RGB | None = None,
        width: float = 2,
    ) -> None:
        self._draw.rectangle(self._box(box), fill=fill, outline=outline, width=self._w(width))

    def ellipse(
        self,
        box: Sequence[float],
        fill: RGB | None = None,
        outline: RGB | None = None,
        width: float = 2,
    ) -> None:
        self._draw.ellipse(self._box(box), fill=fill, outline=outline, width=self._w(width))

    def circle(
        self,
        center: Point,
        radius: float,
        fill: RGB | None = None,
        outline: RGB | None = None,
        width: float = 2,
    ) -> None:
        x, y = center
        self.ellipse((x - radius, y - radius, x + radius, y + radius), fill, outline, width)

    def polygon(
        self,
        points: Sequence[Point],
        fill: RGB | None = None,
        outline: RGB | None = None,
        width: float = 2,
    ) -> None:
        self._draw.polygon(self._xy(points), fill=fill, outline=outline, width=self._w(width))

    def text(
        self,
        xy: Point,
        text: str,
        size: float = 16,
        fill: RGB = BLACK,
        anchor: str = "mm",
        halo: RGB | None = None,
    ) -> None:
        """Draw `text` anchored at `xy` (PIL anchors: "mm" centre, "lm" left-middle, ...).

        `halo` outlines the glyphs in that colour so text stays legible over lines.
        """
        (x, y), px = self._xy([xy])[0], max(6, round(size * self.scale))
        stroke = self._w(3) if halo else 0
        self._draw.text(
            (x, y),
            text,
            fill=fill,
            font=font(px),
            anchor=anchor,
            stroke_width=stroke,
            stroke_fill=halo,
        )

    def png(self) -> bytes:
        """PNG bytes, reproducible for a given Pillow build (its zlib decides the exact bytes).

        Encoding is most of the generation time: level 3 is ~1.5x faster than the default 6 for
        ~20% larger files, and `optimize=False` skips the extra search passes.
        """
        buffer = io.BytesIO()
        self.image.save(buffer, format="PNG", optimize=False, compress_level=3)
        return buffer.getvalue()
