"""Drives the installed, unmodified fal-client against a vace server and prints one JSON object of what it saw.

Run by tests/test_server_clients.py in a fresh process, because fal-client reads ``FAL_RUN_HOST``,
``FAL_QUEUE_RUN_HOST`` (and httpx ``SSL_CERT_FILE``) at import: the environment is the one ``vace serve --tls``
printed. Usage: ``python fal_client_driver.py POSE_VIDEO DEPTH_VIDEO SERVER_URL`` (pose and depth), or
``python fal_client_driver.py family SERVER_URL VIDEO MASK_VIDEO LETTERBOXED_VIDEO`` (the rest of the VACE family:
the base endpoint, inpainting, outpainting and reframe on both apps), or ``python fal_client_driver.py long
SERVER_URL VIDEO`` (``fal-ai/wan-vace-apps/long-reframe``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import fal_client

from server.falclient import use_server

SMALL = {"num_frames": 17, "num_inference_steps": 2, "acceleration": "none", "seed": 3}
POSE_14B, DEPTH_14B = "fal-ai/wan-vace-14b/pose", "fal-ai/wan-vace-14b/depth"
POSE_A14B, DEPTH_A14B = "fal-ai/wan-22-vace-fun-a14b/pose", "fal-ai/wan-22-vace-fun-a14b/depth"


def describe(status: fal_client.Status) -> dict[str, Any]:
    logs = getattr(status, "logs", None)
    return {
        "type": type(status).__name__,
        "position": getattr(status, "position", None),
        "logs": None if logs is None else [line["message"] for line in logs],
        "error_type": getattr(status, "error_type", None),
        "metrics": getattr(status, "metrics", None),
    }


def http_error(call: Any) -> dict[str, Any]:
    try:
        call()
    except fal_client.FalClientHTTPError as exc:
        return {"status_code": exc.status_code, "message": exc.message, "error_type": exc.error_type}
    raise AssertionError("expected an HTTP error")


def main(pose: str, depth: str, server_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {}

    # subscribe, with logs through on_queue_update
    updates: list[dict[str, Any]] = []
    out["subscribe"] = fal_client.subscribe(
        POSE_14B,
        {"prompt": "a dancer", "video_url": fal_client.encode_file(pose), **SMALL},
        with_logs=True,
        on_queue_update=lambda s: updates.append(describe(s)),
    )
    out["subscribe_updates"] = updates

    # submit + status + result, and cancel a second job while it waits in the queue
    handle = fal_client.submit(DEPTH_A14B, {"prompt": "a ball", "video_url": fal_client.encode_file(depth), **SMALL})
    doomed = fal_client.submit(DEPTH_A14B, {"prompt": "never", "video_url": fal_client.encode_file(depth), **SMALL})
    out["doomed_before"] = describe(fal_client.status(DEPTH_A14B, doomed.request_id))
    fal_client.cancel(DEPTH_A14B, doomed.request_id)
    out["doomed_after"] = describe(fal_client.status(DEPTH_A14B, doomed.request_id, with_logs=True))
    out["doomed_result"] = http_error(lambda: fal_client.result(DEPTH_A14B, doomed.request_id))
    seen = []
    while not seen or seen[-1]["type"] != "Completed":
        seen.append(describe(fal_client.status(DEPTH_A14B, handle.request_id, with_logs=True)))
        time.sleep(0.1)
    out["submit_statuses"] = seen
    out["submit_result"] = fal_client.result(DEPTH_A14B, handle.request_id)

    # run (sync), with sync_mode: data URIs, nothing kept on the server
    out["run"] = fal_client.run(
        DEPTH_14B, {"prompt": "sync", "video_url": fal_client.encode_file(depth), "sync_mode": True, **SMALL}
    )
    out["run_invalid"] = http_error(
        lambda: fal_client.run(POSE_14B, {"prompt": "x", "video_url": "https://e/v.mp4", "num_frames": 5})
    )

    # upload_file through the helper, feeding a later request
    use_server(server_url, key=os.environ["FAL_KEY"], ca_file=os.environ["SSL_CERT_FILE"])
    out["uploaded"] = fal_client.upload_file(pose)
    out["upload_subscribe"] = fal_client.subscribe(
        POSE_A14B, {"prompt": "from upload", "video_url": out["uploaded"], **SMALL}
    )
    return out


APPS = ("fal-ai/wan-vace-14b", "fal-ai/wan-22-vace-fun-a14b")


def family(server_url: str, video: str, mask: str, letterbox: str) -> dict[str, Any]:
    """Every other endpoint on both apps, each through another of the client's calls: the base endpoint with no
    video (subscribe, with logs), inpainting with an uploaded mask video (submit, status, result), outpainting (run)
    and reframe of a letterboxed clip with fal's defaults and no prompt (subscribe, with logs)."""
    use_server(server_url, key=os.environ["FAL_KEY"], ca_file=os.environ["SSL_CERT_FILE"])
    video_url, mask_url, letterbox_url = (fal_client.upload_file(path) for path in (video, mask, letterbox))
    out: dict[str, Any] = {}
    for app in APPS:
        seen: list[dict[str, Any]] = []
        out[f"{app} base"] = fal_client.subscribe(
            app,
            {"prompt": "a cat on a sofa", "resolution": "240p", **SMALL},
            with_logs=True,
            on_queue_update=lambda s, seen=seen: seen.append(describe(s)),
        )
        out[f"{app} base logs"] = seen[-1]["logs"]

        handle = fal_client.submit(
            f"{app}/inpainting", {"prompt": "a red ball", "video_url": video_url, "mask_video_url": mask_url, **SMALL}
        )
        while not isinstance(fal_client.status(f"{app}/inpainting", handle.request_id), fal_client.Completed):
            time.sleep(0.2)
        out[f"{app} inpainting logs"] = describe(
            fal_client.status(f"{app}/inpainting", handle.request_id, with_logs=True)
        )["logs"]
        out[f"{app} inpainting"] = fal_client.result(f"{app}/inpainting", handle.request_id)

        out[f"{app} outpainting"] = fal_client.run(
            f"{app}/outpainting",
            {
                "prompt": "a wide room",
                "video_url": video_url,
                "expand_left": True,
                "expand_right": True,
                "resolution": "240p",
                **SMALL,
            },
        )

        seen = []
        out[f"{app} reframe"] = fal_client.subscribe(
            f"{app}/reframe",
            {
                "video_url": letterbox_url,
                "aspect_ratio": "1:1",
                "resolution": "240p",
                **{k: v for k, v in SMALL.items() if k != "num_frames"},
            },
            with_logs=True,
            on_queue_update=lambda s, seen=seen: seen.append(describe(s)),
        )
        out[f"{app} reframe logs"] = seen[-1]["logs"]
    return out


def long_reframe(server_url: str, video: str) -> dict[str, Any]:
    """``fal-ai/wan-vace-apps/long-reframe`` through subscribe (with logs) on an uploaded clip, fal's defaults but
    for the output shape and the small job."""
    use_server(server_url, key=os.environ["FAL_KEY"], ca_file=os.environ["SSL_CERT_FILE"])
    seen: list[dict[str, Any]] = []
    output = fal_client.subscribe(
        "fal-ai/wan-vace-apps/long-reframe",
        {
            "video_url": fal_client.upload_file(video),
            "aspect_ratio": "1:1",
            "resolution": "240p",
            **{k: v for k, v in SMALL.items() if k != "num_frames"},
        },
        with_logs=True,
        on_queue_update=lambda s: seen.append(describe(s)),
    )
    return {"output": output, "logs": seen[-1]["logs"]}


if __name__ == "__main__":
    if sys.argv[1] == "family":
        print(json.dumps(family(*sys.argv[2:6])))
    elif sys.argv[1] == "long":
        print(json.dumps(long_reframe(*sys.argv[2:4])))
    else:
        print(json.dumps(main(*sys.argv[1:4])))
