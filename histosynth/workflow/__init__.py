"""`histosynth reproduce`: the whole paper from one data folder, as a Snakemake workflow.

Every step of the paper is an existing `histosynth` command; the `Snakefile` beside this module
chains them as rules over files (a model folder's `histosynth.json`, a pool's `pool.json`, a
table's CSV), so that Snakemake resumes after a failure, re-runs only what a changed input
touches, and submits each rule to a SLURM cluster through its executor plugin. This package
checks a run's settings before anything runs (`settings`) and starts Snakemake on them (`run`).
"""
