"""DALI's PyTorch iterator, scheduling no pipeline run past the batches it will be asked for.

DALIGenericIterator schedules one more run after every batch it hands out, `prefetch_queue_depth`
runs ahead of the consumer. A pipeline used for one epoch and then dropped thus decodes
`prefetch_queue_depth` batches of the next epoch that nobody reads, and dropping it waits for
them: with 6-batch epochs on 2 CPU threads, about 1 s of each rebuild."""
from __future__ import annotations

from nvidia.dali import types
from nvidia.dali.plugin.pytorch import DALIGenericIterator


def _runs_ahead(pipeline) -> int:
    depth = pipeline.prefetch_queue_depth  # an int, or {"cpu_size": ..., "gpu_size": ...}
    return max(depth.values()) if isinstance(depth, dict) else int(depth)


class BoundedIterator(DALIGenericIterator):
    """`runs`: how many batches this iterator will be asked for (None: no bound)."""

    def __init__(self, pipelines, output_map, runs: int | None = None, **kwargs):
        self._runs_left = runs  # set first: the base class runs the first batch while it initialises
        super().__init__(pipelines, output_map, **kwargs)

    def _schedule_runs(self, release_outputs=True):
        if self._runs_left is None:
            return super()._schedule_runs(release_outputs)
        first = not self._ever_scheduled  # the first call fills the whole prefetch queue
        if first or self._runs_left > 0:
            self._runs_left -= _runs_ahead(self._pipes[0]) if first else 1
            return super()._schedule_runs(release_outputs)
        if release_outputs:  # hand the batch's buffers back, as the base class does, without a new run
            for pipeline in self._pipes:
                with pipeline._check_api_type_scope(types.PipelineAPIType.ITERATOR):
                    pipeline.release_outputs()
