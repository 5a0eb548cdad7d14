"""preflight(config): the checks a run can fail that need neither torch nor model weights.

``launch()`` calls it before a run directory exists, so a wrong path, a folder without tokenizer files, a
decoder or seq2seq model, a device or precision the host cannot run, an impossible student shape, a layer map
past the teacher, an offline hub dataset, an empty/too-small/one-class file, a missing column or labels the
teacher does not predict raise in the notebook at once and leave nothing behind. It reads only ``config.json``
files, tokenizer vocabularies and the data files, with the worker's own reader (``data.read_local``), so it
never refuses what training would accept. torch is imported only to check a CUDA device or bf16/fp16. The
worker repeats the checks where it uses the values, so a run launched with ``check=False`` still fails with
the same message, in ``status.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .config import ConfigError, DistillConfig
from .data import LABEL_NAMES, _finish, check_some_text, find_shared_data, read_local
from .families import (
    ENCODERS,
    PACKAGED,
    POSITION_OFFSET_FAMILIES,
    SHAPE_NAMES,
    TOKENIZER_FILES,
    packaged_folder,
    unsupported_family,
)
from .tables import FILE_FORMATS

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
FULL_READ_BYTES = 64 * 2**20  # data files up to this size are read whole (labels checked); larger: a sample


def preflight(config: DistillConfig) -> dict[str, Any]:
    """Check ``config`` against the teacher's config.json and the data files, without loading weights.

    Returns:
        what it found: ``teacher_shape`` (or None when the teacher's config is not at hand, e.g. a hub id
        that is not cached yet), ``teacher_labels``, ``data_labels``, ``rows`` per split (None when not read).

    Raises:
        FileNotFoundError: the teacher, student_init or dataset path does not exist, or a model folder has no
            config.json / no weights.
        ConfigError: an impossible student shape, a layer map past the teacher, a missing column, labels that
            do not fit the teacher, a non-classifier teacher with teacher_prep_steps=0, a teacher without a
            masked-LM head for objective="mlm", ...
        ValueError: a data file is empty or not UTF-8.
    """
    if not isinstance(config, DistillConfig):
        raise TypeError(f"preflight() takes a DistillConfig, got {type(config).__name__}.")
    config.validate()
    found: dict[str, Any] = {"teacher_shape": None, "teacher_labels": None, "data_labels": None, "rows": None}
    check_device(config.device, config.precision)
    t_cfg = model_config(config.teacher, "teacher", require_weights=True)
    if t_cfg is not None:
        check_family(t_cfg, config.teacher, "teacher")
    classifier = t_cfg is not None and is_classifier(t_cfg)
    mlm = config.objective == "mlm"  # masked-LM distillation: labels are not used
    if t_cfg is not None and mlm and not is_masked_lm(t_cfg):
        raise ConfigError(
            f"objective='mlm' needs a masked-LM teacher, but {config.teacher!r} is a {t_cfg.get('model_type')} "
            f"model without a masked-LM head (architectures={t_cfg.get('architectures')}): use a checkpoint "
            "saved with its masked-LM head (...ForMaskedLM or ...ForPreTraining, e.g. bert-base-uncased), or "
            "objective='classification'.")
    if t_cfg is not None and not mlm and not classifier and config.teacher_prep_steps == 0:
        raise ConfigError(
            f"teacher {config.teacher!r} is a {t_cfg.get('model_type')} model without a sequence-classification "
            f"head (architectures={t_cfg.get('architectures')}) and teacher_prep_steps=0: set "
            "teacher_prep_steps > 0 (e.g. 300) to fine-tune a head on the dataset first, or use a teacher "
            "fine-tuned for classification.")
    if t_cfg is not None and (t_shape := shape_of(t_cfg)) is not None:
        found["teacher_shape"] = t_shape
        check_student(config, t_shape)
        check_max_length(config.max_length, t_cfg, config.teacher)
        vocab_size = t_cfg.get("vocab_size")
        if isinstance(config.student_vocab, int) and isinstance(vocab_size, int) and config.student_vocab > vocab_size:
            raise ConfigError(f"student_vocab={config.student_vocab} is larger than the teacher's {vocab_size} tokens: "
                              f"use at most {vocab_size}, 'task' (the tokens the data uses) or 'full'.")
        check_student_vocab(config)
    if config.student_init not in ("every_k", "random"):
        s_cfg = model_config(config.student_init, "student_init", require_weights=True)
        if s_cfg is not None:
            check_family(s_cfg, config.student_init, "student_init")
        if config.alpha_hidden or config.alpha_attn or config.alpha_attr or mlm:
            check_shared_vocab(config.teacher, config.student_init, mlm=mlm)
    task = read_task_labels(config)
    if task is not None:
        names, named, rows = task
        found.update(data_labels=None if mlm else names, rows=rows)
        if classifier and not mlm:
            teacher_names = id2label_names(t_cfg)
            found["teacher_labels"] = teacher_names
            match_labels(names, named, teacher_names, config.teacher)
    return found


def absolute_paths(config: DistillConfig) -> DistillConfig:
    """``config`` with relative local paths (teacher, dataset, student_init) made absolute.

    The worker runs in the run directory, so ``dataset="data/train.csv"`` must not depend on the caller's
    working directory. Aliases and hub ids are left as they are.
    """
    keep = {*PACKAGED, *LABEL_NAMES, "every_k", "random"}
    changes = {}
    for key in ("teacher", "dataset", "student_init"):
        value = getattr(config, key)
        path = Path(value).expanduser()
        if value.lower() not in keep and not Path(value).is_absolute() and path.exists():  # "~/x" too
            changes[key] = str(path.resolve())
    return config.replace(**changes) if changes else config


# --- models ----------------------------------------------------------------------------------------------------
def model_config(name: str, role: str, *, require_weights: bool = False) -> dict[str, Any] | None:
    """The model's config.json as a dict, read without transformers; None when it cannot be read cheaply.

    A local folder must hold config.json (and, with ``require_weights``, weights); a packaged alias must be
    installed; a hub id is read from the local cache (None when it is not cached and the hub is reachable:
    the worker downloads it).
    """
    if name in PACKAGED:
        folder = packaged_folder(name)
        return _read_model_json(folder / "config.json", name, role) if folder else None
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{role} {name!r} is a file: give the folder that save_pretrained() wrote "
                                    "(with config.json and model.safetensors).")
        if not (path / "config.json").is_file():
            what = "is empty" if not any(path.iterdir()) else "has no config.json"
            raise FileNotFoundError(f"{role} folder {name!r} {what}: give a folder written by "
                                    "model.save_pretrained(folder), a transformers model id, or a packaged "
                                    f"alias {sorted(PACKAGED)}.")
        if require_weights and not (any((path / f).is_file() for f in WEIGHT_FILES)
                                    or any(path.glob("*.safetensors"))):
            raise FileNotFoundError(f"{role} folder {name!r} has config.json but no weights (model.safetensors "
                                    "or pytorch_model.bin): save the model with model.save_pretrained(folder), "
                                    "or use a complete download.")
        if require_weights and not (any((path / f).is_file() for f in TOKENIZER_FILES) or any(path.glob("*.model"))):
            # transformers would build a 5-token tokenizer from special tokens alone: every word [UNK]
            raise FileNotFoundError(f"{role} folder {name!r} has no tokenizer files ({', '.join(TOKENIZER_FILES)}): "
                                    "save the tokenizer beside the model with tokenizer.save_pretrained(folder), "
                                    "or copy those files from the model it was trained from.")
        return _read_model_json(path / "config.json", name, role)
    looks_local = name.startswith(("/", "./", "../", "~", "\\")) or name.count("/") > 1
    if not looks_local:
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except ValueError:  # not a valid repo id (HFValidationError)
            cached = None
        if isinstance(cached, str):
            return _read_model_json(Path(cached), name, role)
        if not _offline():
            return None  # the worker fetches it; a wrong id fails there with the hub's message
    raise FileNotFoundError(f"{role} {name!r} not found: it is not a local folder"
                            + ("" if looks_local else " and not in the hub cache (offline: HF_HUB_OFFLINE=1)")
                            + ". Give the folder written by save_pretrained(), a cached transformers model id, "
                            f"or a packaged alias {sorted(PACKAGED)}.")


def _offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _read_model_json(path: Path, name: str, role: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{role} {name!r}: {path} is not a readable JSON config ({e}); re-save the model "
                          "with save_pretrained().") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{role} {name!r}: {path} is not a JSON object; re-save the model with save_pretrained().")
    return data


def is_classifier(cfg: dict[str, Any]) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in cfg.get("architectures") or [])


def is_masked_lm(cfg: dict[str, Any]) -> bool:
    return any(str(a).endswith(("ForMaskedLM", "ForPreTraining")) for a in cfg.get("architectures") or [])


def check_family(cfg: dict[str, Any], name: str, role: str) -> None:
    """Refuse decoder-only (causal LM) and encoder-decoder models: the toolkit distils encoders."""
    kind = unsupported_family(cfg)
    if kind:
        raise ConfigError(f"{role} {name!r} is a {kind} ({cfg.get('model_type')}, architectures="
                          f"{cfg.get('architectures')}): this toolkit distils encoders ({ENCODERS}). Use an encoder "
                          "checkpoint, e.g. teacher='minilm-l6' or a BERT/RoBERTa fine-tuned for your task.")


def check_device(device: str, precision: str) -> None:
    """A device or precision this host cannot run, refused before a run directory exists.

    Imports torch only when ``device`` or ``precision`` asks for CUDA (the common case stays torch-free).
    """
    if device == "cpu" and precision in ("bf16", "fp16"):
        raise ConfigError(f"precision={precision!r} needs a CUDA GPU, but device='cpu': use precision='auto' or "
                          "'fp32' on CPU, or device='cuda'.")
    if not (device.startswith("cuda") or precision in ("bf16", "fp16")):
        return
    import torch

    available = torch.cuda.is_available()
    if device.startswith("cuda") and not available:
        raise ConfigError(f"device={device!r} but this host has no usable CUDA GPU (torch.cuda.is_available() is "
                          "False): use device='auto' (CPU here) or 'cpu', or run on a machine with a GPU.")
    if device.startswith("cuda:") and int(device[5:]) >= torch.cuda.device_count():
        raise ConfigError(f"device={device!r} but this host has {torch.cuda.device_count()} GPU(s): use "
                          f"'cuda:0'..'cuda:{torch.cuda.device_count() - 1}', or 'cuda'.")
    if precision in ("bf16", "fp16") and not available:
        raise ConfigError(f"precision={precision!r} needs a CUDA GPU and this host has none (device={device!r} "
                          "runs on CPU): use precision='auto' or 'fp32'.")
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        raise ConfigError("precision='bf16' but this GPU does not support bfloat16: use precision='fp16' or "
                          "'auto' (which picks what the GPU supports).")


def shape_of(cfg: dict[str, Any]) -> dict[str, int] | None:
    """layers / hidden / heads / ffn from a config dict; None for a family without those fields."""
    out = {}
    for key, names in SHAPE_NAMES.items():
        value = next((cfg[n] for n in names if isinstance(cfg.get(n), int)), None)
        if value is None:
            return None
        out[key] = value
    return out


def id2label_names(cfg: dict[str, Any]) -> list[str]:
    """The teacher's label names in id order (LABEL_i where the config names none)."""
    id2label = cfg.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return [str(id2label.get(str(i), id2label.get(i, f"LABEL_{i}"))) for i in range(len(id2label))]
    return [f"LABEL_{i}" for i in range(int(cfg.get("num_labels", 2)))]


def check_student(config: DistillConfig, t: dict[str, int]) -> None:
    """The student shape and layer map against the teacher's shape (what make_student would refuse)."""
    if config.student_init not in ("every_k", "random"):
        return  # a pretrained student brings its own shape
    hidden = config.student_hidden or t["hidden"]
    heads = config.student_heads or t["heads"]
    if hidden % heads:
        ok = [h for h in range(1, 33) if hidden % h == 0]
        raise ConfigError(f"student_hidden={hidden} is not divisible by student_heads={heads}: set student_heads "
                          f"to one of {ok}, or student_hidden to a multiple of {heads}.")
    if config.student_init == "every_k":
        if config.student_layers > t["layers"]:
            raise ConfigError(f"student_layers={config.student_layers} but student_init='every_k' copies every "
                              f"k-th layer of a {t['layers']}-layer teacher: use student_layers <= {t['layers']}, "
                              "or student_init='random'.")
        ffn = config.student_ffn or (t["ffn"] if hidden == t["hidden"] else 4 * hidden)
        if (hidden, heads, ffn) != (t["hidden"], t["heads"], t["ffn"]):
            raise ConfigError(f"student_init='every_k' copies teacher layers, so hidden/heads/ffn must equal the "
                              f"teacher's ({t['hidden']}/{t['heads']}/{t['ffn']}), got {hidden}/{heads}/{ffn}: "
                              "leave student_hidden/heads/ffn unset, or use student_init='random'.")
        given = config.student_layers_from
        if given is not None and max(given) >= t["layers"]:
            raise ConfigError(f"student_layers_from={given} points past the teacher's {t['layers']} layers: use "
                              f"strictly increasing indices 0..{t['layers'] - 1}, or None (every k-th layer).")
    if config.layer_map is not None and max(config.layer_map) >= t["layers"]:
        raise ConfigError(f"layer_map={config.layer_map} points past the teacher's {t['layers']} layers: use "
                          f"indices 0..{t['layers'] - 1}, or layer_map=None (every k-th, last to last).")


def check_max_length(max_length: int, cfg: dict[str, Any], name: str) -> None:
    positions = cfg.get("max_position_embeddings")
    if not isinstance(positions, int):
        return
    limit = positions - 2 if cfg.get("model_type") in POSITION_OFFSET_FAMILIES else positions
    if max_length > limit:
        raise ConfigError(f"max_length={max_length} is longer than the teacher {name!r} can read ({limit} "
                          f"tokens): set max_length <= {limit}; longer texts are truncated.")


def check_student_vocab(config: DistillConfig) -> None:
    """An integer ``student_vocab`` the run would refuse, refused before the run exists: no room beyond the
    tokenizer's special tokens, or (with hidden/attention/attribution losses, which pair teacher and student tokens)
    a trimmed student that splits some training text differently. Reads the teacher's tokenizer and the data, as
    train() does; only for a local (or packaged) teacher and an integer ``student_vocab``."""
    size = config.student_vocab
    folder = packaged_folder(config.teacher) if config.teacher in PACKAGED else Path(config.teacher).expanduser()
    if not isinstance(size, int) or isinstance(size, bool) or folder is None or not folder.is_dir():
        return
    if config.student_init not in ("every_k", "random"):
        return  # the student brings its own tokenizer: train() trims that one
    from transformers import AutoTokenizer

    from .data import encode
    from .rundata import full_task_for, task_for
    from .vocab import choose_vocab, trim_tokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except Exception:  # noqa: BLE001 — the teacher's own checks (at load) give the clear message
        return
    specials = len(set(tokenizer.all_special_ids))
    if size <= specials:
        raise ConfigError(f"student_vocab={size} leaves no room beyond the teacher tokenizer's {specials} special "
                          "tokens: keep more, or use 'task' (the tokens the data uses).")
    if not (config.alpha_hidden or config.alpha_attn or config.alpha_attr):
        return
    try:
        trim = choose_vocab(tokenizer, full_task_for(config).train.texts, size, max_length=config.max_length)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    texts = task_for(config).train.texts
    lengths = [len(ids) for ids in encode(tokenizer, texts, config.max_length)]
    trimmed = [len(ids) for ids in encode(trim_tokenizer(tokenizer, trim), texts, config.max_length)]
    if lengths != trimmed:
        raise ConfigError(f"student_vocab={size} drops tokens the training texts use ({trim.task_tokens} distinct), so "
                          "the student would split some texts differently from the teacher and hidden-state/"
                          "attention/attribution losses could not pair their tokens: use student_vocab='task' "
                          f"(keeps every training token), at least {trim.task_tokens}, or set "
                          "alpha_hidden=alpha_attn=alpha_attr=0.")


def check_shared_vocab(teacher: str, student: str, *, mlm: bool = False) -> None:
    """Hidden/attention losses compare token positions (masked-LM KD, vocabularies), so the student must
    tokenize like the teacher."""
    a, b = _vocab(teacher), _vocab(student)
    if a is not None and b is not None and a != b:
        fix = ("objective='mlm' compares vocabulary distributions: use a student with the teacher's tokenizer, "
               "or student_init='every_k'.") if mlm else (
               "hidden/attention/attribution losses need shared tokens. Set alpha_hidden=0, alpha_attn=0 and "
               "alpha_attr=0 (logit distillation works across tokenizers), or use a student with the "
               "teacher's tokenizer.")
        raise ConfigError(f"student_init={student!r} has another vocabulary than the teacher {teacher!r} "
                          f"({len(b)} vs {len(a)} tokens): {fix}")


def _vocab(name: str) -> dict[str, int] | None:
    folder = packaged_folder(name) if name in PACKAGED else Path(name).expanduser()
    if folder is None or not folder.is_dir():
        return None
    if (folder / "tokenizer.json").is_file():
        try:
            model = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8")).get("model", {})
            vocab = model.get("vocab")
            if isinstance(vocab, dict):
                return vocab
            if isinstance(vocab, list):  # unigram: [[piece, score], ...]
                return {str(p[0]): i for i, p in enumerate(vocab)}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
            pass
    if (folder / "vocab.txt").is_file():
        lines = (folder / "vocab.txt").read_text(encoding="utf-8", errors="replace").splitlines()
        return {t: i for i, t in enumerate(lines)}
    return None


def match_labels(data_names: Sequence[str], named: bool, teacher_names: Sequence[str],
                 teacher: str) -> list[str] | None:
    """How the data's labels map onto the teacher's outputs.

    Returns:
        the teacher's label names (relabel the data to them) when the data names its labels and the teacher
        does too; None when ids are used as they are (the counts match).

    Raises:
        ConfigError: a label the teacher does not predict, or a different number of labels.
    """
    default = all(re.fullmatch(r"LABEL_\d+", n) for n in teacher_names)
    if named and not default:
        known = {n.lower() for n in teacher_names}
        unknown = [n for n in data_names if n.lower() not in known]
        if unknown:
            raise ConfigError(f"the data has labels {unknown[:10]} that the teacher {teacher!r} does not predict "
                              f"(its labels: {list(teacher_names)}): map them to the teacher's labels, use a "
                              "teacher trained on these labels, or a bare encoder with teacher_prep_steps > 0.")
        return list(teacher_names)
    if len(data_names) != len(teacher_names):
        raise ConfigError(f"the teacher {teacher!r} predicts {len(teacher_names)} labels {list(teacher_names)} but "
                          f"the data has {len(data_names)} ({list(data_names)[:10]}): use a teacher trained on "
                          "this task, or a bare encoder with teacher_prep_steps > 0.")
    return None


# --- data ------------------------------------------------------------------------------------------------------
def read_task_labels(config: DistillConfig) -> tuple[list[str], bool, dict[str, int]] | None:
    """(label names, named?, rows per split) of a local dataset; None for aliases and ``datasets`` names.

    Uses the worker's own reader (``data.read_local``: same columns, BOM, JSON layouts, hold-out, label mapping),
    reading a small file whole; a big file gets its first rows checked and its labels checked by the worker.
    """
    key = config.dataset.lower().replace("-", "")
    if key in LABEL_NAMES:
        if not ((shared := find_shared_data()) and (shared / key).is_dir()) and _offline():
            raise FileNotFoundError(f"dataset {config.dataset!r} needs shared/data/{key} (or $DISTILL_NB_DATA) "
                                    "or the hub, and the hub is offline: set DISTILL_NB_DATA to the data "
                                    "folder, or give a local CSV/JSON file.")
        return None
    path = Path(config.dataset).expanduser()
    if not path.exists():
        if path.suffix.lower() in FILE_FORMATS or config.dataset.startswith(("/", "./", "../", "~")):
            raise FileNotFoundError(f"dataset {config.dataset!r}: no such file. Give a CSV/TSV/JSON/JSONL/Parquet "
                                    f"file or folder, a datasets name, or an alias: {sorted(LABEL_NAMES)}.")
        check_hub_dataset(config.dataset)
        return None  # a datasets name: the worker loads it
    cols = [config.text_column] if isinstance(config.text_column, str) else config.text_column
    label_column = None if config.objective == "mlm" else config.label_column  # mlm: unlabelled text is fine
    try:
        raw, whole, _ = read_local(path, cols, label_column, config.train_split, config.eval_split, config.seed,
                                   config.text_pair, max_bytes=FULL_READ_BYTES)
    except KeyError as e:  # a missing column: a config value to change
        raise ConfigError(e.args[0]) from None
    check_some_text(raw, f"{config.dataset} (text_column={config.text_column!r})")
    rows = {k: len(v[0]) for k, v in raw.items()}
    if not whole:
        for split, (texts, _) in raw.items():
            if not texts:
                raise ValueError(f"the {split} split of {config.dataset} is empty: give at least one example.")
        return None
    task = _finish(raw, config.label_names, str(config.dataset), labelled=label_column is not None)
    return task.label_names, task.named_labels, rows


def check_hub_dataset(name: str) -> None:
    """Offline, a ``datasets`` hub name works only from the local cache: refuse it up front otherwise."""
    if not (_offline() or os.environ.get("HF_DATASETS_OFFLINE", "").lower() in ("1", "true", "yes", "on")):
        return
    repo = name.partition(":")[0]
    home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface")
    hub = Path(os.environ.get("HF_HUB_CACHE") or home / "hub")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE") or home / "datasets")
    candidates = [hub / f"datasets--{repo.replace('/', '--')}", datasets_cache / repo.replace("/", "___")]
    if not any(c.is_dir() for c in candidates):
        raise FileNotFoundError(f"dataset {name!r} is a hub dataset name, but the hub is offline (HF_HUB_OFFLINE=1) "
                                f"and it is not in the local cache ({datasets_cache}): give a local CSV/TSV/JSON/"
                                f"JSONL/Parquet file or folder, or an alias {sorted(LABEL_NAMES)} with shared/data "
                                "present.")
