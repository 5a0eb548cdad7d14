"""Notebook widgets: pick a teacher, shape a student, launch and monitor a run, explain, analyse, compare.

``distill_nb.app()`` shows them all as tabs. Every widget keeps its state in traitlets, shows callback
errors inside itself, updates live from the run directory (ipykernel 6 and 7), and has a plain-text repr.
Heavy modules (torch, transformers, captum) load on first use, so ``RunMonitor.attach(id)`` is quick.
"""

from __future__ import annotations

from .app import DistillApp
from .attribution import AttributionExplorer
from .comparison import Comparison
from .errors import ErrorAnalysis
from .launcher import Launcher
from .monitor import RunMonitor
from .student import StudentDesigner
from .teacher import TeacherPicker
from .workshop import small_mode, workshop_config, workshop_run, workshop_run_id

__all__ = ["AttributionExplorer", "Comparison", "DistillApp", "ErrorAnalysis", "Launcher", "RunMonitor",
           "StudentDesigner", "TeacherPicker", "small_mode", "workshop_config", "workshop_run", "workshop_run_id"]
