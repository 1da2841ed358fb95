"""The one place where repan_zoo uses timm functions that timm does not export publicly.

timm keeps these in underscore modules (``timm.models._features``, ``timm.models._builder``); a
minor release may move them. Everything else in the package uses timm's public API only
(``tests/test_timm_private.py`` checks both: that nothing else imports a private timm module,
and that these names still exist with the behaviour relied on, so a timm upgrade that moves them
fails there, loudly, instead of deep inside a model).

* :func:`feature_take_indices` — ``forward_intermediates``' index rule (None: all, int n: last n,
  list: as given, negative from the end), as timm's own models apply it.
* :func:`pretrained_cfg_for_features` — the ``pretrained_cfg`` of a ``features_only`` wrapper.
"""
from __future__ import annotations

from timm.models._builder import pretrained_cfg_for_features
from timm.models._features import feature_take_indices

__all__ = ["feature_take_indices", "pretrained_cfg_for_features"]
