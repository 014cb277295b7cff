"""A skill's request (SkillCall), its answer (SkillReply), and the one sentence it says when it cannot (SkillError)."""

from __future__ import annotations

from dataclasses import dataclass, field

from edgemm.runtime.errors import EdgemmError


class SkillError(EdgemmError):
    """A skill cannot do what was asked; the message is the sentence the assistant says."""


@dataclass(frozen=True)
class SkillCall:
    name: str  # the skill, which is also the tool's name: "set_timer"
    arguments: dict = field(default_factory=dict)  # e.g. {"seconds": 300, "name": None}


@dataclass(frozen=True)
class SkillReply:
    text: str  # what the assistant says
    call: SkillCall  # what was run
    data: dict = field(default_factory=dict)  # the answer as values, e.g. {"result": "391", "exact": True}
