"""Embedded speech corpus: English speech synthesized on the spot with eSpeak NG, no download needed.

eSpeak NG comes from the PyPI package `espeakng-loader`, which ships the shared library and its
espeak-ng-data folder but no Python bindings, so this module talks to it through a small ctypes binding.

The corpus is meant for smoke tests, examples and tiny training runs: many clearly different (if robotic)
voices, a fixed set of plain sentences, and byte-for-byte reproducible output for a given seed.

    python -m kanade_stream.corpus --out /tmp/corpus --speakers 12 --per-speaker 10 --held-out 2
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import hashlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import weakref
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

ESPEAK_SAMPLE_RATE = 22050  # eSpeak NG's native output rate
PEAK_LEVEL = 0.9  # every utterance is peak-normalised to this, eSpeak's own levels vary ~10x between variants
CORPUS_FORMAT = 1  # bump when the layout or the audio processing changes, so cached corpora get rebuilt
SPLITS = ("train", "heldout")
_INSTALL_HINT = "pip install espeakng-loader"

# eSpeak NG API constants (speak_lib.h)
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it a missing data folder calls exit() inside the library
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PARAM_RATE, _PARAM_PITCH, _PARAM_RANGE = 1, 3, 4
_EE_OK = 0

# Variants (files in espeak-ng-data/voices/!v) that sound like plausible adult voices; the novelty ones
# (robots, whisper, croak, demonic, child-like) are left out. Klatt variants use a different synthesiser,
# which widens the timbre spread.
_FEMALE_VARIANTS = (
    "f1", "f2", "f3", "f4", "f5", "Alicia", "Andrea", "Annie", "anika", "aunty", "belinda", "grandma",
    "shelby", "steph",
)
_MALE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "Andy", "Denis", "adam", "david", "edward", "klatt4",
    "marcelo", "quincy", "robert", "victor",
)
# eSpeak's pitch setting scales the variant's own pitch from 0.5x (0) to 2x (99). The first pass over the
# variants stays near natural; later passes reuse each variant well below, then well above it.
_PITCH_BANDS = ((38, 62), (16, 28), (72, 84))
_LANGUAGES = ("en-us", "en")  # American and British English


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker: an eSpeak language, a voice variant and prosody settings."""

    name: str  # unique speaker id, e.g. "spk03"
    language: str = "en-us"
    variant: str = "m1"
    pitch: int = 50  # 0-99, 50 is the variant's own pitch
    pitch_range: int = 50  # 0-99, 0 is monotone
    rate: int = 175  # words per minute

    def __post_init__(self) -> None:
        if not self.name or not isinstance(self.name, str):
            raise ValueError(f"voice name must be a non-empty string, got {self.name!r}")
        for label, value, low, high in (
            ("pitch", self.pitch, 0, 99),
            ("pitch_range", self.pitch_range, 0, 99),
            ("rate", self.rate, 80, 450),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ValueError(f"voice {self.name!r}: {label} must be an integer in {low}-{high}, got {value!r}")
        # these end up in an eSpeak voice spec "<language>+<variant>", where '+' and spaces would change its meaning
        for label, value in (("language", self.language), ("variant", self.variant)):
            if not value or any(c in value for c in "+ /\\\0"):
                raise ValueError(f"voice {self.name!r}: invalid {label} {value!r}")

    @property
    def espeak_name(self) -> str:
        return f"{self.language}+{self.variant}"


@dataclass
class CorpusInfo:
    """What build_corpus made (or found already made)."""

    out_dir: Path
    manifest: Path
    speakers: dict[str, list[str]]  # split -> speaker names
    num_utterances: int
    total_duration: float  # seconds
    reused: bool = False
    voices: list[Voice] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------------
# eSpeak NG binding
# --------------------------------------------------------------------------------------------------------

_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _ESpeak:
    """Runs each synthesis on a freshly loaded private copy of libespeak-ng.

    eSpeak keeps hidden synthesis state in static variables (pitch flutter phase, gain control, echo buffer)
    that carry over from one utterance to the next and that neither espeak_Terminate nor re-initialising
    resets, so the same call gives different samples depending on what was spoken before. Loading the
    library afresh for every utterance restores all of it; that costs about 3 ms. A private copy makes sure
    nobody else in the process (e.g. a phonemizer) keeps the library loaded and its state alive.
    """

    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError as e:
            raise RuntimeError(
                f"the embedded speech corpus needs eSpeak NG from the espeakng-loader package: {_INSTALL_HINT}"
            ) from e
        try:
            source = Path(espeakng_loader.get_library_path())
            self.data_path = Path(espeakng_loader.get_data_path())
        except Exception as e:  # the package raises a bare RuntimeError/OSError when its files are missing
            raise RuntimeError(
                f"espeakng-loader is installed but incomplete ({e}); reinstall it: {_INSTALL_HINT}"
            ) from e
        if not source.is_file():
            raise RuntimeError(f"eSpeak NG library not found at {source}; reinstall it: {_INSTALL_HINT}")
        self._dir = Path(tempfile.mkdtemp(prefix="kanade_espeak_"))
        weakref.finalize(self, shutil.rmtree, self._dir, True)  # drop the private copies at exit
        self._source = source
        self._copies = 0
        self._library = self._new_copy()
        self._chunks: list[bytes] = []
        self._callback = _SynthCallback(self._collect)  # kept on self: ctypes must not free it while in use
        self._libc = _load_libc()
        try:
            lib = self._open()
        except (OSError, AttributeError) as e:  # AttributeError: a library without the functions we need
            raise RuntimeError(
                f"cannot load the eSpeak NG library {source} ({e}); reinstall it: {_INSTALL_HINT}"
            ) from e
        try:
            info = lib.espeak_Info
            info.restype, info.argtypes = ctypes.c_char_p, [ctypes.c_void_p]
            self.version = (info(None) or b"?").decode()
        finally:
            self._close(lib)

    def _new_copy(self) -> Path:
        self._copies += 1
        target = self._dir / f"{self._source.stem}-{self._copies}{self._source.suffix}"
        shutil.copyfile(self._source, target)
        return target

    def _collect(self, wav, num_samples: int, _events) -> int:
        if wav and num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, 2 * num_samples))
        return 0  # 0 = keep synthesising

    def _open(self) -> ctypes.CDLL:
        lib = ctypes.CDLL(str(self._library))
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        if hasattr(lib, "espeak_ng_SetRandSeed"):  # added in eSpeak NG 1.51
            lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        return lib

    def _close(self, lib: ctypes.CDLL) -> None:
        import _ctypes

        (_ctypes.FreeLibrary if os.name == "nt" else _ctypes.dlclose)(lib._handle)
        # If the loader kept it mapped anyway, its state would leak into the next utterance: use a new copy.
        maps = Path("/proc/self/maps")
        if maps.exists() and str(self._library) in maps.read_text():
            self._library = self._new_copy()

    def synth(self, text: str, voice: Voice) -> np.ndarray:
        """int16 samples at ESPEAK_SAMPLE_RATE."""
        if not (self.data_path / "voices" / "!v" / voice.variant).is_file():
            raise ValueError(
                f"voice {voice.name!r}: eSpeak NG has no variant {voice.variant!r}; "
                f"available: {', '.join(_variant_names(self.data_path))}"
            )
        lib = self._open()
        initialised = False
        try:
            rate = lib.espeak_Initialize(
                _AUDIO_OUTPUT_SYNCHRONOUS, 0, os.fsencode(self.data_path), _INITIALIZE_DONT_EXIT
            )
            if rate != ESPEAK_SAMPLE_RATE:
                raise RuntimeError(
                    f"eSpeak NG failed to initialise with data at {self.data_path} (returned {rate}); "
                    f"reinstall it: {_INSTALL_HINT}"
                )
            initialised = True
            lib.espeak_SetSynthCallback(self._callback)
            if lib.espeak_SetVoiceByName(voice.espeak_name.encode()) != _EE_OK:
                raise ValueError(f"voice {voice.name!r}: eSpeak NG has no voice {voice.espeak_name!r}")
            for param, value in (
                (_PARAM_RATE, voice.rate),
                (_PARAM_PITCH, voice.pitch),
                (_PARAM_RANGE, voice.pitch_range),
            ):
                lib.espeak_SetParameter(param, value, 0)
            # Breath noise comes from eSpeak's own generator and from libc rand(); seed both from the inputs
            # so that a clip is reproducible yet different clips get different noise.
            seed = zlib.crc32(f"{voice!r}\n{text}".encode())
            if hasattr(lib, "espeak_ng_SetRandSeed"):
                lib.espeak_ng_SetRandSeed(seed)
            if self._libc is not None:
                self._libc.srand(seed)
            encoded = text.encode("utf-8") + b"\0"
            self._chunks = []
            status = lib.espeak_Synth(encoded, len(encoded), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if status != _EE_OK:
                raise RuntimeError(f"eSpeak NG synthesis failed (error {status}) for {text!r} with voice {voice}")
            lib.espeak_Synchronize()
        finally:
            if initialised:
                lib.espeak_Terminate()  # frees its buffers before the library is unloaded
            self._close(lib)
        return np.frombuffer(b"".join(self._chunks), dtype=np.int16)


def _load_libc():
    """The C library whose rand() eSpeak's noise uses; None where we cannot reach it (Windows)."""
    if os.name == "nt":
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None)
        libc.srand.argtypes = [ctypes.c_uint]
        return libc
    except (OSError, AttributeError):
        return None


_lock = threading.Lock()  # eSpeak is process-global state: one synthesis at a time
_engine_instance: _ESpeak | None = None


def _engine() -> _ESpeak:
    global _engine_instance
    if _engine_instance is None:
        _engine_instance = _ESpeak()
    return _engine_instance


def _variant_names(data_path: Path) -> list[str]:
    return sorted(p.name for p in (data_path / "voices" / "!v").iterdir() if p.is_file())


def available_variants() -> list[str]:
    """Voice variant names in the installed espeak-ng-data (any of them can be used in a Voice)."""
    with _lock:
        data_path = _engine().data_path
    return _variant_names(data_path)


def espeak_version() -> str:
    with _lock:
        return _engine().version


def _check_sample_rate(sample_rate) -> int:
    if (
        isinstance(sample_rate, bool)
        or not isinstance(sample_rate, (int, np.integer))
        or not 8000 <= sample_rate <= 192000
    ):
        raise ValueError(f"sample_rate must be an integer number of Hz in 8000-192000, got {sample_rate!r}")
    return int(sample_rate)


@functools.lru_cache(maxsize=8)
def _resampler(sample_rate: int):
    """torchaudio Resample from eSpeak's rate; cached because building the sinc kernel costs more than
    synthesising a sentence (e.g. 22050 -> 16000 Hz)."""
    import torchaudio

    return torchaudio.transforms.Resample(ESPEAK_SAMPLE_RATE, sample_rate)


def synthesize(text: str, voice: Voice, sample_rate: int = 24000) -> np.ndarray:
    """Speak `text` with `voice`: float32 mono in [-1, 1] at `sample_rate`, identical for identical inputs."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not isinstance(voice, Voice):
        raise TypeError(f"voice must be a Voice, got {type(voice).__name__}")
    sample_rate = _check_sample_rate(sample_rate)
    with _lock:
        pcm = _engine().synth(text, voice)
    # eSpeak returns a few near-silent samples for empty or unpronounceable text; 64/32768 is about -54 dBFS
    if pcm.size == 0 or int(np.abs(pcm.astype(np.int32)).max()) < 64:
        raise RuntimeError(f"eSpeak NG produced no audio for text {text!r} with voice {voice}")
    audio = pcm.astype(np.float32)
    audio *= PEAK_LEVEL / float(np.abs(audio).max())
    if sample_rate != ESPEAK_SAMPLE_RATE:
        import torch

        with torch.no_grad():
            audio = _resampler(sample_rate)(torch.from_numpy(audio)).numpy()
    return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


def make_voices(n: int, seed: int = 0) -> list[Voice]:
    """`n` clearly distinct voices, alternating female and male, the same list for the same seed.

    Each variant is used once per pitch band, so no two voices share both variant and pitch band.
    """
    max_voices = (len(_FEMALE_VARIANTS) + len(_MALE_VARIANTS)) * len(_PITCH_BANDS)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= max_voices:
        raise ValueError(f"number of voices must be an integer in 0-{max_voices}, got {n!r}")
    rng = random.Random(seed)
    female, male = list(_FEMALE_VARIANTS), list(_MALE_VARIANTS)
    rng.shuffle(female)
    rng.shuffle(male)
    # interleave so any prefix is gender-balanced, then the surplus male variants
    order = [v for pair in zip(female, male) for v in pair] + male[len(female):] + female[len(male):]
    voices = []
    for i in range(n):
        band, j = divmod(i, len(order))
        low, high = _PITCH_BANDS[band]
        voices.append(
            Voice(
                name=f"spk{i:02d}",
                language=_LANGUAGES[0] if rng.random() < 0.7 else _LANGUAGES[1],
                variant=order[j],
                pitch=rng.randint(low, high),
                pitch_range=rng.randint(30, 80),
                rate=rng.randrange(135, 200, 5),
            )
        )
    return voices


# --------------------------------------------------------------------------------------------------------
# Sentences
# --------------------------------------------------------------------------------------------------------

SENTENCES: list[str] = [
    # home
    "The kettle whistled while we searched for clean mugs.",
    "Please shut the garage door before the rain starts.",
    "My brother fixed the squeaky hinge with a drop of oil.",
    "Could you pass me the salt and the black pepper?",
    "The soup needs more garlic and a pinch of thyme.",
    "She sliced the ripe peaches into thin golden wedges.",
    "Our old fridge hums loudly in the middle of the night.",
    "Dad burned the toast again, so we ate cereal instead.",
    "The dishwasher finished early and the plates are still warm.",
    "I left my keys on the hook beside the front door.",
    "Grandma knitted a thick wool scarf for each of us.",
    "The cat knocked a glass of juice off the table.",
    "We painted the spare bedroom a pale shade of green.",
    "Fresh basil grows quickly on a bright kitchen windowsill.",
    "Turn off the oven when the timer starts beeping.",
    "The vacuum cleaner choked on a long piece of string.",
    "He hung the wet laundry outside to dry in the sun.",
    "There is a leak under the bathroom sink again.",
    "The pancakes were fluffy, sweet, and slightly crispy at the edges.",
    "Put the leftover rice in a sealed box in the fridge.",
    # outdoors
    "A gentle breeze rustled the yellow leaves on the oak tree.",
    "The children chased bubbles across the sunny playground.",
    "She jogs along the beach every Thursday at dawn.",
    "Thick fog rolled over the hills early this morning.",
    "A family of ducks crossed the road in a neat line.",
    "The river was too shallow for the canoe to float.",
    "Lightning flashed, and the thunder shook the windows.",
    "We hiked to the top of the ridge before lunch.",
    "Frost covered the lawn and sparkled in the pale light.",
    "The owl hooted softly from a branch above the barn.",
    "Wild strawberries grow along the edge of the forest path.",
    "A swarm of bees buzzed around the lavender bushes.",
    "The lake froze solid during the coldest week of January.",
    "Seagulls squawked and fought over a dropped sandwich.",
    "Snow drifted against the fence and buried the bicycle.",
    "The sunset painted the clouds orange, pink, and violet.",
    "A tiny frog jumped out of the wet grass.",
    "The wind howled through the valley all night long.",
    "We collected smooth pebbles on the shore of the bay.",
    "Heavy rain washed the chalk drawings off the sidewalk.",
    # travel
    "The train to the coast leaves from platform seven.",
    "Our flight was delayed because of a storm in Chicago.",
    "He missed the last bus and had to walk home.",
    "The taxi driver knew a shortcut through the old market.",
    "Please keep your ticket until the end of the journey.",
    "We rented a small car with a broken radio.",
    "The ferry rocked gently as it crossed the harbor.",
    "She packed her suitcase three days before the trip.",
    "Traffic was slow near the bridge because of roadwork.",
    "The pilot announced that we would land in twenty minutes.",
    "I lost my map, but a kind stranger showed me the way.",
    "The subway was crowded with tourists and commuters.",
    "He pedaled his bicycle up the steep hill without stopping.",
    "The hotel room had a balcony facing the mountains.",
    "Remember to charge your phone before the long drive.",
    # work and school
    "The teacher wrote a difficult question on the whiteboard.",
    "Our manager moved the weekly meeting to Friday afternoon.",
    "His phone buzzed twice during the quiet meeting.",
    "The printer jammed just before the report was due.",
    "She finally finished her thesis after four long years.",
    "Students gathered in the hall for the science fair.",
    "Please send me the updated budget by tomorrow morning.",
    "The library closes early on public holidays.",
    "I need a stronger cup of coffee before the presentation.",
    "The new intern asked thoughtful questions about the project.",
    "We brainstormed ideas on sticky notes for an hour.",
    "My laptop froze and I lost an entire paragraph.",
    "The exam covered chemistry, geometry, and a little history.",
    "He practiced his speech in front of the bathroom mirror.",
    "The office plants need watering at least twice a week.",
    "Our team celebrated the launch with pizza and cake.",
    "Raise your hand if you have any questions.",
    "The professor spoke quickly, so I recorded the lecture.",
    "She sorted the files by date and then by name.",
    "The deadline is close, but we are almost done.",
    # food and shopping
    "The bakery on the corner sells warm cinnamon rolls.",
    "We bought apples, pears, and a bunch of bananas.",
    "The waiter brought us the wrong dessert by mistake.",
    "This cheese smells strong, but it tastes wonderful.",
    "She always orders noodles with extra chili sauce.",
    "The grocery store ran out of milk and eggs.",
    "A bowl of hot chowder is perfect on a rainy day.",
    "He grilled the fish with lemon and fresh herbs.",
    "The market was full of bright vegetables and loud voices.",
    "I prefer tea with honey rather than sugar.",
    "They shared a huge plate of spicy chicken wings.",
    "The chocolate cake melted slightly in the summer heat.",
    "We need flour, butter, and yeast for the bread.",
    "The shopkeeper wrapped the vase in brown paper.",
    "Her favorite breakfast is yogurt with berries and oats.",
    # people
    "My neighbor waves to everyone who passes her garden.",
    "He laughed so hard that he nearly dropped his drink.",
    "She felt nervous before the audition, but sang beautifully.",
    "The baby giggled every time the puppy licked her toes.",
    "Our cousins are visiting from Spain next month.",
    "He apologized for being late and bought everyone coffee.",
    "The old sailor told stories about giant waves.",
    "I was surprised to see my teacher at the concert.",
    "They argued about the rules and then played anyway.",
    "She whispered the secret so nobody else could hear.",
    "My uncle snores louder than a chainsaw.",
    "The twins wore matching jackets to the party.",
    "He is proud of the wooden chair he built himself.",
    "Everyone clapped when the shy boy finished his poem.",
    "She hugged her friend tightly at the airport gate.",
    "Please be patient, the doctor will see you soon.",
    "I forgot his birthday, so I called him to apologize.",
    "The coach shouted instructions from the side of the field.",
    "Our guests arrived early and helped set the table.",
    "The musician tuned his guitar before the show began.",
    # questions
    "Where did you park the car this morning?",
    "Have you ever tasted fresh mango straight from the tree?",
    "Why is the living room light flickering again?",
    "Would you like to join us for dinner on Sunday?",
    "How long does it take to bake this bread?",
    "Did anyone see where I put my glasses?",
    "Can you turn the music down a little, please?",
    "What time does the pharmacy open on weekends?",
    "Is it going to snow again tomorrow afternoon?",
    "Which road leads to the village by the lake?",
    "Do you know how to fix a flat tire?",
    "Who left the back gate open last night?",
    "Shall we walk to the park or take the tram?",
    "Are these boots waterproof or just water resistant?",
    "When will the plumber come to check the pipes?",
    # animals
    "The dog barked at the mail carrier every single day.",
    "A curious squirrel stole a peanut from my hand.",
    "The horse galloped across the meadow and jumped the stream.",
    "Our goldfish swims in circles around the little castle.",
    "The parrot can imitate the sound of the doorbell.",
    "Cows grazed peacefully beside the quiet country road.",
    "A spider spun a web between the two chairs.",
    "The kitten fell asleep inside an empty shoebox.",
    "Wolves howled in the distance as the moon rose.",
    "The zookeeper fed the penguins a bucket of fish.",
    "A lonely goat stood on top of the rocky hill.",
    "The hamster ran on its wheel until midnight.",
    "Bats flew out of the cave at dusk.",
    "The lizard warmed itself on a flat rock.",
    "My dog buries bones in the vegetable garden.",
    # technology
    "The computer restarted in the middle of the update.",
    "Please remember to back up your photos every week.",
    "The screen is cracked, but the phone still works.",
    "He downloaded a new game and played until late.",
    "The wireless signal is weak in the basement.",
    "She built a small robot that can follow a line.",
    "The battery drains quickly when the camera is on.",
    "Type your password slowly and check for mistakes.",
    "The video call kept freezing because of the storm.",
    "My headphones only work on the left side.",
    "The smart speaker misunderstood every word I said.",
    "We installed solar panels on the roof last spring.",
    "The old television takes a minute to warm up.",
    "He spent the weekend organizing cables behind the desk.",
    "The new update changed the color of every button.",
    # sports and hobbies
    "The goalkeeper dived and caught the ball with one hand.",
    "She paints watercolor landscapes on quiet Sunday mornings.",
    "We played chess in the park until it got dark.",
    "The runners stretched their legs before the race.",
    "He collects stamps from countries he has never visited.",
    "The basketball bounced off the rim and into the crowd.",
    "My sister is learning to play the violin.",
    "They went fishing at sunrise but caught nothing.",
    "The climbers reached the summit just before noon.",
    "I like to read mystery novels on rainy evenings.",
    "The choir rehearsed the song until it sounded perfect.",
    "He threw the frisbee too far and it landed in the pond.",
    "The garden club meets on the first Monday of every month.",
    "She swam twenty laps without taking a break.",
    "Our team lost the match, but we played well.",
    # town
    "The street market opens early on Saturday mornings.",
    "A long queue formed outside the new ice cream shop.",
    "The clock tower chimes every hour on the hour.",
    "Construction noise woke us up before seven.",
    "The fountain in the square was full of coins.",
    "The bookstore smells like paper, dust, and coffee.",
    "Pigeons gathered on the steps of the town hall.",
    "The police officer helped a lost child find her parents.",
    "Street lights flickered on as the evening grew dark.",
    "The line at the bakery stretched around the corner.",
    "This neighborhood has narrow streets and colorful houses.",
    "The parking lot was empty except for one red truck.",
    "The hospital is just beyond the second roundabout.",
    "A street musician played jazz near the station entrance.",
    "The castle on the hill is over five hundred years old.",
    # weather and time
    "It has been raining since early this morning.",
    "The forecast says it will be windy and cold tomorrow.",
    "Summer evenings here are warm and full of fireflies.",
    "The heat wave made everyone move slowly.",
    "Autumn is my favorite season because of the colors.",
    "We stayed inside and played cards during the blizzard.",
    "The clocks go back one hour this weekend.",
    "By midnight the storm had finally passed.",
    "Spring arrived late this year, but the tulips bloomed anyway.",
    "It was so humid that my glasses fogged up.",
    # sound-rich lines: clusters, fricatives, affricates, rare vowels
    "A quick brown fox jumped over the lazy dog.",
    "Six thick thistle sticks lay beside the shed.",
    "The judge measured the beige garage with great precision.",
    "She sells seashells by the quiet seashore.",
    "Jack zipped his jacket and jogged toward the zoo.",
    "The vivid violet vase was very valuable.",
    "Choose a cheap chair for the church kitchen.",
    "Yesterday the young girl knitted a yellow scarf.",
    "We watched whales leap out of the waves near the wharf.",
    "The gentle giant enjoyed ginger biscuits with jam.",
    "Treasure the leisure time you usually spend on chores.",
    "Bright blue balloons floated above the birthday crowd.",
    "A phone rang loudly in the empty theater.",
    "Please hand me the hammer and a handful of nails.",
    "The queen quietly quoted a famous poem.",
    "Kevin kept the cookies in a blue ceramic jar.",
    "The rough rope scraped the sailor's hands.",
    "Buzzing insects dozed near the lazy zebras.",
    "Three thrushes thrived in the thorny thicket.",
    "Strong gusts scattered the crisp sprouts across the street.",
    # everyday
    "I usually walk the dog before breakfast.",
    "The meeting room smells of fresh paint.",
    "He wrote a long letter to his grandmother.",
    "They moved to a small town near the mountains.",
    "The concert was cancelled because the singer was ill.",
    "Let's plant tomatoes and peppers in the back garden.",
    "The lamp on my desk casts a warm yellow glow.",
    "She learned to drive when she was seventeen.",
    "The nurse checked his temperature and gave him water.",
    "A loud crash came from the kitchen.",
    "The mechanic said the brakes need replacing soon.",
    "We celebrated the new year with fireworks by the river.",
    "He keeps a diary and writes in it every night.",
    "The carpet in the hallway is worn and faded.",
    "My grandfather tells the same joke at every dinner.",
    "The window cleaner works on the tallest building in town.",
    "Our plans changed when the rain began to pour.",
    "I found an old photo of my parents in the attic.",
    "Please lower your voice, the baby is sleeping.",
    "The farmer drove his tractor slowly down the lane.",
    "The bus driver greeted every passenger with a smile.",
    "She answered the phone on the very first ring.",
    "A warm bath is the best way to end a long day.",
    "The pharmacy is next to the post office.",
    "He borrowed my umbrella and never returned it.",
    "We moved the piano up three flights of stairs.",
    "The alarm clock rang, but nobody got out of bed.",
    "The firefighters rescued a cat from the roof.",
    "Her handwriting is neat, small, and easy to read.",
    "The film starts in ten minutes, so hurry up.",
    "The puzzle had a thousand pieces and no corners.",
    "I need to return these books before Friday.",
    "The wooden bridge creaked under the weight of the cart.",
    "He scrubbed the muddy boots with a stiff brush.",
    "The soup was too salty, so we added potatoes.",
    "Somebody left a bunch of flowers on the doorstep.",
    "The bell rang and the students rushed outside.",
    "We waited an hour for a table at the restaurant.",
    "This sweater shrank after one wash in hot water.",
    "The engine coughed, sputtered, and finally started.",
]


# --------------------------------------------------------------------------------------------------------
# Corpus on disk
# --------------------------------------------------------------------------------------------------------


def default_corpus_dir() -> Path:
    """`$KANADE_STREAM_CACHE/corpus`, else `~/.cache/kanade_stream/corpus`."""
    cache = os.environ.get("KANADE_STREAM_CACHE")
    root = Path(cache).expanduser() if cache else Path.home() / ".cache" / "kanade_stream"
    return root / "corpus"


def _check_count(label: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{label} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _espeak_package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("espeakng-loader")
    except metadata.PackageNotFoundError:
        return "unknown"


def load_manifest(path: str | os.PathLike) -> list[dict]:
    """The manifest.jsonl entries of a corpus (path is the manifest or the corpus folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "manifest.jsonl"
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _summarise(out_dir: Path, entries: list[dict], voices: list[Voice], reused: bool) -> CorpusInfo:
    speakers: dict[str, list[str]] = {split: [] for split in SPLITS}
    for entry in entries:
        names = speakers[entry["split"]]
        if entry["speaker"] not in names:
            names.append(entry["speaker"])
    return CorpusInfo(
        out_dir=out_dir,
        manifest=out_dir / "manifest.jsonl",
        speakers=speakers,
        num_utterances=len(entries),
        total_duration=round(sum(e["duration"] for e in entries), 4),
        reused=reused,
        voices=voices,
    )


def _existing_corpus(out_dir: Path, params: dict) -> list[dict] | None:
    """The manifest entries if out_dir holds a complete corpus built with `params`, else None."""
    try:
        stored = json.loads((out_dir / "corpus.json").read_text(encoding="utf-8"))
        if not stored.get("complete") or stored.get("params") != params:
            return None
        entries = load_manifest(out_dir / "manifest.jsonl")
    except (OSError, ValueError):
        return None
    for entry in entries:
        wav = out_dir / entry["path"]
        if not (wav.is_file() and wav.with_suffix(".txt").is_file()):
            return None
    return entries


def build_corpus(
    out_dir: str | os.PathLike,
    n_speakers: int = 12,
    utterances_per_speaker: int = 10,
    held_out_speakers: int = 2,
    sample_rate: int = 24000,
    seed: int = 0,
    progress: bool = False,
) -> CorpusInfo:
    """Synthesize a small multi-speaker corpus into `out_dir`, or reuse the one already there.

    Layout: `<split>/<speaker>/<speaker>_<nnnn>.wav` (16-bit PCM) with the transcript in a `.txt` beside it,
    `manifest.jsonl` (one line per utterance) and `corpus.json` (build parameters and voices). The last
    `held_out_speakers` voices form the "heldout" split. Same arguments give byte-identical files.
    """
    n_speakers = _check_count("n_speakers", n_speakers, 1)
    utterances_per_speaker = _check_count("utterances_per_speaker", utterances_per_speaker, 1)
    held_out_speakers = _check_count("held_out_speakers", held_out_speakers, 0)
    if held_out_speakers >= n_speakers:
        raise ValueError(
            f"held_out_speakers ({held_out_speakers}) must be smaller than n_speakers ({n_speakers}) "
            "so that at least one speaker is left for training"
        )
    sample_rate = _check_sample_rate(sample_rate)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    max_speakers = (len(_FEMALE_VARIANTS) + len(_MALE_VARIANTS)) * len(_PITCH_BANDS)
    if n_speakers > max_speakers:
        raise ValueError(f"n_speakers must be at most {max_speakers} (distinct voices available), got {n_speakers}")
    voices = make_voices(n_speakers, int(seed))

    out_dir = Path(out_dir).expanduser()
    params = {
        "format": CORPUS_FORMAT,
        "n_speakers": n_speakers,
        "utterances_per_speaker": utterances_per_speaker,
        "held_out_speakers": held_out_speakers,
        "sample_rate": sample_rate,
        "seed": int(seed),
        "voices": [asdict(v) for v in voices],
        "sentences_sha256": hashlib.sha256("\n".join(SENTENCES).encode()).hexdigest(),
        "espeakng_loader": _espeak_package_version(),
    }
    entries = _existing_corpus(out_dir, params)
    if entries is not None:
        return _summarise(out_dir, entries, voices, reused=True)

    # Start clean, but only delete split folders we know we wrote (corpus.json marks a build of ours,
    # finished or interrupted); anything else in the way is the user's and we refuse to touch it.
    meta = out_dir / "corpus.json"
    if meta.exists():
        for split in SPLITS:
            shutil.rmtree(out_dir / split, ignore_errors=True)
    else:
        for split in SPLITS:
            if (out_dir / split).exists() and any((out_dir / split).iterdir()):
                raise ValueError(
                    f"{out_dir / split} already exists and was not made by build_corpus; "
                    "choose an empty or new folder for the corpus"
                )
    out_dir.mkdir(parents=True, exist_ok=True)
    meta.write_text(json.dumps({"complete": False, "params": params}, indent=1) + "\n", encoding="utf-8")

    # Deal sentences from one seeded shuffle, so speakers (and splits) say different sentences
    # until the list runs out.
    order = list(range(len(SENTENCES)))
    random.Random(seed).shuffle(order)
    n_train = n_speakers - held_out_speakers
    jobs = []
    for s, voice in enumerate(voices):
        split = SPLITS[0] if s < n_train else SPLITS[1]
        for u in range(utterances_per_speaker):
            k = s * utterances_per_speaker + u
            jobs.append((split, voice, u, SENTENCES[order[k % len(order)]]))

    if progress:
        from tqdm import tqdm

        jobs = tqdm(jobs, desc="synthesizing corpus", unit="utt")
    entries = []
    for split, voice, u, text in jobs:
        audio = synthesize(text, voice, sample_rate)
        rel = Path(split) / voice.name / f"{voice.name}_{u:04d}.wav"
        wav = out_dir / rel
        wav.parent.mkdir(parents=True, exist_ok=True)
        # PCM_16 rather than float: libsndfile stamps float WAVs with a time-dependent PEAK chunk
        sf.write(wav, audio, sample_rate, subtype="PCM_16")
        wav.with_suffix(".txt").write_text(text + "\n", encoding="utf-8")
        entries.append(
            {
                "path": rel.as_posix(),
                "speaker": voice.name,
                "split": split,
                "text": text,
                "duration": round(len(audio) / sample_rate, 4),
                "sample_rate": sample_rate,
            }
        )

    manifest = out_dir / "manifest.jsonl"
    tmp = manifest.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in entries), encoding="utf-8")
    tmp.replace(manifest)
    # written last: a corpus.json with complete=true means everything above is in place
    meta.write_text(json.dumps({"complete": True, "params": params}, indent=1) + "\n", encoding="utf-8")
    return _summarise(out_dir, entries, voices, reused=False)


def ensure_default_corpus(**kwargs) -> CorpusInfo:
    """Build (or reuse) the corpus in default_corpus_dir(); kwargs go to build_corpus."""
    return build_corpus(default_corpus_dir(), **kwargs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kanade_stream.corpus",
        description="Synthesize the embedded eSpeak NG speech corpus (no download needed).",
    )
    parser.add_argument("--out", type=Path, default=None, help=f"output folder (default: {default_corpus_dir()})")
    parser.add_argument("--speakers", type=int, default=12, help="number of speakers (default: 12)")
    parser.add_argument("--per-speaker", type=int, default=10, help="utterances per speaker (default: 10)")
    parser.add_argument("--held-out", type=int, default=2, help="speakers kept for the heldout split (default: 2)")
    parser.add_argument("--sample-rate", type=int, default=24000, help="output sample rate in Hz (default: 24000)")
    parser.add_argument("--seed", type=int, default=0, help="voice and sentence selection seed (default: 0)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        info = build_corpus(
            args.out if args.out is not None else default_corpus_dir(),
            n_speakers=args.speakers,
            utterances_per_speaker=args.per_speaker,
            held_out_speakers=args.held_out,
            sample_rate=args.sample_rate,
            seed=args.seed,
            progress=True,
        )
    except (ValueError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    how = "reused existing corpus" if info.reused else f"built in {time.perf_counter() - start:.1f} s"
    print(
        f"{info.num_utterances} utterances, {info.total_duration / 60:.1f} min, "
        f"{len(info.speakers['train'])} train + {len(info.speakers['heldout'])} heldout speakers, "
        f"{args.sample_rate} Hz -> {info.out_dir} ({how})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
