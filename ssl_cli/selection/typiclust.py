"""TypiClust (Hacohen et al., ICML 2022): the most typical image of each of the largest uncovered clusters.

K-means with K = labeled + budget clusters (at most 500; MiniBatchKMeans above 50). Clusters of at most
5 images are dropped (outliers). Each pick goes to the cluster holding the fewest labeled images (ties:
the largest), and takes its point of highest typicality: the inverse mean distance to its
k = min(20, size // 2) nearest neighbours inside the cluster.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans, MiniBatchKMeans

from ssl_cli.selection.base import Selection, register

MAX_CLUSTERS = 500
MINIBATCH_ABOVE = 50
MIN_CLUSTER_SIZE = 6  # clusters of 5 or fewer images are outliers
MAX_NEIGHBOURS = 20


def cluster(features: np.ndarray, num_clusters: int, seed: int) -> np.ndarray:
    """K-means cluster id of every row (scikit-learn, seeded)."""
    num_clusters = min(num_clusters, len(features))
    if num_clusters <= MINIBATCH_ABOVE:
        km = KMeans(num_clusters, n_init=1, random_state=seed)
    else:
        km = MiniBatchKMeans(num_clusters, n_init=1, batch_size=4096, random_state=seed)
    return km.fit_predict(features).astype(np.int64)


def typicality(points: np.ndarray) -> np.ndarray:
    """1 / mean distance to each point's k = min(20, n // 2) nearest neighbours among `points` (itself excluded)."""
    n = len(points)
    k = min(MAX_NEIGHBOURS, n // 2)
    if k < 1:
        return np.ones(n)
    x = torch.from_numpy(points)
    distances = torch.cdist(x, x)
    nearest = distances.topk(k + 1, dim=1, largest=False).values[:, 1:]  # column 0 is the point itself
    return (1.0 / (nearest.mean(dim=1) + 1e-8)).numpy()


@register("typiclust")
def select_typiclust(features, budget, already, seed, probabilities=None, **_) -> Selection:
    num_clusters = min(len(already) + budget, MAX_CLUSTERS)
    clusters = cluster(features, num_clusters, seed)
    sizes = np.bincount(clusters, minlength=num_clusters)
    labeled_in = np.bincount(clusters[already], minlength=num_clusters)
    eligible = sizes >= MIN_CLUSTER_SIZE
    if not eligible.any():  # a tiny pool: every cluster is small, so none is an outlier
        eligible = sizes > 0
    taken = np.zeros(len(features), dtype=bool)
    taken[already] = True
    remaining = np.bincount(clusters[~taken], minlength=num_clusters)
    scores = {}  # typicality inside each cluster, computed when the cluster is first visited
    picks, pick_cluster = [], []
    for _ in range(budget):
        if not (remaining[eligible] > 0).any():  # every eligible cluster is used up: the small ones join in
            eligible = sizes > 0
        open_clusters = np.flatnonzero(eligible & (remaining > 0))
        # fewest labeled first, then the largest cluster (then the lowest id, for determinism)
        c = min(open_clusters, key=lambda c: (labeled_in[c], -sizes[c], c))
        members = np.flatnonzero(clusters == c)
        if c not in scores:
            scores[c] = typicality(features[members])
        score = np.where(taken[members], -np.inf, scores[c])
        chosen = int(members[int(np.argmax(score))])
        taken[chosen] = True
        labeled_in[c] += 1
        remaining[c] -= 1
        picks.append(chosen)
        pick_cluster.append(int(c))
    info = {"clusters": int(num_clusters), "clusters_kept": int(eligible.sum())}
    return Selection(np.asarray(picks, dtype=np.int64), info, np.asarray(pick_cluster, dtype=np.int64))
