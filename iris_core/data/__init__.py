"""Episodes, segments, batches and the segment sampler (docs/method.md §2, §3)."""

from iris_core.data.structures import Batch, Episode, EpisodeSource, Segment, SegmentId, collate, make_segment

__all__ = ["Batch", "Episode", "EpisodeSource", "Segment", "SegmentId", "collate", "make_segment"]
