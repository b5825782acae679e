"""The ``vace`` command line: generate with schema flags, clear errors, and the weights commands."""

from __future__ import annotations

import json

from pipelines.video_io import probe_video
from server.cli import main


def test_generate_writes_the_video_and_prints_the_fal_output(tiny_weights, pose_video, tmp_path, capsys):
    out = tmp_path / "result.mp4"
    code = main([
        "generate", "depth", "--model", "wan-vace-14b", "--weights-dir", str(tiny_weights), "-q",
        "--video", str(pose_video), "--prompt", "a robot walking", "--num-frames", "17",
        "--num_inference_steps", "2", "--seed", "5", "--acceleration", "none", "--frames_per_second", "12",
        "--return_frames_zip", "-o", str(out),
    ])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["seed"] == 5 and printed["prompt"] == "a robot walking"
    assert printed["video"]["url"] == out.as_uri()
    assert printed["frames_zip"]["url"] == out.with_suffix(".zip").as_uri()
    info = probe_video(out)
    assert (info.num_frames, info.fps, info.width, info.height) == (17, 12, 416, 240)


def test_out_of_range_flag_is_a_one_line_error(tiny_weights, pose_video, tmp_path, capsys):
    code = main([
        "generate", "pose", "--weights-dir", str(tiny_weights), "--video", str(pose_video), "--prompt", "p",
        "--num_frames", "300", "-o", str(tmp_path / "x.mp4"),
    ])
    assert code == 2
    err = capsys.readouterr().err
    assert "num_frames" in err and "less than or equal to 241" in err and "Traceback" not in err


def test_missing_video_is_a_download_error(tiny_weights, tmp_path, capsys):
    code = main([
        "generate", "pose", "--weights-dir", str(tiny_weights), "--video", str(tmp_path / "nope.mp4"),
        "--prompt", "p", "-o", str(tmp_path / "x.mp4"),
    ])
    assert code == 2
    assert "video_url" in capsys.readouterr().err


def test_missing_weights_say_how_to_get_them(pose_video, tmp_path, capsys):
    code = main([
        "generate", "pose", "--weights-dir", str(tmp_path / "empty"), "--video", str(pose_video), "--prompt", "p",
        "--num_inference_steps", "2", "-o", str(tmp_path / "x.mp4"),
    ])
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
    code = main([
        "preprocess", "depth", "--annotator", "depth_anything_v2", "--weights-dir", str(tiny_weights),
        "--video", str(pose_video), "-o", str(out),
    ])
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
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=65x47:rate=8", "-frames:v", "5", "-pix_fmt", "yuv444p", str(odd)], check=True)
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
    args = build_parser().parse_args(["generate", "pose", "--video", "v.mp4", "--prompt", "p", "--parallel",
                                      "cfg=2", "-o", "x.mp4"])
    assert args.job_parallel == "cfg=2"
    assert settings(args).parallel is None
