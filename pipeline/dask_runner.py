"""Beam's DaskRunner (apache-beam 2.77) with the translation fixes this pipeline needs.

    python -m pipeline.run --runner=apache_beam.runners.dask.dask_runner.DaskRunner \
        --dask_client_address=SCHEDULER_HOST:8786 --input=... --output=...

`pipeline.run` runs pipelines named for Beam's DaskRunner on this subclass (naming it directly,
`--runner=pipeline.dask_runner.DaskRunner`, does the same). Beam 2.77 translates a pipeline into
dask bags in `apache_beam.runners.dask`; that translation (1-3 measured on a dask.distributed
cluster, 4-5 read in its source)

1. sends every output of a multi-output ParDo to every consumer (this pipeline failed:
   DecodeVideos' frames, failure rows and videos reached each other's consumers),
2. drops what `DoFn.finish_bundle` emits (RunInference's BatchElements flushes its last,
   partial batch of frames there),
3. sets up and tears down every DoFn for each dask partition (bundle), so whether RunInference
   rebuilds its model for a bundle is left to Beam's `Shared` cache, which keeps a model only
   while something references it (of its own accord, just the object last acquired in the
   process; measured here with two teachers, each was still built once per worker, but
   nothing guarantees it),
4. computes only the bag of the last transform visited, so a branch that does not feed it never
   runs,
5. makes Reshuffle a no-op and puts up to 128 elements in one partition, so a run over fewer
   videos than that is one task chain on one worker.

This subclass keeps Beam's translation of everything else (Create, GroupByKey, Flatten, the
DoFn invoker) and replaces the ParDo and Create steps and the final compute:

1. a bundle's outputs travel as (tag, value) pairs and each consumer reads its own tag;
2. the outputs of `finish_bundle` are kept;
3. each worker process sets a DoFn up once and reuses it for every bundle of the run (one
   instance per thread at a time, as Beam's own workers do); `teardown()` runs on every worker
   when the run ends;
4. every leaf of the graph is computed;
5. without `--dask_partition_size` / `--dask_npartitions`, a Create is cut into about four
   partitions per worker thread;
6. the client disconnects when the run ends (Beam's stays, retrying a scheduler that is gone).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import math
import threading
import typing as t
import uuid

import apache_beam as beam
from apache_beam import DoFn, pvalue
from apache_beam.pipeline import AppliedPTransform, PipelineVisitor
from apache_beam.runners.common import (
    DoFnContext,
    DoFnInvoker,
    DoFnSignature,
    Receiver,
    _OutputHandler,
)
from apache_beam.runners.dask import dask_runner as beam_dask
from apache_beam.runners.dask import transform_evaluator as te
from apache_beam.runners.dask.overrides import _Create, dask_overrides
from apache_beam.runners.runner import PipelineState
from apache_beam.transforms.sideinputs import SideInputMap

log = logging.getLogger("pipeline")

PARTITIONS_PER_THREAD = 4

# ---------------------------------------------------------------------------------------------
# On the workers: bundles of one ParDo, with DoFns set up once per process


class _Collect(Receiver):
    """A Receiver that keeps each output as (tag, value); tag None is the main output."""

    def __init__(self, tag: str | None, out: list):
        self.tag, self.out = tag, out

    def receive(self, windowed_value) -> None:
        self.out.append((self.tag, windowed_value.value))


class _Receivers(dict):
    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        self[tag] = receiver = _Collect(tag, self.out)
        return receiver


# run id -> transform key -> idle set-up invokers (their DoFn instances), in this process
_IDLE: dict[str, dict[str, list[DoFnInvoker]]] = {}
_IDLE_LOCK = threading.Lock()


def _set_up_dofn(run_id: str, key: str, signature: DoFnSignature, handler) -> DoFnInvoker:
    """An idle DoFn of this transform set up earlier in this process, or this one set up."""
    with _IDLE_LOCK:
        idle = _IDLE.get(run_id, {}).get(key)
        if idle:
            return idle.pop()
    invoker = DoFnInvoker.create_invoker(signature, handler, process_invocation=False)
    invoker.invoke_setup()
    return invoker


def _run_bundle(
    items: t.Iterable,
    run_id: str,
    key: str,
    signature: DoFnSignature,
    window_fn,
    label: str,
    side_inputs,
    args,
    kwargs,
) -> list[tuple[str | None, t.Any]]:
    """One dask partition = one bundle: start_bundle, process each item, finish_bundle."""
    out: list = []
    receivers = _Receivers(out)
    handler = _OutputHandler(
        window_fn=window_fn,
        main_receivers=receivers[None],
        tagged_receivers=receivers,
        per_element_output_counter=None,
        output_batch_converter=None,
        process_yields_batches=False,
        process_batch_yields_elements=False,
    )
    owner = _set_up_dofn(run_id, key, signature, handler)
    invoker = DoFnInvoker.create_invoker(
        owner.signature,
        handler,
        context=DoFnContext(label, state=None),
        side_inputs=side_inputs,
        input_args=args,
        input_kwargs=kwargs,
        user_state_context=None,
        bundle_finalizer_param=DoFn.BundleFinalizerParam(),
    )
    try:
        invoker.invoke_start_bundle()
        for item in items:
            invoker.invoke_process(te.get_windowed_value(item, window_fn))
        invoker.invoke_finish_bundle()
    except BaseException:
        # a DoFn that failed mid-bundle is not reused (Beam discards it too)
        with contextlib.suppress(Exception):
            owner.invoke_teardown()
        raise
    with _IDLE_LOCK:
        _IDLE.setdefault(run_id, {}).setdefault(key, []).append(owner)
    return out


def _teardown_run(run_id: str) -> int:
    """Tear down this process's DoFns of a finished run; returns how many there were."""
    with _IDLE_LOCK:
        pools = _IDLE.pop(run_id, {})
    owners = [owner for idle in pools.values() for owner in idle]
    for owner in owners:
        with contextlib.suppress(Exception):
            owner.invoke_teardown()
    return len(owners)


def _has_tag(item: tuple, tag: str | None) -> bool:
    return item[0] == tag


def _value(item: tuple) -> t.Any:
    return item[1]


# ---------------------------------------------------------------------------------------------
# On the client: the translation


@dataclasses.dataclass
class _ParDo(te.DaskBagOp):
    run_id: str = ""

    def apply(self, input_bag, side_inputs=None):
        transform = t.cast(beam.ParDo, self.transform)
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        return input_bag.map_partitions(
            _run_bundle,
            self.run_id,
            self.applied.full_label,
            DoFnSignature(transform.fn),
            window_fn,
            transform.label,
            side_inputs,
            list(args),
            kwargs,
        )


@dataclasses.dataclass
class _SpreadCreate(te.Create):
    threads: int = 1

    def apply(self, input_bag, side_inputs=None):
        if self.bag_kwargs:  # the user chose the partitioning
            return super().apply(input_bag, side_inputs)
        import dask.bag as db

        items = t.cast(_Create, self.transform).values
        size = max(1, math.ceil(len(items) / (PARTITIONS_PER_THREAD * self.threads)))
        return db.from_sequence(items, partition_size=size)


class _Translator(PipelineVisitor):
    """Beam's DaskBagVisitor, with tagged outputs routed and every leaf kept."""

    def __init__(self, bag_kwargs: dict, run_id: str, threads: int):
        self.bag_kwargs, self.run_id, self.threads = bag_kwargs, run_id, threads
        self.bags: dict[AppliedPTransform, t.Any] = {}
        self.tagged: set[AppliedPTransform] = set()
        self.consumed: set[int] = set()
        self.order: list[AppliedPTransform] = []

    def bag_of(self, pcoll):
        producer = pcoll.producer
        bag = self.bags[producer]
        if producer in self.tagged:
            bag = bag.filter(functools.partial(_has_tag, tag=pcoll.tag)).map(_value)
        return bag

    def op_for(self, node: AppliedPTransform) -> te.DaskBagOp:
        kind = node.transform.__class__
        if kind is beam.ParDo:
            self.tagged.add(node)
            return _ParDo(node, bag_kwargs=self.bag_kwargs, run_id=self.run_id)
        if kind is _Create:
            return _SpreadCreate(node, bag_kwargs=self.bag_kwargs, threads=self.threads)
        return te.TRANSLATIONS.get(kind, te.NoOp)(node, bag_kwargs=self.bag_kwargs)

    def visit_transform(self, node: AppliedPTransform) -> None:
        op = self.op_for(node)
        kws: dict[str, t.Any] = {"input_bag": None, "side_inputs": None}
        inputs = list(node.inputs)
        if inputs:
            bags = []
            for value in inputs:
                if isinstance(value, pvalue.PBegin):
                    bags.append(None)
                elif value.producer in self.bags:
                    self.consumed.add(id(value))
                    bags.append(self.bag_of(value))
            single = len(bags) == 1 and not isinstance(op, te.Flatten)
            kws["input_bag"] = bags[0] if single else bags
        if node.side_inputs:
            kws["side_inputs"] = []
            for side in node.side_inputs:
                self.consumed.add(id(side.pvalue))
                iterator = te.DaskBagWindowedIterator(
                    self.bag_of(side.pvalue), side._window_mapping_fn
                )
                kws["side_inputs"].append(SideInputMap(type(side), side._view_options(), iterator))
        self.bags[node] = op.apply(**kws)
        self.order.append(node)

    def leaves(self) -> list:
        """The bags no transform reads: computing them computes the whole graph."""
        return [
            self.bags[node]
            for node in self.order
            if not any(id(out) in self.consumed for out in node.outputs.values())
        ]


class DaskRunnerResult(beam_dask.DaskRunnerResult):
    """Beam's result; when the run ends, the workers tear its DoFns down and the client that
    submitted it disconnects (Beam leaves it open, to retry a scheduler that may be gone)."""

    run_id: str = ""

    def wait_until_finish(self, duration=None) -> str:
        try:
            return super().wait_until_finish(duration)
        finally:
            if self.state in (PipelineState.DONE, PipelineState.FAILED):
                with contextlib.suppress(Exception):
                    self.client.run(_teardown_run, self.run_id, on_error="ignore")
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
        run_id = uuid.uuid4().hex
        translator = _Translator(bag_kwargs, run_id, threads)
        pipeline.visit(translator)
        leaves = dask.optimize(*translator.leaves())
        log.info(
            "dask: %d transforms on %s (%d worker threads)",
            len(translator.order),
            client.scheduler.address,
            threads,
        )
        result = DaskRunnerResult(client, client.compute(list(leaves)))
        result.run_id = run_id
        return result
