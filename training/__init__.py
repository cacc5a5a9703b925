"""Training of the Kanade teacher and its vocoder, as a library (`training.pipeline.train_teacher`) and a
command line (`python training/run.py --help`, or `python -m training.run`).

- settings.py: typed recipes (configs/*.yaml): every key known, every value of its type
- runtime.py: the process's rank in a torchrun job, its device and precision
- data.py: manifests of audio folders, random 24 kHz chunks, DDP-sharded resumable loading, a run's data
- models.py: the teacher a recipe trains (Kanade config, SSL model, release weights to start from)
- losses.py: mel, multi-resolution STFT, GAN and FSQ-matching losses; codebook metrics
- trainer.py: the loop shared by every phase and distillation stage (DDP, bf16, schedules, logs, checkpoints)
- checkpoint.py: resumable checkpoints (atomic writes, RNG state) and which one a phase resumes from
- phase1.py, phase2.py, vocoder.py: the Task of each phase
- export.py: release formats of the results (Kanade teacher, Vocos) and <out>/export
- logs.py: the "training" logger, CSV/TensorBoard metrics, mel PNGs
- pipeline.py: a run, phase after phase; run.py: its command line
"""
