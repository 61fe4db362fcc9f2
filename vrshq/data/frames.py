"""Frame decoding: JPEG folders (PIL) and mp4 files (decord), both through fsspec.

All frames come out as RGB uint8 ``(T, H, W, 3)``. Grayscale, palette, CMYK, alpha and 16-bit
images are converted to RGB uint8; truncated or garbage files, missing frames, corrupt or empty
videos and frames of different sizes raise :class:`~vrshq.data.DataError` naming the file.

PIL is used rather than ``cv2.imdecode`` because cv2 silently returns a partly grey image for a
truncated JPEG, while PIL raises; both decode with libjpeg-turbo.
"""
from __future__ import annotations

import io
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from vrshq.data._fs import cat_many
from vrshq.storage import filesystem_for, join_uri
from vrshq.data.errors import DataError
from vrshq.data.paths import contained_uri
from vrshq.data.records import VideoRecord

__all__ = ["FRAME_EXTENSION", "decode_image", "iter_frame_chunks", "load_frames", "probe_frame_size", "frame_uri"]

#: File extension of the frames in ``frames_uri`` (ReVOS, MeViS, Ref-YouTube-VOS).
FRAME_EXTENSION = ".jpg"


def frame_uri(video: VideoRecord, index: int) -> str:
    """URI of frame ``index`` (position in ``video.frame_names``) of a JPEG-folder video."""
    if video.frames_uri is None:
        raise ValueError(f"video {video.video_id!r} has no frames_uri (it is an mp4: {video.video_uri})")
    return contained_uri(video.frames_uri, video.frame_names[index] + FRAME_EXTENSION, what="frame name")


def decode_image(data: bytes, *, uri: str = "<bytes>") -> np.ndarray:
    """Decode an encoded image (JPEG, PNG, ...) to RGB uint8 ``(H, W, 3)``.

    16-bit images keep their 8 most significant bits; other modes go through PIL's RGB conversion.

    Raises:
        DataError: the bytes are not a decodable image (garbage, truncated, empty).
    """
    if not data:
        raise DataError(uri, "image file is empty")
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decodes now, so truncation raises here
            return _to_rgb_uint8(image)
    except UnidentifiedImageError:
        raise DataError(uri, "not a decodable image (unknown format or garbage bytes)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # PIL: truncated data, broken headers
        raise DataError(uri, f"corrupt image: {exc}") from None


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit samples (PNG opens as "I;16", or "I" in older Pillow): keep the high byte.
        gray = np.clip(np.asarray(image).astype(np.int64) >> 8, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        gray = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image, dtype=np.uint8)


def load_frames(
    video: VideoRecord,
    *,
    frame_indices: Sequence[int] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    decode_threads: int = 4,
) -> np.ndarray:
    """Decode frames of a video to RGB uint8 ``(T, H, W, 3)``.

    Args:
        video: the record; ``frames_uri`` (JPEG folder) is used when set, else ``video_uri`` (mp4).
        frame_indices: positions in ``video.frame_names`` to decode, in the order wanted; all by
            default. For mp4 only these frames are decoded (decord ``get_batch``).
        storage_options: fsspec options for the URIs.
        decode_threads: threads decoding JPEGs (PIL releases the GIL) or used by decord.

    Raises:
        DataError: a missing or corrupt frame file, a corrupt or empty mp4, an mp4 whose frame
            count differs from ``frame_names``, frames of different sizes, or frames whose size
            differs from the record's ``height``/``width``.
        IndexError: a frame index out of range.
    """
    indices = _check_indices(video, frame_indices)
    if video.frames_uri is not None:
        frames = _load_jpeg_frames(video, indices, storage_options, decode_threads)
    else:
        frames = _load_mp4_frames(video, indices, storage_options, decode_threads)
    if video.height is not None and video.width is not None and frames.shape[1:3] != (video.height, video.width):
        uri = video.frames_uri or video.video_uri
        raise DataError(
            uri,
            f"frames are {frames.shape[1]}x{frames.shape[2]} (HxW) but the meta says "
            f"{video.height}x{video.width} for video {video.video_id!r}",
        )
    return frames


def probe_frame_size(video: VideoRecord, *, storage_options: Mapping[str, Any] | None = None) -> tuple[int, int]:
    """``(height, width)`` of the video: from the record, else from the first frame's header only."""
    if video.height is not None and video.width is not None:
        return video.height, video.width
    if video.frames_uri is None:
        frame = load_frames(video, frame_indices=[0], storage_options=storage_options)[0]
        return int(frame.shape[0]), int(frame.shape[1])
    uri = frame_uri(video, 0)
    fs, path = filesystem_for(uri, storage_options)
    try:
        with fs.open(path, "rb") as handle, Image.open(handle) as image:
            width, height = image.size
    except FileNotFoundError:
        raise DataError(uri, "frame file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(uri, f"not a decodable image: {exc}") from None
    return height, width


def _check_indices(video: VideoRecord, frame_indices: Sequence[int] | None) -> list[int]:
    count = video.num_frames
    if frame_indices is None:
        return list(range(count))
    indices = [int(i) for i in frame_indices]
    bad = [i for i in indices if not 0 <= i < count]
    if bad:
        raise IndexError(f"frame indices {bad} out of range for video {video.video_id!r} with {count} frames")
    return indices


def _load_jpeg_frames(
    video: VideoRecord, indices: list[int], storage_options: Mapping[str, Any] | None, threads: int
) -> np.ndarray:
    fs, folder = filesystem_for(video.frames_uri, storage_options)
    names = [video.frame_names[i] + FRAME_EXTENSION for i in indices]
    # Frame names are data: each is checked to stay under the video's folder before it is read.
    paths = [contained_uri(folder, name, what="frame name") for name in names]
    unique = list(dict.fromkeys(paths))
    fetched = cat_many(fs, unique)  # one concurrent request batch on s3fs
    uris = {p: join_uri(video.frames_uri, n) for p, n in zip(paths, names)}
    for path in unique:
        value = fetched[path]
        if isinstance(value, FileNotFoundError):
            raise DataError(uris[path], f"frame file not found (video {video.video_id!r})")
        if isinstance(value, IsADirectoryError):
            raise DataError(uris[path], "expected a frame file, found a folder")
        if isinstance(value, OSError):  # network or permission trouble is not a data problem: let callers retry,
            try:  # but keep the type and name the file (a bare "Forbidden" names nothing)
                named = type(value)(f"{uris[path]}: {value}")
            except Exception:  # noqa: BLE001 - an OSError subclass with another constructor
                raise value from None
            raise named from value
        if isinstance(value, Exception):
            raise value

    def decode(path: str) -> np.ndarray:
        return decode_image(fetched[path], uri=uris[path])

    if threads > 1 and len(unique) > 1:
        with ThreadPoolExecutor(max_workers=min(threads, len(unique))) as pool:
            decoded = dict(zip(unique, pool.map(decode, unique)))
    else:
        decoded = {p: decode(p) for p in unique}
    first = decoded[unique[0]]
    for path in unique[1:]:
        if decoded[path].shape != first.shape:
            raise DataError(
                uris[path],
                f"frame is {decoded[path].shape[0]}x{decoded[path].shape[1]} (HxW) but frame "
                f"{uris[unique[0]].rsplit('/', 1)[1]} of the same video is {first.shape[0]}x{first.shape[1]}",
            )
    return np.stack([decoded[p] for p in paths]) if paths else np.zeros((0, 0, 0, 3), np.uint8)


def _load_mp4_frames(
    video: VideoRecord, indices: list[int], storage_options: Mapping[str, Any] | None, threads: int
) -> np.ndarray:
    reader = _open_mp4(video, storage_options, threads)
    if not indices:
        return np.zeros((0, 0, 0, 3), np.uint8)
    return _decode_mp4_batch(reader, video, indices)


def _open_mp4(video: VideoRecord, storage_options: Mapping[str, Any] | None, threads: int) -> Any:
    """A decord reader of the video's mp4, its frame count checked against the record."""
    import decord  # heavy native library: imported only when an mp4 is read

    uri = video.video_uri
    fs, path = filesystem_for(uri, storage_options)
    try:
        with fs.open(path, "rb") as handle:  # decord reads the whole file object into memory
            reader = decord.VideoReader(handle, ctx=decord.cpu(0), num_threads=max(threads, 0))
    except FileNotFoundError:
        raise DataError(uri, f"video file not found (video {video.video_id!r})") from None
    except AssertionError:  # decord asserts a positive frame count
        raise DataError(uri, "video has no frames") from None
    except (RuntimeError, decord.DECORDError) as exc:
        if "cannot find video stream" in str(exc):  # also what a video written with zero frames gives
            raise DataError(uri, "video has no video stream (no frames, or a corrupt container)") from None
        raise DataError(uri, f"corrupt or unreadable video: {_first_line(exc)}") from None
    count = len(reader)
    if count == 0:
        raise DataError(uri, "video has no frames")
    if count != video.num_frames:
        raise DataError(uri, f"video has {count} frames but the record lists {video.num_frames} frame names")
    return reader


def _decode_mp4_batch(reader: Any, video: VideoRecord, indices: list[int]) -> np.ndarray:
    import decord

    uri = video.video_uri
    try:
        batch = reader.get_batch(indices)
    except (RuntimeError, decord.DECORDError) as exc:
        raise DataError(uri, f"corrupt video data while decoding frames {indices}: {_first_line(exc)}") from None
    frames = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)  # any decord bridge
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise DataError(uri, f"decoded frames have shape {frames.shape}, expected (T, H, W, 3)")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def iter_frame_chunks(
    video: VideoRecord,
    *,
    chunk_frames: int = 64,
    storage_options: Mapping[str, Any] | None = None,
    decode_threads: int = 4,
) -> Iterator[np.ndarray]:
    """Decode all of a video's frames in order, ``chunk_frames`` at a time.

    Long videos (thousands of frames, or 4K) never need all their full-size frames in memory at
    once: a caller that shrinks or encodes each chunk keeps memory O(chunk). An mp4 is opened once
    for all chunks. Every chunk is checked like :func:`load_frames`, and all chunks must have the
    size of the first.

    Yields:
        uint8 ``(t, H, W, 3)`` RGB arrays, ``t <= chunk_frames``, covering frames ``0..T-1`` in order.

    Raises:
        ValueError: ``chunk_frames`` < 1.
        DataError: as :func:`load_frames`, naming the file.
    """
    if not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
    uri = video.frames_uri or video.video_uri
    reader = _open_mp4(video, storage_options, decode_threads) if video.frames_uri is None else None
    first_hw: tuple[int, int] | None = None
    for start in range(0, video.num_frames, chunk_frames):
        indices = list(range(start, min(start + chunk_frames, video.num_frames)))
        if reader is None:
            chunk = load_frames(video, frame_indices=indices, storage_options=storage_options,
                                decode_threads=decode_threads)
        else:
            chunk = _decode_mp4_batch(reader, video, indices)
        hw = (int(chunk.shape[1]), int(chunk.shape[2]))
        if first_hw is None:
            first_hw = hw
        elif hw != first_hw:
            raise DataError(uri, f"frames of different sizes in video {video.video_id!r}: frames from "
                                 f"{start} are {hw[0]}x{hw[1]} (HxW), frame 0 is {first_hw[0]}x{first_hw[1]}")
        yield chunk


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
