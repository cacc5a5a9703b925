"""Training of the Kanade teacher and its vocoder (`python training/run.py --help`).

- data.py: manifests of audio folders, random 24 kHz chunks, DDP-sharded resumable loading
- trainer.py: the training loop shared by every phase (DDP, bf16, schedules, logs, checkpoints, resume)
- phase1.py: phase 1, SSL reconstruction + mel losses
- gan.py: phase 2, GAN post-training of the mel decoder with a multi-band mel discriminator
- vocoder.py: a Vocos vocoder on the teacher's mel
- checkpoint.py: resumable checkpoints; settings.py: recipes (configs/*.yaml); logs.py: CSV/TensorBoard/PNG
"""
