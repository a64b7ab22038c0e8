"""The recipe contract: validation names the field, JSON round-trips, models by attempt."""

from __future__ import annotations

import pytest

from jobcore.recipe import Recipe, RecipeError


def test_defaults_are_todays_behaviour() -> None:
    recipe = Recipe()
    assert recipe.to_json() == {
        "model": "u2netp",
        "fallback_model": None,
        "matting": False,
        "background": "transparent",
        "format": "png",
        "trim": False,
        "padding": 0,
        "max_size": None,
        "thumbnails": [],
        "min_subject_px": None,
        "fallback_from_attempt": None,
    }
    assert recipe.transparent


def test_json_round_trip_and_thumbnails_sorted() -> None:
    recipe = Recipe(
        model="u2net",
        fallback_model="isnet-general-use",
        matting=True,
        background="#1A2b3c",
        format="webp",
        trim=True,
        padding=12,
        max_size=2048,
        thumbnails=[600, 300],  # type: ignore[arg-type]
        min_subject_px=100,
    )
    assert recipe.thumbnails == (300, 600)
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_json('{"matting": true}') == Recipe(matting=True)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"model": "../etc/passwd"}, "model"),
        ({"fallback_model": "u2netp"}, "fallback_model"),
        ({"matting": "yes"}, "matting"),
        ({"background": "red"}, "background"),
        ({"background": "#12345"}, "background"),
        ({"format": "gif"}, "format"),
        ({"format": "jpeg"}, "format"),
        ({"padding": -1, "trim": True}, "padding"),
        ({"padding": 4}, "padding"),
        ({"max_size": 0}, "max_size"),
        ({"thumbnails": [8]}, "thumbnails"),
        ({"thumbnails": [300, 300]}, "thumbnails"),
        ({"thumbnails": "300"}, "thumbnails"),
        ({"min_subject_px": True}, "min_subject_px"),
        ({"fallback_from_attempt": 2}, "fallback_from_attempt"),
    ],
)
def test_invalid_recipes_name_their_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(RecipeError) as caught:
        Recipe(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
    assert str(caught.value).startswith(f"recipe.{field}: ")


def test_unknown_json_field_is_named() -> None:
    with pytest.raises(RecipeError, match=r"recipe\.colour: unknown field"):
        Recipe.from_json({"colour": "#ffffff"})


def test_jpeg_needs_a_solid_background() -> None:
    assert Recipe(format="jpeg", background="auto").format == "jpeg"


@pytest.mark.parametrize(
    ("recipe", "expected"),
    [
        (Recipe(model="u2net"), ["u2net"] * 5),
        (
            Recipe(model="u2net", fallback_model="isnet-general-use"),
            ["u2net"] * 4 + ["isnet-general-use"],
        ),
        (
            Recipe(model="u2net", fallback_model="u2netp", fallback_from_attempt=3),
            ["u2net", "u2net", "u2netp", "u2netp", "u2netp"],
        ),
    ],
)
def test_model_for_attempt(recipe: Recipe, expected: list[str]) -> None:
    assert [recipe.model_for_attempt(n, 5) for n in range(1, 6)] == expected


def test_seed_recipe() -> None:
    seed = Recipe.seed()
    assert (seed.model, seed.fallback_model, seed.matting, seed.background) == (
        "u2netp",
        None,
        True,
        "auto",
    )
    assert (seed.thumbnails, seed.min_subject_px, seed.format) == ((300,), 100, "png")
    theirs = Recipe.seed("u2net", "isnet-general-use")
    assert theirs.model_for_attempt(3, 3) == "isnet-general-use"
    assert Recipe.from_json(theirs.to_json()) == theirs
