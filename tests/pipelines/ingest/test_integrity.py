"""Ingest integrity on a hostile corpus made here: truncated files whose index survives, garbage tails,
paths out of the videos root, unusable names and exact duplicates across sources."""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import tarfile
from pathlib import Path

import pytest

from pyratok.core import dataset as layout
from pyratok.core.storage import Storage
from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.config import InputSpec
from pyratok.pipelines.ingest.integrity import check_decode, check_index, top_level_boxes
from pyratok.pipelines.ingest.job import run_ingest
from pyratok.pipelines.ingest.paths import resolve_video
from pyratok.pipelines.ingest.reasons import RejectError
from tests.pipelines.ingest.conftest import ingest_config

SECONDS, FPS, GOP = 3, 24, 24
FRAMES = SECONDS * FPS


def encode(dest: Path, *, hue: int = 0, fmt: str = "mp4") -> Path:
    """A 1280x720 h264 clip of 72 frames, one keyframe a second, moov first (as downloads usually are)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    args = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", f"testsrc2=s=1280x720:r={FPS}:d={SECONDS}",
            "-vf", f"hue=h={hue}", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "35", "-g", str(GOP),
            "-pix_fmt", "yuv420p"]  # fmt: skip
    if fmt == "mp4":
        args += ["-movflags", "+faststart"]
    subprocess.run([*args, str(dest)], check=True)
    return dest


def reader(path: Path):
    data = path.read_bytes()
    return (lambda offset, length: data[offset : offset + length]), len(data)


def cut(src: Path, dest: Path, fraction: float) -> Path:
    data = src.read_bytes()
    dest.write_bytes(data[: int(len(data) * fraction)])
    return dest


def with_mdat_shrunk(src: Path, dest: Path, fraction: float) -> Path:
    """Cut ``src`` and rewrite its mdat header to the bytes left: every box fits the file, but the moov still
    lists all 72 samples (the file "says more frames than it holds")."""
    data = bytearray(src.read_bytes()[: int(src.stat().st_size * fraction)])
    kind, offset, _ = next(b for b in top_level_boxes(*reader(src)) if b[0] == b"mdat")
    struct.pack_into(">I", data, offset, len(data) - offset)
    dest.write_bytes(bytes(data))
    return dest


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return encode(tmp_path_factory.mktemp("integrity") / "clip.mp4")


# -- the checks, file by file -------------------------------------------------------------------------------
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95, 0.995])
def test_a_file_cut_after_its_index_is_truncated_and_the_detail_counts_the_missing_bytes(clip, tmp_path, fraction):
    short = cut(clip, tmp_path / "short.mp4", fraction)
    full, left = clip.stat().st_size, short.stat().st_size
    # the moov is complete: ffprobe still reports the whole 3 s stream
    probe = json.loads(subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(short)],
                                      capture_output=True, check=True).stdout)["streams"][0]  # fmt: skip
    assert int(probe["nb_frames"]) == FRAMES
    with pytest.raises(RejectError) as err:
        check_index(*reader(short), "short.mp4")
    assert err.value.reason == reasons.TRUNCATED
    assert f"ends {full - left} bytes short" in err.value.detail  # mdat is the last box: what is missing


def test_an_index_that_lists_more_samples_than_the_file_holds_is_truncated(clip, tmp_path):
    lying = with_mdat_shrunk(clip, tmp_path / "lying.mp4", 0.6)
    top_level_boxes(*reader(lying))  # every box fits the file now
    with pytest.raises(RejectError) as err:
        check_index(*reader(lying), "lying.mp4")
    assert err.value.reason == reasons.TRUNCATED
    # the last sample ends where the original file ended (moov, then one mdat to the end)
    assert f"video track's {FRAMES} samples end at byte {clip.stat().st_size}" in err.value.detail
    assert f"({clip.stat().st_size - lying.stat().st_size} missing)" in err.value.detail


def test_an_intact_file_passes_and_decode_covers_its_first_frames_and_last_gop(clip):
    check_index(*reader(clip), "clip.mp4")
    last_gop = FRAMES - GOP * ((FRAMES - 1) // GOP)  # from the last keyframe to the end
    assert check_decode(str(clip), duration_s=SECONDS, fps=FPS, head_frames=2) == 2 + last_gop


@pytest.mark.parametrize("damage", ["zeros", "garbage"])
def test_a_tail_that_is_there_but_garbage_is_corrupt(clip, tmp_path, damage):
    data = bytearray(clip.read_bytes())
    start = int(len(data) * 0.9)  # inside the last GOP
    if damage == "zeros":  # a preallocated download that never finished: right size, zero tail
        data[start:] = bytes(len(data) - start)
    else:
        rng = random.Random(0)
        data[start : start + 2000] = bytes(rng.randrange(256) for _ in range(2000))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(bytes(data))
    check_index(*reader(bad), "bad.mp4")  # the index cannot see it
    with pytest.raises(RejectError) as err:
        check_decode(str(bad), duration_s=SECONDS, fps=FPS)
    assert err.value.reason == reasons.CORRUPT


# -- paths ---------------------------------------------------------------------------------------------------
def test_paths_must_resolve_inside_the_videos_root(tmp_path):
    root, secret = tmp_path / "videos", tmp_path / "secret"
    (root / "sub").mkdir(parents=True)
    secret.mkdir()
    (secret / "private.mp4").write_bytes(b"x")
    (root / "sub" / "real.mp4").write_bytes(b"x")
    os.symlink(secret / "private.mp4", root / "link_out.mp4")
    os.symlink(root / "sub" / "real.mp4", root / "link_in.mp4")
    ok = lambda p: resolve_video(str(root), p, allow_outside=False)  # noqa: E731
    assert ok("sub/real.mp4") == f"{root}/sub/real.mp4"
    assert ok("link_in.mp4") == f"{root}/link_in.mp4"
    assert ok("sub/../sub/real.mp4") == f"{root}/sub/../sub/real.mp4"
    assert ok(str(root / "sub" / "real.mp4")) == str(root / "sub" / "real.mp4")  # absolute but inside
    for path in ("../secret/private.mp4", str(secret / "private.mp4"), "link_out.mp4", "sub/../../secret/private.mp4",
                 "s3://bucket/x.mp4", "https://example.com/x.mp4"):
        with pytest.raises(RejectError) as err:
            ok(path)
        assert err.value.reason == reasons.OUTSIDE_ROOT and "allow_paths_outside_root" in err.value.detail
    # the explicit option lets absolute paths and URIs through
    assert resolve_video(str(root), str(secret / "private.mp4"), allow_outside=True) == str(secret / "private.mp4")
    # the root's name as a prefix is not the root ("videos-other" is not inside "videos")
    (tmp_path / "videos-other").mkdir()
    with pytest.raises(RejectError):
        ok(str(tmp_path / "videos-other" / "a.mp4"))


def test_s3_keys_must_stay_under_the_prefix():
    ok = lambda p: resolve_video("s3://bucket/videos", p, allow_outside=False)  # noqa: E731
    assert ok("a/b.mp4") == "s3://bucket/videos/a/b.mp4"
    assert ok("a/../b.mp4") == "s3://bucket/videos/b.mp4"
    for path in ("../b.mp4", "a/../../b.mp4", "s3://other/videos/b.mp4", "s3://bucket/videos-x/b.mp4",
                 "s3://bucket/videos/../b.mp4"):
        with pytest.raises(RejectError) as err:
            ok(path)
        assert err.value.reason == reasons.OUTSIDE_ROOT, path


@pytest.mark.parametrize("path, what", [("a\x00b.mp4", "U+0000"), ("a\x1fb.mp4", "U+001F"), ("a\x7f.mp4", "U+007F"),
                                        ("x" * 256 + ".mp4", "component of more than 255"),
                                        ("/".join(["d" * 200] * 21), "more than 4096")])
def test_control_characters_and_overlong_names_are_bad_paths(tmp_path, path, what):
    with pytest.raises(RejectError) as err:
        resolve_video(str(tmp_path), path, allow_outside=False)
    assert err.value.reason == reasons.BAD_PATH and what in err.value.detail


# -- the job on the hostile corpus ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hostile(clip, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    videos, secret = base / "videos", base / "secret"
    good = {name: encode(videos / f"{name}.mp4", hue=hue) for name, hue in (("good", 0), ("other", 90), ("third", 180))}
    for fraction in (0.3, 0.6, 0.95):
        cut(clip, videos / f"cut{int(fraction * 100)}.mp4", fraction)
    with_mdat_shrunk(clip, videos / "lying.mp4", 0.6)
    zeros = bytearray(clip.read_bytes())
    zeros[int(len(zeros) * 0.9):] = bytes(len(zeros) - int(len(zeros) * 0.9))
    (videos / "zerotail.mp4").write_bytes(bytes(zeros))
    mkv = encode(base / "full.mkv", hue=30, fmt="mkv")
    cut(mkv, videos / "cut60.mkv", 0.6)  # no full index: caught after the remux, by its length
    (videos / "copy_of_good.mp4").write_bytes(good["good"].read_bytes())  # within the source
    (videos / "sub").mkdir()
    (videos / "sub" / "real.mp4").write_bytes(good["third"].read_bytes())
    os.symlink(videos / "sub" / "real.mp4", videos / "link_in.mp4")
    encode(secret / "private.mp4", hue=270)
    os.symlink(secret / "private.mp4", videos / "link_out.mp4")
    expected = {  # manifest path -> outcome
        # good.mp4 and copy_of_good.mp4 hold the same bytes: the smallest key ("manifest-copy_of_good-...") stays
        "good.mp4": reasons.DUPLICATE, "copy_of_good.mp4": "accepted", "other.mp4": "accepted", "link_in.mp4": "accepted",
        "cut30.mp4": reasons.TRUNCATED, "cut60.mp4": reasons.TRUNCATED, "cut95.mp4": reasons.TRUNCATED,
        "lying.mp4": reasons.TRUNCATED, "zerotail.mp4": reasons.CORRUPT, "cut60.mkv": reasons.TRUNCATED,
        "../secret/private.mp4": reasons.OUTSIDE_ROOT, str(secret / "private.mp4"): reasons.OUTSIDE_ROOT,
        "link_out.mp4": reasons.OUTSIDE_ROOT, "sub/../../secret/private.mp4": reasons.OUTSIDE_ROOT,
        "bad\x00name.mp4": reasons.BAD_PATH, "tab\tname.mp4": reasons.BAD_PATH, "n" * 300 + ".mp4": reasons.BAD_PATH,
    }  # fmt: skip
    manifest = base / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"path": p, "caption": f"clip {i}"}) + "\n" for i, p in enumerate(expected)))
    # another source (OpenVid layout) holding a byte copy of good.mp4 and of other.mp4
    (base / "ov").mkdir()
    (base / "ov" / "g.mp4").write_bytes(good["good"].read_bytes())
    (base / "ov" / "o.mp4").write_bytes(good["other"].read_bytes())
    (base / "ov.csv").write_text("video,caption\ng.mp4,copy of good\no.mp4,copy of other\n")
    inputs = [InputSpec(source="manifest", metadata=str(manifest), videos=str(videos)),
              InputSpec(source="openvid", metadata=str(base / "ov.csv"), videos=str(base / "ov"))]
    return base, inputs, expected


def _run(base: Path, name: str, inputs: list[InputSpec]):
    cfg = ingest_config(base / f"work-{name}", "ingest.filters.min_duration_s=1")
    return run_ingest(cfg, inputs=inputs, output=str(base / name))


@pytest.fixture(scope="module")
def hostile_run(ray_local, hostile):
    base, inputs, expected = hostile
    return _run(base, "out", inputs)


def test_every_hostile_input_is_accounted_for_with_its_reason(hostile, hostile_run):
    base, inputs, expected = hostile
    storage = Storage()
    manifest = storage.read_parquet(layout.manifest_uri(hostile_run.output))
    rejects = storage.read_parquet(layout.rejects_uri(hostile_run.output))
    assert hostile_run.invariant_ok and hostile_run.inputs == len(expected) + 2
    paths = list(expected)
    got = {(0, r.row): "accepted" for r in manifest.itertuples() if r.input == 0}
    got.update({(r.input, r.row): r.reason for r in rejects.itertuples()})
    assert {paths[row]: got[(0, row)] for row in range(len(paths))} == expected
    # both OpenVid rows are copies: the manifest's keys ("manifest-..." < "openvid-...") are kept
    assert got[(1, 0)] == got[(1, 1)] == reasons.DUPLICATE
    dup = rejects.set_index(["input", "row"])
    kept = manifest.set_index("video")
    kept_good = kept.loc[str(base / "videos" / "copy_of_good.mp4"), "key"]
    assert kept_good.startswith("manifest-copy_of_good-")
    assert kept_good in dup.loc[(1, 0), "detail"] and kept_good in dup.loc[(0, paths.index("good.mp4")), "detail"]
    assert kept.loc[str(base / "videos" / "other.mp4"), "key"] in dup.loc[(1, 1), "detail"]
    assert "private" not in " ".join(manifest["video"])
    details = dict(zip(rejects["path"], rejects["detail"]))
    assert "bytes short" in details[str(base / "videos" / "cut60.mp4")]
    assert "samples end at byte" in details[str(base / "videos" / "lying.mp4")]
    assert "stored clip lasts" in details[str(base / "videos" / "cut60.mkv")]


def test_every_clip_in_every_shard_decodes_end_to_end_with_empty_stderr(hostile_run, tmp_path):
    clips = 0
    for shard in hostile_run.shards:
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                if not member.name.endswith(".mp4"):
                    continue
                path = tmp_path / member.name
                path.write_bytes(tar.extractfile(member).read())
                run = subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-i", str(path), "-f", "null", "-"],
                                     capture_output=True)  # fmt: skip
                assert run.returncode == 0 and run.stderr == b"", (member.name, run.stderr[-500:])
                clips += 1
    assert clips == hostile_run.accepted == 3


def test_duplicates_resolve_the_same_whichever_copy_comes_first(hostile, hostile_run):
    base, inputs, _ = hostile
    again = _run(base, "reversed", list(reversed(inputs)))
    storage = Storage()
    first = storage.read_parquet(layout.manifest_uri(hostile_run.output))
    second = storage.read_parquet(layout.manifest_uri(again.output))
    assert sorted(first["key"]) == sorted(second["key"])
    assert [Path(s).read_bytes() for s in hostile_run.shards] == [Path(s).read_bytes() for s in again.shards]
    assert again.rejected_by_reason == hostile_run.rejected_by_reason


def test_the_readme_lists_every_reject_reason():
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    assert [r for r in reasons.ALL if f"`{r}`" not in readme] == []
