"""
captions.py -- the embedded benchmark's English: verb inflection, HumanML3D's 'lemma/POS' tags, and
caption templates that join 1-3 phrases ("a person walks forward, then waves the left hand").

HumanML3D's captions come with spaCy tokens ("walk/VERB forward/ADV"), which T2M's evaluator reads
(word + POS). primitives.py's primitives name themselves as (verb, rest) phrases; this file renders them in
a verb form (3rd person, base, -ing), tags every word from a closed lexicon (an untagged word is an
error, so the tags never silently go wrong) and joins them with one of a few templates. data.py
writes the result as a HumanML3D caption line.

Run:  python captions.py        (the verbs and their forms, the lexicon by POS)
      python synth.py --show 3   (captions as the benchmark writes them; caption() makes every one)
"""
from __future__ import annotations


IRREGULAR = {"be": ("is", "being"), "do": ("does", "doing"), "hurry": ("hurries", "hurrying")}


def _forms(lemma):
    """(3rd person singular, -ing) by English's regular rules for one-syllable verbs and compounds
    ending in one: -es after a sibilant, a final silent e dropped, a final consonant doubled after
    a single vowel (run -> running, squat -> squatting)."""
    if lemma in IRREGULAR:
        return IRREGULAR[lemma]
    s = lemma + ("es" if lemma.endswith(("s", "sh", "ch", "x")) else "s")
    if lemma.endswith("e"):
        return s, lemma[:-1] + "ing"
    short = lemma[-2] in "aeiou" and (lemma[-3] not in "aeiou" or lemma[-4:-2] == "qu")    # "qu" is a consonant
    return s, lemma + (lemma[-1] if lemma[-1] not in "aeiouwy" and short else "") + "ing"


VERBS = {v: _forms(v) for v in  # lemma: (3rd person singular, -ing)
         "walk run jog sprint dash stroll hurry take step move sidestep shuffle turn make rotate spin do jump leap "
         "hop squat crouch sit stand get wave raise lift put hold stretch spread kick punch throw jab clap bow bend "
         "balance wait stay be".split()}
LEXICON = {}  # surface word -> (lemma, POS)
for _tag, _ws in {
    "DET": "a the all both", "PRON": "someone somebody he she they his her their that", "NUM": "two three",
    "NOUN": "person man woman human figure steps hand hands arm arms leg legs foot feet knee knees head fist "
            "circle turn seat chair something squat squats jump jumps kick kicks punch punches waist bow air "
            "sides side way degrees pace place front times", "VERB": "face",
    "ADV": "forward backward backwards ahead straight around sideways back up down out still there once twice "
           "then slowly quickly fast briskly again high wide finally next first clockwise counterclockwise together",
    "ADJ": "left right few full half other slow ninety", "ADP": "to on in at of above into with after before",
    "CCONJ": "and", "SCONJ": "while", "AUX": "is", "INTJ": "hello"}.items():
    for _w in _ws.split():
        LEXICON[_w] = (_w, _tag)
for _w, _l in {"steps": "step", "hands": "hand", "arms": "arm", "legs": "leg", "feet": "foot", "knees": "knee",
               "squats": "squat", "jumps": "jump", "kicks": "kick", "punches": "punch", "sides": "side",
               "degrees": "degree", "times": "time", "is": "be"}.items():
    LEXICON[_w] = (_l, LEXICON[_w][1])
LEXICON.update({ing: (lemma, "VERB") for lemma, (_, ing) in VERBS.items()})   # overlays: "while waving"

SUBJECTS = [("a person", "they", "their"), ("someone", "they", "their"), ("the person", "they", "their"),
            ("a man", "he", "his"), ("the man", "he", "his"), ("a woman", "she", "her"),
            ("a human", "they", "their"), ("a person", "he", "his"), ("the figure", "they", "their")]


def inflect(verb, form):
    return verb if form == "base" else VERBS[verb][0 if form == "3sg" else 1]


def tag(word):
    if word not in LEXICON:
        raise KeyError(f"captions.LEXICON has no part-of-speech tag for {word!r}")
    return LEXICON[word]


def render(phrase, form, pos):
    """A (verb, rest) phrase as [(surface, lemma, POS)] in the given verb form."""
    verb, rest = phrase
    out = [(inflect(verb, form), verb, "VERB")]
    for w in rest.replace("{pos}", pos).split():
        out.append((inflect(w[1:-1], form), w[1:-1], "VERB") if w.startswith("<") else (w,) + tag(w))
    return out


def words_of(text):
    return [(w,) + tag(w) for w in text.split()]


def caption(phrases, rng):
    """Join 1-3 phrases with a randomly chosen template -> [(surface, lemma, POS) or punctuation]."""
    subj, pron, pos = SUBJECTS[rng.integers(len(SUBJECTS))]
    agree = "base" if pron == "they" else "3sg"
    S = words_of(subj)
    P = lambda i, form: render(phrases[i], form, pos)  # noqa: E731
    k = len(phrases)
    if k == 1:
        forms = [S + P(0, "3sg"), S + words_of("is") + P(0, "ing")]
    elif k == 2:
        forms = [S + P(0, "3sg") + words_of("and then") + P(1, "3sg"),
                 S + P(0, "3sg") + [","] + words_of("then") + P(1, "3sg"),
                 S + P(0, "3sg") + words_of("then") + P(1, "3sg"),
                 S + P(0, "3sg") + ["."] + words_of("after that") + [","] + words_of(pron) + P(1, agree),
                 S + P(0, "3sg") + words_of("before") + P(1, "ing"),
                 words_of("first") + S + P(0, "3sg") + [","] + words_of("then") + words_of(pron) + P(1, agree),
                 words_of("after") + P(0, "ing") + [","] + S + P(1, "3sg")]
    else:
        forms = [S + P(0, "3sg") + [","] + P(1, "3sg") + words_of("and then") + P(2, "3sg"),
                 S + P(0, "3sg") + [","] + words_of("then") + P(1, "3sg") + [","] + words_of("then") + P(2, "3sg"),
                 S + P(0, "3sg") + words_of("and") + P(1, "3sg") + [","] + words_of("after that") + words_of(pron)
                 + P(2, agree),
                 words_of("first") + S + P(0, "3sg") + [","] + words_of("next") + words_of(pron) + P(1, agree)
                 + [","] + words_of("and finally") + P(2, agree)]
    return forms[rng.integers(len(forms))]


def pick(options, rng):
    verb, rest = options[rng.integers(len(options))]
    return verb, " ".join(rest.split())


def main():
    """Print the closed vocabulary: each verb's forms by _forms's rules, then the tagged words by POS."""
    import argparse
    argparse.ArgumentParser(description="the benchmark's verbs with their inflections, and its lexicon by "
                                        "part of speech (the captions themselves: python synth.py --show 3)").parse_args()
    for lemma, (s, ing) in VERBS.items():
        print(f"{lemma:>10} {s:>10} {ing:>12}" + ("   (irregular)" if lemma in IRREGULAR else ""))
    by_pos = {}
    for w, (lemma, pos) in LEXICON.items():
        by_pos.setdefault(pos, []).append(w if w == lemma else f"{w}({lemma})")
    for pos, ws in by_pos.items():
        print(f"{pos}: {' '.join(ws)}")


if __name__ == "__main__":
    main()
