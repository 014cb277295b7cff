"""Devices of the voice + camera assistant: microphones, speakers and cameras, each also backed by files.

Open them through ``open_microphone``, ``open_speaker`` and ``open_camera``: a spec naming a file (or a folder of
images) gives the file-backed device, anything else a real one. The assistant cannot tell them apart, so it runs
in tests and demos without hardware. A missing or unusable device raises ``DeviceError`` with one line.
"""

from edgemm.device.audio import DeviceError, list_audio_devices, open_microphone, open_speaker
from edgemm.device.camera import open_camera

__all__ = ["DeviceError", "list_audio_devices", "open_camera", "open_microphone", "open_speaker"]
