"""Live voice conversion: microphone -> streaming student -> speakers, in the voice of a reference clip.

    python demos/live_vc.py --ref me.wav                      # default devices, embedded demo student
    python demos/live_vc.py --list-devices
    python demos/live_vc.py --ref me.wav --input-device 3 --output-device "USB" --chunk-ms 40
    python demos/live_vc.py --ref me.wav --input in.wav --output out.wav   # file mode
"""

import sys

from kanade_stream.realtime.live import run

if __name__ == "__main__":
    sys.exit(run("vc"))
