#!/usr/bin/env python3
"""Word error rate: word-level Levenshtein distance between a reference and
a hypothesis, after both are normalised (lower case; punctuation other than
an apostrophe inside a word becomes a space; PocketSphinx's fillers such as
<sil> and [noise] are dropped).

    wer.py REFERENCE_FILE HYPOTHESIS_FILE    prints "WER 12.5 % (3 errors / 24 words)"

As a module: normalise(text) -> list of words; distance(ref, hyp) -> edits;
wer(ref_text, hyp_text) -> (errors, reference words).
"""
import re
import sys

_FILLER = re.compile(r"<[^>]*>|\[[^\]]*\]|\([^)]*\)")
_NONWORD = re.compile(r"[^\w']+")


def normalise(text):
    """The words of text, lower case, without punctuation or fillers."""
    text = _FILLER.sub(" ", text.lower())
    words = []
    for w in _NONWORD.sub(" ", text).replace("_", " ").split():
        w = w.strip("'")
        if w:
            words.append(w)
    return words


def distance(ref, hyp):
    """Fewest substitutions, deletions and insertions turning ref into hyp."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def wer(ref_text, hyp_text):
    """(errors, number of reference words) after normalisation."""
    ref, hyp = normalise(ref_text), normalise(hyp_text)
    return distance(ref, hyp), len(ref)


def main(argv):
    if len(argv) != 3:
        sys.stderr.write("usage: wer.py REFERENCE_FILE HYPOTHESIS_FILE\n")
        return 2
    with open(argv[1], encoding="utf-8") as f:
        ref = f.read()
    with open(argv[2], encoding="utf-8") as f:
        hyp = f.read()
    errors, n = wer(ref, hyp)
    if n == 0:
        print("WER n/a (empty reference, %d words in the hypothesis)" % len(normalise(hyp)))
        return 0
    print("WER %.1f %% (%d errors / %d words)" % (100.0 * errors / n, errors, n))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
