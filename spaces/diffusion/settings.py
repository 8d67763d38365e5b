"""What makes an image reproducible: its generation settings, their checks, and how they travel inside a PNG.

    settings = Settings(model="stabilityai/sd-turbo", prompt="a cat", steps=4, seed=7, ...)
    settings = check_settings(settings, limits)         # ValueError naming the bad value and the rule
    write_png(image, settings, path)                    # settings in the PNG's text chunks
    read_png_settings(path)                             # -> Settings (ours, or an AUTOMATIC1111 PNG's)

A PNG we write carries the settings twice, in two tEXt chunks: `parameters`, the AUTOMATIC1111 text that many
tools read ("prompt\\nNegative prompt: ...\\nSteps: 4, Sampler: Euler, CFG scale: 0, Seed: 7, Size: 512x512,
Model: ..."), and `playground`, the same as JSON, read first because it round-trips exactly. Each image of a
batch stores its own seed (the batch's seed + its index), so any one of them can be made again alone.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

SCHEDULER_NAMES = ("DDPM", "DDIM", "Euler", "DPM-Solver++")
MAX_STEPS = 100
MAX_BATCH = 8
MAX_GUIDANCE = 30.0
MAX_SIDE = 2048
MAX_PROMPT_CHARACTERS = 2000
MAX_SEED = 2**32 - 1
# Pixels in one call (width x height x batch) above which a CPU run risks its memory (the UNet's attention grows
# with the square of the latent's area): 4 images of 512x512, or one of 1024x1024.
MAX_PIXELS_PER_CALL = 4 * 512 * 512


@dataclass(frozen=True)
class Settings:
    model: str = ""  # the model's label (hub id or local:<name>)
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 4
    guidance: float = 0.0  # classifier-free guidance scale; <= 1 means none (one UNet pass per step)
    seed: int = -1  # -1: a random seed, chosen at check time and then shown
    width: int = 512
    height: int = 512
    scheduler: str = "Euler"
    batch: int = 1

    def for_image(self, index: int) -> Settings:
        """The settings that make image `index` of this batch again on its own."""
        return dataclasses.replace(self, seed=self.seed + index, batch=1)


@dataclass(frozen=True)
class Limits:
    """What the loaded model allows: its text encoder's token window, and whether it ignores guidance."""
    max_tokens: int  # tokens the text encoder reads, start and end tokens included
    turbo: bool  # distilled to run without guidance (sd-turbo, sdxl-turbo)
    native_size: int  # the size it was trained at


def whole_number(value, what: str, low: int, high: int) -> int:
    if value is None or isinstance(value, bool) or int(value) != value or not low <= value <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}, got {value!r}")
    return int(value)


def check_prompt(text: str, what: str, count_tokens, limits: Limits, required: bool) -> str:
    text = (text or "").strip()
    if required and not text:
        raise ValueError(f"Write a {what}: it is what the image is conditioned on.")
    if len(text) > MAX_PROMPT_CHARACTERS:
        raise ValueError(f"The {what} has {len(text):,} characters; the limit is {MAX_PROMPT_CHARACTERS:,}.")
    tokens = count_tokens(text) if text else 0
    if tokens > limits.max_tokens:
        raise ValueError(
            f"The {what} is {tokens} tokens long, and the text encoder reads at most {limits.max_tokens} (its start "
            f"and end tokens included): the rest would be cut off without a word. Shorten it; the Tokens box "
            f"shows where the cut falls.")
    return text


def check_settings(settings: Settings, limits: Limits, count_tokens) -> Settings:
    """The settings with the prompt trimmed, a random seed drawn (seed -1) and guidance off for a turbo model;
    ValueError naming the first bad value. `count_tokens(text)` counts the text encoder's tokens."""
    prompt = check_prompt(settings.prompt, "prompt", count_tokens, limits, required=True)
    negative = check_prompt(settings.negative_prompt, "negative prompt", count_tokens, limits, required=False)
    steps = whole_number(settings.steps, "steps", 1, MAX_STEPS)
    batch = whole_number(settings.batch, "batch size", 1, MAX_BATCH)
    for what, side in (("width", settings.width), ("height", settings.height)):
        side = whole_number(side, what, 8, MAX_SIDE)
        if side % 8:
            raise ValueError(f"{what} must be a multiple of 8 (the VAE shrinks images 8 times), got {side}; "
                             f"try {side // 8 * 8 or 8} or {side // 8 * 8 + 8}")
    if settings.width * settings.height * batch > MAX_PIXELS_PER_CALL:
        raise ValueError(
            f"{batch} image(s) of {settings.width}x{settings.height} is more than this machine's memory allows in "
            f"one call (at most {MAX_PIXELS_PER_CALL:,} pixels: 4 at 512x512, 1 at 1024x1024). Lower the size or "
            f"the batch.")
    if settings.scheduler not in SCHEDULER_NAMES:
        raise ValueError(f"scheduler must be one of {SCHEDULER_NAMES}, got {settings.scheduler!r}")
    guidance = settings.guidance
    if guidance is None or not 0 <= guidance <= MAX_GUIDANCE:
        raise ValueError(f"guidance scale must be from 0 to {MAX_GUIDANCE:g}, got {guidance!r}")
    if limits.turbo:
        guidance = 0.0  # distilled without guidance: a second UNet pass would only cost time and burn colours
    seed = settings.seed
    if seed is None or seed == -1:
        seed = random.randint(0, MAX_SEED - MAX_BATCH)
    seed = whole_number(seed, "seed", 0, MAX_SEED - batch + 1)
    return dataclasses.replace(settings, prompt=prompt, negative_prompt=negative, steps=steps, batch=batch,
                               width=int(settings.width), height=int(settings.height), guidance=float(guidance),
                               seed=seed)


# ---- settings in a PNG ------------------------------------------------------------------------------------


def parameters_text(settings: Settings) -> str:
    """The AUTOMATIC1111 `parameters` text of these settings."""
    lines = [settings.prompt]
    if settings.negative_prompt:
        lines.append(f"Negative prompt: {settings.negative_prompt}")
    lines.append(f"Steps: {settings.steps}, Sampler: {settings.scheduler}, CFG scale: {settings.guidance:g}, "
                 f"Seed: {settings.seed}, Size: {settings.width}x{settings.height}, Model: {settings.model}")
    return "\n".join(lines)


def parse_parameters(text: str) -> Settings:
    """Settings from an AUTOMATIC1111 `parameters` text (ours or theirs); fields it lacks keep our defaults."""
    lines = text.strip().split("\n")
    if not lines or not re.match(r"^Steps: \d", lines[-1]):
        raise ValueError("the PNG's `parameters` text has no 'Steps: ...' line: it was not written by a "
                         "Stable Diffusion tool")
    fields = dict(re.findall(r"\s*([\w ]+): ((?:\"[^\"]*\")|[^,]*)(?:,|$)", lines[-1]))
    body = lines[:-1]
    negative = ""
    for i, line in enumerate(body):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line[len("Negative prompt:"):].strip(), *body[i + 1:]])
            body = body[:i]
            break
    width, height = (int(v) for v in fields.get("Size", "512x512").split("x"))
    return Settings(model=fields.get("Model", ""), prompt="\n".join(body), negative_prompt=negative,
                    steps=int(fields["Steps"]), guidance=float(fields.get("CFG scale", 0)),
                    seed=int(fields.get("Seed", -1)), width=width, height=height,
                    scheduler=sampler_name(fields.get("Sampler", "Euler")))


def sampler_name(name: str) -> str:
    """AUTOMATIC1111's sampler names on ours ("DPM++ 2M" is DPM-Solver++; "Euler a" has no twin here)."""
    known = {"DPM++ 2M": "DPM-Solver++", "DPM++ 2M Karras": "DPM-Solver++", "Euler a": "Euler"}
    return name if name in SCHEDULER_NAMES else known.get(name, "Euler")


def write_png(image, settings: Settings, path: Path) -> Path:
    """Save a PIL image as PNG with its settings in two text chunks (see the module docstring)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("parameters", parameters_text(settings))
    info.add_text("playground", json.dumps(dataclasses.asdict(settings)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_png_settings(path: str | Path) -> Settings:
    """The settings a PNG carries; ValueError when it is not a PNG or carries none."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image_format, text = image.format, dict(image.text if hasattr(image, "text") else image.info)
    except (UnidentifiedImageError, OSError):
        raise ValueError(f"{Path(path).name} is not an image") from None
    if image_format != "PNG":
        raise ValueError(f"{Path(path).name} is a {image_format}, not a PNG: only PNGs carry their settings")
    if "playground" in text:
        try:
            fields = json.loads(text["playground"])
            known = {f.name for f in dataclasses.fields(Settings)}
            return Settings(**{k: v for k, v in fields.items() if k in known})
        except (json.JSONDecodeError, TypeError):
            pass  # damaged: fall back on the text
    if "parameters" in text:
        return parse_parameters(text["parameters"])
    raise ValueError(f"{Path(path).name} carries no generation settings (no `parameters` text chunk)")
