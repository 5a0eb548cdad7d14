"""``distill-nb``: run a config headless, the offline demo, list runs."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from .config import ConfigError, DistillConfig, env_folders
from .safeio import not_utf8, number

# The demo: a real packaged teacher (all-MiniLM-L6-v2, fine-tuned on SST-2 to its plateau first, cached), a
# 3-layer student made from every other teacher layer, distilled on SST-2 and evaluated on the SST-2 dev set.
DEMO = dict(teacher="minilm-l6", dataset="sst2", student_layers=3, teacher_prep_steps=1500, teacher_prep_minutes=30,
            max_train_examples=20000, max_steps=400, batch_size=32, max_length=64, alpha_kd=1.0, alpha_ce=0.5,
            temperature=2.0, learning_rate=1e-4, eval_every=100, checkpoint_every=200)
# The small mode (workshops, CI): the teacher is capped at 150 steps / 5 minutes (its new head learns at 20x the
# encoder's rate, so it leaves chance early; the Teacher tab and the report show the dev accuracy it reached), and
# the student trains 60 steps. A teacher prepared to its plateau by the full demo is reused here.
DEMO_SMALL = dict(DEMO, teacher_prep_steps=150, teacher_prep_minutes=5, max_train_examples=2000,
                  max_eval_examples=200, max_steps=60, eval_every=30, checkpoint_every=30)


def _run(config: DistillConfig, run_dir: Path) -> int:
    from .train import train

    train(config, run_dir)  # refuses a run dir of another config or a completed run before writing anything
    from .report import compare_run

    print(compare_run(run_dir, repeats=3))
    print(f"student saved in {run_dir / 'student'} (transformers.pipeline('text-classification', model=...))")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill-nb", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_run = sub.add_parser("run", help="run a config JSON headless (same file the Launcher exports)")
    p_run.add_argument("config", help="path of a DistillConfig JSON file")
    p_run.add_argument("--run-dir", help="run directory (default: <runs root>/<new id>); an existing one is "
                       "resumed only with the same config and only if it is not completed")
    p_demo = sub.add_parser("demo", help="distil the packaged MiniLM-L6 teacher on SST-2, offline, on CPU")
    p_demo.add_argument("--small", action="store_true", help="a 1-minute version (fewer steps and examples)")
    p_demo.add_argument("--run-dir", help="run directory (default: <runs root>/demo-<time>)")
    sub.add_parser("list", help="list runs and their state")
    p_teachers = sub.add_parser("teachers", help="list the prepared teachers in the cache ($DISTILL_NB_CACHE)")
    p_teachers.add_argument("--remove", metavar="NAME", help="delete this prepared teacher (its folder name)")
    args = parser.parse_args(argv)
    from .rundir import RunBusy, create_run, list_runs, new_run_id, runs_root

    run_dir: Path | None = None
    try:
        env_folders()  # a $DISTILL_NB_* folder variable naming a file: said first, for every command
        if args.cmd == "teachers":
            from .teacher_cache import remove_teacher, teachers, teachers_dir

            if args.remove:
                print(f"removed {remove_teacher(args.remove)}")
                return 0
            found = teachers()
            print(f"{len(found)} prepared teacher(s) in {teachers_dir()}")
            for t in found:
                print(f"{t.path.name:<40} {t.label}")
            return 0
        if args.cmd == "list":
            listed = list_runs()
            print(f"{len(listed)} run(s) in {runs_root()}")
            for s in listed:
                if s["state"] == "unreadable":  # a corrupt run is reported, never breaks the list
                    print(f"{s['run_id']:<36} {s['state']:<10} {s.get('error')}")
                    continue
                last = s.get("last_eval") or {}
                acc, reasons = number(last.get("accuracy")), number(last.get("reason_spearman"))
                acc = round(acc, 4) if acc is not None else None
                print(f"{s['run_id']:<36} {s['state']:<10} step {s.get('step')}/{s.get('total_steps')}  acc {acc}"
                      + (f"  reasons {reasons:.3f}" if reasons is not None else ""))
            return 0
        if args.cmd == "run":
            config = _config(args.config, args.run_dir)
            from .preflight import preflight

            preflight(config)  # a wrong path, shape or column fails here, before a run directory exists
        else:
            config = DistillConfig(**(DEMO_SMALL if args.small else DEMO))
        if args.run_dir:
            run_dir = _run_dir_arg(args.run_dir)
        else:
            run_dir = create_run(config, runs_root(), new_run_id("demo" if args.cmd == "demo" else "run"))
        print(f"run directory: {run_dir}")
        start = time.time()
        code = _run(config, run_dir)
        print(f"total time {time.time() - start:.0f} s")
        return code
    except KeyboardInterrupt:  # Ctrl-C: one line, the shell's code for SIGINT; the run is failed and resumable
        again = f" (run the same command with --run-dir {str(run_dir)!r} to resume it)" if run_dir else ""
        print(f"\ndistill-nb: interrupted{again}", file=sys.stderr)
        return 130
    except (ConfigError, FileNotFoundError, KeyError, ValueError, RunBusy, FileExistsError, NotADirectoryError,
            IsADirectoryError) as e:  # bad input (a run directory that is a file, ...): nothing ran
        message = str(e.args[0] if isinstance(e, KeyError) and e.args else e)  # str(KeyError) adds quotes
        if len(message) > 1000:  # a hostile value is quoted, not echoed in full
            message = message[:1000] + f"... ({len(message)} characters)"
        print(f"distill-nb: error: {message}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 — the run failed (diverged, disk full, out of memory): status.json has it
        from .recorder import explain

        print(f"distill-nb: run failed: {explain(e, None, run_dir)}", file=sys.stderr)
        return 1


def _run_dir_arg(value: str) -> Path:
    """``--run-dir`` as a folder path (``~`` expanded: a quoted or ``=``-joined value reaches us unexpanded).

    Raises:
        ValueError: it is (or is inside) a file, or its name is not valid UTF-8.
    """
    run_dir = Path(value).expanduser()
    if os.path.lexists(run_dir) and not run_dir.is_dir() or any(
            q.exists() and not q.is_dir() for q in run_dir.parents):
        raise ValueError(f"--run-dir {value!r} is (or is inside) a file: give a folder for the run.")
    if why := not_utf8(run_dir.absolute()):
        raise ValueError(f"--run-dir {value!r} cannot be used: {why}, and a run saves its tokenizer and records "
                         "under it: rename the folder or give another --run-dir.")
    long = [part for part in run_dir.parts if len(os.fsencode(part)) > 255 - len(".tmp-") - 16]
    if long:  # the run's own files go under it with temp names: room for those too
        raise ValueError(f"--run-dir {value[:80]!r}... has a folder name of {len(long[0])} characters, more than a "
                         "file system takes (255 bytes, less the run's temp names): give a shorter --run-dir.")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)  # the folder the run is about to use: can it be made here?
    except OSError as e:
        raise ValueError(f"--run-dir {value!r} cannot be made ({e.strerror}): give a folder you can write to, "
                         "e.g. --run-dir runs/my-run.") from None
    return run_dir


def _config(path: str, run_dir: str | None) -> DistillConfig:
    """The config file with its local paths absolute and ``~`` expanded, as :func:`distill_nb.launch` has them;
    a run directory made before that keeps the config it was saved with (resuming never changes a config)."""
    from .preflight import absolute_paths

    given = DistillConfig.from_json(Path(path).expanduser())
    config = absolute_paths(given)
    saved = Path(run_dir).expanduser() / "config.json" if run_dir else None
    if config is not given and saved is not None and saved.is_file():
        try:
            if DistillConfig.from_json(saved).to_dict() == given.to_dict():
                return given
        except (ConfigError, OSError, ValueError):
            pass  # train() says what is wrong with it
    return config


if __name__ == "__main__":
    sys.exit(main())
