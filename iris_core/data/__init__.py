"""Episodes, segments, batches and the segment sampler (spec §8)."""

from iris_core.data.structures import Batch, Episode, EpisodeSource, Segment, SegmentId, collate, make_segment

__all__ = ["Batch", "Episode", "EpisodeSource", "Segment", "SegmentId", "collate", "make_segment"]
