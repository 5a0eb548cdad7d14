"""Vocabulary trimming: a student that keeps only the word pieces its task uses (TextPruner's vocabulary pruning).

MiniLM-L6's word embeddings are 11.7M of its 22.7M parameters; a task's texts use a few thousand of the 30,522
word pieces. The student keeps those rows (plus the special tokens and an optional top-up), in the teacher's
order: new id = position in :attr:`VocabTrim.kept_ids`.

The student gets its own tokenizer: the same normalisation, pre-tokenisation and special tokens, a WordPiece
vocabulary of the kept pieces only, renumbered. WordPiece splits greedily by the longest known piece, so a text
whose pieces are all kept is split exactly as the teacher splits it (same tokens, same length: hidden-state and
attention losses stay aligned; the teacher reads its own ids, the student the new ones). A word it cannot
split into kept pieces becomes one ``[UNK]``, the same way in training, in evaluation and in
``transformers.pipeline`` on the saved student, since all three use this tokenizer. Such words may be split
differently from the teacher's split (fewer or other pieces): with ``student_vocab="task"`` no training text has
one; an integer size can drop pieces the training texts use, and then only logit losses are possible.
Supported: WordPiece (BERT, MiniLM, MPNet, ELECTRA) and WordLevel tokenizers.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class VocabTrim:
    """Which of a tokenizer's ids a student keeps; the new id of a token is its position in ``kept_ids``."""

    kept_ids: tuple[int, ...]  # ascending original ids
    source_size: int  # ids in the original vocabulary
    unk_id: int  # original id of the unknown token
    mode: str | int  # "task" or the requested size
    task_tokens: int  # distinct ids the texts used (specials included)
    texts: int  # texts the choice was made from

    @property
    def size(self) -> int:
        return len(self.kept_ids)

    def old_to_new(self) -> torch.Tensor:
        """(source_size,) long: new id of every original id (dropped ones -> the new [UNK] id)."""
        table = torch.full((self.source_size,), self.kept_ids.index(self.unk_id), dtype=torch.long)
        table[list(self.kept_ids)] = torch.arange(self.size)
        return table

    def remap(self, encoded: Sequence[Sequence[int]]) -> list[list[int]]:
        """Original token-id lists -> the student's ids (what the trimmed tokenizer gives for the same texts)."""
        table = self.old_to_new().tolist()
        return [[table[i] for i in ids] for ids in encoded]

    def describe(self) -> dict[str, Any]:
        """JSON-friendly summary (stored in the student's config as ``distill_nb_vocab``)."""
        return {"mode": self.mode, "size": self.size, "source_size": self.source_size, "unk_id": self.unk_id,
                "task_tokens": self.task_tokens, "texts": self.texts, "kept_ids": list(self.kept_ids)}


def _encode(tokenizer: Any, texts: Sequence[str], max_length: int | None) -> list[list[int]]:
    kwargs = {"truncation": True, "max_length": max_length} if max_length else {}
    return tokenizer(list(texts), **kwargs)["input_ids"]


def choose_vocab(tokenizer: Any, texts: Sequence[str], size: str | int = "task", *,
                 max_length: int | None = None) -> VocabTrim:
    """The ids to keep for ``texts`` (normally the training texts: evaluation texts must not choose it).

    Args:
        size: "task" keeps every id the texts use plus the special tokens; an integer N keeps the N most
            frequent of them (specials always kept, ties to the lower id) and, when N exceeds what the texts
            use, tops up with the lowest other ids of the tokenizer, skipping ``[...]`` placeholders (BERT's
            WordPiece vocabulary lists single characters, then whole words by corpus frequency).
        max_length: truncate like training does (tokens past it are never seen).

    Raises:
        ValueError: an unknown ``size``, a size too small for the specials or larger than the vocabulary,
            or a tokenizer without an unknown token.
    """
    if tokenizer.unk_token_id is None:
        raise ValueError(f"{type(tokenizer).__name__} has no unknown token, so dropped tokens have nowhere to "
                         "go: vocabulary trimming needs a tokenizer with an unk token (BERT-style [UNK]).")
    source = _source_vocab(tokenizer)
    n_source = max(source.values()) + 1
    specials = sorted({int(i) for i in tokenizer.all_special_ids})
    counts = Counter(i for ids in _encode(tokenizer, texts, max_length) for i in ids)
    used = sorted(set(counts) | set(specials))
    if size == "task":
        kept = used
    elif isinstance(size, int) and not isinstance(size, bool):
        if size <= len(specials):
            raise ValueError(f"student_vocab={size} leaves no room beyond the {len(specials)} special tokens: "
                             f"keep more (the texts use {len(used)} distinct tokens), or use 'task'.")
        if size > n_source:
            raise ValueError(f"student_vocab={size} is larger than the tokenizer's {n_source} tokens: use at "
                             f"most {n_source}, or 'full'.")
        ranked = sorted((i for i in counts if i not in set(specials)), key=lambda i: (-counts[i], i))
        kept_set = set(specials) | set(ranked[:size - len(specials)])
        if len(kept_set) < size:  # top up in the tokenizer's own order, skipping [unusedN]-style placeholders
            names = {i: t for t, i in source.items()}
            for i in range(n_source):
                if len(kept_set) >= size:
                    break
                name = names.get(i, "")
                if i not in kept_set and name and not (name.startswith("[") and name.endswith("]")):
                    kept_set.add(i)
        kept = sorted(kept_set)
    else:
        raise ValueError(f"size={size!r} is invalid: use 'task' or an integer number of tokens to keep.")
    return VocabTrim(tuple(kept), n_source, int(tokenizer.unk_token_id), size, len(used), len(texts))


def _source_vocab(tokenizer: Any) -> dict[str, int]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"{type(tokenizer).__name__} is not backed by a tokenizers.Tokenizer: vocabulary "
                         "trimming writes a tokenizer.json and needs a fast tokenizer.")
    model = json.loads(backend.to_str())["model"]
    if model.get("type") not in ("WordPiece", "WordLevel"):
        raise ValueError(f"the tokenizer is a {model.get('type')} tokenizer; vocabulary trimming supports "
                         "WordPiece (BERT, MiniLM, MPNet, ELECTRA) and WordLevel tokenizers, whose pieces can be "
                         "dropped without merge rules. Use student_vocab='full'.")
    return model["vocab"]


def trim_tokenizer(tokenizer: Any, trim: VocabTrim) -> Any:
    """The student's tokenizer: ``tokenizer`` with only the kept pieces, renumbered (see the module docstring).

    Saved with ``save_pretrained`` it loads with ``AutoTokenizer`` / ``pipeline`` as a plain
    tokenizers-backed tokenizer.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    table = trim.old_to_new().tolist()
    kept = set(trim.kept_ids)
    state["model"]["vocab"] = {t: table[i] for t, i in state["model"]["vocab"].items() if i in kept}
    for added in state.get("added_tokens") or []:
        if added["id"] not in kept:
            raise ValueError(f"added token {added['content']!r} (id {added['id']}) is not among the kept ids: "
                             "choose_vocab keeps every special token; add it to the texts or keep 'full'.")
        added["id"] = table[added["id"]]
    _remap_post_processor(state.get("post_processor"), table)
    backend = Tokenizer.from_str(json.dumps(state))
    specials = {k: getattr(tokenizer, k) for k in ("unk_token", "pad_token", "cls_token", "sep_token",
                                                   "mask_token", "bos_token", "eos_token")
                if getattr(tokenizer, k, None) is not None}
    # model_input_names: the same outputs as the source (BERT's token_type_ids: a text pair's segment ids)
    return PreTrainedTokenizerFast(tokenizer_object=backend, model_max_length=tokenizer.model_max_length,
                                   padding_side=tokenizer.padding_side,
                                   model_input_names=list(tokenizer.model_input_names), **specials)


def _remap_post_processor(proc: dict[str, Any] | None, table: list[int]) -> None:
    """Renumber the special-token ids a post-processor inserts ([CLS]/[SEP], <s>/</s>), in place."""
    if not proc:
        return
    for sub in proc.get("processors") or []:  # Sequence of processors
        _remap_post_processor(sub, table)
    for special in (proc.get("special_tokens") or {}).values():  # TemplateProcessing
        special["ids"] = [table[i] for i in special["ids"]]
    for key in ("cls", "sep"):  # BertProcessing / RobertaProcessing: [token, id]
        if isinstance(proc.get(key), list):
            proc[key] = [proc[key][0], table[proc[key][1]]]


def trim_embeddings(model: nn.Module, trim: VocabTrim) -> nn.Module:
    """Keep only the rows ``trim.kept_ids`` of the word embeddings, in place; returns ``model``.

    Raises:
        ValueError: the model's vocabulary is not the one ``trim`` was chosen for, or it has a
            vocabulary-sized output layer (masked-LM head), which trimming does not handle.
    """
    emb = model.get_input_embeddings()
    if emb.num_embeddings != trim.source_size:
        raise ValueError(f"the model has {emb.num_embeddings} word embeddings but the vocabulary was chosen from "
                         f"a tokenizer of {trim.source_size} tokens: trim with the model's own tokenizer "
                         "(and only once).")
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if out is not None:
        raise ValueError("the model has a masked-LM head over the vocabulary; vocabulary trimming supports "
                         "classifiers only (objective='classification').")
    table = trim.old_to_new()
    pad = getattr(model.config, "pad_token_id", None)
    # built from the kept rows, not initialised and overwritten: a random init would consume the global RNG and
    # shift every dropout mask after it, so a trimmed run would not train like its untrimmed twin (same seed)
    new = nn.Embedding.from_pretrained(emb.weight.detach()[list(trim.kept_ids)].clone(), freeze=False,
                                       padding_idx=None if pad is None else int(table[pad]))
    model.set_input_embeddings(new)
    model.config.vocab_size = trim.size
    for key in ("pad_token_id", "bos_token_id", "eos_token_id", "sep_token_id", "cls_token_id"):
        value = getattr(model.config, key, None)
        if isinstance(value, int) and 0 <= value < trim.source_size:
            setattr(model.config, key, int(table[value]))
    model.config.distill_nb_vocab = trim.describe()
    return model


def trim_student(model: nn.Module, tokenizer: Any, texts: Sequence[str], size: str | int = "task", *,
                 max_length: int | None = None) -> tuple[nn.Module, Any, VocabTrim]:
    """Trim ``model`` (in place) to the tokens of ``texts``: (model, its new tokenizer, the choice)."""
    trim = choose_vocab(tokenizer, texts, size, max_length=max_length)
    return trim_embeddings(model, trim), trim_tokenizer(tokenizer, trim), trim


def outside_vocab(tokenizer: Any, trim: VocabTrim, texts: Sequence[str], *,
                  max_length: int | None = None) -> dict[str, Any]:
    """Tokens of ``texts`` (with the original tokenizer) that fall outside ``trim``'s kept ids.

    Returns:
        tokens (real tokens, specials excluded), outside (of them not kept), outside_fraction, texts,
        texts_with_outside, and the 10 most frequent outside tokens.
    """
    kept = set(trim.kept_ids)
    specials = set(tokenizer.all_special_ids)
    encoded = _encode(tokenizer, texts, max_length)
    real = [[i for i in ids if i not in specials] for ids in encoded]
    tokens = sum(len(ids) for ids in real)
    missing = Counter(i for ids in real for i in ids if i not in kept)
    outside = sum(missing.values())
    return {"tokens": tokens, "outside": outside, "outside_fraction": outside / max(tokens, 1),
            "texts": len(encoded), "texts_with_outside": sum(1 for ids in real if any(i not in kept for i in ids)),
            "top_outside": [tokenizer.convert_ids_to_tokens(i) for i, _ in missing.most_common(10)]}


def trim_of(model_or_config: Any) -> VocabTrim | None:
    """The :class:`VocabTrim` a saved student was trimmed with (from its config), or None if it was not."""
    config = getattr(model_or_config, "config", model_or_config)
    info = getattr(config, "distill_nb_vocab", None)
    if not info:
        return None
    kept = tuple(int(i) for i in info["kept_ids"])
    unk = info.get("unk_id")
    return VocabTrim(kept, int(info["source_size"]), int(unk) if unk is not None else kept[0], info["mode"],
                     int(info["task_tokens"]), int(info["texts"]))


def check_tokenizer(model: Any, tokenizer: Any, who: str = "the model") -> None:
    """Raise a ValueError when ``tokenizer`` is not the one a vocabulary-trimmed ``model`` reads.

    A trimmed student numbers its tokens anew (:func:`trim_tokenizer`): the teacher's tokenizer gives it ids
    past its embeddings (an IndexError deep in the model) or, below them, other tokens than the text says
    (silently wrong). Untrimmed models pass unchecked.
    """
    trim = trim_of(model)
    if trim is None or tokenizer is None:
        return
    size = len(tokenizer)
    if size != trim.size:
        source = " (the vocabulary it was trimmed from: the teacher's tokenizer?)" if size == trim.source_size else ""
        raise ValueError(f"{who} was vocabulary-trimmed to {trim.size:,} tokens, but the tokenizer given has "
                         f"{size:,}{source}: pass the student's own tokenizer (saved with it: "
                         "AutoTokenizer.from_pretrained(its folder), or Compressed.tokenizer of trim_vocabulary), "
                         "or build it with distill_nb.vocab.trim_tokenizer(teacher_tokenizer, trim_of(student)).")
