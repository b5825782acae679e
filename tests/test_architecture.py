"""The layering of the packages: imports point one way, at module level and between the top-level packages
(``tests/import_graph.py`` reads them with ``ast``), so a new circle fails here rather than in review; and the HTTP
layer of an API node stays clear of the model stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from import_graph import ROOT, cycles, folder_graph, module_graph


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert cycles(module_graph()) == []


def test_packages_import_one_way() -> None:
    folders = folder_graph(module_graph())
    assert cycles(folders) == []
    assert folders["preprocessors"] == set()  # the annotators take paths and frames; pipelines imports them
    assert "server" not in folders["pipelines"] | folders["weights"]


def server_layers() -> dict[str, set[str]]:
    """The layers of ``server/`` and the layers each imports: a module's layer is its folder under ``server/``
    (``api``, ``runtime``, ``fal``, ``store``, ``files``); a module at the top (app, cli, config, ...) is a layer of
    its own."""

    def layer(module: str) -> str | None:
        parts = module.split(".")
        if parts[0] != "server" or len(parts) == 1:
            return None
        return parts[1] if len(parts) > 2 else ".".join(parts)

    layers: dict[str, set[str]] = {}
    for module, imported in module_graph().items():
        if (own := layer(module)) is not None:
            layers.setdefault(own, set()).update(x for x in map(layer, imported) if x not in (None, own))
    return layers


def test_server_layers_import_one_way() -> None:
    """HTTP over the runtime, both over fal's shapes, those over the stores; no layer imports one above it (the
    settings and what they open are imported from any layer)."""
    layers = server_layers()
    assert cycles(layers) == []
    assert layers["store"] == set() and layers["files"] == set() and layers["fal"] == {"store"}
    assert "api" not in layers["runtime"]
    assert {"api", "runtime"} & (layers["server.config"] | layers["server.backends"]) == set()
    assert {"api", "runtime", "fal", "store", "files"} <= set(layers)


def test_the_graph_sees_deferred_and_relative_imports(tmp_path: Path) -> None:
    """A circle closed by an import inside a function, written relative, is a circle (the check can fail)."""
    package = tmp_path / "pipelines"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import run\n")
    (package / "b.py").write_text("def run():\n    from . import a\n")
    (tmp_path / "preprocessors").mkdir()
    (tmp_path / "preprocessors" / "base.py").write_text("from pipelines.a import run\n")
    (package / "c.py").write_text("import preprocessors.base\n")
    graph = module_graph(tmp_path)
    assert cycles(graph) == [["pipelines.a", "pipelines.b"]]
    assert cycles(folder_graph(graph)) == [["pipelines", "preprocessors"]]


API_NODE = """
import json, sys
from fastapi.testclient import TestClient
from server.app import create_app
from server.config import Settings

config = Settings(data_dir=sys.argv[1], weights_dir=sys.argv[2], no_workers=True)  # `vace serve --no-workers`
job = {"prompt": "a person dancing", "video_url": "https://example.com/dance.mp4"}
with TestClient(create_app(config), base_url="http://127.0.0.1:8000") as client:
    queued = client.post("/queue/fal-ai/wan-vace-14b/pose", json=job)
    refused = client.post("/queue/fal-ai/wan-vace-14b/pose", json=job | {"preprocess": True, "annotator": "midas"})
model_stack = ("diffusers", "onnxruntime", "controlnet_aux")
frame_format = ("preprocessors", "preprocessors.frames")  # the frame check the encoder shares: no library behind it
loaded = [m for m in sys.modules if m.partition(".")[0] in model_stack
          or (m.partition(".")[0] == "preprocessors" and m not in frame_format)]
print(json.dumps({"queued": queued.json(), "refused": [refused.status_code, refused.json()], "loaded": sorted(loaded)}))
"""


def test_an_api_node_validates_and_queues_without_the_model_stack(tmp_path: Path) -> None:
    """An API node (``vace serve --no-workers``) answers and runs the host's checks (``pipelines.checks``) without
    importing diffusers, onnxruntime or the annotators: only a node that runs workers loads them."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    run = subprocess.run(
        [sys.executable, "-c", API_NODE, str(tmp_path / "data"), str(tmp_path / "no-weights")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    answer = json.loads(run.stdout.strip().splitlines()[-1])
    assert answer["queued"]["status"] == "IN_QUEUE"
    status, body = answer["refused"]
    assert status == 422 and body["detail"][0]["loc"] == ["body", "annotator"]  # check_inputs ran here
    assert answer["loaded"] == []
