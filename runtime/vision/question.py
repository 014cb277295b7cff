"""Questions about images, one entry point for every caller (CLI, assistant, server).

:class:`ImageQuestion` picks how a question is answered from the bundle it is given:

- a ``vlm`` bundle (SmolVLM / LLaVA family): the images go through the model's own vision graph;
- otherwise the offline path: an ImageNet classifier and OCR describe each image, and the text LLM answers from that
  description only (:mod:`edgemm.runtime.vision.describe`).

A vlm bundle can be named as either model; with none named, ``$EDGEMM_VLM`` (a vlm bundle) is used when set, else
the default llm and vision bundles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgemm.runtime.bundle import MAX_IMAGE_SIDE, bundle_kind
from edgemm.runtime.limits import MAX_IMAGES
from edgemm.runtime.llm import Chat, Generation, GenerationOptions, LanguageModel, ask, system_prompt
from edgemm.runtime.llm.chat import clean_text
from edgemm.runtime.profiles import active_profile
from edgemm.runtime.vision.describe import (
    ImageFacts,
    OnDemandDescriber,
    SceneDescriber,
    grounded_question,
    grounded_start,
)
from edgemm.runtime.vision.image import ImageError, load_images
from edgemm.runtime.vision.vlm import VisionLanguageModel

VLM_ENV = "EDGEMM_VLM"  # a vlm bundle that answers every image question when no model is named


@dataclass
class ImageAnswer:
    generation: Generation  # iterate it for the answer's text pieces
    route: str  # "vlm" or "describe"
    facts: list[ImageFacts] = field(default_factory=list)  # what the offline path saw in each image


class ImageQuestion:
    """Answers questions about images by the route its models allow. Safe to share between threads, as are the
    models it holds; only a ``chat`` given to ``ask`` is one conversation that a single thread may use at a time."""

    def __init__(
        self,
        vlm: VisionLanguageModel | None = None,
        describer: SceneDescriber | OnDemandDescriber | None = None,
        lm: LanguageModel | None = None,
    ):
        if vlm is None and (describer is None or lm is None):
            raise ValueError("give a vision-language model, or a scene describer and a language model")
        self.vlm, self.describer, self.lm = vlm, describer, lm

    @classmethod
    def load(
        cls,
        model: str | Path | None = None,
        vision_model: str | Path | None = None,
        threads: int | None = None,
        context: int | None = None,
        ocr: bool = True,
        lm: LanguageModel | None = None,
        on_demand: bool | None = None,
    ) -> ImageQuestion:
        """The first vlm bundle among ``model`` and ``vision_model`` (or, when neither is named, ``$EDGEMM_VLM``)
        answers by itself. Otherwise ``vision_model`` is the classifier bundle of the offline path and ``model`` the
        llm bundle that answers from descriptions (None: ``lm`` when one is already loaded, else the default).
        ``on_demand``: load the offline path's photo models for each question and drop them after it (None: as the
        machine profile says; see runtime/profiles.py)."""
        named = [path for path in (model, vision_model) if path] or [os.environ.get(VLM_ENV)]
        vlm = next((path for path in named if path and bundle_kind(path) == "vlm"), None)
        if vlm is not None:
            return cls(vlm=VisionLanguageModel.load(vlm, threads=threads, context=context))
        if on_demand is None:
            on_demand = active_profile().photo_models_on_demand
        if on_demand:
            describer = OnDemandDescriber(vision_model, threads=threads, ocr=ocr)
        else:
            describer = SceneDescriber.load(vision_model, threads=threads, ocr=ocr)
        return cls(describer=describer, lm=lm or LanguageModel.load(model, threads=threads, context=context))

    @property
    def route(self) -> str:
        return "vlm" if self.vlm is not None else "describe"

    @property
    def model_name(self) -> str:
        return (self.vlm.lm if self.vlm is not None else self.lm).name

    @property
    def describes_ahead(self) -> bool:
        """Whether describing a photo is cheap enough to do before the question is known: the offline route with
        its photo models loaded (not the ``pi`` profile's on-demand ones, nor a VLM, which needs the question)."""
        return isinstance(self.describer, SceneDescriber)

    def facts_of(self, images: list) -> list[ImageFacts]:
        """What the offline route's models see in each image (for ``ask(facts=...)``)."""
        if self.describer is None:
            raise ValueError("a vision-language model answers from the images themselves, not from their facts")
        return self.describer.facts_of(images)

    def read_ahead(
        self, facts: list[ImageFacts], chat: Chat, question: str | None = None, max_tokens: int | None = None
    ) -> bool:
        """Run the offline route's prompt for ``facts`` into ``chat``'s cache, up to the question (``question``:
        the whole prompt of that question, so that ``ask`` samples its first token at once), at most ``max_tokens``
        more per call; returns whether all of it is in. ``ask`` with the same facts then runs only what follows."""
        if question is None:
            return chat.read_ahead(grounded_start(facts), max_tokens=max_tokens)
        return chat.read_ahead(grounded_question(clean_text(question), facts), max_tokens=max_tokens, answer=True)

    def ask(
        self,
        question: str,
        images: list,
        options: GenerationOptions | None = None,
        system: str | None = None,
        chat: Chat | None = None,
        facts: list[ImageFacts] | None = None,
    ) -> ImageAnswer:
        """Answer ``question`` about ``images`` (paths, bytes, PIL images or arrays) as a streaming Generation.

        ``system``: the system prompt (None: the route's default, i.e. brief factual answers for the offline path and
        the chat template's own for a VLM). ``chat``: on the offline path, the conversation the question and its
        answer join (its own system prompt then applies); ``facts``: on the offline path, ``images``' facts when
        they were already described (``facts_of``), which are then not described again. The images together may
        have MAX_REQUEST_PIXELS (counted from their headers before any is decoded); each is reduced as soon as it
        is decoded.
        """
        if isinstance(images, (str, Path, bytes)) or not isinstance(images, (list, tuple)):
            raise ImageError(
                f"images must be a list (of paths, bytes, PIL images or arrays), not {type(images).__name__}"
            )
        if not 1 <= len(images) <= MAX_IMAGES:
            raise ImageError(f"a question takes 1 to {MAX_IMAGES} images, not {len(images)}")
        if self.vlm is not None:
            images = load_images(images, max_side=MAX_IMAGE_SIDE)  # the side no image is worked on past
            return ImageAnswer(self.vlm.ask(question, images, options, system=system), "vlm")
        if facts is None or len(facts) != len(images):
            facts = self.describer.facts_of(images)
        prompt = grounded_question(clean_text(question), facts)
        if chat is not None:
            generation = chat.send(prompt, options)
        else:
            generation = ask(self.lm, prompt, options, system=system_prompt(system))
        return ImageAnswer(generation, "describe", facts)
