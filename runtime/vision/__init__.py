"""Questions about images: reading any image safely (``image``), the offline path (an ImageNet classifier in
``classify`` and OCR, turned into a grounded description in ``describe``), native vision-language models (``vlm``), and
the router between them (``question``).
"""

from edgemm.runtime.vision.image import ImageError, load_image
from edgemm.runtime.vision.question import ImageAnswer, ImageQuestion

__all__ = ["ImageAnswer", "ImageError", "ImageQuestion", "load_image"]
