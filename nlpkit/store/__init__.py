"""Named assets (models and datasets): pull, verify, locate (``assets``); resolving a name, a
folder or a ``.gguf`` into a loadable folder (``resolve``) happens here and nowhere else; GGUF to
an nlpkit model folder (``gguf_folder``).

The asset API is re-exported here (``from nlpkit import store; store.asset_dir(name)``).
Depends on ``errors`` and ``io``.
"""

from nlpkit.store.assets import (
    ASSETS,
    DATASETS,
    Asset,
    asset_dir,
    auto_pull_enabled,
    datasets_dir,
    get_asset,
    home,
    is_asset_name,
    is_pulled,
    kind_dir,
    list_assets,
    models_dir,
    pull,
    read_manifest,
    table,
    verify,
)

__all__ = [
    "ASSETS",
    "DATASETS",
    "Asset",
    "asset_dir",
    "auto_pull_enabled",
    "datasets_dir",
    "get_asset",
    "home",
    "is_asset_name",
    "is_pulled",
    "kind_dir",
    "list_assets",
    "models_dir",
    "pull",
    "read_manifest",
    "table",
    "verify",
]
