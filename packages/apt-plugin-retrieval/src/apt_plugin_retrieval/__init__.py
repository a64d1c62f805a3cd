"""apt-plugin-retrieval: a kNN-LM for APT (Khandelwal et al. 2020, arXiv 1911.00172).

A datastore maps the model's representation of every training context (the input of the
last block's feed-forward, after its norm) to the token that followed; at prediction time
the ``k`` nearest stored contexts vote a distribution ``p_kNN`` that is mixed with the
model's: ``p = lmbda * p_kNN + (1 - lmbda) * p_LM``. Enable it with ``plugins: [retrieval]``
and a ``retrieval:`` config section (see :class:`RetrievalConfig`).
"""

from __future__ import annotations

from apt_plugin_retrieval._config import RetrievalConfig
from apt_plugin_retrieval._datastore import INDEX_FILE
from apt_plugin_retrieval._datastore import KEYS_FILE
from apt_plugin_retrieval._datastore import MANIFEST_FILE
from apt_plugin_retrieval._datastore import VALS_FILE
from apt_plugin_retrieval._datastore import Datastore
from apt_plugin_retrieval._datastore import IndexSpec
from apt_plugin_retrieval._datastore import RetrievalError
from apt_plugin_retrieval._datastore import build_datastore
from apt_plugin_retrieval._datastore import make_index
from apt_plugin_retrieval._datastore import plan_index
from apt_plugin_retrieval._eval import ScoredBatches
from apt_plugin_retrieval._eval import SweepRow
from apt_plugin_retrieval._eval import score_batches
from apt_plugin_retrieval._eval import sweep
from apt_plugin_retrieval._eval import write_sweep
from apt_plugin_retrieval._generate import KnnLogprobs
from apt_plugin_retrieval._knn import KeyRecorder
from apt_plugin_retrieval._knn import capture_keys
from apt_plugin_retrieval._knn import knn_log_probs
from apt_plugin_retrieval._knn import mix_log_probs
from apt_plugin_retrieval._knn import weights_sha256
from apt_plugin_retrieval._plugin import SWEEP_FILE
from apt_plugin_retrieval._plugin import TUNED_FILE
from apt_plugin_retrieval._plugin import RetrievalPlugin


__all__ = [
    "INDEX_FILE",
    "KEYS_FILE",
    "MANIFEST_FILE",
    "SWEEP_FILE",
    "TUNED_FILE",
    "VALS_FILE",
    "Datastore",
    "IndexSpec",
    "KeyRecorder",
    "KnnLogprobs",
    "RetrievalConfig",
    "RetrievalError",
    "RetrievalPlugin",
    "ScoredBatches",
    "SweepRow",
    "build_datastore",
    "capture_keys",
    "knn_log_probs",
    "make_index",
    "mix_log_probs",
    "plan_index",
    "score_batches",
    "sweep",
    "weights_sha256",
    "write_sweep",
]
