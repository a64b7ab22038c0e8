"""The recipe: what a job does to its photo. Part of the contract: the producer validates it when
the job is created (a `RecipeError` naming the field, never a worker failure later), the row stores
it as JSON (`recipe` jsonb; a row without one gets the worker's `DEFAULT_RECIPE`), and the worker
reads it back with `Recipe.from_json`."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

Background = str  # "transparent", "auto" or "#RRGGBB"
OutputFormat = Literal["png", "webp", "jpeg"]

FORMATS: tuple[OutputFormat, ...] = ("png", "webp", "jpeg")
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
HEX_COLOUR = re.compile(r"^#[0-9A-Fa-f]{6}$")
MAX_SIDE = 16384
MAX_PADDING = 4096
MAX_THUMBNAILS = 8
MIN_THUMBNAIL_PX, MAX_THUMBNAIL_PX = 16, 4096


class RecipeError(ValueError):
    """A recipe that cannot be run; `field` names the offending field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"recipe.{field}: {message}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Recipe:
    """`model`: a rembg model name (or a custom name the worker maps to an ONNX file).
    `fallback_model`: the model of the last attempt (or of attempts from `fallback_from_attempt`),
    and of the attempt after a `no_subject` gate failure. `matting`: refine the mask's edge.
    `background`: `transparent`, `auto` (black or white by the subject's luma) or `#RRGGBB`.
    `trim`: crop to the subject's box plus `padding` pixels. `max_size`: bound on the longer
    side. `thumbnails`: longer sides of extra JPEG previews. `min_subject_px`: the subject's box
    must be at least this wide and high (an empty mask always fails)."""

    model: str = "u2netp"
    fallback_model: str | None = None
    matting: bool = False
    background: Background = "transparent"
    format: OutputFormat = "png"
    trim: bool = False
    padding: int = 0
    max_size: int | None = None
    thumbnails: tuple[int, ...] = ()
    min_subject_px: int | None = None
    fallback_from_attempt: int | None = None

    def __post_init__(self) -> None:
        # Accept any iterable of ints for thumbnails (JSON gives lists); store a sorted tuple.
        object.__setattr__(self, "thumbnails", _thumbnails(self.thumbnails))
        _check_model("model", self.model)
        if self.fallback_model is not None:
            _check_model("fallback_model", self.fallback_model)
            if self.fallback_model == self.model:
                raise RecipeError("fallback_model", "must differ from model")
        _check_bool("matting", self.matting)
        _check_bool("trim", self.trim)
        if not isinstance(self.background, str) or not (
            self.background in ("transparent", "auto") or HEX_COLOUR.match(self.background)
        ):
            raise RecipeError(
                "background", f"{self.background!r} is not 'transparent', 'auto' or '#RRGGBB'"
            )
        if self.format not in FORMATS:
            raise RecipeError("format", f"{self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "jpeg" and self.background == "transparent":
            raise RecipeError(
                "format", "jpeg has no transparency: choose background 'auto' or '#RRGGBB'"
            )
        _check_int("padding", self.padding, 0, MAX_PADDING)
        if self.padding and not self.trim:
            raise RecipeError("padding", "only applies with trim=True")
        if self.max_size is not None:
            _check_int("max_size", self.max_size, 16, MAX_SIDE)
        if self.min_subject_px is not None:
            _check_int("min_subject_px", self.min_subject_px, 1, MAX_SIDE)
        if self.fallback_from_attempt is not None:
            _check_int("fallback_from_attempt", self.fallback_from_attempt, 1, 100)
            if self.fallback_model is None:
                raise RecipeError("fallback_from_attempt", "needs a fallback_model")

    @classmethod
    def seed(cls, model: str = "u2netp", fallback_model: str | None = None) -> Recipe:
        """What the system this project replaces does to each photo: matting, the subject on black
        or white by its luma, a 300 px JPEG thumbnail, a 100 px quality gate. It runs u2net with
        `isnet-general-use` as the last attempt's model; u2netp is the default here because its
        weights are the ones every install has (`Recipe.seed("u2net", "isnet-general-use")` is
        theirs, where those weights are fetched)."""
        return cls(
            model=model,
            fallback_model=fallback_model,
            matting=True,
            background="auto",
            thumbnails=(300,),
            min_subject_px=100,
        )

    @property
    def transparent(self) -> bool:
        return self.background == "transparent"

    def to_json(self) -> dict[str, Any]:
        """Every field, thumbnails as a list: what the `recipe` column stores."""
        data = asdict(self)
        data["thumbnails"] = list(self.thumbnails)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | str) -> Recipe:
        """From the column (asyncpg gives jsonb as text, psycopg as a dict) or an API payload.
        Unknown keys are refused by name; missing keys take their defaults."""
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise RecipeError("(json)", f"not JSON: {exc.msg}") from None
        if not isinstance(data, Mapping):
            raise RecipeError("(json)", f"must be an object, not {type(data).__name__}")
        known = {item.name for item in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise RecipeError(unknown[0], f"unknown field (known: {', '.join(sorted(known))})")
        return cls(**data)

    def model_for_attempt(self, attempt: int, max_attempts: int) -> str:
        """The model of attempt `attempt` (1-based): the fallback on the last attempt, or from
        `fallback_from_attempt` when set."""
        if self.fallback_model is None:
            return self.model
        start = self.fallback_from_attempt or max_attempts
        return self.fallback_model if attempt >= start else self.model


def _check_model(name: str, value: object) -> None:
    if not isinstance(value, str) or not MODEL_NAME.match(value):
        raise RecipeError(name, f"{value!r} is not a model name (letters, digits, _ . -)")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise RecipeError(name, f"must be true or false, not {value!r}")


def _check_int(name: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise RecipeError(name, f"must be a whole number from {low} to {high}, not {value!r}")


def _thumbnails(value: object) -> tuple[int, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Iterable):
        raise RecipeError("thumbnails", f"must be a list of sizes, not {value!r}")
    sizes = list(value)
    for size in sizes:
        _check_int("thumbnails", size, MIN_THUMBNAIL_PX, MAX_THUMBNAIL_PX)
    if len(sizes) > MAX_THUMBNAILS:
        raise RecipeError("thumbnails", f"at most {MAX_THUMBNAILS} sizes, got {len(sizes)}")
    if len(set(sizes)) != len(sizes):
        raise RecipeError("thumbnails", f"sizes repeat: {sizes}")
    return tuple(sorted(sizes))
