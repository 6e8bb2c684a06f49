#!/usr/bin/env python3
"""Writes shared/semantic/src/wordnet.txt: WordNet 3.0's synonym sets, as the guard uses them.

Source: Debian's wordnet-base package (/usr/share/wordnet, `apt-get install wordnet-base`).
Kept: the senses of each word that are attested in WordNet's sense-tagged corpora (the first
`tagsense_cnt` senses of its index entry: the rare ones, such as "dog" for a scoundrel, are left
out), and of those the synonym sets in which at least two words have the set attested. One set
per line, its words separated by commas, multi-word terms with spaces, lowercase.
Usage: python3 shared/semantic/wordnet/extract.py [wordnet dir] > shared/semantic/src/wordnet.txt
"""
import collections
import re
import sys

NOTICE = """\
# WordNet 3.0's synonym sets (attested senses only), written by shared/semantic/wordnet/extract.py.
# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
# THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO
# REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED. BY WAY OF EXAMPLE, BUT NOT LIMITATION,
# PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANTABILITY OR FITNESS FOR
# ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR DOCUMENTATION WILL
# NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER RIGHTS.
# The name of Princeton University or Princeton may not be used in advertising or publicity
# pertaining to distribution of the software and/or database. Title to copyright in this
# software, database and any associated documentation shall at all times remain with Princeton
# University. (The WordNet 3.0 license: https://wordnet.princeton.edu/license-and-commercial-use)
"""
POS = ["noun", "verb", "adj", "adv"]


def main():
    root = (sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet").rstrip("/") + "/"
    attested = collections.defaultdict(set)  # synset -> words that have it among attested senses
    for pos in POS:
        for line in open(root + "index." + pos, encoding="latin-1"):
            if line.startswith(" "):
                continue
            f = line.split()
            lemma, synsets, pointers = f[0], int(f[2]), int(f[3])
            k = 4 + pointers
            tagged = int(f[k + 1])
            for offset in f[k + 2 : k + 2 + synsets][:tagged]:
                attested[pos[0] + offset].add(lemma)
    sets = set()
    for synset, lemmas in attested.items():
        words = set()
        for lemma in lemmas:
            word = lemma.replace("_", " ").replace("-", " ").lower()
            if re.fullmatch(r"[a-z]+( [a-z]+){0,3}", word):
                words.add(word)
        if len(words) >= 2:
            sets.add(",".join(sorted(words)))
    sys.stdout.write(NOTICE)
    for line in sorted(sets):
        print(line)


main()
