"""The run the workshop notebooks share: trained once by the first notebook that needs it, reused after.

``DISTILL_NB_SMALL=1`` picks a small configuration (a minute or two on 2 CPU cores) so the notebooks run
in tests; otherwise the full offline demo (``distill-nb demo``).
"""

from __future__ import annotations

import os
from typing import Any

from ..config import DistillConfig


def small_mode() -> bool:
    """True when ``$DISTILL_NB_SMALL`` is set to 1/true/yes."""
    return os.environ.get("DISTILL_NB_SMALL", "").strip().lower() in ("1", "true", "yes")


def workshop_config(small: bool | None = None) -> DistillConfig:
    """The offline default: MiniLM-L6 (fine-tuned on SST-2 first) distilled into 3 layers, on CPU."""
    from ..cli import DEMO, DEMO_SMALL

    small = small_mode() if small is None else small
    if small:  # smaller than DEMO_SMALL still: the notebooks' tests run all of them in a few minutes
        return DistillConfig(**dict(DEMO_SMALL, batch_size=16, max_train_examples=600,
                                    max_eval_examples=100, max_steps=30, eval_every=15, checkpoint_every=30,
                                    max_length=40, device="cpu"))
    return DistillConfig(**dict(DEMO, device="cpu"))


def app_config() -> DistillConfig:
    """What ``distill_nb.app()`` starts with: the offline MiniLM-L6 teacher distilled into 3 layers on a
    workshop-sized slice of SST-2 (8,000 training sentences, 250 steps, the full 872-sentence dev set), not
    one epoch of all 67k sentences. The Train tab shows the steps and minutes for this machine before Start."""
    return DistillConfig(teacher="minilm-l6", dataset="sst2", student_layers=3, teacher_prep_steps=200,
                         max_train_examples=8000, max_steps=250, batch_size=32, max_length=64, alpha_kd=1.0,
                         alpha_ce=0.5, temperature=2.0, learning_rate=1e-4, eval_every=50, checkpoint_every=50)


def workshop_run_id(small: bool | None = None) -> str:
    return "workshop-small" if (small_mode() if small is None else small) else "workshop"


def workshop_run(small: bool | None = None, *, root: str | None = None, backend: str = "subprocess",
                 wait: bool = True, timeout: float | None = None) -> Any:
    """The shared workshop run: attach if it exists (resuming it if it stopped or failed), else launch it.

    Returns:
        the ``runs.Run``; with ``wait`` (default) it has finished.
    """
    from ..runs import Run, RunNotFound, Status, launch

    run_id = workshop_run_id(small)
    try:
        run = Run.attach(run_id, root)
        if run.state in (Status.FAILED, Status.STOPPED):
            run.resume(backend=backend)
    except RunNotFound:
        run = launch(workshop_config(small), backend=backend, root=root, run_id=run_id)
    if wait:
        run.wait(timeout)
        state = run.state
        if state != Status.COMPLETED:
            s = run.status()
            raise RuntimeError(f"the workshop run {run_id!r} ended {state.value}: {s.get('error')} "
                               f"(see {run.path / 'log.txt'})")
    return run


__all__ = ["app_config", "small_mode", "workshop_config", "workshop_run", "workshop_run_id"]
