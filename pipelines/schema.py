"""The fal input and output schema of every VACE endpoint, as pydantic models.

This is the single source of truth for field names, defaults and ranges: the CLI builds its flags from it, the
server validates request bodies with it and generates ``/openapi.json`` from it.

fal's VACE endpoints share most fields and differ in a few (``../shared/reference/fal-vace-family.md`` lists them
per endpoint): the base endpoint has ``task`` and an optional video, outpainting and reframe drop ``preprocess``,
reframe drops ``ref_image_urls`` and makes the prompt optional, long-reframe drops the whole timeline. Pydantic
cannot remove a field in a subclass, so the shared fields live in small groups (``GenerationFields``,
``ClipFields``, ``ReferenceFields``, ...) and each endpoint's model is the union of its groups: every field is
defined once, and an endpoint that differs from another in a default (reframe's ``match_input_*``) overrides only
that default (``_with_default``). ``INPUT_MODELS`` maps each fal endpoint id to its model.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from pydantic.fields import FieldInfo

from .errors import Field as FieldLoc
from .fetch import url_scheme

DEFAULT_NEGATIVE_PROMPT = (
    "letterboxing, borders, black bars, bright colors, overexposed, static, blurred details, subtitles, style, "
    "artwork, painting, picture, still, overall gray, worst quality, low quality, JPEG compression residue, ugly, "
    "incomplete, extra fingers, poorly drawn hands, poorly drawn faces, deformed, disfigured, malformed limbs, "
    "fused fingers, still picture, cluttered background, three legs, many people in the background, "
    "walking backwards"
)

Resolution = Literal["auto", "240p", "360p", "480p", "580p", "720p"]
AspectRatio = Literal["auto", "16:9", "1:1", "9:16"]
Sampler = Literal["unipc", "dpm++", "euler"]
Acceleration = Literal["none", "low", "regular"]
VideoQuality = Literal["low", "medium", "high", "maximum"]
VideoWriteMode = Literal["fast", "balanced", "small"]
Interpolator = Literal["rife", "film"]
Annotator = Literal["dwpose", "openpose", "midas", "depth_anything_v2"]
TransparencyMode = Literal["content_aware", "white", "black"]
Expert = Literal["high", "low", "both"]
BaseTask = Literal["depth", "pose", "inpainting", "outpainting", "reframe"]


class LoraWeight(BaseModel):
    """One LoRA of a request, in the shape of fal's Wan 2.2 LoRA endpoints."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(
        ...,
        min_length=1,
        description=(
            "The LoRA (.safetensors): an http(s) URL, a data URI, a file uploaded to this server, or the name of a "
            "LoRA in the server's weights directory (GET /loras lists them); the CLI also takes a local path."
        ),
    )
    scale: float = Field(1.0, ge=-4.0, le=4.0, description="How strongly the LoRA applies; 0 leaves the model as is.")
    transformer: Expert = Field(
        "both",
        description=(
            "Which expert of the two-expert model (wan-22-vace-fun-a14b) gets the LoRA: high (the high-noise "
            "transformer), low (the low-noise transformer_2) or both. The one-expert model takes both or high."
        ),
    )

    @property
    def is_ref(self) -> bool:
        """Whether ``path`` is a URL or data URI (fetched like media) rather than a name or a local path."""
        return len(url_scheme(self.path)) > 1  # one letter is a Windows drive


def _with_default(group: type[BaseModel], name: str, default: Any) -> Any:
    """``group``'s definition of field ``name`` with another default: an endpoint whose fal schema differs from the
    others only in a default (reframe's ``match_input_*``) overrides that, not the field's type, range or text."""
    info: FieldInfo = copy.copy(group.model_fields[name])
    info.default = default
    return info


class VaceFields(BaseModel):
    """What every VACE request model has: unknown fields are ignored (as fal does) and ``media_refs``."""

    model_config = ConfigDict(extra="ignore")

    URL_FIELDS: ClassVar[tuple[str, ...]] = (
        "video_url",
        "mask_video_url",
        "mask_image_url",
        "first_frame_url",
        "last_frame_url",
    )

    def media_refs(self) -> list[tuple[FieldLoc, str]]:
        """Every media reference the request names, with its field location (``("ref_image_urls", i)`` for
        references, ``("loras", i, "path")`` for LoRA URLs): the server checks their schemes and keeps the files
        they point to while the job waits. Fields an endpoint does not have are skipped."""
        refs: list[tuple[FieldLoc, str | None]] = [(name, getattr(self, name, None)) for name in self.URL_FIELDS]
        refs += [(("ref_image_urls", i), url) for i, url in enumerate(getattr(self, "ref_image_urls", None) or [])]
        loras: list[LoraWeight] = getattr(self, "loras", None) or []
        refs += [(("loras", i, "path"), lora.path) for i, lora in enumerate(loras) if lora.is_ref]
        return [(loc, ref) for loc, ref in refs if ref is not None]

    @field_validator("acceleration", "frames_per_second", mode="before", check_fields=False)
    @classmethod
    def _null_means_default(cls, value: object, info: ValidationInfo) -> object:
        """fal's schema makes these nullable (``anyOf [T, null]``) but gives null no meaning of its own; we read it
        as "not given", so the rest of the job always sees a value."""
        return cls.model_fields[info.field_name or ""].default if value is None else value


class GenerationFields(VaceFields):
    """Fields of every endpoint, long-reframe included: sampling, output size, encoding, interpolation."""

    negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, description="What the video should not show.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed; random when absent.")
    resolution: Resolution = Field("auto", description="Output resolution; auto follows the input video.")
    aspect_ratio: AspectRatio = Field("auto", description="Output aspect ratio; auto follows the input video.")
    num_inference_steps: int = Field(30, ge=2, le=50, description="Denoising steps.")
    guidance_scale: float = Field(5.0, ge=1.0, le=10.0, description="Classifier-free guidance scale.")
    sampler: Sampler = Field("unipc", description="Sampler (scheduler) used for denoising.")
    shift: float = Field(5.0, ge=1.0, le=15.0, description="Flow-matching timestep shift.")
    enable_safety_checker: bool = Field(False, description="Check input and output for unsafe content.")
    acceleration: Acceleration | None = Field(
        "regular", description="Speed/quality trade-off of the step cache; null means the default."
    )
    video_quality: VideoQuality = Field("high", description="Quality of the encoded video (x264 CRF).")
    video_write_mode: VideoWriteMode = Field("balanced", description="Encoder speed versus file size.")
    enable_auto_downsample: bool = Field(False, description="Choose the temporal downsample factor automatically.")
    auto_downsample_min_fps: float = Field(15, ge=1, le=60, description="Lowest frame rate auto-downsampling uses.")
    interpolator_model: Interpolator = Field("film", description="Frame interpolation model.")
    sync_mode: bool = Field(False, description="Return media as data URIs and keep nothing on the server.")
    transparency_mode: TransparencyMode = Field(
        "content_aware", description="How transparent areas of first/last frame images are filled."
    )
    return_frames_zip: bool = Field(False, description="Also return a zip of the frames as PNG files.")
    keep_audio: bool = Field(
        True,
        description=(
            "Extension (not in fal's schema): copy the input video's sound into the output, cut to its length (the "
            "output keeps the input's timeline: frame i shows the input at i / fps); false leaves it silent."
        ),
    )
    loras: list[LoraWeight] | None = Field(
        None,
        description=(
            "Extension (not in fal's seed schema): LoRAs applied for this job only, as fal's Wan 2.2 LoRA endpoints "
            "take them. A step-distilled LoRA with num_inference_steps=4 and guidance_scale=1 is the fast path."
        ),
    )


class ClipFields(VaceFields):
    """The timeline of one clip (frame count, frame rate, first/last frame, interpolation) and prompt expansion:
    every endpoint but long-reframe, which plans its own scenes."""

    match_input_num_frames: bool = Field(
        False, description="Cover the whole input video at the output frame rate instead of using num_frames."
    )
    num_frames: int = Field(81, ge=17, le=241, description="Frames to generate; rounded down to 4k+1.")
    match_input_frames_per_second: bool = Field(False, description="Use the input video's frame rate.")
    frames_per_second: int | None = Field(
        16, ge=5, le=30, description="Frame rate of the generated video; null means the default."
    )
    first_frame_url: str | None = Field(None, description="Image that the video must start with.")
    last_frame_url: str | None = Field(None, description="Image that the video must end with.")
    enable_prompt_expansion: bool = Field(False, description="Expand the prompt with a language model.")
    num_interpolated_frames: int = Field(
        0, ge=0, le=5, description="Frames inserted between each pair of generated frames."
    )
    temporal_downsample_factor: int = Field(
        0, ge=0, le=5, description="Generate every (f+1)-th frame and interpolate the rest."
    )


class ReferenceFields(VaceFields):
    """Reference images (every endpoint but reframe and long-reframe)."""

    ref_image_urls: list[str] | None = Field(None, description="Reference images of the subject or scene.")


class PreprocessFields(VaceFields):
    """Making a control video from the input (pose, depth and the base endpoint; inpainting has the field too)."""

    preprocess: bool = Field(
        False, description="Turn the input video into the task's control video (pose or depth) first."
    )
    annotator: Annotator | None = Field(
        None,
        description=(
            "Extension (not in fal's schema): the annotator used with preprocess=true; pose takes dwpose or "
            "openpose, depth takes midas or depth_anything_v2. Default: the server's (VACE's: dwpose, midas)."
        ),
    )


class PromptField(VaceFields):
    prompt: str = Field(..., min_length=1, description="The text prompt to guide video generation.")


class SourceVideoField(VaceFields):
    video_url: str = Field(
        ...,
        min_length=1,
        description="URL or data URI of the source (or control) video; the CLI also takes a local path.",
    )


class MaskFields(VaceFields):
    """The inpainting mask: a mask video (one mask per frame) or one mask image for every frame."""

    mask_video_url: str | None = Field(
        None,
        description=(
            "URL of the mask video, frame for frame with video_url: white = regenerate, black = keep (binarised at "
            "half grey). It must have the video's aspect ratio and cover the frames the job uses."
        ),
    )
    mask_image_url: str | None = Field(
        None,
        description=(
            "URL of one mask image (white = regenerate, black = keep) applied to every frame. On the base endpoint "
            "it wins over mask_video_url; on the inpainting endpoints mask_video_url wins."
        ),
    )


class FramingFields(VaceFields):
    """Reframe's own fields (reframe and long-reframe): the prompt is optional there."""

    prompt: str = Field("", description="The text prompt to guide video generation. Optional for reframing.")
    trim_borders: bool = Field(
        True, description="Remove the source's letterbox/pillarbox bars before reframing (they are regenerated)."
    )
    zoom_factor: float = Field(
        0.0,
        ge=0.0,
        le=0.9,
        description=(
            "Zoom factor; when > 0 the video is zoomed in by this factor (relative to canvas size), cutting off "
            "its edges; 0 = no zoom."
        ),
    )


class PasteBackField(VaceFields):
    """Long-reframe's paste-back, an extension on outpainting and reframe."""

    paste_back: bool = Field(
        False,
        description=(
            "Extension (long-reframe's field): paste the source's own pixels back where it lands on the canvas, so "
            "only the new area is generated; not with num_interpolated_frames (frames between the input's have no "
            "source pixels)."
        ),
    )


class VaceInput(PreprocessFields, ReferenceFields, GenerationFields, ClipFields, SourceVideoField, PromptField):
    """Request body of ``fal-ai/wan-vace-14b/{pose,depth}`` and ``fal-ai/wan-22-vace-fun-a14b/{pose,depth}``."""


class VaceTaskInput(MaskFields, PreprocessFields, ReferenceFields, GenerationFields, ClipFields, PromptField):
    """Request body of the base endpoint ``fal-ai/wan-vace-14b`` (served on both apps): ``task`` picks what the
    video is for; with no video the request is text-, reference- or first/last-frame-to-video."""

    task: BaseTask = Field("depth", description="Task type for the model (what video_url is for).")
    video_url: str | None = Field(
        None,
        description=(
            "URL of the source video, if any: the control video (pose, depth) or the video to inpaint, outpaint "
            "or reframe. Without one the request is text-to-video (reference-to-video with ref_image_urls, "
            "image-to-video with first_frame_url/last_frame_url)."
        ),
    )

    @field_validator("video_url", "mask_video_url", "mask_image_url", mode="before")
    @classmethod
    def _empty_is_absent(cls, value: object) -> object:
        """fal's own playground sends ``video_url: ""`` for "no video": an empty URL is no URL."""
        return None if isinstance(value, str) and not value.strip() else value


class InpaintingFunInput(
    MaskFields, PreprocessFields, ReferenceFields, GenerationFields, ClipFields, SourceVideoField, PromptField
):
    """Request body of ``fal-ai/wan-22-vace-fun-a14b/inpainting``, where ``mask_video_url`` is optional."""


class InpaintingInput(InpaintingFunInput):
    """Request body of ``fal-ai/wan-vace-14b/inpainting``: fal's schema requires the ``mask_video_url`` key but
    lets it be null (then ``mask_image_url`` is the mask)."""

    mask_video_url: str | None = Field(..., description=MaskFields.model_fields["mask_video_url"].description)


class OutpaintingInput(PasteBackField, ReferenceFields, GenerationFields, ClipFields, SourceVideoField, PromptField):
    """Request body of ``fal-ai/{wan-vace-14b,wan-22-vace-fun-a14b}/outpainting`` (no ``preprocess``)."""

    expand_left: bool = Field(False, description="Whether to expand the video to the left.")
    expand_right: bool = Field(False, description="Whether to expand the video to the right.")
    expand_top: bool = Field(False, description="Whether to expand the video to the top.")
    expand_bottom: bool = Field(False, description="Whether to expand the video to the bottom.")
    expand_ratio: float = Field(
        0.25,
        ge=0.0,
        le=1.0,
        description=(
            "Amount of expansion: each chosen side grows by this fraction of the source's width (left, right) or "
            "height (top, bottom); 0.25 adds 25%."
        ),
    )


class ReframeInput(PasteBackField, FramingFields, GenerationFields, ClipFields, SourceVideoField):
    """Request body of ``fal-ai/{wan-vace-14b,wan-22-vace-fun-a14b}/reframe``: no ``preprocess``, no
    ``ref_image_urls``, an optional prompt and the whole input by default (``match_input_*`` true)."""

    match_input_num_frames: bool = _with_default(ClipFields, "match_input_num_frames", True)
    match_input_frames_per_second: bool = _with_default(ClipFields, "match_input_frames_per_second", True)


class LongReframeInput(FramingFields, GenerationFields, SourceVideoField):
    """Request body of ``fal-ai/wan-vace-apps/long-reframe``: reframe of a long video scene by scene, so no single
    clip timeline (no ``num_frames``, ``frames_per_second``, ``match_input_*``, first/last frame, interpolation)."""

    paste_back: bool = Field(
        True,
        description="Whether to paste back the reframed scene to the original video: the source's own pixels "
        "where it lands on the canvas, so only the new area is generated.",
    )
    scene_threshold: float = Field(
        30,
        ge=0,
        le=100,
        description="Threshold for scene detection sensitivity (0-100). Lower values detect more scenes.",
    )
    enable_auto_downsample: bool = _with_default(GenerationFields, "enable_auto_downsample", True)
    auto_downsample_min_fps: float = _with_default(GenerationFields, "auto_downsample_min_fps", 6)


# fal endpoint id -> its request model. fal offers the base endpoint on the 14B app only; we serve it on both apps,
# as pose and depth are served on both.
INPUT_MODELS: dict[str, type[VaceFields]] = {
    "fal-ai/wan-vace-14b": VaceTaskInput,
    "fal-ai/wan-vace-14b/pose": VaceInput,
    "fal-ai/wan-vace-14b/depth": VaceInput,
    "fal-ai/wan-vace-14b/inpainting": InpaintingInput,
    "fal-ai/wan-vace-14b/outpainting": OutpaintingInput,
    "fal-ai/wan-vace-14b/reframe": ReframeInput,
    "fal-ai/wan-22-vace-fun-a14b": VaceTaskInput,
    "fal-ai/wan-22-vace-fun-a14b/pose": VaceInput,
    "fal-ai/wan-22-vace-fun-a14b/depth": VaceInput,
    "fal-ai/wan-22-vace-fun-a14b/inpainting": InpaintingFunInput,
    "fal-ai/wan-22-vace-fun-a14b/outpainting": OutpaintingInput,
    "fal-ai/wan-22-vace-fun-a14b/reframe": ReframeInput,
    "fal-ai/wan-vace-apps/long-reframe": LongReframeInput,
}


JobInput = VaceInput | VaceTaskInput | InpaintingFunInput | OutpaintingInput | ReframeInput
"""The request of a job ``generate()`` runs: the model of one served endpoint (``pipelines.registry.input_model``).
They all have the clip timeline and the generation fields; the task-specific ones (masks, ``expand_*``, ``zoom_factor``,
``preprocess``, ``ref_image_urls``) only where the endpoint has them."""

EndpointInput = JobInput | LongReframeInput
"""The request of any served endpoint: long-reframe's has no clip timeline of its own (each scene runs as a reframe
request, ``pipelines.scenes.scene_input``)."""


class File(BaseModel):
    """A file produced by a job."""

    url: str
    content_type: str | None = None
    file_name: str | None = None
    file_size: int | None = None


class VideoFile(File):
    """The generated video and what a player needs to know about it."""

    width: int | None = None
    height: int | None = None
    fps: float | None = None
    duration: float | None = None
    num_frames: int | None = None


class VaceOutput(BaseModel):
    """Response body of every VACE endpoint."""

    video: VideoFile
    prompt: str = Field(..., description="The prompt actually used (after expansion, when enabled).")
    seed: int
    frames_zip: File | None = None
    mask_video: VideoFile | None = Field(
        None,
        description=(
            "Extension (not in fal's output): with mask_image_url on a server that tracks masks, the tracked masks "
            "(white = regenerated), one per generated frame at the generation frame rate."
        ),
    )


class LongReframeOutput(BaseModel):
    """Response body of ``fal-ai/wan-vace-apps/long-reframe``: fal's is the video alone; ``frames_zip`` comes only
    when ``return_frames_zip`` (a field of fal's request) asks for it."""

    video: VideoFile
    frames_zip: File | None = None


OUTPUT_MODELS: dict[str, type[BaseModel]] = {"fal-ai/wan-vace-apps/long-reframe": LongReframeOutput}
"""The endpoints whose response body is not ``VaceOutput``."""
