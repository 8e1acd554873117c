"""Model registry: numbered versions of run models, aliases, cards, the promotion gate.

``store`` keeps versions and ``registry.json``; ``cards`` describes each version; ``promotion``
checks a version's evaluation against its bounds; ``aliases`` promotes and rolls back;
``loading`` loads weights safely; ``evaluation`` runs the evaluate template on a run.
"""

from mlkit.errors import ModelNotFoundError, PromotionBlockedError, RegistryError, UnsafeModelError
from mlkit.registry.aliases import alias_since, get_policy, promote, rollback, set_policy
from mlkit.registry.evaluation import evaluate_run, find_evaluation, resolve_run
from mlkit.registry.loading import (
    LoadedModel,
    check_weights_only_env,
    is_pinned,
    load_model,
    score,
    task_of,
)
from mlkit.registry.promotion import format_bound, gate, get_bounds, parse_bound, set_bounds
from mlkit.registry.store import (
    DEFAULT_ALIAS,
    list_models,
    model_dir,
    parse_target,
    register,
    register_best,
    registry_root,
    resolve,
    show,
)

__all__ = [
    "DEFAULT_ALIAS",
    "LoadedModel",
    "ModelNotFoundError",
    "PromotionBlockedError",
    "RegistryError",
    "UnsafeModelError",
    "alias_since",
    "check_weights_only_env",
    "evaluate_run",
    "find_evaluation",
    "format_bound",
    "gate",
    "get_bounds",
    "get_policy",
    "is_pinned",
    "list_models",
    "load_model",
    "model_dir",
    "parse_bound",
    "parse_target",
    "promote",
    "register",
    "register_best",
    "registry_root",
    "resolve",
    "resolve_run",
    "rollback",
    "score",
    "set_bounds",
    "set_policy",
    "show",
    "task_of",
]
