"""Live tokenization: prints Kanade content tokens as they are spoken into the microphone.

    python demos/live_tokenize.py                       # default input device, embedded demo student
    python demos/live_tokenize.py --input speech.wav    # file mode
"""

import sys

from kanade_stream.realtime.live import run

if __name__ == "__main__":
    sys.exit(run("tokenize"))
