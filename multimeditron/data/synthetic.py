"""Synthetic medical VQA: X-ray-, fundus- and histology-like images drawn with numpy, with questions (modality,
presence, side, count, multiple choice) whose answers depend on the pixels; deterministic for a seed, balanced answers.
"""
from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from datasets import Dataset, DatasetDict, Features, Value
from PIL import Image, ImageDraw

from multimeditron.data.schema import conversation_features, image_modality, make_row

ATTACHMENT_TOKEN = "<|image|>"
MODALITIES: tuple[str, ...] = ("x-ray", "fundus", "histology")
QUESTION_TYPES: tuple[str, ...] = ("modality", "presence", "side", "count", "multiple_choice")
MAX_COUNT = 3
MC_LETTERS = ("A", "B", "C", "D")
# The answer set of every question type; rows are balanced over it, so a uniform guess scores exactly 1/len.
ANSWERS: dict[str, tuple[str, ...]] = {
    "modality": MODALITIES,
    "presence": ("yes", "no"),
    "side": ("left", "right"),
    "count": tuple(str(n) for n in range(MAX_COUNT + 1)),
    "multiple_choice": MC_LETTERS,
}
CHANCE_LEVELS: dict[str, float] = {qtype: 1.0 / len(answers) for qtype, answers in ANSWERS.items()}
MIN_IMAGE_SIZE = 32  # below this the findings no longer fit (3 non-overlapping nodules in a lung)


@dataclass(frozen=True)
class Finding:
    """How the questions name a modality's finding."""

    singular: str
    plural: str
    where: str
    option: str  # its text as a multiple-choice option


FINDINGS: dict[str, Finding] = {
    "x-ray": Finding("nodule", "nodules", "in the lungs", "a bright round nodule in a lung (chest x-ray)"),
    "fundus": Finding("haemorrhage", "haemorrhages", "on the retina", "dark red haemorrhages on the retina (fundus)"),
    "histology": Finding("purple cell cluster", "purple cell clusters", "in the tissue",
                         "a dense purple cluster of cells (histology)"),
}
NO_FINDING = "no abnormal finding"
MODALITY_QUESTIONS = ("What imaging modality is this: x-ray, fundus or histology?",
                      ("Is this a chest x-ray, a fundus photograph or a histology slide? "
                       "Answer x-ray, fundus or histology."))
MC_OPTIONS: tuple[str, ...] = tuple(FINDINGS[m].option for m in MODALITIES) + (NO_FINDING,)

# The image's own left/right is stated in every side question: for a chest X-ray the image's left is the patient's
# right, and a model (or a reader) must not have to guess which convention the label follows.
SIDE_NOTE = "Left and right mean the image's own left and right as displayed, not the patient's."

Spot = tuple[float, float, float]  # (y, x, radius) of one finding, in pixels
Inside = Callable[[float, float, float], bool]


# ---- drawing primitives -------------------------------------------------------------------------------------------
@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    return yy, xx


def _disc(img: np.ndarray, y: float, x: float, r: float, color: Any, alpha: float = 1.0) -> None:
    """Blend an anti-aliased disc into `img` in place, touching only its bounding box (cheap for small discs)."""
    size = img.shape[0]
    y0, y1 = max(int(y - r - 1), 0), min(int(y + r + 2), size)
    x0, x1 = max(int(x - r - 1), 0), min(int(x + r + 2), size)
    if y0 >= y1 or x0 >= x1:
        return
    yy, xx = np.arange(y0, y1, dtype=np.float32)[:, None], np.arange(x0, x1, dtype=np.float32)[None, :]
    cover = np.clip(r + 0.5 - np.hypot(yy - y, xx - x), 0.0, 1.0)[..., None] * alpha
    patch = img[y0:y1, x0:x1]
    patch += (np.asarray(color, dtype=np.float32) - patch) * cover


def _ellipse(size: int, cy: float, cx: float, ry: float, rx: float, soft: float = 1.0) -> np.ndarray:
    """Coverage in [0, 1] of an axis-aligned ellipse, with a `soft`-pixel edge."""
    yy, xx = _grid(size)
    d = np.sqrt(((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2)
    return np.clip((1.0 - d) * min(rx, ry) / soft + 0.5, 0.0, 1.0)


def _smooth_field(rng: np.random.Generator, size: int, cells: int = 6) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: uneven staining / exposure, so backgrounds are not flat."""
    coarse = Image.fromarray(rng.normal(0.0, 0.5, size=(cells, cells)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)


def _place(rng: np.random.Generator, count: int, size: int, radius: tuple[float, float], inside: Inside,
           side: str | None, gap: float) -> list[Spot]:
    """Rejection-sample `count` non-overlapping findings that satisfy `inside`, all in one image half if `side`."""
    lo, hi = radius
    half = size / 2.0
    for _ in range(50):
        spots: list[Spot] = []
        for _ in range(count):
            for _ in range(400):
                r = float(rng.uniform(lo, hi))
                y, x = (float(v) for v in rng.uniform(0, size, size=2))
                # A side finding lies wholly in its half with a margin, so "left"/"right" is never ambiguous.
                if side == "left" and x + r + gap > half or side == "right" and x - r - gap < half:
                    continue
                if not inside(y, x, r):
                    continue
                if any(math.hypot(y - y2, x - x2) < r + r2 + gap for y2, x2, r2 in spots):
                    continue
                spots.append((y, x, r))
                break
            else:
                break
        if len(spots) == count:
            return spots
        hi = max(lo, hi * 0.9)  # a crowded layout: retry with smaller findings
    raise RuntimeError(f"could not place {count} findings in a {size}px image")


# ---- the three modality styles --------------------------------------------------------------------------------
# Each returns a float32 HxWx3 image (clipped to [0, 255] by `draw_image`). Intensities are chosen so a finding is far from everything else
# that the image holds (X-ray: nodules > 225, everything else < 190; fundus: haemorrhages R < 100, vessels and
# background R > 120, outside the disc R < 30; histology: clusters R < 120, nuclei and stroma R > 140), which is
# what lets a tiny model, and a fixed threshold in the tests, find them at 64 px.
def _xray(rng: np.random.Generator, size: int, count: int, side: str | None) -> np.ndarray:
    s = size / 64.0
    cx = size / 2 + rng.uniform(-2.5, 2.5) * s
    cy = size / 2 + rng.uniform(-2.0, 2.0) * s
    yy, xx = _grid(size)
    grey = np.full((size, size), rng.uniform(15, 35), dtype=np.float32)
    body = _ellipse(size, cy + 4 * s, cx, 0.58 * size, rng.uniform(0.44, 0.48) * size, soft=2 * s)
    grey += body * (rng.uniform(80, 100) - grey)
    # Mediastinum and spine: a bright vertical band between the lungs.
    band = np.clip(1.0 - np.abs(xx - cx) / (rng.uniform(0.07, 0.09) * size), 0.0, 1.0) * (yy > cy - 0.45 * size)
    grey += band * (rng.uniform(135, 155) - grey)
    lungs = []
    for sign in (-1.0, 1.0):
        lung = (cy - rng.uniform(0.0, 0.04) * size, cx + sign * rng.uniform(0.2, 0.22) * size,
                rng.uniform(0.29, 0.33) * size, rng.uniform(0.14, 0.16) * size)
        lungs.append(lung)
        grey += _ellipse(size, *lung, soft=1.5 * s) * (rng.uniform(35, 55) - grey)
    # Ribs: faint arcs sloping down laterally, only visible over the lung fields.
    lung_mask = np.maximum(*(_ellipse(size, *lung) for lung in lungs))
    slope, top = rng.uniform(0.2, 0.4), cy - 0.34 * size
    for k in range(6):
        centre = top + (k + rng.uniform(0.3, 0.7)) * 0.11 * size + slope * np.abs(xx - cx)
        rib = np.clip(1.0 - np.abs(yy - centre) / (0.9 * s), 0.0, 1.0)
        grey += rib * lung_mask * rng.uniform(18, 28)

    def inside(y: float, x: float, r: float) -> bool:
        return any(((y - ly) / (ry - r - s)) ** 2 + ((x - lx) / (rx - r - s)) ** 2 <= 1.0 for ly, lx, ry, rx in lungs)

    img = np.repeat(grey[..., None], 3, axis=2)
    for y, x, r in _place(rng, count, size, (2.8 * s, 4.2 * s), inside, side, gap=2 * s):
        _disc(img, y, x, r, [rng.uniform(235, 255)] * 3)
    # Greyscale noise: the same value in all three channels keeps it an X-ray.
    img += rng.normal(0, rng.uniform(2, 8), size=(size, size, 1)).astype(np.float32)
    return img


def _fundus(rng: np.random.Generator, size: int, count: int, side: str | None) -> np.ndarray:
    s = size / 64.0
    cy, cx = (size / 2 + rng.uniform(-2, 2, size=2) * s).tolist()
    radius = rng.uniform(0.42, 0.47) * size
    yy, xx = _grid(size)
    dist = np.hypot(yy - cy, xx - cx)
    # A hard-edged disc: an anti-aliased rim would add dark-red pixels all around that look like haemorrhages.
    disc = (dist <= radius)[..., None]
    base = np.array([rng.uniform(195, 220), rng.uniform(85, 105), rng.uniform(35, 50)], dtype=np.float32)
    vignette = (1.0 - 0.2 * (dist / radius) ** 2 + 0.04 * _smooth_field(rng, size))[..., None]
    img = np.where(disc, base * vignette, np.float32(rng.uniform(0, 6))).astype(np.float32)
    # The optic disc sits on a random side, independent of every answer.
    od_side = float(rng.choice([-1.0, 1.0]))
    oy, ox = cy + rng.uniform(-0.1, 0.1) * radius, cx + od_side * rng.uniform(0.5, 0.6) * radius
    od_r = rng.uniform(0.075, 0.09) * size
    # Vessels: curved polylines leaving the optic disc, drawn on a mask so they can be clipped to the disc.
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)
    for k in range(int(rng.integers(4, 7))):
        # Start pointing at the centre, fanned upwards or downwards, then arc back: the arcades of a real fundus.
        angle = (math.pi if od_side > 0 else 0.0) + (1 if k % 2 else -1) * rng.uniform(0.5, 1.6)
        turn = (-1 if k % 2 else 1) * rng.uniform(0.04, 0.12)
        points, y, x = [(ox, oy)], oy, ox
        for _ in range(14):
            y, x, angle = y + math.sin(angle) * 0.07 * radius, x + math.cos(angle) * 0.07 * radius, angle + turn
            points.append((x, y))
        draw.line(points, fill=255, width=max(1, round(1.3 * s)))
    vessels = (np.asarray(mask, dtype=np.float32) / 255.0)[..., None] * disc
    vessel_color = np.array([rng.uniform(140, 160), rng.uniform(30, 45), rng.uniform(25, 40)], dtype=np.float32)
    img += vessels * (vessel_color - img)
    _disc(img, oy, ox, od_r, [250, rng.uniform(215, 235), rng.uniform(150, 175)])

    def inside(y: float, x: float, r: float) -> bool:
        return math.hypot(y - cy, x - cx) + r + 2 * s <= radius and math.hypot(y - oy, x - ox) >= r + od_r + 2 * s

    for y, x, r in _place(rng, count, size, (3.0 * s, 4.5 * s), inside, side, gap=2 * s):
        color = [rng.uniform(60, 80), rng.uniform(8, 20), rng.uniform(5, 15)]
        _disc(img, y, x, r * 0.8, color)
        for _ in range(3):  # blot haemorrhages are irregular: a few lobes inside the finding's radius
            a, d = rng.uniform(0, 2 * math.pi), rng.uniform(0.2, 0.45) * r
            _disc(img, y + d * math.sin(a), x + d * math.cos(a), r * 0.5, color)
    noise = rng.normal(0, rng.uniform(2, 6), size=(size, size, 3)).astype(np.float32)
    img += np.where(disc, noise, noise * 0.5)
    return img


def _histology(rng: np.random.Generator, size: int, count: int, side: str | None) -> np.ndarray:
    s = size / 64.0
    base = np.array([rng.uniform(225, 240), rng.uniform(160, 180), rng.uniform(195, 212)], dtype=np.float32)
    img = base + (_smooth_field(rng, size) * 10.0)[..., None]
    img = img.astype(np.float32)
    # Normal nuclei: many small, light-purple dots with random density, size and colour. Dozens per image, so
    # they are drawn by PIL in one layer (fast, hard-edged) rather than one numpy disc at a time.
    nucleus = np.array([rng.uniform(150, 170), rng.uniform(90, 115), rng.uniform(175, 200)])
    n = int(rng.uniform(0.010, 0.016) * size * size)
    centres, radii = rng.uniform(0, size, size=(n, 2)), rng.uniform(1.1, 1.9, size=n) * s
    colors = np.clip(nucleus + rng.normal(0, 5, size=(n, 3)), 0, 255).astype(int)
    layer, mask = Image.new("RGB", (size, size)), Image.new("L", (size, size), 0)
    paint, cover = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    for (y, x), r, color in zip(centres.tolist(), radii.tolist(), colors.tolist()):
        box = (x - r, y - r, x + r, y + r)
        paint.ellipse(box, fill=tuple(color))
        cover.ellipse(box, fill=217)  # 85 % opaque: stain, not paint
    alpha = (np.asarray(mask, dtype=np.float32) / 255.0)[..., None]
    img += (np.asarray(layer, dtype=np.float32) - img) * alpha

    def inside(y: float, x: float, r: float) -> bool:
        margin = r + 2 * s
        return margin <= y <= size - margin and margin <= x <= size - margin

    for y, x, r in _place(rng, count, size, (4.0 * s, 6.0 * s), inside, side, gap=2 * s):
        color = np.array([rng.uniform(75, 95), rng.uniform(20, 40), rng.uniform(115, 140)], dtype=np.float32)
        _disc(img, y, x, r * 0.75, color)
        for _ in range(6):  # a cluster is a clump of packed nuclei: lobes give it an irregular outline
            a, d = rng.uniform(0, 2 * math.pi), rng.uniform(0.4, 0.55) * r
            _disc(img, y + d * math.sin(a), x + d * math.cos(a), rng.uniform(0.4, 0.45) * r, color)
    img += rng.normal(0, rng.uniform(2, 7), size=(size, size, 3)).astype(np.float32)
    return img


DRAW: dict[str, Callable[[np.random.Generator, int, int, str | None], np.ndarray]] = {
    "x-ray": _xray, "fundus": _fundus, "histology": _histology}


def draw_image(rng: np.random.Generator, modality: str, count: int, side: str | None = None,
               image_size: int = 64) -> Image.Image:
    """One RGB image of `modality` with `count` findings (all on the image's `side` half when given)."""
    pixels = DRAW[modality](rng, image_size, count, side)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), mode="RGB")


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)  # noisy images barely compress; favour speed
    return buffer.getvalue()


# ---- questions --------------------------------------------------------------------------------------------------
def _row(rng: np.random.Generator, qtype: str, j: int, image_size: int) -> dict[str, Any]:
    """The `j`-th row of `qtype`: j picks the answer (and the modality) round-robin, which balances the split."""
    choices: list[str] = []
    side: str | None = None
    if qtype == "modality":
        answer = modality = MODALITIES[j % 3]
        count = int(rng.integers(0, MAX_COUNT + 1))
        question = str(rng.choice(MODALITY_QUESTIONS))
    elif qtype == "presence":
        answer, modality = ANSWERS["presence"][j % 2], MODALITIES[(j // 2) % 3]
        count = int(rng.integers(1, MAX_COUNT + 1)) if answer == "yes" else 0
        f = FINDINGS[modality]
        question = str(rng.choice([f"Is there a {f.singular} {f.where}?", f"Does this image show any {f.plural}?"]))
        question += " Answer yes or no."
    elif qtype == "side":
        answer, modality = ANSWERS["side"][j % 2], MODALITIES[(j // 2) % 3]
        count, side = 1, answer
        question = (f"Is the {FINDINGS[modality].singular} on the left or the right side of the image? "
                    f"{SIDE_NOTE} Answer left or right.")
    elif qtype == "count":
        count, modality = j % (MAX_COUNT + 1), MODALITIES[(j // (MAX_COUNT + 1)) % 3]
        answer = str(count)
        f = FINDINGS[modality]
        question = f"How many {f.plural} are visible {f.where}? Answer with a number from 0 to {MAX_COUNT}."
    elif qtype == "multiple_choice":
        # Letter and correct option cycle independently, so both are balanced (letters exactly, per 4 rows).
        letter, correct = j % 4, (j // 4) % 4
        if correct < len(MODALITIES):
            modality, count = MODALITIES[correct], int(rng.integers(1, MAX_COUNT + 1))
        else:
            modality, count = MODALITIES[(j // 16) % 3], 0
        others = [MC_OPTIONS[k] for k in rng.permutation(4) if k != correct]
        choices = others[:letter] + [MC_OPTIONS[correct]] + others[letter:]
        answer = MC_LETTERS[letter]
        lines = "\n".join(f"{MC_LETTERS[k]}. {text}" for k, text in enumerate(choices))
        question = f"Which finding does this image show?\n{lines}\nAnswer with the letter of the correct option."
    else:
        raise ValueError(f"unknown question type {qtype!r}")
    image = draw_image(rng, modality, count, side, image_size)
    return make_row([image_modality(png_bytes(image))],
                    [{"role": "user", "content": f"{ATTACHMENT_TOKEN}\n{question}"},
                     {"role": "assistant", "content": answer}],
                    question_type=qtype, answer=answer, choices=choices, modality=modality)


def features() -> Features:
    """The Arrow features of a synthetic split (the MultiMediset columns plus the evaluation metadata; `modality`:
    the drawn image's, which `eval` reads for the router usage per modality)."""
    return conversation_features({"question_type": Value("string"), "answer": Value("string"),
                                  "choices": [Value("string")], "modality": Value("string")})


def question_cycle(mix: dict[str, int] | None = None) -> list[str]:
    """The order question types take turns in: each type `mix[type]` times per cycle (once each by default)."""
    if mix is None:
        return list(QUESTION_TYPES)
    unknown = sorted(set(mix) - set(QUESTION_TYPES))
    if unknown or any(int(w) != w or w < 0 for w in mix.values()) or not any(mix.values()):
        raise ValueError(f"a question mix maps types of {list(QUESTION_TYPES)} to non-negative integer weights, "
                         f"not all 0; got {mix!r}")
    cycle, left = [], {qtype: int(mix.get(qtype, 0)) for qtype in QUESTION_TYPES}
    while any(left.values()):  # interleaved: count, MC, count, MC, ... rather than runs of one type
        for qtype in QUESTION_TYPES:
            if left[qtype]:
                cycle.append(qtype)
                left[qtype] -= 1
    return cycle


def generate_split(rng: np.random.Generator, num_rows: int, image_size: int = 64,
                   mix: dict[str, int] | None = None) -> Dataset:
    """`num_rows` rows: question types round-robin (each `mix[type]` times per turn, once by default), answers
    round-robin within a type, then shuffled. Every answer of a type occurs equally often when the type's row count
    is a multiple of its answer count (all of them when `num_rows` is a multiple of 60 and there is no mix), and at
    most one row apart otherwise."""
    cycle = question_cycle(mix)
    seen = dict.fromkeys(QUESTION_TYPES, 0)
    rows = []
    for i in range(num_rows):
        qtype = cycle[i % len(cycle)]
        rows.append(_row(rng, qtype, seen[qtype], image_size))
        seen[qtype] += 1
    rows = [rows[k] for k in rng.permutation(num_rows)]
    schema = features()
    # from_dict on columns (not from_list) so that an empty split still carries every column.
    return Dataset.from_dict({name: [row[name] for row in rows] for name in schema}, features=schema)


def check_split_sizes(sizes: dict[str, Any], image_size: Any) -> None:
    """ValueError naming the argument unless every size is a non-negative integer and the image fits the findings."""
    for name, value in sizes.items():
        if int(value) != value or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    if int(image_size) != image_size or image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image_size must be an integer >= {MIN_IMAGE_SIZE}, got {image_size!r}")


def generate_synthetic_vqa(out_dir: str | Path | None, num_train: int, num_test: int, seed: int = 0,
                           image_size: int = 64, train_mix: dict[str, int] | None = None) -> DatasetDict:
    """A `train`/`test` DatasetDict of synthetic medical VQA (see the module docstring); saved to `out_dir` with
    `save_to_disk` when given. The same arguments give the same bytes; train and test use independent streams.
    `train_mix` weights the question types of the train split (see `generate_split`); test asks each type equally."""
    check_split_sizes({"num_train": num_train, "num_test": num_test}, image_size)
    # Two child streams of one seed: test rows never depend on how many train rows were asked for.
    train_seq, test_seq = np.random.SeedSequence(int(seed)).spawn(2)
    dataset = DatasetDict({
        "train": generate_split(np.random.default_rng(train_seq), int(num_train), int(image_size), train_mix),
        "test": generate_split(np.random.default_rng(test_seq), int(num_test), int(image_size)),
    })
    if out_dir is not None:
        dataset.save_to_disk(str(out_dir))
    return dataset


__all__ = ["ANSWERS", "ATTACHMENT_TOKEN", "CHANCE_LEVELS", "FINDINGS", "MC_OPTIONS", "MODALITIES", "NO_FINDING",
           "QUESTION_TYPES", "draw_image", "features", "generate_split", "generate_synthetic_vqa", "png_bytes",
           "question_cycle", "check_split_sizes"]
