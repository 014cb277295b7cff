"""Skills: the time, the date, timers and alarms, exact arithmetic, unit conversion and who the assistant is,
answered from real data, with a deterministic matcher (hassil) and OpenAI tool entries. Torch-free. docs/SKILLS.md."""

from edgemm.runtime.skills.calls import SkillCall, SkillError, SkillReply
from edgemm.runtime.skills.clock import Clock, FixedClock, SystemClock
from edgemm.runtime.skills.skills import Skills
from edgemm.runtime.skills.timers import Timer, Timers

__all__ = ["Clock", "FixedClock", "SkillCall", "SkillError", "SkillReply", "Skills", "SystemClock", "Timer", "Timers"]
