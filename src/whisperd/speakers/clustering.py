"""Speakers from voice embeddings: which windows share a voice, and whose voice it is.

:func:`cluster` groups windows by agglomerative clustering (average linkage on cosine
distance): it merges the two closest groups until the closest two are at least
:data:`DISTANCE_THRESHOLD` apart, within the number of speakers a caller allows. A long
file is first reduced to at most :data:`MAX_REPRESENTATIVES` groups of like windows, so
its memory and time stay bounded (each group stays together; average linkage on the
groups' means is average linkage on their windows). :func:`name_speakers` then gives the
speakers the names of reference voices.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from whisperd.speakers.encoder import unit_length

DISTANCE_THRESHOLD = 0.45
"""Average cosine distance between two groups of windows at which they are taken for two
voices. Tuned on 1.5 s windows (0.75 s apart) of real speech: jfk.flac, hotwords.mp3 and
Debian's recorded prompts (asterisk-core-sounds-en-g722, one woman), alone and
interleaved. A single voice's groups merge below 0.43 (jfk.flac's last merge is at 0.424);
two voices stay apart up to 0.47 (hotwords.mp3 against the prompts at 0.48-0.51, JFK
against either at 0.56 or more)."""
NAME_SIMILARITY = 0.75
"""Least cosine similarity between a reference voice and a speaker's centroid for the
speaker to take the reference's name. Tuned on the same speech: a 2-10 s reference of the
speaker's own voice scores 0.83-0.95 (0.70 at the least, for a 2 s prompt), another voice
at most 0.67."""
MIN_SPEAKER_WINDOWS = 2
"""Fewest embeddings a speaker has: a lone window unlike its neighbours (a cough, a laugh,
a stretch of noise) joins the nearest speaker rather than count as one."""
MAX_REPRESENTATIVES = 1000
"""Most groups the agglomerative step sees: beyond it, windows are first grouped with their
nearest of that many k-means++ seeds (8 MB of distances between them, and a second or so)."""

Labels = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
# Rows of windows compared with all seeds at a time while reducing.
_CHUNK = 4096
_SEED = 0


def _nearest(points: Vectors, seeds: Vectors) -> Labels:
    """For each point, the index of the most similar seed (in bounded chunks)."""
    out = np.empty(points.shape[0], dtype=np.int64)
    for start in range(0, points.shape[0], _CHUNK):
        out[start : start + _CHUNK] = np.argmax(points[start : start + _CHUNK] @ seeds.T, axis=1)
    return out


def _seeds(points: Vectors, weights: npt.NDArray[np.float64], k: int) -> Vectors:
    """Up to ``k`` points picked by k-means++ seeding on cosine distance: each next seed drawn
    with a chance growing with the square of its distance to the nearest seed so far."""
    rng = np.random.default_rng(_SEED)
    chosen = [int(rng.choice(points.shape[0], p=weights / weights.sum()))]
    nearest = np.maximum(1.0 - points @ points[chosen[0]], 0.0).astype(np.float64)
    while len(chosen) < k:
        score = weights * np.square(nearest)
        total = score.sum()
        if total <= 0.0:
            break
        chosen.append(int(rng.choice(points.shape[0], p=score / total)))
        nearest = np.minimum(nearest, np.maximum(1.0 - points @ points[chosen[-1]], 0.0))
    return points[chosen]


def _reduce(
    points: Vectors, weights: npt.NDArray[np.float64], k: int
) -> tuple[Vectors, npt.NDArray[np.float64], Labels]:
    """At most ``k`` representatives of unit ``points``: the weighted means of the points
    nearest each k-means++ seed, their total weights, and which one each point belongs to.

    The means are not scaled to unit length: the dot product of two of them is then the
    mean cosine similarity between their points, so that average linkage on the
    representatives is average linkage on the points (with each group kept together).
    """
    membership = _nearest(points, _seeds(points, weights, k))
    used, inverse = np.unique(membership, return_inverse=True)
    membership = inverse.astype(np.int64)
    sums = np.zeros((used.size, points.shape[1]), dtype=np.float64)
    np.add.at(sums, membership, points * weights[:, None])
    totals = np.zeros(used.size, dtype=np.float64)
    np.add.at(totals, membership, weights)
    return (sums / totals[:, None]).astype(np.float32), totals, membership


@dataclass
class _Linkage:
    """Average-linkage clustering in progress: the distances between groups (inf for a
    group merged away), each group's total weight and embedding count, and each point's group."""

    distance: npt.NDArray[np.float64]
    weight: npt.NDArray[np.float64]
    members: npt.NDArray[np.int64]
    owner: Labels

    @classmethod
    def start(
        cls, points: Vectors, weights: npt.NDArray[np.float64], members: npt.NDArray[np.int64]
    ) -> _Linkage:
        distance = 1.0 - (points @ points.T).astype(np.float64)
        np.fill_diagonal(distance, np.inf)
        return cls(distance, weights.copy(), members.copy(), np.arange(points.shape[0]))

    def merge(self, i: int, j: int) -> None:
        """Group ``j`` into group ``i``; by Lance and Williams, the merged group's distance to
        each other is the weight-weighted mean of the two groups' distances to it."""
        d, w = self.distance, self.weight
        merged = (w[i] * d[i] + w[j] * d[j]) / (w[i] + w[j])
        d[i, :] = merged
        d[:, i] = merged
        d[i, i] = np.inf
        d[j, :] = np.inf
        d[:, j] = np.inf
        w[i] += w[j]
        self.members[i] += self.members[j]
        self.members[j] = 0
        self.owner[self.owner == j] = i


def _agglomerate(
    points: Vectors,
    weights: npt.NDArray[np.float64],
    members: npt.NDArray[np.int64],
    *,
    fewest: int,
    most: int,
    threshold: float,
) -> Labels:
    """Average-linkage clustering of ``points`` (weighted; each standing for ``members``
    embeddings) on cosine distance (one less their dot product): merge the two closest
    groups while there are more than ``most``, or while they are closer than ``threshold``
    and there are more than ``fewest``; then a group of fewer than MIN_SPEAKER_WINDOWS
    embeddings joins its closest larger group (while there are more than ``fewest``).
    Returns each point's group, named by one of its points."""
    linkage = _Linkage.start(points, weights, members)
    groups = points.shape[0]
    while groups > fewest:
        i, j = np.unravel_index(int(np.argmin(linkage.distance)), linkage.distance.shape)
        if linkage.distance[i, j] >= threshold and groups <= most:
            break
        linkage.merge(int(i), int(j))
        groups -= 1
    while groups > fewest:
        small = np.flatnonzero((linkage.members > 0) & (linkage.members < MIN_SPEAKER_WINDOWS))
        large = np.flatnonzero(linkage.members >= MIN_SPEAKER_WINDOWS)
        if small.size == 0 or large.size == 0:
            break
        target = large[int(np.argmin(linkage.distance[small[0], large]))]
        linkage.merge(int(target), int(small[0]))
        groups -= 1
    return linkage.owner


def _in_order_of_appearance(labels: Labels) -> Labels:
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first)] = np.arange(first.size)
    return rank[inverse]


def _bounds(n: int, min_speakers: int | None, max_speakers: int | None) -> tuple[int, int]:
    if min_speakers is not None and min_speakers < 1:
        raise ValueError(f"min_speakers must be at least 1, got {min_speakers}")
    if max_speakers is not None and max_speakers < 1:
        raise ValueError(f"max_speakers must be at least 1, got {max_speakers}")
    if min_speakers is not None and max_speakers is not None and min_speakers > max_speakers:
        raise ValueError(f"min_speakers {min_speakers} is above max_speakers {max_speakers}")
    fewest = min(min_speakers or 1, n)
    most = min(max_speakers or n, n)
    return fewest, max(most, fewest)


def cluster(
    embeddings: npt.NDArray[np.floating],
    *,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    weights: npt.NDArray[np.floating] | None = None,
) -> Labels:
    """The speaker of each of ``embeddings`` (n, d): labels 0..k-1, numbered in the order
    speakers first appear.

    The number of speakers k is found from the embeddings (see :data:`DISTANCE_THRESHOLD`),
    held within ``min_speakers`` and ``max_speakers`` (and within n). ``weights`` (n,),
    positive, say how much each embedding counts (say, the seconds of speech it stands for);
    by default all count alike.
    """
    if embeddings.ndim != 2:
        raise ValueError(f"expected (n, d) embeddings, got shape {embeddings.shape}")
    n = embeddings.shape[0]
    if weights is None:
        counts = np.ones(n, dtype=np.float64)
    else:
        counts = np.asarray(weights, dtype=np.float64)
        if counts.shape != (n,) or not np.all(np.isfinite(counts)) or np.any(counts <= 0):
            raise ValueError("weights must be one positive finite number per embedding")
    fewest, most = _bounds(n, min_speakers, max_speakers)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    points = unit_length(embeddings)
    membership = np.arange(n)
    if n > MAX_REPRESENTATIVES:
        points, counts, membership = _reduce(points, counts, MAX_REPRESENTATIVES)
    members = np.bincount(membership, minlength=points.shape[0])
    fewest, most = min(fewest, points.shape[0]), min(most, points.shape[0])
    groups = _agglomerate(
        points, counts, members, fewest=fewest, most=most, threshold=DISTANCE_THRESHOLD
    )
    return _in_order_of_appearance(groups[membership])


def centroids(embeddings: npt.NDArray[np.floating], labels: Labels) -> Vectors:
    """The unit-length mean embedding (k, d) of each speaker 0..k-1 in ``labels``."""
    k = int(labels.max()) + 1 if labels.size else 0
    sums = np.zeros((k, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, unit_length(embeddings))
    return unit_length(sums)


def name_speakers(
    centroids: npt.NDArray[np.floating],
    references: dict[str, npt.NDArray[np.floating]],
    threshold: float = NAME_SIMILARITY,
) -> dict[int, str]:
    """Names for speakers: each reference voice's name (its embedding, as from
    :meth:`~whisperd.speakers.encoder.VoiceEncoder.embed_utterance`) goes to the speaker
    whose centroid is most like it, if their cosine similarity is at least ``threshold``.
    The most similar pairs are matched first; a speaker takes one name, a name one speaker.
    """
    if not references or centroids.shape[0] == 0:
        return {}
    names = list(references)
    similarity = (
        unit_length(np.stack([references[name] for name in names])) @ unit_length(centroids).T
    )
    named: dict[int, str] = {}
    taken: set[str] = set()
    for flat in np.argsort(-similarity, axis=None, kind="stable"):
        row, speaker = divmod(int(flat), similarity.shape[1])
        if similarity[row, speaker] < threshold:
            break
        if speaker not in named and names[row] not in taken:
            named[speaker] = names[row]
            taken.add(names[row])
    return named
