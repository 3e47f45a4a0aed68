"""Word error rate: how far a transcript is from a reference, case and punctuation aside.

Plain Python with no dependency, for the benchmarks and for the tests' accuracy checks.
"""

from __future__ import annotations


def words(text: str) -> list[str]:
    """Lower-case words, punctuation aside (apostrophes kept): for comparing transcripts."""
    return "".join(c.lower() if c.isalnum() or c in " '" else " " for c in text).split()


def word_errors(
    hypothesis: str, reference: str, free: frozenset[str] = frozenset()
) -> tuple[int, int]:
    """(substitutions + deletions + insertions, reference words), case and punctuation aside.

    A reference word in ``free`` (a name the model cannot spell) matches up to three
    hypothesis words, or none, at no cost.
    """
    hyp, ref = words(hypothesis), words(reference)
    previous = list(range(len(hyp) + 1))
    for word in ref:
        if word in free:
            current = [min(previous[max(0, j - 3) : j + 1]) for j in range(len(hyp) + 1)]
        else:
            current = [previous[0] + 1]
            for j, said in enumerate(hyp, start=1):
                current.append(
                    min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (said != word))
                )
        previous = current
    return previous[-1], len(ref)


def word_error_rate(hypothesis: str, reference: str, free: frozenset[str] = frozenset()) -> float:
    """Word errors per reference word (see :func:`word_errors`)."""
    errors, count = word_errors(hypothesis, reference, free)
    return errors / max(1, count)
