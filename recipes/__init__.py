"""Cross-stage code: the one place that imports every stage (pipeline, trainer, eval, models).

    demo.py          `make demo`: the pipeline on the bundled clips, what the teacher saw and
                     what the authors' SoundNet-8 hears
    cluster_demo.py  `make cluster-demo`: the same pipeline on a local Dask cluster

Nothing in the stages imports this package.
"""
