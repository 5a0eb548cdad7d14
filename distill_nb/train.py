"""train(config, run_dir): one distillation run, top to bottom. ``python -m distill_nb.train RUN_DIR`` is the worker.

Setup (device, data, teacher, student, optimiser) -> resume from the last checkpoint -> loop (losses, step,
metrics, eval, checkpoint, stop) -> final eval and the student saved for ``transformers.pipeline``.
With ``objective="mlm"`` the same function distils a masked-LM teacher on the texts alone (DistilBERT's
task-agnostic pre-training distillation): a few ``if mlm`` branches mask the batches and swap the losses and eval.
Under ``torchrun``/``accelerate launch`` (WORLD_SIZE > 1) each process takes a slice of every batch (DDP);
process 0 alone writes to the run directory.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import shutil
import socket
import sys
import time
import traceback
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
from torch import nn

from . import losses
from .config import DistillConfig, atomic_write_text
from .data import TaskData, collate, encode, length_batches, load_task, steps_per_epoch
from .models import (NotAClassifierError, default_layer_map, load_teacher, make_student, predict_logits,
                     prepare_teacher, shape)
from .preflight import check_max_length, match_labels
from .runs import Status, append_metrics, read_json, runs_root, truncate_metrics, write_status


class Distiller(nn.Module):
    """The student plus the learned projections that map its hidden states to the teacher's width."""

    def __init__(self, student: nn.Module, n_proj: int, student_width: int, teacher_width: int):
        super().__init__()
        self.student = student
        needs = n_proj and student_width != teacher_width
        self.proj = nn.ModuleList([nn.Linear(student_width, teacher_width) for _ in range(n_proj if needs else 0)])

    def forward(self, **batch: torch.Tensor) -> Any:
        return self.student(**batch)


def train(config: DistillConfig, run_dir: str | os.PathLike, *, data: TaskData | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Distil ``config.teacher`` into a smaller student; resumes if ``run_dir`` holds a checkpoint.

    Returns:
        the final evaluation record (accuracy, teacher_accuracy, agreement, retention, ...; with
        objective="mlm" these are measured on the masked tokens of the eval texts).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # --- processes and device ------------------------------------------------------------------------------
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    main_proc = rank == 0
    device = _device(config.device, local_rank, world)
    amp_dtype = _amp_dtype(config.precision, device)
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else nullcontext
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    if main_proc:
        if not (run_dir / "config.json").exists():
            config.to_json(run_dir / "config.json")
        write_status(run_dir, state=Status.RUNNING, pid=os.getpid(), host=socket.gethostname(),
                     device=str(device), precision=str(amp_dtype or torch.float32).replace("torch.", ""),
                     world_size=world, started_at=time.time(), error=None, traceback=None,
                     message="loading data and models")
    try:
        torch.manual_seed(config.seed)
        mlm = config.objective == "mlm"  # task-agnostic: masked-LM distillation on the texts, labels unused
        head = "mlm" if mlm else "classification"
        # --- data --------------------------------------------------------------------------------------------
        task = data or load_task(config.dataset, text_column=config.text_column,
                                 label_column=None if mlm else config.label_column,
                                 train_split=config.train_split, eval_split=config.eval_split,
                                 max_train=config.max_train_examples, max_eval=config.max_eval_examples,
                                 seed=config.seed)
        # --- teacher (fine-tune a head first if it is a bare encoder) -----------------------------------------
        attn = "eager" if config.alpha_attn > 0 else None  # attention maps need the eager kernel
        try:
            teacher, tokenizer = load_teacher(config.teacher, head=head, attn_implementation=attn,
                                              trust_remote_code=config.trust_remote_code)
        except NotAClassifierError:
            if config.teacher_prep_steps == 0:
                raise
            if world > 1 and not main_proc:
                dist.barrier()  # process 0 prepares (and caches) the teacher; the others then load it
            try:  # minutes on a CPU: process 0 shows its progress, and a Stop ends it (single process only)
                prepared = prepare_teacher(config.teacher, task, steps=config.teacher_prep_steps, seed=config.seed,
                                           batch_size=config.batch_size, max_length=config.max_length,
                                           device=device, trust_remote_code=config.trust_remote_code, log=log,
                                           progress=_prep_progress(run_dir, world == 1) if main_proc else None)
            except _StopRequested:
                write_status(run_dir, state=Status.STOPPED, step=0, finished_at=time.time(),
                             message="stopped while preparing the teacher; resume() starts its fine-tuning again")
                return {}
            if world > 1 and main_proc:
                dist.barrier()
            teacher, tokenizer = load_teacher(str(prepared), attn_implementation=attn)
            if main_proc:
                write_status(run_dir, teacher_path=str(prepared))
        teacher = teacher.to(device).eval().requires_grad_(False)
        if not mlm:  # named labels follow the teacher's id2label order (not sorted); ids must match its count
            teacher_names = [str(teacher.config.id2label[i]) for i in range(teacher.config.num_labels)]
            if (names := match_labels(task.label_names, task.named_labels, teacher_names,
                                      config.teacher)) is not None:
                task = task.relabel(names)
        check_max_length(config.max_length, teacher.config.to_dict(), config.teacher)
        # --- student -------------------------------------------------------------------------------------------
        torch.manual_seed(config.seed)  # again: a teacher fine-tuned just now (not cached) must not shift the RNG
        student = make_student(teacher, n_layers=config.student_layers, hidden_size=config.student_hidden,
                               n_heads=config.student_heads, ffn_size=config.student_ffn, init=config.student_init,
                               dropout=config.student_dropout, head=head,
                               trust_remote_code=config.trust_remote_code)
        if attn:
            student.set_attn_implementation("eager")
        t_shape, s_shape = shape(teacher.config), shape(student.config)
        layer_map = config.layer_map or default_layer_map(t_shape["layers"], s_shape["layers"])
        if max(layer_map) >= t_shape["layers"]:
            raise ValueError(f"layer_map={layer_map} points past the teacher's {t_shape['layers']} layers "
                             f"(valid: 0..{t_shape['layers'] - 1}).")
        student_tok = tokenizer
        if config.student_init not in ("every_k", "random"):
            from transformers import AutoTokenizer

            student_tok = AutoTokenizer.from_pretrained(student.name_or_path)
            if student_tok.get_vocab() != tokenizer.get_vocab() and (config.alpha_hidden or config.alpha_attn
                                                                      or mlm):
                raise ValueError(f"the student {config.student_init!r} has another vocabulary than the teacher: "
                                 "hidden/attention losses and objective='mlm' need shared tokens. Use a student "
                                 "with the teacher's tokenizer, or (classification) set alpha_hidden=alpha_attn=0 "
                                 "(logit distillation works across tokenizers).")
        model = Distiller(student, len(layer_map) if config.alpha_hidden else 0, s_shape["hidden"],
                          t_shape["hidden"]).to(device)
        # --- tokens (once) and the teacher's logits (once, when no per-step teacher states are needed) --------
        t_train = encode(tokenizer, task.train.texts, config.max_length)
        s_train = t_train if student_tok is tokenizer else encode(student_tok, task.train.texts, config.max_length)
        t_eval = encode(tokenizer, task.eval.texts, config.max_length)
        s_eval = t_eval if student_tok is tokenizer else encode(student_tok, task.eval.texts, config.max_length)
        train_labels, eval_labels = torch.tensor(task.train.labels), torch.tensor(task.eval.labels)
        needs_teacher_states = bool(config.alpha_hidden or config.alpha_attn)
        cached_logits = None
        # mlm: never cached, the teacher runs every step: its logits are (S, V) per text (~15 MB at S=128,
        # V=30k, so GBs for a corpus), and the masked positions change from step to step anyway
        if config.cache_teacher_logits and config.alpha_kd and not needs_teacher_states and not mlm:
            cached_logits = _cached(run_dir / "teacher_logits.safetensors", main_proc, lambda: predict_logits(
                teacher, t_train, tokenizer.pad_token_id, device, autocast))
        if mlm:  # one fixed mask on the eval texts, so every evaluation scores the same masked tokens
            eval_order = length_batches([len(e) for e in t_eval], 16, seed=0, shuffle=False)  # (B, S, V) logits
            eval_batches = [_mlm_batch(collate(t_eval, idx, tokenizer.pad_token_id), tokenizer,
                                       config.mlm_probability, hash((config.seed, -1, b)))
                            for b, idx in enumerate(eval_order)]
            teacher_acc = None  # measured with the student at each evaluation
            evaluate = partial(_evaluate_mlm, model.student, teacher, eval_batches, device, autocast)
        else:
            teacher_eval = predict_logits(teacher, t_eval, tokenizer.pad_token_id, device, autocast)
            teacher_acc = (teacher_eval.argmax(-1) == eval_labels).float().mean().item()
            evaluate = partial(_evaluate, model.student, s_eval, student_tok.pad_token_id, eval_labels,
                               teacher_eval, teacher_acc, device, autocast)
        # --- optimiser, schedule, resume --------------------------------------------------------------------
        per_epoch = steps_per_epoch(len(t_train), config.batch_size)
        total_steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
        opt = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        from transformers import get_linear_schedule_with_warmup

        sched = get_linear_schedule_with_warmup(opt, int(config.warmup_ratio * total_steps), total_steps)
        step = 0
        ckpt = latest_checkpoint(run_dir)
        if ckpt is not None:
            step = _load_checkpoint(ckpt, model, opt, sched)
            if main_proc:
                truncate_metrics(run_dir, step)  # steps after the checkpoint are redone, never duplicated
                log(f"resumed from {ckpt.name} (step {step})")
        ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        if main_proc:
            write_status(run_dir, total_steps=total_steps, step=step, teacher_accuracy=teacher_acc,
                         message=f"training: {len(t_train)} examples, {per_epoch} steps/epoch")
        # --- loop ----------------------------------------------------------------------------------------------
        lengths = [len(e) for e in s_train]
        last_beat, t0, seen, stopped = 0.0, time.time(), 0, False
        record: dict[str, Any] = {}
        while step < total_steps and not stopped:
            epoch, done_in_epoch = divmod(step, per_epoch)
            batches = length_batches(lengths, config.batch_size, seed=config.seed + epoch)
            for idx in batches[done_in_epoch:]:
                mine = idx[rank::world]  # this process's slice of the global batch
                batch = collate(s_train, mine, student_tok.pad_token_id)
                if mlm:  # a new mask per step, seeded by (seed, step, process): a resumed run masks the same way
                    batch, mlm_labels = _mlm_batch(batch, tokenizer, config.mlm_probability,
                                                   hash((config.seed, step, rank)))
                    mlm_labels = mlm_labels.to(device)
                batch = {k: v.to(device) for k, v in batch.items()}
                model.train()
                with autocast():
                    out = ddp(**batch, output_hidden_states=bool(config.alpha_hidden),
                              output_attentions=bool(config.alpha_attn))
                    if cached_logits is not None:
                        t_logits, t_out = cached_logits[mine].to(device), None
                    elif not (config.alpha_kd or needs_teacher_states):  # hard labels only: no teacher needed
                        t_logits, t_out = None, None
                    else:
                        with torch.no_grad():
                            t_batch = batch if s_train is t_train or mlm else {
                                k: v.to(device) for k, v in collate(t_train, mine, tokenizer.pad_token_id).items()}
                            t_out = teacher(**t_batch, output_hidden_states=bool(config.alpha_hidden),
                                            output_attentions=bool(config.alpha_attn))
                            t_logits = t_out.logits
                    if mlm:  # KD on the vocabulary distribution and CE on the original token, at masked positions
                        masked = mlm_labels != -100  # (B, S)
                        parts = {}
                        if config.alpha_kd:
                            parts["kd"] = losses.mlm_kd_loss(out.logits, t_logits, masked, config.temperature)
                        if config.alpha_ce:
                            parts["ce"] = losses.ce_loss(out.logits[masked], mlm_labels[masked])  # (M, V), (M,)
                    else:
                        parts = {}
                        if config.alpha_kd:
                            parts["kd"] = losses.kd_loss(out.logits, t_logits, config.temperature)
                        if config.alpha_ce:
                            parts["ce"] = losses.ce_loss(out.logits, train_labels[mine].to(device))
                    if config.alpha_hidden:
                        parts["hidden"] = losses.hidden_states_loss(
                            out.hidden_states[1:], t_out.hidden_states[1:], layer_map, batch["attention_mask"],
                            config.hidden_loss, list(model.proj) or None)  # [1:] drops the embeddings
                    if config.alpha_attn:
                        parts["attn"] = torch.stack([
                            losses.attention_loss(out.attentions[j], t_out.attentions[i], batch["attention_mask"])
                            for j, i in enumerate(layer_map)]).mean()
                    weights = {"kd": config.alpha_kd, "ce": config.alpha_ce, "hidden": config.alpha_hidden,
                               "attn": config.alpha_attn}
                    loss = sum(weights[k] * v for k, v in parts.items())
                (scaler.scale(loss) if scaler else loss).backward()
                if scaler:
                    scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                scaler.step(opt) if scaler else opt.step()
                if scaler:
                    scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                seen += len(idx)
                # --- metrics, heartbeat, eval, checkpoint, stop (process 0 writes) -------------------------
                stop_flag = torch.tensor(float(main_proc and (run_dir / "STOP").exists()))
                if world > 1:
                    dist.all_reduce(stop_flag)
                stopped = bool(stop_flag.item())
                if main_proc:
                    elapsed = time.time() - t0
                    append_metrics(run_dir, {"step": step, "split": "train", "epoch": step / per_epoch,
                                             "loss": loss.item(), **{k: v.item() for k, v in parts.items()},
                                             "lr": sched.get_last_lr()[0], "examples_per_s": seen / elapsed,
                                             "time": time.time()})
                    if time.time() - last_beat > 1.0 or step == total_steps:
                        write_status(run_dir, step=step, epoch=step / per_epoch, message="training",
                                     eta_s=elapsed / max(step - (ckpt_step(ckpt)), 1) * (total_steps - step))
                        last_beat = time.time()
                if step % config.eval_every == 0 and step < total_steps and main_proc:
                    record = evaluate(step)
                    append_metrics(run_dir, record)
                    log(f"step {step}/{total_steps} loss {loss.item():.4f} eval acc {record['accuracy']:.4f}")
                if (step % config.checkpoint_every == 0 or stopped) and step < total_steps:
                    if main_proc:
                        save_checkpoint(run_dir, model, opt, sched, step, student_tok, config.keep_checkpoints)
                    if world > 1:
                        dist.barrier()
                if stopped or step >= total_steps:
                    break
        # --- the end: evaluate, save the student where pipeline() can load it ---------------------------------
        if stopped:
            if main_proc:
                write_status(run_dir, state=Status.STOPPED, step=step, finished_at=time.time(),
                             message=f"stopped at step {step}; resume() continues from here")
            return record
        if main_proc:
            record = evaluate(step)
            append_metrics(run_dir, record)
            _save_student(run_dir / "student", model.student, student_tok)
            write_status(run_dir, state=Status.COMPLETED, step=step, finished_at=time.time(), final=record,
                         message=f"done: accuracy {record['accuracy']:.4f} "
                                 f"(teacher {record['teacher_accuracy']:.4f})")
            log(f"done: student accuracy {record['accuracy']:.4f}, teacher {record['teacher_accuracy']:.4f}, "
                f"retention {record['retention']:.1%}")
        return record
    except BaseException as e:
        if main_proc:
            try:
                write_status(run_dir, state=Status.FAILED, error=explain(e, config),
                             traceback=traceback.format_exc(), finished_at=time.time())
            except OSError:  # e.g. the disk is still full: raise the real error, readers see a stale run
                pass
        raise
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()


# --- helpers train() calls (small, pure where possible) --------------------------------------------------------
class _StopRequested(Exception):
    """STOP appeared while the teacher was being fine-tuned."""


def _prep_progress(run_dir: Path, can_stop: bool) -> Callable[[int, int], None]:
    """``prepare_teacher``'s progress: a status heartbeat at most once a second; STOP abandons the fine-tuning."""
    last = 0.0

    def progress(step: int, steps: int) -> None:
        nonlocal last
        if can_stop and (run_dir / "STOP").exists():
            raise _StopRequested
        if time.time() - last > 1.0 or step == steps:
            write_status(run_dir, message=f"preparing the teacher: fine-tuning step {step}/{steps}")
            last = time.time()

    return progress


def _device(name: str, local_rank: int, world: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} but CUDA is not available here; use device='auto' or 'cpu'.")
    if name == "cuda" and world > 1:
        return torch.device("cuda", local_rank)
    return torch.device(name)


def _amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise ValueError(f"precision={precision!r} needs a CUDA device; on CPU use 'auto' or 'fp32'.")
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _evaluate(student: nn.Module, encoded: list[list[int]], pad_id: int, labels: torch.Tensor,
              teacher_logits: torch.Tensor, teacher_acc: float, device: torch.device, autocast: Callable,
              step: int) -> dict[str, Any]:
    logits = predict_logits(student, encoded, pad_id, device, autocast)
    pred = logits.argmax(-1)
    acc = (pred == labels).float().mean().item()
    return {"step": step, "split": "eval", "accuracy": acc, "teacher_accuracy": teacher_acc,
            "retention": acc / teacher_acc if teacher_acc else float("nan"),
            "agreement": (pred == teacher_logits.argmax(-1)).float().mean().item(),
            "eval_loss": losses.ce_loss(logits, labels).item(),
            "kd_to_teacher": losses.kd_loss(logits, teacher_logits, 1.0).item(), "time": time.time()}


def _mlm_batch(batch: dict[str, torch.Tensor], tokenizer: Any, prob: float, seed: int
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Mask a collated batch for masked-LM distillation; the same ``seed`` gives the same mask.

    ``seed`` is e.g. ``hash((config.seed, step, rank))``: a tuple of ints hashes alike in every process
    (PYTHONHASHSEED salts only str/bytes).

    Returns:
        (the batch with [MASK] at the chosen real, non-special tokens; labels (B, S): the original ids there,
        -100 elsewhere).
    """
    ids = batch["input_ids"]  # (B, S)
    special = torch.isin(ids, torch.tensor(tokenizer.all_special_ids))  # (B, S): [CLS], [SEP], ... never masked
    generator = torch.Generator().manual_seed(seed % 2**63)
    masked_ids, masked = losses.mask_tokens(ids, batch["attention_mask"], tokenizer.mask_token_id, special,
                                            prob, generator)
    return {**batch, "input_ids": masked_ids}, ids.masked_fill(~masked, -100)


@torch.no_grad()
def _evaluate_mlm(student: nn.Module, teacher: nn.Module,
                  batches: list[tuple[dict[str, torch.Tensor], torch.Tensor]], device: torch.device,
                  autocast: Callable, step: int) -> dict[str, Any]:
    """Masked-token accuracy of student and teacher, their agreement and KL (T=1) at the masked positions.

    The teacher runs again at each evaluation: its vocabulary logits are too large to keep between them.
    """
    student.eval()
    total = dict.fromkeys(("correct", "teacher_correct", "agreement", "kd", "ce"), 0.0)
    n = 0
    for batch, labels in batches:
        batch, labels = {k: v.to(device) for k, v in batch.items()}, labels.to(device)
        masked = labels != -100  # (B, S)
        with autocast():
            s_logits = student(**batch).logits[masked].float()  # (M, V)
            t_logits = teacher(**batch).logits[masked].float()
        y, s_pred, t_pred, m = labels[masked], s_logits.argmax(-1), t_logits.argmax(-1), int(masked.sum())
        total["correct"] += (s_pred == y).sum().item()
        total["teacher_correct"] += (t_pred == y).sum().item()
        total["agreement"] += (s_pred == t_pred).sum().item()
        total["kd"] += losses.kd_loss(s_logits, t_logits, 1.0).item() * m
        total["ce"] += losses.ce_loss(s_logits, y).item() * m
        n += m
    mean = {k: v / n if n else float("nan") for k, v in total.items()}
    acc, teacher_acc = mean["correct"], mean["teacher_correct"]
    return {"step": step, "split": "eval", "accuracy": acc, "teacher_accuracy": teacher_acc,
            "retention": acc / teacher_acc if teacher_acc else float("nan"),
            "agreement": mean["agreement"], "eval_loss": mean["ce"], "kd_to_teacher": mean["kd"],
            "masked_tokens": n, "time": time.time()}


def _cached(path: Path, main_proc: bool, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    from safetensors.torch import load_file, save_file

    if path.is_file():
        return load_file(path)["logits"]
    logits = compute()
    if main_proc:
        tmp = path.with_suffix(".tmp")
        save_file({"logits": logits.contiguous()}, tmp)
        os.replace(tmp, path)
    return logits


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (a half-written one is still a temp dir, so never picked)."""
    folder = run_dir / "checkpoints"
    done = [p for p in folder.glob("step_*") if (p / "trainer_state.json").is_file()] if folder.is_dir() else []
    return max(done, key=lambda p: int(p.name.split("_")[1]), default=None)


def ckpt_step(ckpt: Path | None) -> int:
    return int(ckpt.name.split("_")[1]) if ckpt else 0


def save_checkpoint(run_dir: Path, model: Distiller, opt: torch.optim.Optimizer, sched: Any, step: int,
                    tokenizer: Any, keep: int) -> Path:
    """Write checkpoints/step_N atomically (temp dir + rename) and keep the newest ``keep``."""
    from safetensors.torch import save_file

    folder = run_dir / "checkpoints"
    final = folder / f"step_{step:07d}"
    tmp = folder / f".tmp-step_{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.student.save_pretrained(tmp)  # safetensors
    tokenizer.save_pretrained(tmp)
    if len(model.proj):
        save_file({k: v.contiguous() for k, v in model.proj.state_dict().items()}, tmp / "projections.safetensors")
    torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict(), "rng": torch.get_rng_state()},
               tmp / "optimizer.pt")
    atomic_write_text(tmp / "trainer_state.json", json.dumps({"step": step, "time": time.time()}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(ckpt: Path, model: Distiller, opt: torch.optim.Optimizer, sched: Any) -> int:
    from safetensors.torch import load_file

    model.student.load_state_dict(load_file(ckpt / "model.safetensors"), strict=False)
    if len(model.proj):
        model.proj.load_state_dict(load_file(ckpt / "projections.safetensors"))
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)  # never unpickle arbitrary objects
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(read_json(ckpt / "trainer_state.json")["step"])


def _save_student(target: Path, student: nn.Module, tokenizer: Any) -> None:
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    student.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def explain(e: BaseException, config: DistillConfig | None = None) -> str:
    """One line a notebook user can act on."""
    if isinstance(e, torch.cuda.OutOfMemoryError):
        batch, length = (f" (now {config.batch_size})", f" (now {config.max_length})") if config else ("", "")
        return (f"CUDA out of memory ({(str(e).splitlines() or [''])[0][:200]}). Launch again with half the "
                f"batch_size{batch} or max_length{length}, e.g. launch(run.config.replace(batch_size=...)), or "
                "pick a smaller student (resume() would reuse the same settings).")
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return "the disk is full while writing the run; free space (old runs/checkpoints), then resume()."
    if isinstance(e, KeyboardInterrupt):
        return "interrupted (KeyboardInterrupt); resume() continues from the last checkpoint."
    if isinstance(e, KeyError) and len(e.args) == 1 and isinstance(e.args[0], str):
        return f"KeyError: {e.args[0]}"  # str(KeyError) wraps the message in quotes
    return f"{type(e).__name__}: {e}"


def _wait_for_device(lock: Any, run_dir: Path, poll: float = 0.5, beat: float = 30.0) -> bool:
    """Take the device lock (released by the OS if this process dies); False if STOP came first.

    Polls instead of blocking so that stop() works on a queued run, and beats the heartbeat so that readers on
    other hosts do not take a long wait for a dead worker.
    """
    last_beat = time.time()
    while True:
        if (run_dir / "STOP").exists():
            return False
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return not (run_dir / "STOP").exists()
        except BlockingIOError:
            pass
        if time.time() - last_beat > beat:
            write_status(run_dir)
            last_beat = time.time()
        time.sleep(poll)


def main(run_dir: str | os.PathLike) -> int:
    """Worker entry point: wait for the device (a simple queue), then train; status.json tells the outcome."""
    run_dir = Path(run_dir).resolve()
    rank = int(os.environ.get("RANK", "0"))
    try:
        config = DistillConfig.from_json(run_dir / "config.json")
    except Exception as e:  # noqa: BLE001 — whatever it is, status.json must say why the worker stopped
        if rank == 0:
            write_status(run_dir, state=Status.FAILED, error=f"config.json cannot be used: {e}",
                         finished_at=time.time())
        traceback.print_exc()
        return 1
    lock = None
    if rank == 0:  # one run per device at a time: the second waits here, with state "queued"
        name = config.device if config.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
        lock_dir = runs_root(run_dir.parent) / ".locks"
        lock_dir.mkdir(parents=True, exist_ok=True)
        lock = open(lock_dir / f"{name.replace(':', '')}.lock", "w")
        write_status(run_dir, state=Status.QUEUED, pid=os.getpid(), host=socket.gethostname(),
                     message=f"waiting for device {name}")
        if not _wait_for_device(lock, run_dir):
            lock.close()
            write_status(run_dir, state=Status.STOPPED, finished_at=time.time(), message="stopped while queued")
            return 0
    try:
        train(config, run_dir)
        return 0
    except BaseException:
        traceback.print_exc()
        return 1
    finally:
        if lock:
            lock.close()


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m distill_nb.train RUN_DIR")
    sys.exit(main(sys.argv[1]))
