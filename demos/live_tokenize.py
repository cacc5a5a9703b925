"""Live tokenization: prints Kanade content tokens as they are spoken into the microphone.

    python demos/live_tokenize.py                       # default input device, embedded demo student
    python demos/live_tokenize.py --input speech.wav    # file mode
"""

import os
import sys

try:
    from kanade_stream.realtime.live import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: no traceback, no slow teardown
    print("interrupted", file=sys.stderr)
    os._exit(130)

if __name__ == "__main__":
    main("tokenize")
