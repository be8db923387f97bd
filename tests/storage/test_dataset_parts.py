"""A dataset over several stores: episodes split into parts, manifests, and the EpisodeSource contract."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import numpy as np
import pytest
from storage_helpers import assert_same_episode, cut, make_episode

from iris_core.data.sampler import SegmentSampler, load_batch, traverse
from iris_core.data.structures import EpisodeSource, SegmentId, collate, make_segment
from pipelines.storage import (
    DatasetManifest,
    EpisodeStoreWriter,
    SchemaVersionError,
    StoreAttributes,
    StoreCorruptedError,
    StoreNotFoundError,
    ZarrEpisodeDataset,
    read_manifest,
    write_manifest,
)


def attrs(iteration: int) -> StoreAttributes:
    return StoreAttributes(
        "crafter", seed=0, iteration=iteration, policy_version=iteration, with_achievements=True
    )


@pytest.fixture(params=["local", "memory", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "s3":
        return f"{request.getfixturevalue('s3_bucket')}/episodes"
    return str(tmp_path / "episodes") if request.param == "local" else f"memory://{uuid.uuid4().hex}/episodes"


def build_dataset(root: str) -> dict[int, object]:
    """Three iterations. Episode 1 runs through all three stores (parts 0, 1, 2), episode 3 spans
    stores 1 and 2; part boundaries fall inside and at the edges of 32-frame chunks."""
    full = {
        0: make_episode(45, 0, achievements=True),
        1: make_episode(100, 1, achievements=True),
        2: make_episode(7, 2, achievements=True),
        3: make_episode(60, 3, finished=False, achievements=True),
        4: make_episode(1, 4, achievements=True),
    }
    layout = [  # per store: (episode id, part, first step, last step)
        [(0, 0, 0, 45), (1, 0, 0, 30)],
        [(2, 0, 0, 7), (1, 1, 30, 64), (3, 0, 0, 20)],
        [(1, 2, 64, 100), (4, 0, 0, 1), (3, 1, 20, 60)],
    ]
    for iteration, rows in enumerate(layout):
        writer = EpisodeStoreWriter.create(f"{root}/{iteration}.zarr", attrs(iteration))
        for episode_id, part, a, b in rows:
            writer.append(cut(full[episode_id], a, b), episode_id=episode_id, part=part)  # type: ignore[arg-type]
    write_manifest(f"{root}/manifest.json", DatasetManifest(("0.zarr", "1.zarr", "2.zarr")))
    return full  # type: ignore[return-value]


def test_parts_are_concatenated(root: str) -> None:
    full = build_dataset(root)
    dataset = ZarrEpisodeDataset.from_manifest(f"{root}/manifest.json")
    source: EpisodeSource = dataset  # the protocol is static: mypy checks this line
    assert source.num_episodes == 5
    assert dataset.num_episodes == 5
    assert dataset.episode_lengths().tolist() == [45, 100, 7, 60, 1]
    for episode_id, episode in full.items():
        assert_same_episode(dataset.load_episode(episode_id), episode)  # type: ignore[arg-type]


def test_every_window_across_part_boundaries_equals_make_segment(root: str) -> None:
    full = build_dataset(root)
    dataset = ZarrEpisodeDataset.from_manifest(f"{root}/manifest.json")
    L = 21
    for episode_id in (1, 3):
        n = len(full[episode_id])  # type: ignore[arg-type]
        ids = [SegmentId(episode_id, start, start + L) for start in range(-L + 1, n)]
        got = collate(dataset.load_segments(ids))
        want = collate([make_segment(full[episode_id], s) for s in ids])  # type: ignore[arg-type]
        for name in ("obs", "act", "rew", "end", "mask_padding"):
            assert getattr(got, name).dtype == getattr(want, name).dtype, name
            assert getattr(got, name).equal(getattr(want, name)), (episode_id, name)
        assert got.segment_ids == ids


def test_sampled_batches_equal_the_in_memory_reference(root: str) -> None:
    full = build_dataset(root)
    dataset = ZarrEpisodeDataset.from_manifest(f"{root}/manifest.json")
    for beyond_end, L in ((True, 21), (False, 6)):
        sampler = SegmentSampler(L, 64, priority_alpha=5.0, can_sample_beyond_end=beyond_end, seed=L)
        ids = sampler.sample(dataset.episode_lengths())
        batch = load_batch(dataset, ids)
        ref = collate([make_segment(full[s.episode_id], s) for s in ids])  # type: ignore[arg-type]
        assert batch.obs.equal(ref.obs) and batch.mask_padding.equal(ref.mask_padding)
        assert batch.act.equal(ref.act) and batch.rew.equal(ref.rew) and batch.end.equal(ref.end)
    chunks = sum(len(b.segment_ids) for b in traverse(dataset, 21, 4))
    assert chunks == 3 + 5 + 1 + 3 + 0


def test_episode_table_merges_parts(root: str) -> None:
    full = build_dataset(root)
    table = ZarrEpisodeDataset.from_manifest(f"{root}/manifest.json").episode_table()
    assert table["episode_id"].tolist() == [0, 1, 2, 3, 4]
    assert table["length"].tolist() == [45, 100, 7, 60, 1]
    assert table["part"].tolist() == [0, 2, 0, 1, 0]
    assert table["finished"].tolist() == [True, True, True, False, True]
    assert table["iteration"].tolist() == [0, 2, 1, 2, 2]
    np.testing.assert_allclose(table["return"], [full[i].episode_return for i in range(5)], rtol=1e-6)  # type: ignore[attr-defined]
    # counters of the last part (each part here carries its episode's counters)
    assert table["achievement_collect_wood"].tolist() == [
        full[i].info["achievements"]["collect_wood"]  # type: ignore[attr-defined]
        for i in range(5)
    ]


def test_manifest_round_trip_and_errors(tmp_path: Path) -> None:
    url = str(tmp_path / "manifest.json")
    with pytest.raises(StoreNotFoundError, match=re.escape(url)):
        read_manifest(url)
    manifest = DatasetManifest().with_store("0.zarr").with_store("1.zarr").with_store("0.zarr")
    write_manifest(url, manifest)
    assert read_manifest(url) == DatasetManifest(("0.zarr", "1.zarr"))
    assert manifest.store_urls(url) == [str(tmp_path / "0.zarr"), str(tmp_path / "1.zarr")]
    assert not [p for p in tmp_path.iterdir() if p.name != "manifest.json"]  # no temporaries left
    Path(url).write_text(json.dumps({"manifest_version": 7, "stores": []}))
    with pytest.raises(SchemaVersionError, match=re.escape(url)):
        read_manifest(url)
    Path(url).write_text("{not json")
    with pytest.raises(StoreCorruptedError, match=re.escape(url)):
        read_manifest(url)


def test_manifest_naming_a_missing_store(tmp_path: Path) -> None:
    build_dataset(str(tmp_path))
    write_manifest(str(tmp_path / "manifest.json"), DatasetManifest(("0.zarr", "5.zarr")))
    with pytest.raises(StoreNotFoundError, match=re.escape(str(tmp_path / "5.zarr"))):
        ZarrEpisodeDataset.from_manifest(str(tmp_path / "manifest.json"))


def test_inconsistent_parts_are_rejected(tmp_path: Path) -> None:
    build_dataset(str(tmp_path))
    stores = [str(tmp_path / f"{i}.zarr") for i in range(3)]
    with pytest.raises(StoreCorruptedError, match="not contiguous: missing \\[2\\]"):
        ZarrEpisodeDataset([stores[0], stores[2]])  # episodes 2 and 3 start in the skipped store
    with pytest.raises(
        StoreCorruptedError, match=re.escape(stores[1]) + ": episode 1: part 1 is not in a later"
    ):
        ZarrEpisodeDataset([stores[1], stores[0], stores[2]])


@pytest.mark.parametrize(
    ("first_finished", "second_part", "problem"),
    [(False, 2, "part 2 does not follow"), (True, 1, "part 1 continues an episode that already finished")],
)
def test_broken_part_chains_are_rejected(
    tmp_path: Path, first_finished: bool, second_part: int, problem: str
) -> None:
    a, b = str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")
    EpisodeStoreWriter.create(a, attrs(0)).append(
        make_episode(5, 0, finished=first_finished, achievements=True), episode_id=0
    )
    EpisodeStoreWriter.create(b, attrs(1)).append(
        make_episode(5, 1, achievements=True), episode_id=0, part=second_part
    )
    with pytest.raises(StoreCorruptedError, match=re.escape(b) + ": episode 0: " + problem):
        ZarrEpisodeDataset([a, b])
