"""Where a sweep router is summarised: the cheapest point reaching a share of the premium model's accuracy.

Replay, export and the metrics use the same share (`PREMIUM_ACCURACY_SHARE`, RouterBench/RouteLLM's "95 % of
GPT-4") so a bundle's operating point and the replay's headline row are the same point.
"""

from __future__ import annotations

import numpy as np

#: the accuracy share of always-premium that defines the operating point and "savings at 95 %"
PREMIUM_ACCURACY_SHARE = 0.95


def operating_point(cost: np.ndarray, acc: np.ndarray, target: float) -> int:
    """Index of the cheapest point reaching `target` accuracy, else of the most accurate point."""
    cost, acc = np.asarray(cost, float), np.asarray(acc, float)
    ok = np.flatnonzero(acc >= target - 1e-12)
    if ok.size:
        return int(ok[np.argmin(cost[ok])])
    return int(np.argmax(acc))
