"""Shared fixtures: tiny random models and a vocab built in tmp dirs (no downloads), real-data paths."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

WORDS = ("the a an and or but not no very really quite movie film story plot acting actor actors music "
         "good great fine fun funny best love loved wonderful beautiful brilliant enjoy enjoyed "
         "bad awful boring dull worst hate hated terrible poor mess waste slow "
         "is was are were be it this that of to in on with for as by at what who where when how why "
         "which city country name person number many much year ##s ##ed ##ing ##ly , . ! ? '").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def write_vocab(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = SPECIALS + WORDS + [w for w in letters if w not in WORDS] + [f"##{c}" for c in letters]
    path = folder / "vocab.txt"
    path.write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    return path


def make_tiny_bert(folder: Path, *, layers: int = 4, hidden: int = 32, heads: int = 4, labels: int = 2,
                   seed: int = 0, mlm: bool = False) -> Path:
    """A random BertForSequenceClassification (BertForMaskedLM with ``mlm``) + BertTokenizerFast in ``folder``."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, BertTokenizerFast

    vocab = write_vocab(folder)
    tok = BertTokenizerFast(vocab=str(vocab), do_lower_case=True)
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                     num_attention_heads=heads, intermediate_size=hidden * 2, max_position_embeddings=128,
                     num_labels=labels, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = (BertForMaskedLM if mlm else BertForSequenceClassification)(cfg).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_teacher(tmp_path_factory) -> Path:
    """Path of a 4-layer, 32-wide random BERT classifier with its tokenizer (2 labels)."""
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_teacher"))


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """A folder with train.csv / validation.csv (text,label) of toy sentiment sentences."""
    import random

    rng = random.Random(0)
    pos, neg = ["good", "great", "fun", "loved", "wonderful"], ["bad", "awful", "boring", "hated", "dull"]
    folder = tmp_path_factory.mktemp("tiny_data")
    for split, n in [("train", 64), ("validation", 24)]:
        rows = ["text,label"]
        for _ in range(n):
            label = rng.randint(0, 1)
            word = rng.choice(pos if label else neg)
            rows.append(f"the movie was {'very ' * rng.randint(0, 3)}{word},{label}")
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (SST-2, TREC-6) or skip with the reason."""
    if not (SHARED_DATA / "sst2" / "dev.tsv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA} (the project's shared/data beside the checkout)")
    return SHARED_DATA


@pytest.fixture()
def runs_root(tmp_path, monkeypatch) -> Path:
    """An empty runs folder, also exported as $DISTILL_NB_RUNS for workers and the server."""
    root = tmp_path / "runs"
    monkeypatch.setenv("DISTILL_NB_RUNS", str(root))
    return root
