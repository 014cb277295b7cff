"""Cameras: a real one through OpenCV, and file-backed ones (an image, a folder of images, a video) for tests and
demos. ``grab()`` returns the next frame as uint8 RGB [H, W, 3] either way.

OpenCV is optional (``pip install opencv-python``) and imported only when a video or a real camera is opened.
"""

from __future__ import annotations

import glob
import os
import sys
from pathlib import Path

import numpy as np

from edgemm.device.audio import DeviceError
from edgemm.runtime.limits import InputError, check_input_file
from edgemm.runtime.vision.image import ImageError, load_image

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".heic"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".mjpeg", ".mjpg"}


def _cv2():
    # FFmpeg's own messages ("moov atom not found") would reach the terminal beside our one-line errors.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    try:
        import cv2
    except ImportError:
        raise DeviceError("OpenCV is not installed (pip install opencv-python)") from None
    return cv2


def _video_devices() -> str:
    """The /dev/video* devices found, for error messages."""
    return ", ".join(sorted(glob.glob("/dev/video*"))) or "none"


def _open_capture(cv2, source: int | str, camera: bool):
    """A VideoCapture with OpenCV's own warnings silenced: our DeviceError says what went wrong.

    For a camera on Linux only V4L2 is tried, so a missing one is not retried through FFmpeg and other backends.
    """
    api = cv2.CAP_V4L2 if camera and sys.platform.startswith("linux") else cv2.CAP_ANY
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return cv2.VideoCapture(source, api)
    finally:
        cv2.utils.logging.setLogLevel(level)


def _rgb(cv2, frame: np.ndarray) -> np.ndarray:
    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2RGB)
    if frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2RGB)
    return cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)


class _Camera:
    """Context-manager plumbing shared by every camera."""

    def grab(self) -> np.ndarray:
        raise NotImplementedError

    def peek(self) -> np.ndarray:
        """The frame ``grab`` would give now, without taking it: a file camera stays on its frame (a live camera's
        latest frame is simply grabbed). The assistant looks at it while a question is still being spoken."""
        return self.grab()

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class FileCamera(_Camera):
    """Frames from files: an image (the same frame each grab), a folder of images (in name order, one per grab,
    cycling), or a video (the next frame per grab, rewinding at the end).

    Images go through ``load_image``, so EXIF orientation, palettes, 16-bit and alpha are handled as everywhere
    else; a damaged image raises ImageError.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self._frame: np.ndarray | None = None
        self._images: list[Path] = []
        self._next = 0
        self._capture = None
        try:  # missing, a broken link, a link loop, no permission: one line
            if not self.path.is_dir():
                check_input_file(self.path, "camera image or video")
        except InputError as e:
            raise DeviceError(str(e)) from None
        if self.path.is_dir():
            self._images = sorted(p for p in self.path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not self._images:
                raise DeviceError(
                    f"{self.path}: no images in the folder (looked for {', '.join(sorted(IMAGE_SUFFIXES))})"
                )
        elif self.path.suffix.lower() in VIDEO_SUFFIXES:
            self._open_video()
        else:
            try:
                self._frame = np.asarray(load_image(self.path))
            except ImageError:
                if self.path.suffix.lower() in IMAGE_SUFFIXES:
                    raise
                self._open_video()  # an unknown suffix that is not an image may still be a video

    def _open_video(self) -> None:
        cv2 = _cv2()
        capture = _open_capture(cv2, str(self.path), camera=False)
        if not capture.isOpened() or not capture.read()[0]:
            capture.release()
            raise DeviceError(f"{self.path}: cannot read it as a video or an image")
        capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
        self._capture = capture

    def grab(self) -> np.ndarray:
        if self._frame is not None:
            return self._frame.copy()
        if self._images:
            path = self._images[self._next % len(self._images)]
            self._next += 1
            return np.asarray(load_image(path))
        return self._grab_video()

    def peek(self) -> np.ndarray:
        if self._images:
            return np.asarray(load_image(self._images[self._next % len(self._images)]))
        if self._frame is None and self._capture is not None:  # a video: read the next frame and step back
            cv2 = _cv2()
            position = self._capture.get(cv2.CAP_PROP_POS_FRAMES)
            frame = self._grab_video()
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, position)
            return frame
        return self.grab()

    def _grab_video(self) -> np.ndarray:
        cv2 = _cv2()
        if self._capture is None:
            raise DeviceError(f"camera {self.path} is closed")
        ok, frame = self._capture.read()
        if not ok:  # the end: rewind; reopen where the backend cannot seek
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._capture.read()
            if not ok:
                self._capture.release()
                self._capture = _open_capture(cv2, str(self.path), camera=False)
                ok, frame = self._capture.read()
        if not ok:
            raise DeviceError(f"{self.path}: no frame could be read from the video")
        return _rgb(cv2, frame)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class Camera(_Camera):
    """A real camera through OpenCV: a device index (0 is the first) or a /dev/videoN path."""

    def __init__(self, device: int | str = 0):
        cv2 = _cv2()
        text = str(device).strip()
        self.device: int | str = int(text) if text.isdigit() else text
        capture = _open_capture(cv2, self.device, camera=True)
        if not capture.isOpened():
            capture.release()
            raise DeviceError(f"cannot open camera {text!r}: video devices found: {_video_devices()}")
        self._capture = capture

    def grab(self) -> np.ndarray:
        cv2 = _cv2()
        if self._capture is None:
            raise DeviceError(f"camera {self.device!r} is closed")
        ok, frame = self._capture.read()
        if not ok or frame is None:
            raise DeviceError(
                f"camera {self.device!r} gave no frame (unplugged or used by another program?);"
                f" video devices found: {_video_devices()}"
            )
        return _rgb(cv2, frame)

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


def open_camera(spec: str | None = None) -> FileCamera | Camera:
    """``spec``: None (camera 0), a camera index, a /dev/videoN path, or an image, folder of images or video."""
    if spec is None:
        return Camera(0)
    text = str(spec).strip()
    if text.isdigit() or text.startswith("/dev/video"):
        return Camera(text)
    if Path(text).expanduser().exists():
        return FileCamera(text)
    raise DeviceError(
        f"no camera {text!r}: not a file, a folder, a camera index or a /dev/video path;"
        f" video devices found: {_video_devices()}"
    )
