"""Prompt expansion: rewrite a short prompt into the detailed video prompt the Wan models respond to best.

Wan was trained on long, descriptive captions; a five-word prompt leaves the look of the video to chance. Two
backends give the same answer shape: ``OpenAIExpander`` asks any OpenAI-compatible chat endpoint (vLLM, Ollama,
llama.cpp's server, a hosted API) and ``LocalExpander`` runs a chat LM from the weights directory with transformers.
Both send our own system prompt, written for controlled video: the pose or depth video already fixes the motion
and the layout, so the rewrite must describe what the control cannot show (who, clothing, place, light, camera,
style) and must not invent motion that fights the control. Decoding is greedy (temperature 0), so the same request
gets the same prompt. An expander that fails in any way never fails the job: ``expand_prompt`` logs a warning and
keeps the prompt as given.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import httpx
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from .answers import IDENTITY, read_answer

SYSTEM_PROMPT = """\
You rewrite short prompts for a video model that renders a new video on top of a control video. The control video \
fixes the motion and the layout: with pose control it shows the skeleton of every person in every frame, with depth \
control it shows the depth of the whole scene. The model follows the prompt only for what the control does not show. \
When the control is none, the video (or the part of it the control line names) comes from the prompt alone.

Rewrite the user's prompt as one paragraph of 60 to 120 words in the language of the user's prompt that covers, in \
this order:
1. Subject: who or what is shown, with concrete details: age and build, clothing, colours, materials, hair, face.
2. Motion: the action of the user's prompt described so that it fits the control (pace, rhythm, weight, what the \
hands and feet do). Do not add actions, people or large objects the user did not ask for.
3. Scene: the place, the time of day, the weather and what stands in the background.
4. Lighting: the light sources, their direction and colour, the contrast and the shadows.
5. Camera: shot size, angle and lens. Describe camera movement only as the user gives it (with depth control the \
depth video already carries the camera path); otherwise a steady camera.
6. Style: a short closing phrase such as photorealistic, cinematic film still, anime or 3D render, matching the \
user's prompt.

Keep every detail the user gave and contradict none of them. Never mention skeletons, poses, depth maps or the \
control video. Answer with the rewritten prompt only: no title, no quotes, no list, no comments."""

CONTROL_HINTS = {  # per recipe of pipelines.tasks: what the model is given besides the prompt
    "pose": "pose (the people's motion is fixed by their skeletons)",
    "depth": "depth (the scene's shapes and the camera path are fixed by the depth map)",
    "inpainting": "none in the masked region (the video is kept outside it; describe the whole scene as it should "
    "look, including what fills the region)",
    "outpainting": "none beyond the frame (the video is kept in the middle of a larger frame; describe the whole "
    "wider scene)",
    "reframe": "none beyond the frame (the same footage in a new frame shape; describe the whole scene)",
    "text": "none (the whole video comes from the prompt, and from reference or first/last frame images if given)",
}
_REASONING = re.compile(r"<think>.*?</think>", re.DOTALL)  # what reasoning models put before their answer


class PromptExpander(Protocol):
    @property
    def name(self) -> str:
        """What the job log calls it."""
        ...

    def expand(self, prompt: str, task: str) -> str:
        """The model's raw answer for ``prompt`` under ``task``'s control; raises on any failure."""
        ...


def chat_messages(prompt: str, task: str) -> list[dict[str, str]]:
    """The conversation both backends send: our system prompt, then the control kind and the user's prompt."""
    return [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": f"Control: {CONTROL_HINTS[task]}\nPrompt: {prompt}"},
    ]


def clean_answer(text: str) -> str:
    """The prompt in a model's answer: reasoning blocks dropped, whitespace collapsed, wrapping quotes removed."""
    text = " ".join(_REASONING.sub(" ", text).split())
    return text.strip("\"'“”` ").strip()


@dataclass(frozen=True)
class OpenAIExpander:
    """An OpenAI-compatible ``POST {url}/chat/completions`` (``url`` is the API base, e.g. ``.../v1``)."""

    url: str
    model: str
    api_key: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    """For the whole answer, not per read: a trickling endpoint cannot hold a job longer."""
    max_tokens: int = 256
    max_answer_bytes: int = 1024**2
    """Far more than ``max_tokens`` of text; a larger (or inflating) answer is an expander failure."""

    @property
    def name(self) -> str:
        return f"{self.model} at {self.url}"

    def expand(self, prompt: str, task: str) -> str:
        headers = {"authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        body = {
            "model": self.model,
            "messages": chat_messages(prompt, task),
            "temperature": 0,
            "max_tokens": self.max_tokens,
            "stream": False,
        }
        deadline = time.monotonic() + self.timeout_s
        with httpx.stream(
            "POST",
            f"{self.url.rstrip('/')}/chat/completions",
            json=body,
            headers={**IDENTITY, **headers},
            timeout=self.timeout_s,
        ) as response:
            response.raise_for_status()
            answer = b"".join(read_answer(response, self.max_answer_bytes, deadline))
        return json.loads(answer)["choices"][0]["message"]["content"]


class LocalExpander:
    """A chat LM (transformers causal LM whose tokenizer has a chat template) from ``folder``, loaded on first use
    so that a server which never gets an expansion request never spends the memory."""

    def __init__(self, folder: Path, device: torch.device, dtype: torch.dtype, max_new_tokens: int) -> None:
        self.folder = folder
        self.device = device
        self.dtype = dtype
        self.max_new_tokens = max_new_tokens
        self.name = f"local {folder.name}"
        self._model: torch.nn.Module | None = None
        self._tokenizer = None
        self._lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _load(self) -> None:
        if not (self.folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no prompt-expansion model in {self.folder} (run `vace weights download --models prompt-expander`)"
            )
        self._tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self._model = AutoModelForCausalLM.from_pretrained(self.folder, dtype=self.dtype).eval().to(self.device)

    @torch.inference_mode()
    def expand(self, prompt: str, task: str) -> str:
        with self._lock:
            if self._model is None:
                self._load()
        assert self._model is not None and self._tokenizer is not None
        inputs = self._tokenizer.apply_chat_template(
            chat_messages(prompt, task), add_generation_prompt=True, return_tensors="pt", return_dict=True
        ).to(self.device)
        # Greedy, whatever sampling the model's generation_config asks for.
        output = self._model.generate(
            **inputs, max_new_tokens=self.max_new_tokens, do_sample=False, temperature=None, top_p=None, top_k=None
        )
        return self._tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def expand_prompt(expander: PromptExpander | None, prompt: str, task: str, log: Callable[[str], None]) -> str:
    """The prompt to use: the expander's rewrite, or ``prompt`` itself (with a log line saying why) when there is
    no expander or it fails (HTTP error, timeout, malformed or empty answer, model error)."""
    if not prompt.strip():  # reframe's prompt is optional: an expander would invent a scene from nothing
        log("prompt expansion skipped: the prompt is empty")
        return prompt
    if expander is None:
        log("prompt expansion is not configured on this server; using the prompt as given")
        return prompt
    started = time.perf_counter()
    try:
        expanded = clean_answer(expander.expand(prompt, task))
    except Exception as exc:  # noqa: BLE001 - any expander failure falls back; the job must not fail for it
        log(
            f"warning: prompt expansion with {expander.name} failed ({type(exc).__name__}: {exc}); "
            "using the prompt as given"
        )
        return prompt
    if not expanded:
        log(f"warning: prompt expansion with {expander.name} gave an empty answer; using the prompt as given")
        return prompt
    log(f"prompt expanded by {expander.name} in {time.perf_counter() - started:.1f} s: {expanded}")
    return expanded
