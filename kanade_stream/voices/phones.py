"""One phone inventory shared by every synthesizer of the training corpus, and 50 Hz frame labels.

The inventory is ARPAbet's 39 phones (stress dropped) plus `sil`. Each synthesizer reports phones in its
own set; the maps below send each to one inventory phone (a diphthong or r-coloured vowel to its nucleus
or its ARPAbet diphthong, a consonant to the nearest ARPAbet consonant). A phone that no map knows
becomes `UNKNOWN`, which training ignores; the corpus builder counts them.

| source | phone set | notes |
| --- | --- | --- |
| eSpeak NG (en, en-us) | eSpeak mnemonics, e.g. `@2 'aU dZ` | stress and length marks dropped before lookup |
| festival kal/ked | radio (ARPAbet + ax axr dx el em en nx hv pau h# brth) | ax->ah, axr->er, dx->d, el->l, em->m, en->n, nx->n |
| festival lp/pc (Italian) | italian (SAMPA, stress digit 1) | ts->t, dz->d, J->n y, L->l, ng/nf->ng/f |
| festival ona (Catalan) | upc_catalan (SAMPA) | rr->r, ax->ah |
| festival dita/machac (Czech) | czech (letter-like) | c->t, r~->zh, n~->n, : length dropped |
| festival lj/mv (Finnish) | finnish (SAMPA + gemination `:`) | y->uw, @->ae, T->th |
| festival nsh (Russian) | msu_ru (palatalised doubled letters) | pp->p ..., ii->iy, yy->ih, c->t, sch->sh |
| Kokoro (jm_kumo, jf_*) | kokoro (eSpeak's US English IPA; A I O W Y = eI aI oU aU OI) | flap ɾ->d, ʔ->t |
| Piper (joe) | piper (the same tokens as kokoro: both read eSpeak's IPA, voices/neural.py) | as kokoro |
"""

from __future__ import annotations

import numpy as np

SILENCE = "sil"
ARPABET = (
    "aa", "ae", "ah", "ao", "aw", "ay", "eh", "er", "ey", "ih", "iy", "ow", "oy", "uh", "uw",
    "b", "ch", "d", "dh", "f", "g", "hh", "jh", "k", "l", "m", "n", "ng", "p", "r", "s", "sh", "t", "th",
    "v", "w", "y", "z", "zh",
)
PHONES: tuple[str, ...] = (SILENCE,) + ARPABET  # label index = position here
PHONE_INDEX = {p: i for i, p in enumerate(PHONES)}
UNKNOWN = -100  # frame label of a phone no map knows (ignored by cross-entropy)
FRAME_RATE = 50  # labels per second (the SSL frame rate: 320 samples at 16 kHz)
LABEL_OFFSET = 0.0125  # s: the centre of frame 0, WavLM's 400-sample receptive field at 16 kHz

_SIL = {"pau", "h#", "brth", "#", "##", "_", "_:", "_!", "_!!", "||", "|", "sil", "SIL", "IGNORE"}

# eSpeak NG English mnemonics (espeak-ng-data phsource/ph_english*), after stress marks are removed
ESPEAK = {
    "a": "ae", "aa": "aa", "A:": "aa", "A@": "aa", "A": "aa", "0": "aa", "V": "ah", "@": "ah", "@2": "ah",
    "@5": "ah", "@L": "l", "@-": "ah", "a#": "ah", "3": "er", "3:": "er", "@r": "er", "I": "ih", "I2": "ih",
    "I#": "ih", "i": "iy", "i:": "iy", "E": "eh", "E2": "eh", "e@": "eh", "eI": "ey", "aI": "ay", "aI@": "ay",
    "aI3": "ay", "aU": "aw", "aU@": "aw", "OI": "oy", "oU": "ow", "@U": "ow", "oU#": "ow", "O": "ao", "O:": "ao",
    "O@": "ao", "o@": "ao", "U": "uh", "U@": "uh", "u:": "uw", "u": "uw", "i@": "ih", "i@3": "ih", "IR": "ih",
    "VR": "ah", "O2": "ao", "A@r": "aa", "a2": "ae", "aI2": "ay", "eI2": "ey", "e": "eh", "o": "ow",
    "p": "p", "b": "b", "t": "t", "d": "d", "k": "k", "g": "g", "f": "f", "v": "v", "T": "th", "D": "dh",
    "s": "s", "z": "z", "S": "sh", "Z": "zh", "h": "hh", "tS": "ch", "dZ": "jh", "m": "m", "n": "n", "N": "ng",
    "l": "l", "r": "r", "w": "w", "j": "y", "t#": "t", "d#": "d", "n-": "n", "l-": "l", "m-": "m", "r-": "r",
    "?": "t", "x": "hh", "z#": "z", "s#": "s", "l/": "l", "l/2": "l", "w#": "w", "tS#": "ch", "*": "r",
}
RADIO = {p: p for p in ARPABET} | {"ax": "ah", "axr": "er", "dx": "d", "el": "l", "em": "m", "en": "n",
                                   "nx": "n", "hv": "hh"}
ITALIAN = {
    "i": "iy", "e": "ey", "E": "eh", "a": "aa", "o": "ow", "O": "ao", "u": "uw", "j": "y", "w": "w", "p": "p",
    "t": "t", "k": "k", "b": "b", "d": "d", "g": "g", "f": "f", "s": "s", "S": "sh", "v": "v", "z": "z",
    "Z": "zh", "ts": "t", "tS": "ch", "dz": "d", "dZ": "jh", "m": "m", "n": "n", "J": "n", "ng": "ng",
    "nf": "m", "l": "l", "L": "l", "r": "r",
}
CATALAN = ITALIAN | {"ax": "ah", "rr": "r", "N": "ng"}
CZECH = {
    "a": "aa", "b": "b", "c": "t", "c~": "ch", "ch": "hh", "d": "d", "d~": "d", "dz": "d", "dz~": "jh",
    "e": "eh", "f": "f", "g": "g", "h": "hh", "i": "iy", "j": "y", "k": "k", "l": "l", "m": "m", "n": "n",
    "n*": "ng", "n~": "n", "o": "ao", "p": "p", "r": "r", "r~": "zh", "r~*": "sh", "s": "s", "s~": "sh",
    "t": "t", "t~": "t", "u": "uw", "v": "v", "z": "z", "z~": "zh",
}
FINNISH = {
    "a": "aa", "e": "eh", "i": "iy", "o": "ow", "u": "uw", "y": "uw", "@": "ae", "7": "ah", "&": "ae",
    "p": "p", "t": "t", "k": "k", "b": "b", "d": "d", "g": "g", "f": "f", "T": "th", "D": "dh", "s": "s",
    "z": "z", "S": "sh", "Z": "zh", "h": "hh", "v": "v", "m": "m", "n": "n", "N": "ng", "l": "l", "L": "l",
    "r": "r", "j": "y", "w": "w",
}
RUSSIAN = {
    "ii": "iy", "yy": "ih", "uu": "uw", "ee": "eh", "oo": "ao", "aa": "aa", "a": "ah", "e": "eh", "i": "iy",
    "y": "ih", "u": "uw", "ae": "eh", "ay": "ah", "ur": "uh", "c": "t", "ch": "ch", "sh": "sh", "sch": "sh",
    "zh": "zh", "h": "hh", "hh": "hh", "j": "y",
} | {c + c: c for c in "pbtdkgfvszmnlr"} | {c: c for c in "pbtdkgfvszmnlr"}

# Kokoro's tokens: eSpeak NG's US English IPA, diphthongs and affricates as Kokoro's single letters
KOKORO = {
    "ɑ": "aa", "ɒ": "aa", "a": "aa", "æ": "ae", "ʌ": "ah", "ə": "ah", "ᵊ": "ah", "ɔ": "ao", "W": "aw", "I": "ay",
    "ɛ": "eh", "e": "eh", "ɚ": "er", "ɜ": "er", "A": "ey", "ɪ": "ih", "ᵻ": "ih", "i": "iy", "O": "ow", "Q": "ow",
    "o": "ow", "Y": "oy", "ʊ": "uh", "u": "uw", "b": "b", "ʧ": "ch", "d": "d", "ð": "dh", "f": "f", "ɡ": "g",
    "h": "hh", "ʤ": "jh", "k": "k", "l": "l", "m": "m", "n": "n", "ŋ": "ng", "p": "p", "ɹ": "r", "s": "s",
    "ʃ": "sh", "t": "t", "θ": "th", "v": "v", "w": "w", "j": "y", "z": "z", "ʒ": "zh", "ɾ": "d", "ʔ": "t",
    "x": "hh", "ç": "hh",
}

PHONE_SETS: dict[str, dict[str, str]] = {
    "espeak": ESPEAK, "radio": RADIO, "italian": ITALIAN, "catalan": CATALAN, "czech": CZECH,
    "finnish": FINNISH, "russian": RUSSIAN, "kokoro": KOKORO, "piper": KOKORO,
}


def to_common(phone: str, phone_set: str) -> str | None:
    """The inventory phone of `phone` from `phone_set`, or None when no map knows it."""
    table = PHONE_SETS[phone_set]
    if phone in _SIL:
        return SILENCE
    candidates = [phone]
    if phone_set == "espeak":
        candidates.append(phone.lstrip("',%=").rstrip(";"))
        if phone.strip("',%=;") == "":
            return None
    else:
        stripped = phone.rstrip("0123456789")
        candidates += [stripped, stripped.rstrip(":")]
    for c in candidates:
        if c in _SIL:
            return SILENCE
        if c in table:
            return table[c]
    return None


def phone_id(phone: str | None) -> int:
    return UNKNOWN if phone is None else PHONE_INDEX[phone]


def frame_labels(segments: list[tuple[float, float, str]], num_frames: int, frame_rate: float = FRAME_RATE,
                 offset: float = LABEL_OFFSET, start: float = 0.0) -> np.ndarray:
    """Label of each frame: the segment (start s, end s, inventory phone or None) covering the frame's
    centre `start + offset + i / frame_rate`; silence before the first and after the last segment.

    The default offset is the centre of WavLM's 400-sample receptive field at 16 kHz (LABEL_OFFSET)."""
    labels = np.full(num_frames, PHONE_INDEX[SILENCE], dtype=np.int64)
    if not segments or num_frames <= 0:
        return labels
    centres = start + offset + np.arange(num_frames) / frame_rate
    ends = np.array([s[1] for s in segments])
    starts = np.array([s[0] for s in segments])
    ids = np.array([phone_id(s[2]) for s in segments])
    k = np.searchsorted(ends, centres, side="right")
    inside = (k < len(segments))
    kk = np.minimum(k, len(segments) - 1)
    inside &= centres >= starts[kk]
    labels[inside] = ids[kk[inside]]
    return labels
