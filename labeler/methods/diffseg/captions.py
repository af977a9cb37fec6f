"""Caption naming's pure parts: the nouns of a caption, and the category id of a noun.

**Nouns** (:func:`caption_nouns`). The reference tags the caption with nltk's part-of-speech tagger
and keeps its nouns. nltk's tagger needs a data download at run time that no package registry
ships, so labeler applies a documented rule instead, written for the short captions that
captioning models give ("a man riding a horse on a beach", "two red cups on a wooden table"):

1. the caption is lower-cased and split into words (letters, inner hyphens and apostrophes);
   anything else (digits, punctuation) ends a phrase;
2. a word of :data:`FUNCTION_WORDS` (articles, numerals, prepositions, conjunctions, pronouns,
   auxiliaries, particles) or a verb form ending in ``-ing`` (``riding``; but not the nouns of
   :data:`ING_NOUNS`, ``building``) ends a phrase too;
3. each remaining run of words is a noun phrase whose **last word** is its noun (``wooden table``
   gives ``table``, ``cell phone`` gives ``phone``): the words before it are taken as modifiers;
4. nouns are made singular (:func:`singular`: a few irregular plurals, then ``-ies``, ``-es`` after
   s/x/z/ch/sh, ``-s``) and kept once each, in caption order.

Where it differs from a tagger: a compound's modifier noun is not a noun of its own (``cell`` in
``cell phone``; nltk tags both), an ``-ing`` word not in :data:`ING_NOUNS` is always a verb, and a
word the rule cannot see as a verb (``a dog sits``) is a noun.

**Category ids** (:func:`category_id`). A caption run's vocabulary is per image, so its categories
(the union of every image's nouns) are known only once every image is labeled, yet each shard
writes its annotations' ``category_id`` as it commits. The id is therefore a function of the noun
alone: 2 plus the first 8 bytes of the noun's SHA-256, modulo 2**31 - 2 (``segment``, the unnamed
category, keeps id 1). The same noun has the same id in every shard, run and resume; the merge
lists the categories the annotations use, sorted by name.
"""

from __future__ import annotations

import hashlib
import re

#: The unnamed category of a caption run (its id; nouns get ids >= 2).
UNNAMED_ID = 1
#: Ids of nouns lie in [2, 2**31 - 1]: positive 32-bit integers, as every COCO consumer reads them.
ID_SPAN = 2**31 - 2

#: Words that end a noun phrase and are never nouns.
FUNCTION_WORDS = frozenset(["a", "an", "the", "this", "that", "these", "those", "some", "any", "each", "every", "another", "other", "no", "all", "both", "either", "neither", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve", "several", "many", "few", "lots", "lot", "much", "of", "on", "in", "at", "by", "with", "without", "for", "from", "to", "into", "onto", "upon", "over", "under", "above", "below", "near", "next", "beside", "besides", "behind", "between", "among", "around", "through", "across", "along", "against", "about", "after", "before", "during", "inside", "outside", "within", "beyond", "toward", "towards", "off", "out", "up", "down", "away", "together", "while", "than", "as", "like", "and", "or", "but", "nor", "so", "yet", "then", "there", "here", "it", "its", "it's", "he", "him", "his", "she", "her", "hers", "they", "them", "their", "theirs", "we", "us", "our", "you", "your", "i", "me", "my", "who", "whom", "whose", "which", "what", "where", "when", "how", "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "having", "do", "does", "did", "can", "could", "will", "would", "shall", "should", "may", "might", "must", "very", "too", "also", "just", "not", "only"])
#: Words ending in ``-ing`` that are nouns (every other ``-ing`` word is read as a verb).
ING_NOUNS = frozenset(["building", "buildings", "ceiling", "ceilings", "clothing", "painting", "paintings", "drawing", "drawings", "wedding", "weddings", "evening", "morning", "icing", "frosting", "topping", "toppings", "railing", "railings", "awning", "awnings", "pudding", "ring", "rings", "king", "kings", "string", "strings", "thing", "things", "wing", "wings", "swing", "swings", "spring", "sling", "earring", "earrings"])
#: Irregular plurals (plural -> singular).
IRREGULAR = {
    "men": "man", "women": "woman", "people": "person", "children": "child", "feet": "foot",
    "teeth": "tooth", "mice": "mouse", "geese": "goose", "oxen": "ox", "knives": "knife",
    "wives": "wife", "leaves": "leaf", "shelves": "shelf", "loaves": "loaf", "wolves": "wolf",
    "calves": "calf", "halves": "half", "scarves": "scarf", "sheep": "sheep", "fish": "fish",
    "deer": "deer", "glasses": "glasses", "pants": "pants", "jeans": "jeans", "scissors": "scissors",
    "shorts": "shorts", "skis": "ski", "bus": "bus", "buses": "bus", "series": "series",
}
#: Singular words that end in ``s`` (not to be stripped).
S_SINGULARS = frozenset(["grass", "glass", "dress", "class", "bus", "gas", "lens", "cactus", "octopus", "circus", "canvas", "bass", "chess", "mattress", "walrus", "platypus", "iris", "tennis", "hummus", "asparagus", "virus", "compass"])

_WORD = re.compile(r"[a-z]+(?:['-][a-z]+)*|[^a-z\s]+")


def singular(word: str) -> str:
    """The singular of a noun, by :data:`IRREGULAR`, :data:`S_SINGULARS` and suffix rules."""
    if word in IRREGULAR:
        return IRREGULAR[word]
    if word in S_SINGULARS or word.endswith(("ss", "us", "is")) or len(word) <= 3:
        return word
    if word.endswith("ies"):
        return word[:-3] + "y"
    if word.endswith(("ses", "xes", "zes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s"):
        return word[:-1]
    return word


def _ends_phrase(word: str) -> bool:
    if not word[0].isalpha():
        return True
    if word in FUNCTION_WORDS:
        return True
    return word.endswith("ing") and len(word) > 4 and word not in ING_NOUNS


def caption_nouns(caption: str) -> tuple[str, ...]:
    """The nouns of a caption by the module's rule: each noun phrase's last word, singular,
    once each, in caption order.

    >>> caption_nouns("two dogs playing with a red frisbee on the grass")
    ('dog', 'frisbee', 'grass')
    """
    nouns: dict[str, None] = {}
    phrase: list[str] = []
    for word in [*_WORD.findall(caption.lower()), "."]:
        if _ends_phrase(word):
            if phrase:
                nouns[singular(phrase[-1])] = None
            phrase = []
        else:
            phrase.append(word)
    return tuple(nouns)


def category_id(noun: str) -> int:
    """The COCO category id of a caption noun: a function of the noun alone (module docstring)."""
    digest = hashlib.sha256(noun.encode()).digest()
    return 2 + int.from_bytes(digest[:8], "big") % ID_SPAN
