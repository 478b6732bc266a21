"""Test speech made with espeak-ng at test time (no corpus needed): one voice, and two."""

from __future__ import annotations

import subprocess
from pathlib import Path

STUDENT = (
    "The mitochondria is the powerhouse of the cell. Cellular respiration turns glucose "
    "and oxygen into energy, water and carbon dioxide. In the first stage, glycolysis "
    "splits glucose into two molecules of pyruvate. Then the citric acid cycle runs "
    "inside the mitochondria and releases carbon dioxide."
)
HELPER = (
    "Psst, the answer to question four is B. Write down the formula for kinetic energy, "
    "one half m v squared. Then copy my answer for question five, it is twelve joules."
)


def espeak(text: str, voice: str, path: Path, pitch: int = 50, speed: int = 150) -> Path:
    subprocess.run(
        ["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
        check=True,
    )
    return path


def sox(*args: str | Path) -> None:
    subprocess.run(["sox", *map(str, args)], check=True)


def make_voices(directory: Path) -> dict[str, Path]:
    """`one`: the student alone (~40 s); `two`: the student, then a helper, then both."""
    a = espeak(STUDENT, "en+m3", directory / "a.wav", pitch=35)
    b = espeak(HELPER, "en+f4", directory / "b.wav", pitch=85, speed=170)
    one = directory / "one.wav"
    sox(a, a, a, "-r", "48000", "-c", "1", one)
    two = directory / "two.wav"
    sox(a, b, a, b, "-r", "48000", "-c", "1", two)
    return {"one": one, "two": two, "a": a, "b": b}
