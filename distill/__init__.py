"""Distillation of the streaming student from the Kanade teacher, as a library
(`distill.pipeline.distill_student`) and a command line (`python distill/run.py --help`, or
`python -m distill.run`).

- settings.py: typed recipes (configs/*.yaml), one dataclass per stage with its own loss weights
- models.py: the teacher (trained first when it is the embedded one and missing), its vocoder, the student
- tasks.py: what each stage trains against which teacher outputs (a `training.trainer.Task` per stage)
- evaluate.py: the report (token agreement, mel distance, streaming check, voice conversion)
- pipeline.py: a run, stage after stage; run.py: its command line
"""
