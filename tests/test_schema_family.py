"""The request models of every VACE endpoint against fal's published schemas (``../shared/reference/
fal-vace-family.md``), field for field: name, type, required, nullable, default and range; plus the behaviour the
schema shapes imply (null, empty URLs, required-but-nullable keys)."""

from __future__ import annotations

import pytest
from fal_reference import REFERENCE, compare, load_reference, negative_prompt_default
from pydantic import ValidationError
from server_fixtures import require

from pipelines.schema import (
    INPUT_MODELS,
    InpaintingFunInput,
    InpaintingInput,
    LongReframeInput,
    OutpaintingInput,
    ReframeInput,
    VaceInput,
    VaceTaskInput,
)

# Our deliberate differences from fal's schema, with the reason (the README says the same).
ALLOWED = {"seed": "bounded to 0..2^63-1, the range of a torch generator seed; fal publishes no range"}
# Fields fal does not have: extensions of ours. annotator goes with preprocess, paste_back (long-reframe's) with
# outpainting and reframe.
EXTENSIONS = {"loras", "keep_audio"}


def extensions(rows: dict) -> set[str]:
    """The extensions of an endpoint whose fal fields are ``rows``."""
    return (
        EXTENSIONS
        | ({"annotator"} if "preprocess" in rows else set())
        | ({"paste_back"} if {"expand_ratio", "zoom_factor"} & set(rows) else set())
    )


NOT_SERVED = {"fal-ai/wan-vace-apps/video-edit"}  # an instruction-edit app, not part of this round


@pytest.fixture(scope="module")
def reference() -> dict:
    require(REFERENCE.is_file(), f"fal's schema reference is not at {REFERENCE} (the shared folder beside the repo)")
    return load_reference()


def test_the_reference_parses_into_every_endpoint(reference: dict) -> None:
    """Guards the parser: a format change in the file must not silently shrink what the schema test compares."""
    assert set(reference) - NOT_SERVED == set(INPUT_MODELS) - {"fal-ai/wan-22-vace-fun-a14b"}
    assert len(reference["fal-ai/wan-vace-14b/pose"]) == 31
    assert "preprocess" not in reference["fal-ai/wan-vace-14b/outpainting"]
    assert {"preprocess", "ref_image_urls"} & set(reference["fal-ai/wan-22-vace-fun-a14b/reframe"]) == set()
    base = reference["fal-ai/wan-vace-14b"]
    assert base["task"].default == "depth" and not base["video_url"].required and base["video_url"].nullable
    assert reference["fal-ai/wan-vace-14b/inpainting"]["mask_video_url"].required
    assert not reference["fal-ai/wan-22-vace-fun-a14b/inpainting"]["mask_video_url"].required
    assert reference["fal-ai/wan-vace-apps/long-reframe"]["auto_downsample_min_fps"].default == "6"


@pytest.mark.parametrize("endpoint", sorted(INPUT_MODELS))
def test_each_model_matches_fals_schema_field_for_field(reference: dict, endpoint: str) -> None:
    # fal offers the base endpoint on the 14B app only; the Fun app's is the same model (README: VACE family).
    rows = reference.get(endpoint) or reference["fal-ai/wan-vace-14b"]
    model = INPUT_MODELS[endpoint]
    schema = model.model_json_schema()
    problems = compare(endpoint, schema, rows, negative_prompt_default(REFERENCE.read_text()), ALLOWED)
    extra = set(schema["properties"]) - set(rows) - extensions(rows)
    assert not extra, f"{endpoint}: fields fal does not have: {sorted(extra)}"
    assert not problems, "\n".join(problems)


def test_the_comparison_catches_a_difference(reference: dict) -> None:
    """The check is not vacuous: a changed default, range, requiredness or nullability is reported."""
    schema = ReframeInput.model_json_schema()
    schema["properties"]["zoom_factor"]["maximum"] = 1.0
    schema["properties"]["trim_borders"]["default"] = False
    schema["required"] = [*schema.get("required", []), "prompt"]
    schema["properties"]["first_frame_url"] = {"type": "string"}
    problems = compare(
        "reframe",
        schema,
        reference["fal-ai/wan-vace-14b/reframe"],
        negative_prompt_default(REFERENCE.read_text()),
        ALLOWED,
    )
    assert {p.split(":")[0] for p in problems} == {
        "reframe zoom_factor",
        "reframe trim_borders",
        "reframe prompt",
        "reframe first_frame_url",
    }


def test_required_but_nullable_mask_video_url() -> None:
    """14B inpainting requires the key (null allowed, then mask_image_url is the mask); 2.2-Fun makes it optional."""
    body = {"prompt": "p", "video_url": "v.mp4"}
    with pytest.raises(ValidationError) as missing:
        InpaintingInput.model_validate(body)
    assert missing.value.errors()[0]["loc"] == ("mask_video_url",)
    assert InpaintingInput.model_validate(body | {"mask_video_url": None, "mask_image_url": "m.png"}).mask_image_url
    assert InpaintingFunInput.model_validate(body).mask_video_url is None


def test_base_endpoint_defaults_and_empty_urls() -> None:
    """fal's playground sends ``video_url: ""`` for "no video"; the task defaults to depth."""
    inp = VaceTaskInput.model_validate({"prompt": "a cat", "video_url": "", "mask_image_url": " "})
    assert inp.task == "depth" and inp.video_url is None and inp.mask_image_url is None
    assert inp.media_refs() == []
    with pytest.raises(ValidationError):
        VaceTaskInput.model_validate({"prompt": "a cat", "task": "canny"})


def test_null_means_the_default_where_fal_allows_null() -> None:
    inp = VaceInput.model_validate({"prompt": "p", "video_url": "v", "frames_per_second": None, "acceleration": None})
    assert (inp.frames_per_second, inp.acceleration) == (16, "regular")
    with pytest.raises(ValidationError):
        VaceInput.model_validate({"prompt": "p", "video_url": "v", "num_frames": None})


def test_reframe_and_outpainting_fields() -> None:
    reframe = ReframeInput.model_validate({"video_url": "v"})
    assert reframe.prompt == "" and reframe.match_input_num_frames and reframe.match_input_frames_per_second
    assert reframe.trim_borders and reframe.zoom_factor == 0
    assert not ReframeInput.model_fields.keys() & {"preprocess", "ref_image_urls", "annotator"}
    with pytest.raises(ValidationError):
        ReframeInput.model_validate({"video_url": "v", "zoom_factor": 0.95})
    # The override of a default leaves the shared definition alone.
    assert not VaceInput.model_validate({"prompt": "p", "video_url": "v"}).match_input_num_frames
    out = OutpaintingInput.model_validate({"prompt": "p", "video_url": "v"})
    assert not (out.expand_left or out.expand_right or out.expand_top or out.expand_bottom)
    assert out.expand_ratio == 0.25 and "preprocess" not in OutpaintingInput.model_fields
    long = LongReframeInput.model_validate({"video_url": "v"})
    assert long.enable_auto_downsample and long.auto_downsample_min_fps == 6 and long.paste_back
    assert not LongReframeInput.model_fields.keys() & {"num_frames", "first_frame_url", "num_interpolated_frames"}


def test_media_refs_cover_the_new_url_fields() -> None:
    inp = InpaintingInput.model_validate(
        {
            "prompt": "p",
            "video_url": "https://e/v.mp4",
            "mask_video_url": "https://e/m.mp4",
            "mask_image_url": "https://e/m.png",
            "ref_image_urls": ["https://e/r.png"],
        }
    )
    assert inp.media_refs() == [
        ("video_url", "https://e/v.mp4"),
        ("mask_video_url", "https://e/m.mp4"),
        ("mask_image_url", "https://e/m.png"),
        (("ref_image_urls", 0), "https://e/r.png"),
    ]
