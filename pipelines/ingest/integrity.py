"""Does a video hold what its index promises? Cheap checks against truncated and corrupt files.

Truncated downloads and partial copies are the commonest defect of a large dataset pull, and the
worst kind keeps its index: an mp4 written with ``+faststart`` has its ``moov`` first, so ffprobe
reports the complete, plausible stream of a file cut in half. Two checks catch them without
decoding the whole file:

* **index vs bytes** (:func:`check_index`): in ISO-BMFF (mp4/mov/m4v) every top-level box and every
  sample the tracks' sample tables point at (``stco``/``co64`` + ``stsc`` + ``stsz``) must end
  inside the file. Only box headers and the ``moov`` are read (a few range reads on S3).
* **decode the ends** (:func:`check_decode`): seek to the last keyframe and decode to the end (the
  last GOP), and the first frames; the last frame must reach the stream's duration. Bytes that are
  present but garbage (a zero-filled preallocated download, bit rot at the tail) fail here, and so
  does a container without a full index (mkv/webm remuxed to mp4) that lost its tail.

Both raise :class:`~pyratok.pipelines.ingest.reasons.RejectError` with reason ``truncated`` or
``corrupt`` and a detail naming what is missing.
"""

from __future__ import annotations

import struct
from typing import Callable

import numpy as np

from pyratok.pipelines.ingest import reasons
from pyratok.pipelines.ingest.reasons import RejectError

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, length)`` -> up to ``length`` bytes of the file from ``offset``."""

_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf"}
HANDLERS = {"vide": "video", "soun": "audio", "subt": "subtitle", "text": "text", "hint": "hint", "meta": "metadata"}
MAX_MOOV_BYTES = 256 << 20
"""A moov above this is not a video index we can trust (a 10 h 60 fps video's is ~30 MB)."""


def is_iso_bmff(format_name: str) -> bool:
    return format_name.startswith("mov,mp4")


def _header(head: bytes, room: int) -> tuple[bytes, int, int] | None:
    """(type, header length, declared size) of the box header at the start of ``head`` (None: cut off).

    ``room``: the bytes from the box's start to the end of its parent (a size of 0 means "to the end")."""
    if len(head) < 8:
        return None
    size, kind = struct.unpack_from(">I4s", head, 0)
    if size == 1:
        if len(head) < 16:
            return None
        return kind, 16, struct.unpack_from(">Q", head, 8)[0]
    return kind, 8, room if size == 0 else size


def _boxes(data: bytes, start: int, end: int):
    """(type, payload start, payload end) of the boxes in ``data[start:end]`` (inside the moov)."""
    pos = start
    while pos + 8 <= end:
        parsed = _header(data[pos : min(pos + 16, end)], end - pos)
        if parsed is None:
            return
        kind, header, size = parsed
        if size < header or pos + size > end:
            raise RejectError(reasons.CORRUPT, f"malformed {kind!r} box at offset {pos} inside the moov")
        yield kind, pos + header, pos + size
        pos += size


def top_level_boxes(read_at: ReadAt, file_size: int) -> list[tuple[bytes, int, int]]:
    """(type, offset, declared size) of each top-level box; :class:`RejectError` ``truncated`` when one
    runs past the end of the file."""
    out, pos = [], 0
    while pos < file_size:
        parsed = _header(read_at(pos, 16), file_size - pos)
        if parsed is None:
            raise RejectError(reasons.TRUNCATED, f"box header at offset {pos} is cut off ({file_size} bytes in the file)")
        kind, header, size = parsed
        if size < header:
            raise RejectError(reasons.CORRUPT, f"box {kind.decode('latin-1')!r} at offset {pos} declares {size} bytes")
        if pos + size > file_size:
            raise RejectError(
                reasons.TRUNCATED,
                f"box {kind.decode('latin-1')!r} at offset {pos} declares {size} bytes, but the file ends "
                f"{pos + size - file_size} bytes short ({file_size} bytes in the file)",
            )
        out.append((kind, pos, size))
        pos += size
    return out


def _after_version(start: int) -> int:
    """Offset after a full box's version and flags."""
    return start + 4


def _track_extent(moov: bytes, start: int, end: int) -> tuple[str, int, int] | None:
    """(handler, samples, end offset of the last byte the track's samples use) of one ``trak``."""
    found: dict[bytes, tuple[int, int]] = {}

    def walk(s: int, e: int) -> None:
        for kind, ps, pe in _boxes(moov, s, e):
            if kind in _CONTAINERS:
                walk(ps, pe)
            elif kind in (b"hdlr", b"stsz", b"stco", b"co64", b"stsc"):
                found[kind] = (ps, pe)

    walk(start, end)
    code = moov[found[b"hdlr"][0] + 8 : found[b"hdlr"][0] + 12].decode("latin-1") if b"hdlr" in found else "?"
    handler = HANDLERS.get(code, code)
    if b"stsz" not in found or b"stsc" not in found or not (b"stco" in found or b"co64" in found):
        return None  # fragmented (moof) or no samples: the top-level walk covers its bytes
    try:
        sizes = _sample_sizes(moov, *found[b"stsz"])
        offsets = _chunk_offsets(moov, *(found[b"co64"] if b"co64" in found else found[b"stco"]), wide=b"co64" in found)
        per_chunk = _samples_per_chunk(moov, *found[b"stsc"], chunks=len(offsets))
    except (struct.error, ValueError) as exc:
        raise RejectError(reasons.CORRUPT, f"{handler} track's sample tables are malformed: {exc}") from None
    if not len(offsets) or not len(sizes):
        return handler, 0, 0
    if int(per_chunk.sum()) < len(sizes):
        raise RejectError(
            reasons.CORRUPT,
            f"{handler} track lists {len(sizes)} samples but its chunks hold {int(per_chunk.sum())}",
        )
    # Chunk c holds samples [first[c], first[c] + per_chunk[c]); it ends at offset[c] + their sizes.
    cumulative = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    first = np.concatenate([[0], np.cumsum(per_chunk, dtype=np.int64)[:-1]])
    last = np.minimum(first + per_chunk, len(sizes))
    used = first < len(sizes)
    ends = offsets[used] + cumulative[last[used]] - cumulative[first[used]]
    return handler, len(sizes), int(ends.max(initial=0))


def _sample_sizes(data: bytes, start: int, end: int) -> np.ndarray:
    pos = _after_version(start)
    uniform, count = struct.unpack_from(">II", data, pos)
    if uniform:
        return np.full(count, uniform, dtype=np.int64)
    if pos + 8 + 4 * count > end:
        raise ValueError(f"stsz lists {count} samples in {end - pos - 8} bytes")
    return np.frombuffer(data, dtype=">u4", count=count, offset=pos + 8).astype(np.int64)


def _chunk_offsets(data: bytes, start: int, end: int, *, wide: bool) -> np.ndarray:
    pos = _after_version(start)
    (count,) = struct.unpack_from(">I", data, pos)
    width = 8 if wide else 4
    if pos + 4 + width * count > end:
        raise ValueError(f"chunk offset table lists {count} chunks in {end - pos - 4} bytes")
    return np.frombuffer(data, dtype=">u8" if wide else ">u4", count=count, offset=pos + 4).astype(np.int64)


def _samples_per_chunk(data: bytes, start: int, end: int, *, chunks: int) -> np.ndarray:
    pos = _after_version(start)
    (count,) = struct.unpack_from(">I", data, pos)
    if pos + 4 + 12 * count > end:
        raise ValueError(f"stsc lists {count} runs in {end - pos - 4} bytes")
    table = np.frombuffer(data, dtype=">u4", count=3 * count, offset=pos + 4).reshape(count, 3).astype(np.int64)
    out = np.zeros(chunks, dtype=np.int64)
    for i, (first_chunk, samples, _) in enumerate(table):
        stop = table[i + 1][0] - 1 if i + 1 < count else chunks
        out[max(0, first_chunk - 1) : max(0, stop)] = samples
    return out


def check_index(read_at: ReadAt, file_size: int, name: str) -> None:
    """ISO-BMFF only: every top-level box and every sample of every track ends inside the file."""
    boxes = top_level_boxes(read_at, file_size)
    moov = next(((offset, size) for kind, offset, size in boxes if kind == b"moov"), None)
    if moov is None:
        if any(kind == b"moof" for kind, _, _ in boxes):
            return  # fragmented mp4: every fragment's box was checked above
        raise RejectError(reasons.TRUNCATED, f"{name} has no moov box (an mp4 whose index was never written)")
    offset, size = moov
    if size > MAX_MOOV_BYTES:
        raise RejectError(reasons.CORRUPT, f"{name}: moov box of {size} bytes")
    data = read_at(offset, size)
    if len(data) < size:
        raise RejectError(reasons.TRUNCATED, f"{name}: moov box cut off ({len(data)} of {size} bytes)")
    for kind, start, end in _boxes(data, _header(data[:16], size)[1], len(data)):
        if kind != b"trak":
            continue
        extent = _track_extent(data, start, end)
        if extent and extent[2] > file_size:
            handler, samples, used_end = extent
            raise RejectError(
                reasons.TRUNCATED,
                f"{name}: the {handler} track's {samples} samples end at byte {used_end}, "
                f"but the file has {file_size} bytes ({used_end - file_size} missing)",
            )


def check_decode(path: str, *, duration_s: float, fps: float, head_frames: int = 2, name: str = "") -> int:
    """Decode the first ``head_frames`` frames and the last GOP of a local file; return frames decoded.

    The last decoded frame must end within two frame periods of ``duration_s`` (what the
    container says), and the decoder must not report an error on the way.
    """
    import av

    name = name or path
    period = 1.0 / fps if fps > 0 else 0.04
    decoded = 0
    try:
        with av.open(path, mode="r") as container:
            if not container.streams.video:
                raise RejectError(reasons.CORRUPT, f"{name}: no video stream to decode")
            stream = container.streams.video[0]
            # No frame threading: ingest runs many clips in parallel already, and for a dozen frames
            # it costs twice the CPU (measured: 45 vs 23 ms per 1080p clip).
            # Decoders conceal damage and only *log* it (PyAV keeps libav's log off); "explode" makes
            # the first bitstream error an exception instead.
            stream.codec_context.options = {"err_detect": "explode"}
            for _ in zip(range(head_frames), container.decode(stream)):
                decoded += 1
            if decoded < min(head_frames, 1):
                raise RejectError(reasons.CORRUPT, f"{name}: its first frame does not decode")
            tail_from = max(0.0, duration_s - period)
            container.seek(int(tail_from / stream.time_base), stream=stream, backward=True, any_frame=False)
            last_end = None
            for frame in container.decode(stream):
                decoded += 1
                if frame.time is not None:
                    last_end = max(last_end or 0.0, frame.time + period)
    except RejectError:
        raise
    except (av.error.FFmpegError, ValueError, OSError) as exc:
        raise RejectError(reasons.CORRUPT, f"{name}: decoding failed: {exc}") from None
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    if last_end is None or last_end - start < duration_s - 2 * period:
        got = "no frame" if last_end is None else f"frames up to {last_end - start:.3f} s"
        raise RejectError(reasons.TRUNCATED, f"{name}: the last GOP decodes {got} of a {duration_s:.3f} s stream")
    return decoded
