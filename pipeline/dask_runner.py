"""Beam's DaskRunner (apache-beam 2.77) with the two translations this pipeline needs.

    python -m pipeline.run --runner=apache_beam.runners.dask.dask_runner.DaskRunner \
        --dask_client_address=SCHEDULER_HOST:8786 --input=... --output=...

`pipeline.run` runs pipelines named for Beam's DaskRunner on this subclass (naming it directly,
`--runner=pipeline.dask_runner.DaskRunner`, does the same). Beam 2.77 translates a pipeline into
dask bags (`apache_beam.runners.dask`); for this pipeline's graph (read the pending tasks'
Parquet file, spread them, one ParDo that writes each task) that translation

1. has no translation for `Read`: it becomes a no-op, and the job reads nothing;
2. makes Reshuffle a no-op, so every task read from one file stays in one dask partition:
   one task chain on one worker.

This subclass translates Read into one dask partition per source split (read where it runs),
and Reshuffle into a repartition to about four partitions per worker thread (or
`--dask_npartitions`), which the
scheduler hands out as workers come free; everything else is Beam's own translation. The
teacher models outlive Beam's per-bundle DoFn set-up through Beam's `Shared` (pipeline/
transforms.py). The client also disconnects when the run ends (Beam's stays open, retrying a
scheduler that may be gone).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import typing as t

from apache_beam import pvalue
from apache_beam.io.iobase import SourceBundle
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import transform_evaluator as te
from apache_beam.runners.dask.overrides import _Read, _Reshuffle, dask_overrides
from apache_beam.runners.runner import PipelineState

log = logging.getLogger("pipeline")

PARTITIONS_PER_THREAD = 4
SPLIT_BYTES = 64 << 20  # source splits (the tasks file is small: one split)


def _read_bundle(bundles: list[SourceBundle]) -> list:
    out = []
    for bundle in bundles:
        tracker = bundle.source.get_range_tracker(bundle.start_position, bundle.stop_position)
        out.extend(bundle.source.read(tracker))
    return out


@dataclasses.dataclass
class _ReadSource(te.DaskBagOp):
    def apply(self, input_bag, side_inputs=None):
        import dask.bag as db

        source = t.cast(_Read, self.transform).source
        bundles = list(source.split(desired_bundle_size=SPLIT_BYTES))
        return db.from_sequence(bundles, npartitions=max(1, len(bundles))).map_partitions(
            _read_bundle
        )


@dataclasses.dataclass
class _Spread(te.DaskBagOp):
    partitions: int = 1

    def apply(self, input_bag, side_inputs=None):
        return input_bag.repartition(npartitions=self.partitions)


class _Translator(PipelineVisitor):
    """Beam's DaskBagVisitor with the two translations above."""

    def __init__(self, bag_kwargs: dict, partitions: int):
        self.bag_kwargs, self.partitions = bag_kwargs, partitions
        self.bags: dict[AppliedPTransform, t.Any] = {}

    def op_for(self, node: AppliedPTransform) -> te.DaskBagOp:
        kind = node.transform.__class__
        if kind is _Read:
            return _ReadSource(node, bag_kwargs=self.bag_kwargs)
        if kind is _Reshuffle:
            return _Spread(node, bag_kwargs=self.bag_kwargs, partitions=self.partitions)
        return te.TRANSLATIONS.get(kind, te.NoOp)(node, bag_kwargs=self.bag_kwargs)

    def visit_transform(self, node: AppliedPTransform) -> None:
        op = self.op_for(node)
        bags = [
            None if isinstance(value, pvalue.PBegin) else self.bags[value.producer]
            for value in node.inputs
        ]
        if node.side_inputs:
            raise NotImplementedError("side inputs: not used by this pipeline")
        single = len(bags) == 1 and not isinstance(op, te.Flatten)
        self.bags[node] = op.apply(input_bag=bags[0] if single else bags or None)


class DaskRunnerResult(beam_dask.DaskRunnerResult):
    """Beam's result; the client that submitted the run disconnects when it ends."""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self.state in (PipelineState.DONE, PipelineState.FAILED):
                with contextlib.suppress(Exception):
                    self.client.close()


class DaskRunner(beam_dask.DaskRunner):
    """Runs a pipeline on a dask.distributed cluster (see the module docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask
        import dask.distributed as ddist

        dask_options = options.view_as(beam_dask.DaskOptions).get_all_options(
            drop_default=True, current_only=True
        )
        bag_kwargs = beam_dask.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        threads = max(1, sum(client.nthreads().values()))
        pipeline.replace_all(dask_overrides())
        partitions = bag_kwargs.get("npartitions") or PARTITIONS_PER_THREAD * threads
        translator = _Translator(bag_kwargs, partitions)
        pipeline.visit(translator)
        (last,) = dask.optimize(list(translator.bags.values())[-1])  # a chain: the end is all
        log.info("dask: %d transforms on %s (%d worker threads)", len(translator.bags),
                 client.scheduler.address, threads)  # fmt: skip
        return DaskRunnerResult(client, client.compute([last]))
