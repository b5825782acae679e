"""The ``vace`` command line: generate with schema flags, clear errors, the weights commands, and the settings
flags made from ``Settings``."""

from __future__ import annotations

import argparse
import json
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.video_io import probe_video
from server.cli import main


def test_generate_writes_the_video_and_prints_the_fal_output(tiny_weights, pose_video, tmp_path, capsys):
    out = tmp_path / "result.mp4"
    code = main(
        [
            "generate",
            "depth",
            "--model",
            "wan-vace-14b",
            "--weights-dir",
            str(tiny_weights),
            "-q",
            "--video",
            str(pose_video),
            "--prompt",
            "a robot walking",
            "--num-frames",
            "17",
            "--num_inference_steps",
            "2",
            "--seed",
            "5",
            "--acceleration",
            "none",
            "--frames_per_second",
            "12",
            "--return_frames_zip",
            "-o",
            str(out),
        ]
    )
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seed"] == 5 and printed["prompt"] == "a robot walking"
    assert printed["video"]["url"] == out.as_uri()
    assert printed["frames_zip"]["url"] == out.with_suffix(".zip").as_uri()
    info = probe_video(out)
    assert (info.num_frames, info.fps, info.width, info.height) == (17, 12, 416, 240)


def test_out_of_range_flag_is_a_one_line_error(tiny_weights, pose_video, tmp_path, capsys):
    code = main(
        [
            "generate",
            "pose",
            "--weights-dir",
            str(tiny_weights),
            "--video",
            str(pose_video),
            "--prompt",
            "p",
            "--num_frames",
            "300",
            "-o",
            str(tmp_path / "x.mp4"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "num_frames" in err and "less than or equal to 241" in err and "Traceback" not in err


def test_missing_video_is_a_download_error(tiny_weights, tmp_path, capsys):
    code = main(
        [
            "generate",
            "pose",
            "--weights-dir",
            str(tiny_weights),
            "--video",
            str(tmp_path / "nope.mp4"),
            "--prompt",
            "p",
            "-o",
            str(tmp_path / "x.mp4"),
        ]
    )
    assert code == 2
    assert "video_url" in capsys.readouterr().err


def test_missing_weights_say_how_to_get_them(pose_video, tmp_path, capsys):
    code = main(
        [
            "generate",
            "pose",
            "--weights-dir",
            str(tmp_path / "empty"),
            "--video",
            str(pose_video),
            "--prompt",
            "p",
            "--num_inference_steps",
            "2",
            "-o",
            str(tmp_path / "x.mp4"),
        ]
    )
    assert code == 1
    assert "vace weights download" in capsys.readouterr().err


def test_weights_check_passes_on_a_complete_dir_and_fails_on_a_broken_one(tiny_weights, tmp_path, capsys):
    assert main(["weights", "check", str(tiny_weights)]) == 0
    report = capsys.readouterr().out
    assert "wan-vace-14b" in report and "wan-22-vace-fun-a14b" in report

    broken = tmp_path / "broken"
    main(["weights", "tiny", str(broken)])
    (broken / "wan2.2-vace-fun-a14b" / "transformer_2" / "diffusion_pytorch_model.safetensors").write_bytes(b"\0" * 64)
    capsys.readouterr()
    assert main(["weights", "check", str(broken)]) == 1
    assert "corrupt" in capsys.readouterr().out


def test_preprocess_writes_a_control_video_of_the_same_shape(tiny_weights, pose_video, tmp_path, capsys):
    out = tmp_path / "control.mp4"
    code = main(
        [
            "preprocess",
            "depth",
            "--annotator",
            "depth_anything_v2",
            "--weights-dir",
            str(tiny_weights),
            "--video",
            str(pose_video),
            "-o",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    source, control = probe_video(pose_video), probe_video(out)
    assert (control.num_frames, control.width, control.height) == (source.num_frames, source.width, source.height)
    assert control.fps == source.fps
    assert "depth control video" in capsys.readouterr().out


def test_preprocess_writes_a_control_video_for_an_odd_sized_input(tiny_weights, tmp_path, capsys):
    """The same control-video writer as the server's: an odd width or height loses its last pixel instead of
    failing (yuv420p needs even sizes)."""
    import subprocess

    import imageio_ffmpeg

    odd = tmp_path / "odd.mp4"
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-v",
            "error",
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=65x47:rate=8",
            "-frames:v",
            "5",
            "-pix_fmt",
            "yuv444p",
            str(odd),
        ],
        check=True,
    )
    out = tmp_path / "control.mp4"
    assert main(["preprocess", "depth", "--video", str(odd), "--weights-dir", str(tiny_weights), "-o", str(out)]) == 0
    info = probe_video(out)
    assert (info.width, info.height, info.num_frames) == (64, 46, 5)
    assert "depth control video" in capsys.readouterr().out


def test_generate_parallel_is_the_jobs_own_group_not_the_servers_setting(monkeypatch):
    """Issue 23: ``generate --parallel cfg=2`` once reached ``Settings.parallel``, the serve/worker group over
    ``--devices``, whose check refused it before the job started ("--parallel needs --devices")."""
    from server.cli import build_parser, settings

    monkeypatch.delenv("VACE_PARALLEL", raising=False)
    args = build_parser().parse_args(
        ["generate", "pose", "--video", "v.mp4", "--prompt", "p", "--parallel", "cfg=2", "-o", "x.mp4"]
    )
    assert args.job_parallel == "cfg=2"
    assert settings(args).parallel is None


def _help(*command: str) -> str:
    """``vace COMMAND --help`` as the installed console script prints it, whitespace removed (argparse wraps
    lines at the terminal's width)."""
    vace = Path(sys.executable).with_name("vace")
    out = subprocess.run([str(vace), *command, "--help"], capture_output=True, text=True, check=True).stdout
    return re.sub(r"\s+", "", out)


def test_every_setting_is_a_serve_flag_with_its_help_variable_and_default():
    """Issue 23: the flags are made from ``Settings``, so none can be missing, misnamed or documented apart: each
    field's flag, its docstring, its variable and its default are in ``vace serve --help``."""
    from server.cli import ENV_ONLY, _shown
    from server.config import Settings

    text = _help("serve")
    for name, info in Settings.model_fields.items():
        assert info.description, f"{name} has no docstring to be its help"
        parts = [f"VACE_{name.upper()}", info.description]
        if name not in ENV_ONLY:
            parts += [
                f"--{name.replace('_', '-')}",
                *([f"default{_shown(info.default)})"] if _shown(info.default) else []),
            ]
        for part in parts:
            assert re.sub(r"\s+", "", part) in text, f"{name}: {part!r} is not in vace serve --help"
    assert "default~/.cache/vace/weights" in text and "default604800)" in text  # a path and a duration, as written


def _flags(parser: argparse.ArgumentParser, *command: str) -> dict[str, str]:
    """The flags ``vace COMMAND`` accepts (hidden ones included), each with the name it stores its value under."""
    for name in command:
        parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
    return {flag: action.dest for action in parser._actions for flag in action.option_strings}


def test_each_command_takes_its_layer_of_settings():
    """``worker`` takes the node's settings but not the HTTP ones, ``generate`` and ``preprocess`` the job settings
    only."""
    from server.cli import ENV_ONLY, build_parser
    from server.config import JobSettings, NodeSettings, Settings

    parser = build_parser()
    worker, generate, preprocess = (
        _flags(parser, "worker"),
        _flags(parser, "generate", "base"),
        _flags(parser, "preprocess", "depth"),
    )
    for name in Settings.model_fields.keys() - ENV_ONLY:
        flag = f"--{name.replace('_', '-')}"  # generate's --parallel is the job's own, not the setting
        assert (worker.get(flag) == name) == (name in NodeSettings.model_fields), name
        assert (generate.get(flag) == name) == (preprocess.get(flag) == name) == (name in JobSettings.model_fields)


def test_flag_values_reach_settings(monkeypatch):
    """Every settings flag stores into the field of its name, and values of each kind arrive as typed: a switch,
    numbers, a path, a choice, a list given in pieces, the limits; a flag overrides its variable."""
    from server.cli import ENV_ONLY, build_parser, settings
    from server.config import Settings

    parser = build_parser()
    serve = _flags(parser, "serve")
    for name in Settings.model_fields.keys() - ENV_ONLY:
        assert serve[f"--{name.replace('_', '-')}"] == name
    monkeypatch.setenv("VACE_PORT", "9")
    monkeypatch.delenv("VACE_API_KEYS", raising=False)
    given = settings(
        parser.parse_args(
            [
                "serve",
                "--tls",
                "--no-workers",
                "false",
                "--port",
                "8123",
                "--lease-s",
                "12.5",
                "--data-dir",
                "/tmp/d",
                "--memory-mode",
                "fp8",
                "--api-keys",
                "a",
                "b",
                "--api-keys",
                "c",
                "--limits",
                "max_ref_images=2",
                "--retention-s",
                "60",
                "--devices",
                "cpu",
                "cpu",
            ]
        )
    )
    assert (given.tls, given.no_workers, given.port, given.lease_s) == (True, False, 8123, 12.5)
    assert (given.data_dir, given.memory_mode, given.api_keys) == (Path("/tmp/d"), "fp8", {"a", "b", "c"})
    assert (given.limits.max_ref_images, given.retention_s, given.devices) == (2, 60, ("cpu", "cpu"))
    assert given.runtime.memory_mode == "fp8"  # RuntimeConfig is these settings' runtime part
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--memory-mode", "huge"])  # a choice is refused by argparse, with the choices


def test_renamed_settings_still_read_their_old_names_with_a_warning(monkeypatch, caplog):
    """Operators' scripts name the settings as they were before every duration ended in ``_s``: the old variables
    and flags still work, converted to seconds, and a warning names the new setting; a new name wins."""
    from server.cli import build_parser, settings
    from server.config import Settings

    monkeypatch.setenv("VACE_RETENTION_HOURS", "2")
    monkeypatch.setenv("VACE_LEASE_SECONDS", "7")
    monkeypatch.delenv("VACE_LEASE_S", raising=False)
    with caplog.at_level(logging.WARNING):
        old = Settings()
    assert (old.retention_s, old.lease_s) == (7200, 7)
    assert "--retention-hours (VACE_RETENTION_HOURS) is renamed --retention-s (VACE_RETENTION_S)" in caplog.text
    monkeypatch.setenv("VACE_LEASE_S", "3")
    assert Settings().lease_s == 3
    monkeypatch.delenv("VACE_RETENTION_HOURS")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        args = build_parser().parse_args(
            [
                "serve",
                "--lora-cache-url-hours",
                "0.5",
                "--api-key",
                "k1",
                "--api-key",
                "k2",
                "--timeout-keep-alive",
                "9",
                "--limit",
                "max_loras=1",
            ]
        )
    given = settings(args)
    assert (given.lora_cache_url_s, given.api_keys, given.keep_alive_timeout_s) == (1800, {"k1", "k2"}, 9)
    assert given.limits.max_loras == 1
    assert "--api-key is renamed --api-keys" in caplog.text and "--limit is renamed --limits" in caplog.text


def test_the_readme_configuration_table_names_every_setting():
    """The README's table is written for people (grouped, with links) but may not fall behind the settings: every
    flag and variable it should name is there, and no flag it names is gone."""
    from server.cli import ENV_ONLY
    from server.config import Settings

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("### Configuration") : readme.index("### Endpoints")]
    for name in Settings.model_fields:
        assert f"VACE_{name.upper()}" in table, name
        assert name in ENV_ONLY or re.search(rf"`--{name.replace('_', '-')}[ `\]]", table), name
    flags = {f"--{name.replace('_', '-')}" for name in Settings.model_fields} | {"--insecure-no-auth", "--access-log"}
    assert set(re.findall(r"^\| `(--[a-z-]+)", table, re.MULTILINE)) <= flags
