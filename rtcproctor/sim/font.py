"""A 5x7 bitmap font, so the synthetic camera can print a name and the time without numpy or PIL."""

from __future__ import annotations

# Seven rows per glyph, top to bottom; bit 4 is the leftmost column.
_GLYPHS = {
    "0": "0E11131519110E",
    "1": "040C040404040E",
    "2": "0E11010204081F",
    "3": "1F02040201110E",
    "4": "02060A121F0202",
    "5": "1F101E0101110E",
    "6": "0608101E11110E",
    "7": "1F010204080808",
    "8": "0E11110E11110E",
    "9": "0E11110F01020C",
    "A": "0E11111F111111",
    "B": "1E11111E11111E",
    "C": "0E11101010110E",
    "D": "1C12111111121C",
    "E": "1F10101E10101F",
    "F": "1F10101E101010",
    "G": "0E11101711110F",
    "H": "1111111F111111",
    "I": "0E04040404040E",
    "J": "0702020202120C",
    "K": "11121418141211",
    "L": "1010101010101F",
    "M": "111B1515111111",
    "N": "11111915131111",
    "O": "0E11111111110E",
    "P": "1E11111E101010",
    "Q": "0E11111115120D",
    "R": "1E11111E141211",
    "S": "0F10100E01011E",
    "T": "1F040404040404",
    "U": "1111111111110E",
    "V": "11111111110A04",
    "W": "1111111515150A",
    "X": "11110A040A1111",
    "Y": "1111110A040404",
    "Z": "1F01020408101F",
    " ": "00000000000000",
    ":": "000C0C000C0C00",
    ".": "00000000000C0C",
    "-": "0000001F000000",
    "?": "0E110102040004",
}
WIDTH, HEIGHT = 5, 7


def glyph_pixels(char: str) -> list[tuple[int, int]]:
    """The lit (column, row) pixels of one character; unknown characters print as `?`."""
    rows = _GLYPHS.get(char.upper(), _GLYPHS["?"])
    pixels = []
    for row in range(HEIGHT):
        bits = int(rows[2 * row : 2 * row + 2], 16)
        pixels.extend((col, row) for col in range(WIDTH) if bits & (1 << (WIDTH - 1 - col)))
    return pixels


def draw_text(
    plane: bytearray, stride: int, x: int, y: int, text: str, scale: int = 2, value: int = 235
) -> None:
    """Draw into a luma plane; characters past the right edge are dropped."""
    run = bytes([value]) * scale
    advance = (WIDTH + 1) * scale
    rows = len(plane) // stride
    for index, char in enumerate(text):
        left = x + index * advance
        if left + WIDTH * scale > stride:
            break
        for col, row in glyph_pixels(char):
            px = left + col * scale
            for dy in range(scale):
                line = y + row * scale + dy
                if 0 <= line < rows:
                    start = line * stride + px
                    plane[start : start + scale] = run
