"""Segment and teacher-frame arithmetic (SPEC.md section 3)."""

import pytest

from pipeline.segments import SegmentPlan, frame_times, plan_segments

SR = 22050


def test_long_audio_is_cut_into_20s_segments_with_frames_at_step_centres():
    segs = plan_segments(47 * SR)
    assert [s.index for s in segs] == [0, 1, 2]
    assert [s.num_samples for s in segs] == [20 * SR, 20 * SR, 7 * SR]
    assert segs[0].frame_times_s == (2.5, 7.5, 12.5, 17.5)
    assert segs[1].frame_times_s == (22.5, 27.5, 32.5, 37.5)
    # 7 s: one whole 5 s step; the partial 2 s step gets no frame of its own
    assert segs[2].frame_times_s == (42.5,)
    assert sum(s.num_samples for s in segs) == 47 * SR


def test_segment_shorter_than_one_step_keeps_one_frame_at_its_middle():
    (seg,) = plan_segments(3 * SR)
    assert seg.frame_times_s == (1.5,)
    assert seg.duration_s == 3.0


def test_trailing_piece_under_min_is_dropped_and_short_audio_gives_nothing():
    segs = plan_segments(20 * SR + SR // 2)
    assert [s.num_samples for s in segs] == [20 * SR]
    assert plan_segments(int(0.9 * SR)) == []
    assert plan_segments(0) == []
    (seg,) = plan_segments(int(0.9 * SR), SegmentPlan(min_segment_seconds=0.5))
    assert seg.frame_times_s == (round(int(0.9 * SR) / 2 / SR, 6),)


def test_custom_plan_and_frame_time_listing():
    plan = SegmentPlan(segment_seconds=10, frame_interval=2.5, min_segment_seconds=2)
    segs = plan_segments(23 * SR, plan)
    assert [s.num_samples for s in segs] == [10 * SR, 10 * SR, 3 * SR]
    assert segs[0].frame_times_s == (1.25, 3.75, 6.25, 8.75)
    assert frame_times(segs)[-1] == 21.25
    assert segs[2].start_s == 20.0


def test_invalid_plans_are_refused():
    with pytest.raises(ValueError):
        SegmentPlan(segment_seconds=4, frame_interval=5)
    with pytest.raises(ValueError):
        SegmentPlan(min_segment_seconds=0)
