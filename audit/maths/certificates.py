"""Certified radii of partition ensembles against poisoning: DPA, Finite Aggregation, Run-off Election.

A partition ensemble trains each base learner on a deterministic part of the training set, so one
inserted or removed point changes the training set of a bounded set of learners — whose outputs
the certificate then treats as arbitrary. The *certified radius* of a test point is the largest
``r`` such that no ``r`` insertions or removals can change the ensemble's prediction; certified
accuracy at ``r`` is the share of test points predicted correctly with radius ≥ ``r``. Ties between
classes always go to the smaller class index, as DPA's argmax breaks them.

* **DPA** (Levine & Feizi 2021, Theorem 1): ``k`` learners on ``k`` hash buckets, majority vote;
  ``r = ⌊(N_c − max_{c'≠c}(N_{c'} + 1[c' < c]))/2⌋`` (one poison moves one vote: the gap by ≤ 2).
* **Finite Aggregation** (Wang, Levine & Feizi 2022, Theorem 2): ``k·d`` buckets, learner ``i``
  trains on the ``d`` buckets ``{(i − s) mod kd : s ∈ S}`` (``S``: ``d`` distinct offsets), so bucket
  ``h`` reaches the ``d`` learners ``(h + s) mod kd``. Against a rival ``c'`` a corrupted bucket moves
  the gap ``N_c − N_{c'} − 1[c' < c]`` by at most its *power* ``Σ_{i reached} (1 + 1[f_i = c] − 1[f_i = c'])``;
  ``r`` is the largest count of buckets whose ``r`` largest powers sum to at most the gap, minimised
  over rivals. ``d = 1`` is DPA.
* **Run-off Election** over DPA's learners (Rezaei, Banihashem, Chegini & Feizi 2023, DPA+ROE):
  round one counts each learner's top class; the two leaders ``m1, m2`` meet in a run-off where
  *every* learner votes for the one it scores higher. The prediction ``P`` changes only if (1) ``P``
  leaves the top two, (2a) ``P`` loses the run-off against the same rival, or (2b) another class
  ``m3`` replaces the rival and beats ``P`` — the radius is the least over these of the corruptions
  each needs, less one (:func:`roe_radius`). Each corrupted learner moves a round-one gap or a
  pairwise margin by at most 2, and a pair of round-one gaps by at most (2, 1) or (1, 2).

Every function is exact integer arithmetic on vote tables; ``tests/test_certificates.py`` checks each
radius against brute force (every output of every choice of corrupted learners) on small ensembles.
"""

from __future__ import annotations

import numpy as np

INF = np.iinfo(np.int64).max // 4


def vote_table(top: np.ndarray, n_classes: int) -> np.ndarray:
    """Votes per class, shape (n, c), from each learner's top class ``top`` of shape (n, K)."""
    top = np.asarray(top, dtype=np.int64)
    votes = np.zeros((top.shape[0], n_classes), dtype=np.int64)
    rows = np.repeat(np.arange(top.shape[0]), top.shape[1])
    np.add.at(votes, (rows, top.ravel()), 1)
    return votes


def top_class(scores: np.ndarray) -> np.ndarray:
    """Each learner's top class, ties to the smaller index: ``scores`` (K, n, c) → (n, K)."""
    return np.asarray(scores).argmax(axis=2).T


def dpa_radius(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and DPA radius per point from a vote table ``votes`` of shape (n, c) (Levine & Feizi 2021, Thm. 1).

    Returns ``prediction`` (n,) — the argmax, smallest index on ties — and ``radius`` (n,),
    ``⌊(N_c − max_{c'≠c}(N_{c'} + 1[c' < c]))/2⌋``.
    """
    votes = np.asarray(votes, dtype=np.int64)
    n, c = votes.shape
    prediction = votes.argmax(axis=1)
    rows = np.arange(n)
    rivals = votes + (np.arange(c)[None, :] < prediction[:, None])
    rivals[rows, prediction] = np.iinfo(np.int64).min
    return prediction, np.floor_divide(votes[rows, prediction] - rivals.max(axis=1), 2)


def spread_offsets(k: int, d: int, seed: int) -> np.ndarray:
    """FA's spread: ``d`` distinct offsets in ``[0, k·d)`` drawn with a seeded generator (``d = 1``: ``[0]``, DPA)."""
    if d == 1:
        return np.zeros(1, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(k * d, size=d, replace=False)).astype(np.int64)


def fa_training_buckets(k: int, offsets: np.ndarray) -> np.ndarray:
    """The buckets each FA learner trains on, shape (k·d, d): learner ``i`` takes ``(i − s) mod kd``."""
    total = k * len(offsets)
    return (np.arange(total)[:, None] - offsets[None, :]) % total


def fa_radius(top: np.ndarray, offsets: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and Finite Aggregation radius per point (Wang, Levine & Feizi 2022, Thm. 2; module docstring).

    Parameters
    ----------
    top : ndarray, shape (n, k·d)
        Each learner's top class; learner ``i`` trained on :func:`fa_training_buckets` row ``i``.
    offsets : ndarray, shape (d,)
        The spread (:func:`spread_offsets`).
    n_classes : int
    """
    top = np.asarray(top, dtype=np.int64)
    n, total = top.shape
    prediction, _ = dpa_radius(vote_table(top, n_classes))
    votes = vote_table(top, n_classes)
    reached = (np.arange(total)[:, None] + np.asarray(offsets)[None, :]) % total  # (kd, d): learners bucket h reaches
    rows = np.arange(n)
    radius = np.full(n, INF, dtype=np.int64)
    pred_votes = top[:, reached] == prediction[:, None, None]  # (n, kd, d)
    for rival in range(n_classes):
        gap = votes[rows, prediction] - votes[:, rival] - (rival < prediction)
        power = (1 + pred_votes - (top[:, reached] == rival)).sum(axis=2)  # (n, kd)
        spent = np.cumsum(-np.sort(-power, axis=1), axis=1)
        r = (spent <= gap[:, None]).sum(axis=1)
        radius = np.where(prediction == rival, radius, np.minimum(radius, r))
    return prediction, radius


def _two_gaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Fewest corrupted learners that can make two round-one gaps ``a, b ≥ 0`` negative when each moves
    them by at most (2, 1) or (1, 2): ``max(⌈(a+1)/2⌉, ⌈(b+1)/2⌉, ⌈(a+b+2)/3⌉)``."""
    return np.maximum(np.maximum((a + 2) // 2, (b + 2) // 2), (a + b + 4) // 3)


def pairwise_margins(scores: np.ndarray) -> np.ndarray:
    """``M[n, a, b]`` = learners scoring ``a`` above ``b`` minus those scoring ``b`` above ``a`` (equal scores:
    the smaller index is preferred), shape (n, c, c), from ``scores`` of shape (K, n, c)."""
    s = np.asarray(scores, dtype=np.float64)
    c = s.shape[2]
    above = s[:, :, :, None] > s[:, :, None, :]
    tied = (s[:, :, :, None] == s[:, :, None, :]) & (np.arange(c)[:, None] < np.arange(c)[None, :])
    prefers = (above | tied).sum(axis=0).astype(np.int64)  # (n, c, c): learners preferring a over b
    return prefers - np.swapaxes(prefers, 1, 2)


def roe_radius(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and radius of Run-off Election over DPA's learners (Rezaei et al. 2023; module docstring).

    ``scores`` (K, n, c): every learner's scores. Returns ``prediction`` (n,) — the run-off winner —
    and ``radius`` (n,). With two classes it is DPA's vote and radius.
    """
    scores = np.asarray(scores)
    _, n, c = scores.shape
    votes = vote_table(top_class(scores), c)
    margins = pairwise_margins(scores)
    order = np.lexsort((np.broadcast_to(np.arange(c), (n, c)), -votes), axis=1)  # by votes, then index
    m1, m2 = order[:, 0], order[:, 1]
    rows = np.arange(n)
    m1_wins = margins[rows, m1, m2] - (m2 < m1) >= 0
    winner, loser = np.where(m1_wins, m1, m2), np.where(m1_wins, m2, m1)
    # round-one gap g(a, x) = N_a − N_x − 1[x < a] of a class a ranked above x; run-off gap of a winner a over x
    gap = lambda a, x: votes[rows, a] - votes[rows, x] - (x < a)  # noqa: E731
    run = lambda a, x: margins[rows, a, x] - (x < a)  # noqa: E731
    radius = run(winner, loser) // 2  # (2a) the same two classes, the run-off turned
    for m3 in range(c):
        other = (m3 != m1) & (m3 != m2)
        m3s = np.full(n, m3)
        # (1) the winner leaves the top two: m1 needs two classes above it, m2 one more class above it
        out = np.where(m1_wins, _two_gaps(gap(m1, m2), gap(m1, m3s)) - 1, gap(m2, m3s) // 2)
        # (2b) m3 replaces the loser in the top two and beats the winner in the run-off
        swap = np.maximum(gap(loser, m3s), run(winner, m3s)) // 2
        radius = np.where(other, np.minimum(radius, np.minimum(out, swap)), radius)
    return winner, radius


def _buckets_within(power: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Per point, the most buckets whose largest powers sum to at most ``gap``: ``power`` (n, B), ``gap`` (n,)."""
    spent = np.cumsum(-np.sort(-power, axis=1), axis=1)
    return (spent <= gap[:, None]).sum(axis=1)


def fa_roe_radius(scores: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Prediction and radius of Run-off Election over Finite Aggregation's learners (Rezaei et al. 2023, FA+ROE).

    The cases of :func:`roe_radius`, each bounded by buckets: a corrupted bucket changes the ``d`` learners it reaches,
    so a gap closes only if the corrupted buckets' largest *powers* (what their learners can move it by, as in
    :func:`fa_radius`) exceed it. (2a) the run-off to the same rival: power ``Σ 2·1[learner prefers the winner]``;
    (2b) a third class passing the loser in round one *and* beating the winner: both bounds must be met; (1) the
    winner leaves the top two — for ``m1`` two classes ``a, b`` must pass it, so the corrupted buckets must exceed
    ``g_a`` by ``a``'s power, ``g_b`` by ``b``'s and ``g_a + g_b + 1`` by the power on their sum (a learner moves the
    sum by ``1 + 2·1[f = m1] − 1[f = a] − 1[f = b]`` at most). Each condition is necessary, so the radius — the least
    over cases of the buckets they need, less one — is sound. ``scores`` (k·d, n, c); ``offsets`` (d,).
    """
    scores = np.asarray(scores)
    total, n, c = scores.shape
    top = top_class(scores)  # (n, K)
    votes = vote_table(top, c)
    margins = pairwise_margins(scores)
    reached = (np.arange(total)[:, None] + np.asarray(offsets)[None, :]) % total  # (kd, d)
    rows = np.arange(n)
    order = np.lexsort((np.broadcast_to(np.arange(c), (n, c)), -votes), axis=1)
    m1, m2 = order[:, 0], order[:, 1]
    m1_wins = margins[rows, m1, m2] - (m2 < m1) >= 0
    winner, loser = np.where(m1_wins, m1, m2), np.where(m1_wins, m2, m1)
    gap = lambda a, x: votes[rows, a] - votes[rows, x] - (x < a)  # noqa: E731
    run = lambda a, x: margins[rows, a, x] - (x < a)  # noqa: E731

    def buckets(term: np.ndarray) -> np.ndarray:
        """Per-learner terms (n, K) → per-bucket powers (n, kd)."""
        return term[:, reached].sum(axis=2)

    def pair_power(a: np.ndarray, x: np.ndarray) -> np.ndarray:
        return buckets(1 + (top == a[:, None]).astype(np.int64) - (top == x[:, None]))

    def prefers(a: np.ndarray, x: np.ndarray) -> np.ndarray:
        sa, sx = scores[:, rows, a].T, scores[:, rows, x].T  # (n, K)
        return (sa > sx) | ((sa == sx) & (a < x)[:, None])

    radius = _buckets_within(buckets(2 * prefers(winner, loser).astype(np.int64)), run(winner, loser))  # (2a)
    for m3 in range(c):
        other = (m3 != m1) & (m3 != m2)
        if not np.any(other):
            continue
        m3s = np.full(n, m3)
        # (1) the winner leaves the top two
        g_a, g_b = gap(m1, m2), gap(m1, m3s)
        summed = buckets(1 + 2 * (top == m1[:, None]).astype(np.int64) - (top == m2[:, None]) - (top == m3))
        out_m1 = np.maximum(
            np.maximum(_buckets_within(pair_power(m1, m2), g_a), _buckets_within(pair_power(m1, m3s), g_b)), _buckets_within(summed, g_a + g_b + 1)
        )
        out_m2 = _buckets_within(pair_power(m2, m3s), gap(m2, m3s))
        out = np.where(m1_wins, out_m1, out_m2)
        # (2b) m3 passes the loser in round one and beats the winner in the run-off
        swap = np.maximum(
            _buckets_within(pair_power(loser, m3s), gap(loser, m3s)),
            _buckets_within(buckets(2 * prefers(winner, m3s).astype(np.int64)), run(winner, m3s)),
        )
        radius = np.where(other, np.minimum(radius, np.minimum(out, swap)), radius)
    return winner, radius


def certified_curve(prediction: np.ndarray, radius: np.ndarray, y: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Certified accuracy (%) at each radius of ``radii``: the share of points predicted correctly with radius ≥ r."""
    correct = np.asarray(prediction) == np.asarray(y)
    return np.array([100.0 * float(np.mean(correct & (radius >= r))) for r in np.asarray(radii)])
