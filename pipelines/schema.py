"""The fal input and output schema of the two seed endpoints, as pydantic models.

This is the single source of truth for field names, defaults and ranges: the CLI builds its flags from it, the
server validates request bodies with it and generates ``/openapi.json`` from it. Both endpoints
(``fal-ai/wan-vace-14b/pose`` and ``fal-ai/wan-22-vace-fun-a14b/depth``) take the same fields, so one model serves
every app and task.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class VaceInput(BaseModel):
    """Request body of ``fal-ai/wan-vace-14b/{pose,depth}`` and ``fal-ai/wan-22-vace-fun-a14b/{pose,depth}``."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(..., min_length=1, description="The text prompt to guide video generation.")
    negative_prompt: str = Field(DEFAULT_NEGATIVE_PROMPT, description="What the video should not show.")
    video_url: str = Field(
        ...,
        min_length=1,
        description="URL or data URI of the source (or control) video; the CLI also takes a local path.",
    )
    match_input_num_frames: bool = Field(
        False, description="Cover the whole input video at the output frame rate instead of using num_frames."
    )
    num_frames: int = Field(81, ge=17, le=241, description="Frames to generate; rounded down to 4k+1.")
    match_input_frames_per_second: bool = Field(False, description="Use the input video's frame rate.")
    frames_per_second: int = Field(16, ge=5, le=30, description="Frame rate of the generated video.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Random seed; random when absent.")
    resolution: Resolution = Field("auto", description="Output resolution; auto follows the input video.")
    aspect_ratio: AspectRatio = Field("auto", description="Output aspect ratio; auto follows the input video.")
    num_inference_steps: int = Field(30, ge=2, le=50, description="Denoising steps.")
    guidance_scale: float = Field(5.0, ge=1.0, le=10.0, description="Classifier-free guidance scale.")
    sampler: Sampler = Field("unipc", description="Sampler (scheduler) used for denoising.")
    shift: float = Field(5.0, ge=1.0, le=15.0, description="Flow-matching timestep shift.")
    ref_image_urls: list[str] | None = Field(None, description="Reference images of the subject or scene.")
    first_frame_url: str | None = Field(None, description="Image that the video must start with.")
    last_frame_url: str | None = Field(None, description="Image that the video must end with.")
    enable_safety_checker: bool = Field(False, description="Check input and output for unsafe content.")
    enable_prompt_expansion: bool = Field(False, description="Expand the prompt with a language model.")
    preprocess: bool = Field(
        False, description="Turn the input video into the task's control video (pose or depth) first."
    )
    acceleration: Acceleration = Field("regular", description="Speed/quality trade-off of the step cache.")
    video_quality: VideoQuality = Field("high", description="Quality of the encoded video (x264 CRF).")
    video_write_mode: VideoWriteMode = Field("balanced", description="Encoder speed versus file size.")
    num_interpolated_frames: int = Field(
        0, ge=0, le=5, description="Frames inserted between each pair of generated frames."
    )
    temporal_downsample_factor: int = Field(
        0, ge=0, le=5, description="Generate every (f+1)-th frame and interpolate the rest."
    )
    enable_auto_downsample: bool = Field(False, description="Choose the temporal downsample factor automatically.")
    auto_downsample_min_fps: float = Field(15, ge=1, le=60, description="Lowest frame rate auto-downsampling uses.")
    interpolator_model: Interpolator = Field("film", description="Frame interpolation model.")
    sync_mode: bool = Field(False, description="Return media as data URIs and keep nothing on the server.")
    transparency_mode: TransparencyMode = Field(
        "content_aware", description="How transparent areas of first/last frame images are filled."
    )
    return_frames_zip: bool = Field(False, description="Also return a zip of the frames as PNG files.")
    annotator: Annotator | None = Field(
        None,
        description=(
            "Extension (not in fal's schema): the annotator used with preprocess=true; pose takes dwpose or "
            "openpose, depth takes midas or depth_anything_v2. Default: the server's (VACE's: dwpose, midas)."
        ),
    )
    loras: list[LoraWeight] | None = Field(
        None,
        description=(
            "Extension (not in fal's seed schema): LoRAs applied for this job only, as fal's Wan 2.2 LoRA endpoints "
            "take them. A step-distilled LoRA with num_inference_steps=4 and guidance_scale=1 is the fast path."
        ),
    )

    def media_refs(self) -> list[tuple[FieldLoc, str]]:
        """Every media reference the request names, with its field location (``("ref_image_urls", i)`` for
        references, ``("loras", i, "path")`` for LoRA URLs): the server checks their schemes and keeps the files
        they point to while the job waits."""
        refs: list[tuple[FieldLoc, str | None]] = [
            ("video_url", self.video_url), ("first_frame_url", self.first_frame_url),
            ("last_frame_url", self.last_frame_url),
        ]
        refs += [(("ref_image_urls", i), url) for i, url in enumerate(self.ref_image_urls or [])]
        refs += [(("loras", i, "path"), lora.path) for i, lora in enumerate(self.loras or []) if lora.is_ref]
        return [(loc, ref) for loc, ref in refs if ref is not None]


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
