"""train(config, run_dir): one distillation run, top to bottom.

Setup (device, data, teacher, student, optimiser) -> resume from the last checkpoint -> loop (losses, step,
metrics, eval, checkpoint, stop) -> final eval and the student saved for ``transformers.pipeline``.
With ``objective="mlm"`` the same function distils a masked-LM teacher on the texts alone (DistilBERT's
task-agnostic pre-training distillation): a few ``if mlm`` branches mask the batches and swap the losses and eval.
Under ``torchrun``/``accelerate launch`` (WORLD_SIZE > 1) each process takes a slice of every batch (DDP);
process 0 alone writes to the run directory. Status and metrics go through a :class:`Recorder`, checkpoints
through :mod:`checkpoint`; the worker process around this function is :mod:`worker`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from . import fidelity, losses, rundir
from .checkpoint import (
    DamagedCheckpoint,
    Diverged,
    cached_tensor,
    checkpoints,
    ckpt_step,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    save_student,
)
from .config import ConfigError, DistillConfig
from .data import TaskData, collate, encode, length_batches, steps_per_epoch
from .evaluation import (
    accuracy_of,
    check_teacher_outputs,
    evaluate_classifier,
    evaluate_mlm,
    mlm_batch,
    predictions,
)
from .fastdrop import use_fast_dropout
from .models import (
    NotAClassifierError,
    accepts_token_types,
    copied_layer_map,
    default_layer_map,
    load_teacher,
    make_student,
    predict_logits,
    shape,
)
from .precision import adamw, autocast_for, device_for, keep_freed_memory
from .precision import amp_dtype as amp_dtype_for
from .precision import describe as describe_precision
from .preflight import check_max_length
from .recorder import Recorder
from .rundata import align_labels, full_task_for, task_for
from .rundir import truncate_metrics
from .safeio import number
from .teacher_cache import load_prepared, prepare_teacher, student_beats_teacher
from .vocab import trim_student


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
          vocab_texts: Sequence[str] | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Distil ``config.teacher`` into a smaller student; resumes if ``run_dir`` holds a checkpoint.

    Args:
        data: the task, already loaded (default: read from the config's data set).
        vocab_texts: with ``student_vocab`` other than "full", the texts whose tokens the student keeps
            (default: the data set's whole training split, not only the run's ``max_train_examples``; with
            ``data``, its training texts).

    Returns:
        the final evaluation record (accuracy, teacher_accuracy, agreement, retention, ...; with
        objective="mlm" these are measured on the masked tokens of the eval texts).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    main_proc = rank == 0
    held = _claim(config, run_dir) if main_proc else False  # exactly one worker; never another config's run
    rec = Recorder(run_dir, rank=rank)
    rec.started(world_size=world, **({"backend": None} if held else {}))  # held: no launcher, no log.txt
    try:  # from here every failure, device set-up included, ends as "failed" with its real reason
        # --- processes and device --------------------------------------------------------------------------
        if world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        device = device_for(config.device, local_rank, world)
        if device.type == "cpu":
            keep_freed_memory()  # reuse the per-step embedding-gradient buffer instead of page-faulting a new one
        if config.num_threads:  # first: the precision check (on a first run) measures with these threads
            torch.set_num_threads(config.num_threads)
        amp_dtype = amp_dtype_for(config.precision, device)  # CPU: bf16 only where measured faster here
        if world > 1 and config.precision == "auto" and device.type == "cpu":  # every process the same choice
            agree = torch.tensor([float(amp_dtype is not None)])
            dist.all_reduce(agree, op=dist.ReduceOp.MIN)
            amp_dtype = torch.bfloat16 if agree.item() else None
        autocast = autocast_for(amp_dtype, device)
        scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
        rec.update(device=str(device), precision=describe_precision(amp_dtype))
        torch.manual_seed(config.seed)
        mlm = config.objective == "mlm"  # task-agnostic: masked-LM distillation on the texts, labels unused
        head = "mlm" if mlm else "classification"
        # --- data --------------------------------------------------------------------------------------------
        task = data or task_for(config)  # the same reader and label mapping as preflight and run_task()
        rec.update(data_note=task.note or None)  # e.g. the random 10 % hold-out of a single file: said, not hidden
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
            # on the whole training split (not the run's capped subset): the cache key is the data, not the run
            prep = partial(prepare_teacher, config.teacher, data or full_task_for(config),
                           max_steps=config.teacher_prep_steps, max_minutes=config.teacher_prep_minutes,
                           device=device, autocast=autocast, log=log, trust_remote_code=config.trust_remote_code,
                           progress=_phase_progress(rec, world == 1, "preparing_teacher", lambda step, steps: (
                               f"preparing the teacher: fine-tuning step {step}/{steps} (at most; it stops earlier "
                               "when its held-out accuracy stops improving)")) if main_proc else None)
            try:  # minutes on a CPU: process 0 shows its progress, and a Stop ends it (single process only)
                prepared = prep()
                if world > 1 and main_proc:
                    dist.barrier()
                try:
                    teacher, tokenizer, prep_meta = load_prepared(prepared, attn_implementation=attn)
                except (OSError, ValueError) as e:  # damaged, or removed meanwhile: a cache miss, made good once
                    if world > 1:
                        raise
                    log(f"{e} Preparing it again now.")
                    prepared = prep(refresh=True)
                    teacher, tokenizer, prep_meta = load_prepared(prepared, attn_implementation=attn)
            except _StopRequested:
                rec.stopped(ckpt_step(latest_checkpoint(run_dir)),  # a resumed run keeps its step
                            "stopped while preparing the teacher; Resume starts its fine-tuning again")
                return {}
            rec.update(teacher_path=str(prepared), teacher_prep=prep_meta)
        teacher = teacher.to(device).eval().requires_grad_(False)
        if not mlm:  # named labels follow the teacher's id2label order (not sorted); ids must match its count
            teacher_names = [str(teacher.config.id2label[i]) for i in range(teacher.config.num_labels)]
            task = align_labels(task, teacher_names, config.teacher)
            teacher.config.id2label = dict(enumerate(task.label_names))  # the student inherits the class names
            teacher.config.label2id = {n: i for i, n in enumerate(task.label_names)}
        check_max_length(config.max_length, teacher.config.to_dict(), config.teacher)
        # --- student -------------------------------------------------------------------------------------------
        torch.manual_seed(config.seed)  # again: a teacher fine-tuned just now (not cached) must not shift the RNG
        student = make_student(teacher, n_layers=config.student_layers, hidden_size=config.student_hidden,
                               n_heads=config.student_heads, ffn_size=config.student_ffn, init=config.student_init,
                               dropout=config.student_dropout, head=head,
                               trust_remote_code=config.trust_remote_code, layers_from=config.student_layers_from)
        if attn or config.alpha_attr:  # alpha_attr: the SDPA kernels have no double backward (create_graph)
            student.set_attn_implementation("eager")
        use_fast_dropout(student, device)  # CPU: dropout masks cut from random words (same p), see fastdrop.py
        t_shape, s_shape = shape(teacher.config), shape(student.config)
        layer_map = config.layer_map or (copied_layer_map(config.student_layers_from, t_shape["layers"])
                                         if config.student_layers_from else
                                         default_layer_map(t_shape["layers"], s_shape["layers"]))
        if max(layer_map) >= t_shape["layers"]:
            raise ValueError(f"layer_map={layer_map} points past the teacher's {t_shape['layers']} layers "
                             f"(valid: 0..{t_shape['layers'] - 1}).")
        student_tok = tokenizer
        if config.student_init not in ("every_k", "random"):
            from transformers import AutoTokenizer

            student_tok = AutoTokenizer.from_pretrained(student.name_or_path)
            if student_tok.get_vocab() != tokenizer.get_vocab() and (config.alpha_hidden or config.alpha_attn
                                                                      or config.alpha_attr or mlm):
                raise ValueError(f"the student {config.student_init!r} has another vocabulary than the teacher: "
                                 "hidden/attention/attribution losses and objective='mlm' need shared tokens. Use "
                                 "a student with the teacher's tokenizer, or (classification) set alpha_hidden="
                                 "alpha_attn=alpha_attr=0 "
                                 "(logit distillation works across tokenizers).")
        if config.student_vocab != "full":  # the student keeps the task's tokens; the teacher keeps its own ids
            if vocab_texts is None:  # kept rows are the teacher's: tokens outside the run's subset still mean something
                vocab_texts = data.train.texts if data is not None else full_task_for(config).train.texts
            student, student_tok, trim = trim_student(student, student_tok, vocab_texts, config.student_vocab,
                                                      max_length=config.max_length)
            rec.update(student_vocab={"size": trim.size, "source_size": trim.source_size,
                                      "task_tokens": trim.task_tokens})
        model = Distiller(student, len(layer_map) if config.alpha_hidden else 0, s_shape["hidden"],
                          t_shape["hidden"]).to(device)
        # --- tokens (once) and the teacher's logits (once, when no per-step teacher states are needed) --------
        t_train = encode(tokenizer, task.train.texts, config.max_length)
        s_train = t_train if student_tok is tokenizer else encode(student_tok, task.train.texts, config.max_length)
        t_eval = encode(tokenizer, task.eval.texts, config.max_length)
        s_eval = t_eval if student_tok is tokenizer else encode(student_tok, task.eval.texts, config.max_length)
        train_labels, eval_labels = torch.tensor(task.train.labels), torch.tensor(task.eval.labels)
        # a text pair's segment ids (data.PairIds) go to each model whose forward takes token_type_ids
        t_types, s_types = accepts_token_types(teacher), accepts_token_types(model.student)
        needs_teacher_states = bool(config.alpha_hidden or config.alpha_attn)
        token_aligned = needs_teacher_states or config.alpha_attr  # losses that pair teacher and student tokens
        if token_aligned and s_train is not t_train and any(
                a != b for a, b in zip(map(len, s_train), map(len, t_train))):  # token-aligned losses need equal splits
            raise ValueError(f"the student splits some training texts differently from the teacher "
                             f"(student_vocab={config.student_vocab!r}, student_init={config.student_init!r}), so "
                             "hidden-state/attention/attribution losses cannot pair their tokens: use "
                             "student_vocab='task' (keeps every training token), or set "
                             "alpha_hidden=alpha_attn=alpha_attr=0.")
        cached_logits = None
        # mlm: never cached, the teacher runs every step: its logits are (S, V) per text (~15 MB at S=128,
        # V=30k, so GBs for a corpus), and the masked positions change from step to step anyway
        if config.cache_teacher_logits and config.alpha_kd and not needs_teacher_states and not mlm:
            rec.phase("caching_logits", f"caching the teacher's logits on {len(t_train)} texts", 0, len(t_train),
                      force=True)
            progress = _phase_progress(rec, world == 1, "caching_logits", lambda done, total: (  # minutes on a CPU
                f"caching the teacher's logits: {done}/{total} texts")) if main_proc else None
            try:
                cached_logits = cached_tensor(  # checked before it is written: a broken teacher is never cached
                    run_dir / "teacher_logits.safetensors", main_proc, lambda: check_teacher_outputs(predict_logits(
                        teacher, t_train, tokenizer.pad_token_id, device, autocast, progress=progress),
                        "training", describe_precision(amp_dtype)),
                    shape=(len(t_train), teacher.config.num_labels), log=log)
            except _StopRequested:
                rec.stopped(ckpt_step(latest_checkpoint(run_dir)),  # a resume that lost the file keeps its step
                            "stopped while caching the teacher's logits; Resume computes them again")
                return {}
        if mlm:  # one fixed mask on the eval texts, so every evaluation scores the same masked tokens
            eval_order = length_batches([len(e) for e in t_eval], 16, seed=0, shuffle=False)  # (B, S, V) logits
            eval_batches = [mlm_batch(collate(t_eval, idx, tokenizer.pad_token_id, token_types=s_types),
                                      tokenizer, config.mlm_probability, hash((config.seed, -1, b)), at_least_one=True)
                            for b, idx in enumerate(eval_order)]
            teacher_acc = None  # measured with the student at each evaluation
            evaluate = partial(evaluate_mlm, model.student, teacher, eval_batches, device, autocast,
                               precision=describe_precision(amp_dtype))
        else:
            teacher_eval = check_teacher_outputs(predict_logits(teacher, t_eval, tokenizer.pad_token_id, device,
                                                                autocast), "eval", describe_precision(amp_dtype))
            teacher_acc = accuracy_of(predictions(teacher_eval), eval_labels)
            evaluate = partial(evaluate_classifier, model.student, s_eval, student_tok.pad_token_id, eval_labels,
                               teacher_eval, teacher_acc, device, autocast)
        # --- reasons (distill_nb.fidelity): probe agreement at each eval; the attribution-alignment loss --------
        aligner = None
        if config.alpha_attr:  # minutes for a large training set: shown as its own phase, and a Stop is heard
            rec.phase("caching_attributions", f"computing the teacher's attributions of {len(t_train)} texts",
                      0, len(t_train), force=True)
            try:
                aligner = fidelity.Aligner(
                    teacher, tokenizer, task.train.texts, t_train, method=config.attr_method,
                    n_steps=config.attr_n_steps, top_k=config.attr_top_k, examples=config.attr_examples,
                    max_length=config.max_length, device=device, save=main_proc, log=log,
                    student_tokenizer=student_tok, progress=_phase_progress(
                        rec, world == 1, "caching_attributions",
                        lambda done, total: f"computing the teacher's attributions: {done}/{total} texts")
                    if main_proc else None)
            except _StopRequested:
                rec.stopped(ckpt_step(latest_checkpoint(run_dir)),  # a resumed run keeps its step
                            "stopped while computing the teacher's attributions; Resume computes them again")
                return {}
        if config.reason_probe and not mlm and main_proc:  # seed 0: all runs on a data set share one probe
            evaluate = fidelity.ReasonTracker(
                run_dir, teacher, tokenizer, student_tok, task.eval.texts, size=config.reason_probe, seed=0,
                method=config.reason_method, n_steps=config.reason_n_steps, top_k=config.reason_top_k,
                max_length=config.max_length, device=device,
                precision="bf16" if amp_dtype == torch.bfloat16 else "fp32",  # no fp16: unscaled gradients
                log=log).wrap(evaluate, model.student)
        # --- optimiser, schedule, resume --------------------------------------------------------------------
        per_epoch = steps_per_epoch(len(t_train), config.batch_size)
        total_steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
        opt = adamw(model.parameters(), device, lr=config.learning_rate, weight_decay=config.weight_decay)
        from transformers import get_linear_schedule_with_warmup

        sched = get_linear_schedule_with_warmup(opt, int(config.warmup_ratio * total_steps), total_steps)
        step, passed_over = 0, []
        for ckpt in checkpoints(run_dir):  # newest first; a damaged one is passed over, and said so
            try:
                step = load_checkpoint(ckpt, model.student, model.proj, opt, sched, config)
            except DamagedCheckpoint as e:
                log(f"{e} Trying an earlier one.")
                passed_over.append(f"{ckpt.name} was damaged and passed over: {e}")
                continue
            log(f"resumed from {ckpt.name} (step {step})")
            break
        rec.update(resume_note="; ".join(passed_over) or None)  # this resume's, never an earlier one's
        if main_proc:  # steps after the checkpoint (all of them, without one) are redone: each is logged once
            truncate_metrics(run_dir, step)
        ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
        rec.update(total_steps=total_steps, step=step, teacher_accuracy=teacher_acc)
        rec.phase("training", f"training: {len(t_train)} examples, {per_epoch} steps/epoch"
                  + (f"; {task.note}" if task.note else ""), step, total_steps, force=True)
        # --- loop ----------------------------------------------------------------------------------------------
        lengths = [len(e) for e in s_train]
        t0, seen, stopped, start_step = time.time(), 0, False, step
        record: dict[str, Any] = {}
        while step < total_steps and not stopped:
            epoch, done_in_epoch = divmod(step, per_epoch)
            batches = length_batches(lengths, config.batch_size, seed=config.seed + epoch)
            for idx in batches[done_in_epoch:]:
                mine = idx[rank::world]  # this process's slice of the global batch
                # DDP averages the processes' gradients: each slice's mean loss is weighed by its share of the batch,
                # so uneven slices give the gradient of the whole batch's mean, as one process would
                share = len(mine) * world / len(idx)
                if not mine:  # fewer examples than processes: a stand-in row keeps this process in the step, weight 0
                    mine = idx[:1]
                batch = collate(s_train, mine, student_tok.pad_token_id, token_types=s_types)
                if mlm:  # a new mask per step, seeded by (seed, step, process): a resumed run masks the same way
                    batch, mlm_labels = mlm_batch(batch, tokenizer, config.mlm_probability,
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
                            if mlm:  # the student's masked batch; segment ids only for a teacher that takes them
                                t_batch = {k: v for k, v in batch.items() if t_types or k != "token_type_ids"}
                            elif s_train is t_train and s_types == t_types:
                                t_batch = batch
                            else:
                                t_batch = {k: v.to(device) for k, v in collate(
                                    t_train, mine, tokenizer.pad_token_id, token_types=t_types).items()}
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
                    if aligner:
                        parts["attr"] = aligner.loss(model.student, batch, mine)
                    weights = {"kd": config.alpha_kd, "ce": config.alpha_ce, "hidden": config.alpha_hidden,
                               "attn": config.alpha_attn, "attr": config.alpha_attr}
                    loss = sum(weights[k] * v for k, v in parts.items())
                scaled = loss * share if world > 1 else loss
                (scaler.scale(scaled) if scaler else scaled).backward()
                if scaler:
                    scaler.unscale_(opt)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                # non-finite: stop before the step poisons the weights (fp16's scaler skips such steps itself)
                bad = torch.tensor([float(not math.isfinite(loss.item())),
                                    float(scaler is None and not torch.isfinite(grad_norm).item()),
                                    float(main_proc and rec.stop_requested())])
                if world > 1:
                    dist.all_reduce(bad)  # every process takes the same branch
                if (bad[0] or bad[1]) and t_logits is not None:  # the teacher's fault, not the learning rate's
                    check_teacher_outputs(t_logits.detach(), "training", describe_precision(amp_dtype))
                if bad[0] or bad[1]:
                    raise Diverged(f"diverged at step {step + 1}: the {'loss' if bad[0] else 'gradient'} is not "
                                   f"finite. Lower learning_rate (now {config.learning_rate:g}) or temperature "
                                   f"(now {config.temperature:g}) and run again (run.fork(learning_rate=...)); the "
                                   f"last good checkpoint (step {ckpt_step(latest_checkpoint(run_dir))}) is kept.")
                scaler.step(opt) if scaler else opt.step()
                if scaler:
                    scaler.update()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                seen += len(idx)
                # --- metrics, heartbeat, eval, checkpoint, stop (process 0 writes) -------------------------
                stopped = bool(bad[2])
                elapsed = time.time() - t0
                rec.metrics({"step": step, "split": "train", "epoch": step / per_epoch, "loss": loss.item(),
                             **{k: v.item() for k, v in parts.items()}, "lr": sched.get_last_lr()[0],
                             "grad_norm": grad_norm.item(), "examples_per_s": seen / elapsed, "time": time.time()})
                rec.phase("training", "training", step, total_steps, step=step, epoch=step / per_epoch,
                          eta_s=elapsed / max(step - start_step, 1) * (total_steps - step))
                if step % config.eval_every == 0 and step < total_steps and main_proc:
                    record = evaluate(step)
                    rec.metrics(record)
                    log(f"step {step}/{total_steps} loss {loss.item():.4f} eval acc {record['accuracy']:.4f}")
                if (step % config.checkpoint_every == 0 or stopped) and step < total_steps:
                    if main_proc:
                        save_checkpoint(run_dir, model.student, model.proj, opt, sched, step, student_tok, config,
                                        config.keep_checkpoints)
                    if world > 1:
                        dist.barrier()
                if stopped or step >= total_steps:
                    break
        # --- the end: evaluate, save the student where pipeline() can load it ---------------------------------
        if stopped:
            rec.stopped(step, f"stopped at step {step}; Resume continues from here")
            if world > 1:
                dist.barrier()
            return record
        if main_proc:
            rec.phase("evaluating", f"final evaluation on {len(t_eval)} texts", force=True)
            record = evaluate(step)
            rec.metrics(record)
            if record.get("nonfinite"):  # finite weights can still overflow: a student that outputs NaN/inf
                raise Diverged(f"the student's logits are not finite (NaN or inf) on {record['nonfinite']} eval "
                               f"texts at the end (in {describe_precision(amp_dtype)}); nothing was saved, the last "
                               "checkpoint is kept. Lower learning_rate and run again (run.fork(learning_rate=...))"
                               + (", or use precision='fp32'" if amp_dtype is not None else "") + ".")
            if any(number(record.get(k)) is None for k in ("accuracy", "teacher_accuracy", "agreement",
                                                             "kd_to_teacher")):  # never complete on missing numbers
                raise ValueError(f"the final evaluation measured nothing (accuracy {record.get('accuracy')}, teacher "
                                 f"{record.get('teacher_accuracy')} on {len(t_eval)} eval texts): give the run eval "
                                 "texts with words in them; the last checkpoint is kept, Resume retries.")
            rec.phase("saving", "saving the student", force=True)
            save_student(run_dir, model.student, student_tok)  # Diverged instead of a non-finite student
            warning = student_beats_teacher(record.get("accuracy"), record.get("teacher_accuracy"), len(t_eval))
            rec.update(teacher_warning=warning)  # the Monitor and the report show it; None clears an old one
            rec.completed(step, record, f"done: accuracy {record['accuracy']:.4f} (teacher "
                                        f"{record['teacher_accuracy']:.4f}, {len(t_eval)} eval texts)"
                                        + (f". {warning}" if warning else ""))
            log(f"done: student accuracy {record['accuracy']:.4f}, teacher {record['teacher_accuracy']:.4f}, "
                f"retention {_percent(record['retention'])}" + (f"\nwarning: {warning}" if warning else ""))
        if world > 1:  # the others wait for process 0's evaluation: a gloo group torn down early aborts its peer
            dist.barrier()
        return record
    except BaseException as e:
        if peer := rec.failed(e, config):  # another process failed first: this one only lost its connection
            log(f"{peer} (process 0 then lost its connection to it)")
        raise
    finally:
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
        if held:
            rundir.release_worker_lock(run_dir)


# --- helpers train() calls (small, pure where possible) --------------------------------------------------------
class _StopRequested(Exception):
    """STOP appeared while the teacher was being fine-tuned, or its logits or attributions computed."""


def _phase_progress(rec: Recorder, can_stop: bool, phase: str,
                    say: Callable[[int, int], str]) -> Callable[[int, int], None]:
    """A long phase's ``progress(done, total)``: a throttled heartbeat of ``phase`` with the message ``say(done,
    total)``; STOP abandons the work (``_StopRequested``) where ``can_stop`` (a single process)."""

    def progress(done: int, total: int) -> None:
        if can_stop and rec.stop_requested():
            raise _StopRequested
        rec.phase(phase, say(done, total), done, total)

    return progress


def _claim(config: DistillConfig, run_dir: Path) -> bool:
    """Take the run's worker lock and check the run may be trained with ``config``; nothing is written on refusal.

    Returns:
        True if the lock was taken here (release it at the end), False if this process already held it.
    Raises:
        RunBusy: another worker owns the run. ValueError/ConfigError: the run is completed, or its
        config.json differs from ``config`` (a different config means a new run).
    """
    _check_run_folder(run_dir)
    held = rundir.acquire_worker_lock(run_dir)
    try:
        path = run_dir / "config.json"
        done = rundir.never_train_again(run_dir)
        if done:
            raise ValueError(f"{done}; it is never trained again (that would overwrite its student and metrics): "
                             "start a new run, e.g. Run.fork(max_steps=...).")
        if os.path.lexists(path):
            saved = DistillConfig.from_json(path)
            if saved.to_dict() != config.to_dict():
                diff = saved.diff(config)
                raise ConfigError(f"{run_dir} holds a run with another config (its -> given: {diff}); a different "
                                  "config means a new run: use a new run directory, or Run.fork(**changes).")
        else:
            config.to_json(path)
        if held:  # a new attempt (no worker claimed it for us); the other processes join only after this
            rundir.clear_peer_errors(run_dir)
    except BaseException:
        if held:
            rundir.release_worker_lock(run_dir)
        raise
    return held


# what may be in a run folder before its config.json: an attempt's locks, and teacher logits seeded into it (layer
# search and the shape bench copy one run's cache into the next run's folder)
_OURS_BEFORE_CONFIG = {".worker.lock", ".lock", "teacher_logits.safetensors"}


def _check_run_folder(run_dir: Path) -> None:
    """A run is trained in a new or empty folder, or in a run's own (one with a config.json); never in a folder of
    other files, whose metrics.jsonl, status.json, checkpoints/ and student/ it would overwrite or prune.

    Raises:
        ValueError: ``run_dir`` holds other files and no config.json (the message names a few and the fix).
    """
    try:
        names = sorted(os.listdir(run_dir))
    except (FileNotFoundError, NotADirectoryError):
        return  # a new folder (a file there is refused where the folder is made)
    if "config.json" in names:
        return
    other = [n for n in names if n not in _OURS_BEFORE_CONFIG]
    if other:
        shown = ", ".join(repr(n) for n in other[:3]) + (f" and {len(other) - 3} more" if len(other) > 3 else "")
        raise ValueError(f"{run_dir} is not a run folder: it holds {shown} but no config.json, and a run writes "
                         "metrics.jsonl, status.json, checkpoints/ and student/ there (overwriting or pruning what "
                         "is there). Give a new or empty folder for the run, e.g. "
                         f"{run_dir / 'distill-run'}.")


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


if __name__ == "__main__":  # `torchrun/accelerate launch ... -m distill_nb.train RUN_DIR` keep working
    import sys

    from .worker import cli

    sys.exit(cli(sys.argv, module="distill_nb.train"))
