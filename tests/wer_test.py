#!/usr/bin/env python3
"""Unit test of bench/wer.py, the word error rate tool of `make latency`."""
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
import wer  # noqa: E402


class Normalise(unittest.TestCase):
    def test_case_and_punctuation(self):
        self.assertEqual(wer.normalise("Congratulations.  You have, \"successfully\" installed!"),
                         ["congratulations", "you", "have", "successfully", "installed"])

    def test_apostrophes_kept_inside_words(self):
        self.assertEqual(wer.normalise("If you'd like 'quoted' party's"),
                         ["if", "you'd", "like", "quoted", "party's"])

    def test_fillers_and_markup_dropped(self):
        self.assertEqual(wer.normalise("<s> he was <sil> not [NOISE] ill </s> (clip-0880)"),
                         ["he", "was", "not", "ill"])

    def test_hyphens_split(self):
        self.assertEqual(wer.normalise("Inter-Asterisk exchange"), ["inter", "asterisk", "exchange"])


class Distance(unittest.TestCase):
    def test_identical(self):
        self.assertEqual(wer.wer("He was not an ill disposed young man.",
                                 "he was not an ill disposed young man"), (0, 8))

    def test_substitution_deletion_insertion(self):
        ref = "a b c d"
        self.assertEqual(wer.distance(ref.split(), "a x c d".split()), 1)
        self.assertEqual(wer.distance(ref.split(), "a c d".split()), 1)
        self.assertEqual(wer.distance(ref.split(), "a b b c d".split()), 1)
        self.assertEqual(wer.distance(ref.split(), "".split()), 4)
        self.assertEqual(wer.distance([], "x y".split()), 2)

    def test_order_matters(self):
        # the same words in another order are errors, not a match
        self.assertEqual(wer.distance("a b c d".split(), "d c b a".split()), 4)

    def test_real_hypothesis(self):
        ref = "he was not an ill disposed young man"
        hyp = "he was not an illness those young man"
        # ill -> illness, disposed -> those
        self.assertEqual(wer.wer(ref, hyp), (2, 8))

    def test_more_than_one_hundred_percent(self):
        errors, n = wer.wer("yes", "yes no maybe so")
        self.assertEqual((errors, n), (3, 1))


class Cli(unittest.TestCase):
    def test_prints_the_rate(self):
        with tempfile.TemporaryDirectory() as d:
            r, h = os.path.join(d, "ref"), os.path.join(d, "hyp")
            with open(r, "w") as f:
                f.write("One two three four.\n")
            with open(h, "w") as f:
                f.write("one too three\n")
            out = subprocess.run([sys.executable, os.path.join(HERE, "..", "bench", "wer.py"), r, h],
                                 capture_output=True, text=True, check=True).stdout
            self.assertEqual(out.strip(), "WER 50.0 % (2 errors / 4 words)")


if __name__ == "__main__":
    unittest.main(verbosity=2)
