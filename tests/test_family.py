"""The base endpoint's recipes (``pipelines/family.py``): what ``task`` and the given inputs make of a request."""

from __future__ import annotations

import pytest

from pipelines.errors import InputError
from pipelines.family import base_job, inpainting_mask
from pipelines.masks import MaskRef
from pipelines.schema import InpaintingFunInput, InpaintingInput, VaceTaskInput


def job(**fields):
    return base_job(VaceTaskInput.model_validate({"prompt": "a fox", **fields}))


def test_without_a_video_it_is_text_reference_or_frame_to_video() -> None:
    assert job().recipe == "text" and job().notes == ("no video_url: text-to-video",)
    assert job(video_url="", task="depth").recipe == "text"  # fal's playground: an empty URL and the default task
    assert "reference-to-video" in job(ref_image_urls=["https://e/r.png"]).notes[0]
    assert "first/last-frame" in job(last_frame_url="https://e/l.png").notes[0]


@pytest.mark.parametrize("task", ["pose", "inpainting", "outpainting", "reframe"])
def test_a_task_that_needs_a_video_names_video_url(task) -> None:
    with pytest.raises(InputError) as err:
        job(task=task)
    assert err.value.loc == ("video_url",) and f"task={task}" in err.value.msg


def test_a_mask_without_a_video_is_refused() -> None:
    with pytest.raises(InputError) as err:
        job(mask_video_url="https://e/m.mp4")
    assert err.value.loc == ("mask_video_url",)


def test_inpainting_takes_the_image_over_the_video_as_fal_documents_here() -> None:
    both = job(
        video_url="https://e/v.mp4",
        task="inpainting",
        mask_video_url="https://e/m.mp4",
        mask_image_url="https://e/m.png",
    )
    assert both.mask == MaskRef("mask_image_url", "https://e/m.png") and "mask_video_url is ignored" in both.notes[0]
    assert len(both.notes) == 1  # how the image becomes a mask per frame is the job's to say (tracked or not)
    assert job(video_url="https://e/v.mp4", task="inpainting", mask_video_url="https://e/m.mp4").mask.is_video
    with pytest.raises(InputError) as err:
        job(video_url="https://e/v.mp4", task="inpainting")
    assert err.value.loc == ("mask_video_url",)


def test_other_tasks_run_with_fixed_values_and_ignore_masks() -> None:
    assert job(video_url="https://e/v.mp4").recipe == "depth"
    out = job(video_url="https://e/v.mp4", task="outpainting", mask_image_url="https://e/m.png")
    assert out.recipe == "outpainting" and out.mask is None and len(out.notes) == 2
    assert job(video_url="https://e/v.mp4", task="reframe").recipe == "reframe"
    assert "preprocess is ignored" in job(video_url="https://e/v.mp4", task="reframe", preprocess=True).notes[-1]
    assert job(video_url="https://e/v.mp4", task="pose", preprocess=True).notes == ()


def test_the_inpainting_endpoints_take_the_video_over_the_image() -> None:
    body = {"prompt": "p", "video_url": "https://e/v.mp4", "mask_image_url": "https://e/m.png"}
    mask, notes = inpainting_mask(InpaintingInput.model_validate(body | {"mask_video_url": "https://e/m.mp4"}))
    assert mask.is_video and "mask_image_url is ignored" in notes[0]
    mask, notes = inpainting_mask(InpaintingInput.model_validate(body | {"mask_video_url": None}))
    assert not mask.is_video and notes == ()
    _, notes = inpainting_mask(InpaintingFunInput.model_validate(body | {"preprocess": True}))
    assert "preprocess does nothing" in notes[0]
    with pytest.raises(InputError) as err:
        inpainting_mask(InpaintingFunInput.model_validate({"prompt": "p", "video_url": "https://e/v.mp4"}))
    assert err.value.loc == ("mask_video_url",) and err.value.type == "missing_mask"
