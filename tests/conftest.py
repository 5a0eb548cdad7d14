"""Shared fixtures: tiny random models and a vocab built in tmp dirs (no downloads), real-data paths."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# precision="auto" on a CPU: fp32 in tests (bf16 is chosen by a timing check that a busy machine can flip)
os.environ.setdefault("DISTILL_NB_CPU_AUTO", "fp32")

WORDS = ("the a an and or but not no very really quite movie film story plot acting actor actors music "
         "good great fine fun funny best love loved wonderful beautiful brilliant enjoy enjoyed "
         "bad awful boring dull worst hate hated terrible poor mess waste slow "
         "is was are were be it this that of to in on with for as by at what who where when how why "
         "which city country name person number many much year ##s ##ed ##ing ##ly , . ! ? '").split()
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
LABEXT = REPO / "labextension"  # the frontend source, with node_modules/playwright-core once installed
BUILT = REPO / "distill_nb" / "labextension"  # the built extension
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


# every error message says how to fix the problem, not only what is wrong
HINT = re.compile(r"\b(use|give|set|choose|pick|remove|rename|re-save|leave|map|drop|free|halve|pass|check|fix|save)\b",
                  re.IGNORECASE)


def clear_error(call, exc: type[BaseException] | tuple, needles) -> str:
    """Run ``call()``; it must raise ``exc`` whose message holds every needle and a hint (:data:`HINT`)."""
    with pytest.raises(exc) as info:
        call()
    message = info.value.args[0] if isinstance(info.value, KeyError) else str(info.value)
    for needle in needles:
        assert needle in message, (needle, message)
    assert HINT.search(message), f"no hint on how to fix it: {message}"
    return message


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


def finishes(call, fifo: Path | None = None, timeout: float = 20):
    """``call()``'s result (or the exception it raised), failing the test if it blocks (on a FIFO: then released)."""
    out = {}

    def run():
        try:
            out["value"] = call()
        except BaseException as e:  # noqa: BLE001 — handed to the test
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        if fifo is not None:  # let the blocked open() go, so that the test run itself ends
            os.close(os.open(fifo, os.O_RDWR | os.O_NONBLOCK))
        raise AssertionError(f"blocked for more than {timeout} s")
    return out


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


def make_segment_bert(folder: Path) -> Path:
    """A tiny random BERT classifier whose predictions depend on the segment ids (token_type_ids) of a text pair.

    Weights at unit scale (``make_tiny_bert``'s 0.02 gives nearly the same logits for every input), a
    token-type-1 embedding three times a word's (read without its segment ids, a pair often gets another class)
    and a classifier bias that splits random word pairs about evenly between the two classes.
    """
    import math

    import torch
    from transformers import BertForSequenceClassification, BertTokenizerFast

    make_tiny_bert(folder)
    model = BertForSequenceClassification.from_pretrained(folder).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.weight.normal_(0, 1 / math.sqrt(m.in_features), generator=generator)
            elif isinstance(m, torch.nn.Embedding):
                m.weight.normal_(0, 1, generator=generator)
        model.bert.embeddings.token_type_embeddings.weight[1].mul_(3)
        first, second = random_pairs(200, seed=1)
        logits = model(**BertTokenizerFast.from_pretrained(folder)(first, second, padding=True,
                                                                    return_tensors="pt")).logits
        model.classifier.bias[1] -= (logits[:, 1] - logits[:, 0]).median()
    model.save_pretrained(folder)
    return folder


def random_pairs(n: int, seed: int) -> tuple[list[str], list[str]]:
    """``n`` (first, second) texts of 2-8 random words each."""
    import random

    rng = random.Random(seed)
    words = [w for w in WORDS if w.isalpha()]
    phrase = lambda: " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
    return [phrase() for _ in range(n)], [phrase() for _ in range(n)]


@pytest.fixture(scope="session")
def pair_teacher(tmp_path_factory) -> Path:
    """Path of :func:`make_segment_bert`: a BERT teacher that reads a text pair's two segments differently."""
    return make_segment_bert(tmp_path_factory.mktemp("pair_teacher"))


@pytest.fixture
def segments_seen(monkeypatch) -> list[bool]:
    """Whether each BERT forward (teacher or student, any path) got token_type_ids, in call order."""
    from transformers.models.bert.modeling_bert import BertModel

    seen: list[bool] = []
    real = BertModel.forward

    def forward(self, *args, **kwargs):
        seen.append(kwargs.get("token_type_ids") is not None)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BertModel, "forward", forward)
    return seen


@pytest.fixture(scope="session")
def pair_dataset(tmp_path_factory, pair_teacher) -> Path:
    """train.csv / validation.csv (premise,hypothesis,label), labelled with ``pair_teacher``'s own predictions on
    each pair read with its segment ids (a clear margin each): that teacher scores 1.0 when it gets them."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(pair_teacher).eval()
    tok = AutoTokenizer.from_pretrained(pair_teacher)
    first, second = random_pairs(400, seed=0)
    with torch.no_grad():
        logits = model(**tok(first, second, padding=True, return_tensors="pt")).logits
    keep = [i for i in range(400) if abs(logits[i, 1] - logits[i, 0]) > 0.05][:88]
    folder = tmp_path_factory.mktemp("pair_data")
    for split, idx in [("train", keep[:64]), ("validation", keep[64:])]:
        rows = ["premise,hypothesis,label"] + [f"{first[i]},{second[i]},{int(logits[i].argmax())}" for i in idx]
        (folder / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return folder


# --- JupyterLab in a browser ------------------------------------------------------------------------------
def browser_missing(need_build: bool = True) -> str | None:
    """Why a headless-Chromium test cannot run here (None when it can)."""
    if not Path(CHROMIUM).is_file():
        return f"{CHROMIUM} not found (apt-get install chromium, see .ci/setup-browser.sh)"
    if shutil.which("node") is None:
        return "node not found"
    if not (LABEXT / "node_modules" / "playwright-core").is_dir():
        return "labextension/node_modules missing (cd labextension && npm ci, see .ci/setup-browser.sh)"
    if need_build and not (BUILT / "package.json").is_file():
        return "labextension not built (pip install -e . or cd labextension && npm run build)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, runs_root):
    """A `jupyter lab` on 127.0.0.1 that loads this checkout's server and lab extensions only."""
    port, token = _free_port(), secrets.token_hex(16)
    home, config, labext = tmp_path / "home", tmp_path / "config", tmp_path / "labextensions"
    for d in (home, config, labext):
        d.mkdir()
    if BUILT.is_dir():
        (labext / "distill-nb").symlink_to(BUILT)  # this build wins over any installed copy
    news = tmp_path / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True)
    news.write_text('{"fetchNews": "false"}')  # no "Jupyter news?" toast over the screenshots
    (config / "jupyter_server_config.json").write_text(json.dumps({
        "ServerApp": {"jpserver_extensions": {"distill_nb": True}},
        "LabApp": {"extra_labextensions_path": [str(labext)], "user_settings_dir": str(tmp_path / "settings"),
                   "workspaces_dir": str(tmp_path / "workspaces")},
    }))
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "DISTILL_NB_RUNS": str(runs_root),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={home}",
           "--allow-root"]  # CI containers run as root
    url, log_path = f"http://127.0.0.1:{port}/", tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=home)
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    pytest.fail(f"jupyter lab did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"url": url, "token": token, "home": home, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
