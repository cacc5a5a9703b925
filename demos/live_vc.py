"""Live voice conversion: microphone -> streaming student -> speakers, in the voice of a reference clip.

    python demos/live_vc.py --ref me.wav                      # default devices, embedded demo student
    python demos/live_vc.py --ref me.wav --virtual-mic        # a microphone "Kanade voice" for other programs
    python demos/live_vc.py --list-devices
    python demos/live_vc.py --ref me.wav --input-device alsa_input.usb-mic --output-device alsa_output.usb
    python demos/live_vc.py --ref me.wav --backend portaudio --input-device 3 --chunk-ms 80
    python demos/live_vc.py --ref me.wav --no-gate            # convert background noise too
    python demos/live_vc.py --ref me.wav --input in.wav --output out.wav   # file mode
"""

import os
import sys

try:
    from kanade_stream.realtime.live import main
except KeyboardInterrupt:  # Ctrl-C while the libraries load: no traceback, no slow teardown
    print("interrupted", file=sys.stderr)
    os._exit(130)

if __name__ == "__main__":
    main("vc")
