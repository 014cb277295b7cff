"""The models an assistant or a server answers with, loaded once by one function for both."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgemm.runtime.llm import LanguageModel
from edgemm.runtime.speech import Transcriber


@dataclass
class Parts:
    lm: LanguageModel
    transcriber: Transcriber | None = None
    images: object | None = None  # vision.ImageQuestion
    synthesizer: object | None = None  # tts.Synthesizer

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        speech_model: str | Path | None = None,
        vision_model: str | Path | None = None,
        threads: int | None = None,
        context: int | None = None,
        speech: bool = True,
        vision: bool = True,
        voice: bool = True,
        voice_model: str | Path | None = None,
        without_voice: str = "text only",
    ) -> Parts:
        """The default bundles (or those named); a part turned off is not loaded. The language model is required,
        and so is a part turned on, except the default voice: without the tts extra or a voice, one logged line says
        what goes ``without_voice``. ``voice_model``: a voice bundle or Piper ``.onnx`` voice (then it must load)."""
        from edgemm.runtime import tts
        from edgemm.runtime.vision import ImageQuestion

        if voice and voice_model is not None:
            synthesizer = tts.Synthesizer(voice_model, threads=threads)
        else:
            synthesizer = tts.optional_synthesizer(threads, without=without_voice) if voice else None
        lm = LanguageModel.load(model, threads=threads, context=context)
        images = ImageQuestion.load(vision_model=vision_model, threads=threads, lm=lm) if vision else None
        transcriber = Transcriber.load(speech_model, threads=threads) if speech else None
        return cls(lm, transcriber, images, synthesizer)
