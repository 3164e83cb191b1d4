"""The curation rules of the `feedback` stage, on tiny arrays: duplicates, conflicts, test images,
review decisions, caps, the review file, the archive of shards, and the curated dataset's file.

Past 300 lines: the curation rules, one test each on tiny arrays, read together.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO

from pipeline.core.feedback_log import Correction, pixels_sha256, shard_name, write_shard
from pipeline.core.params import FeedbackParams, ParamsError, parse_params
from pipeline.curation.outputs import captions, items_csv, pending_rows, waiting
from pipeline.curation.review import (
    Decision,
    ReviewError,
    parse_label,
    parse_review,
    render_review,
    updated,
)
from pipeline.curation.rules import OUTCOMES, apply_caps, curate, summary
from pipeline.feedback import archive_shards, read_shard, records_dir
from pipeline.shared.dataset import (
    DataError,
    corrections_from,
    load_corrections,
    save_corrections,
)

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.UTC)
AUTO = FeedbackParams(review="auto", max_share_per_source=1.0, max_share_per_class=1.0, cap_floor=1)
REQUIRED = AUTO.model_copy(update={"review": "required"})


def image(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (28, 28), dtype=np.uint8)


def correction(
    seed: int, label: int, minute: int = 0, source: str | None = "page", id: str | None = None
) -> Correction:
    pixels = image(seed)
    return Correction(
        id=id or f"c{seed}-{label}-{minute}",
        time=T0 + dt.timedelta(minutes=minute),
        model_version="1",
        bento_model="fashion-mnist-cnn:abc",
        prediction_id=None,
        predicted=(label + 1) % 10,
        confidence=0.5,
        label=label,
        source=source,
        pixels_sha256=pixels_sha256(pixels),
        pixels=pixels,
    )


def outcomes(curated) -> dict[str, str]:
    return {o.item.id: o.outcome for o in curated.outcomes}


def test_duplicates_merge_into_one_image_the_earliest_first():
    items = [correction(1, 3, minute=5, id="late"), correction(1, 3, minute=1, id="early")]
    curated = curate(items, set(), {}, AUTO)
    assert outcomes(curated) == {"late": "duplicate", "early": "accepted"}
    [merged] = curated.images
    assert merged.label == 3 and merged.ids == ("early", "late") and merged.time == items[1].time
    assert "same image and label as early" in curated.outcomes[0].reason


def test_the_same_image_with_different_labels_is_held_until_a_review_settles_it():
    items = [correction(1, 3, id="a"), correction(1, 5, minute=1, id="b"), correction(2, 4, id="c")]
    curated = curate(items, set(), {}, AUTO)
    assert outcomes(curated) == {"a": "conflict", "b": "conflict", "c": "accepted"}
    assert "3 (Dress) x1, 5 (Sandal) x1" in curated.outcomes[0].reason
    assert [im.label for im in curated.images] == [4]
    # Accepting one of the two corrections does not say the other is wrong...
    still = curate(items, set(), {"a": Decision("a", "accept")}, AUTO)
    assert outcomes(still)["a"] == "conflict"
    # ...rejecting it does, and accepting the image with a label settles it for every correction.
    rejected = curate(items, set(), {"b": Decision("b", "reject", note="wrong")}, AUTO)
    assert outcomes(rejected) == {"a": "accepted", "b": "rejected", "c": "accepted"}
    assert rejected.outcomes[1].reason == "rejected in review.csv (wrong)"
    sha = items[0].pixels_sha256
    settled = curate(items, set(), {sha: Decision(sha, "accept", label=6)}, AUTO)
    assert outcomes(settled) == {"a": "accepted", "b": "duplicate", "c": "accepted"}
    assert {im.sha256: im.label for im in settled.images}[sha] == 6
    assert "as 6 (Shirt) (sent as 3 (Dress))" in settled.outcomes[0].reason


def test_an_image_identical_to_a_test_image_is_never_taken_even_when_accepted():
    items = [correction(1, 3, id="t"), correction(2, 3, id="ok")]
    test_hashes = {items[0].pixels_sha256}
    review = {"t": Decision("t", "accept"), "ok": Decision("ok", "accept")}
    curated = curate(items, test_hashes, review, REQUIRED)
    assert outcomes(curated) == {"t": "in_test_split", "ok": "accepted"}
    assert [im.sha256 for im in curated.images] == [items[1].pixels_sha256]


def test_review_required_keeps_new_corrections_pending_until_accepted():
    items = [correction(1, 3, id="a"), correction(2, 4, id="b"), correction(3, 5, id="c")]
    items.append(correction(3, 5, minute=2, id="c2"))
    assert set(outcomes(curate(items, set(), {}, REQUIRED)).values()) == {"pending"}
    sha_c = items[2].pixels_sha256
    review = {
        "a": Decision("a", "accept", label=7),  # accepted with the reviewer's label
        "b": Decision("b", "reject"),
        sha_c: Decision(sha_c, "accept"),  # by image: both of its corrections
        "nobody": Decision("nobody", "accept"),
    }
    curated = curate(items, set(), review, REQUIRED)
    assert outcomes(curated) == {
        "a": "accepted",
        "b": "rejected",
        "c": "accepted",
        "c2": "duplicate",
    }
    assert sorted((im.label, im.ids) for im in curated.images) == [(5, ("c", "c2")), (7, ("a",))]
    assert curated.outcomes[0].label == 7 and curated.outcomes[0].item.label == 3
    assert curated.unmatched == ["nobody"]
    # Rejecting the image rejects every correction of it, whatever the other rows say.
    sha_a = items[0].pixels_sha256
    gone = curate(items, set(), {**review, sha_a: Decision(sha_a, "reject")}, REQUIRED)
    assert outcomes(gone)["a"] == "rejected"


def test_summary_counts_every_correction_once_by_outcome_class_and_source():
    items = [correction(1, 3), correction(1, 3, minute=1), correction(2, 3, source=None)]
    items += [correction(3, 0), correction(3, 1), correction(4, 9)]
    curated = curate(items, {items[-1].pixels_sha256}, {}, AUTO)
    report = summary(curated, unreadable=2, shards=3, params=AUTO)
    assert list(report["outcomes"]) == list(OUTCOMES)
    assert report["outcomes"]["accepted"] == 2 and report["outcomes"]["duplicate"] == 1
    assert report["outcomes"]["conflict"] == 2 and report["outcomes"]["in_test_split"] == 1
    assert report["outcomes"]["unreadable"] == 2
    assert sum(report["outcomes"].values()) == len(items) + 2
    assert (
        report["accepted_by_class"]["Dress"] == 2 and sum(report["accepted_by_class"].values()) == 2
    )
    assert report["accepted_by_source"] == {"(none)": 1, "page": 1}
    assert report["images"] == 4 and report["waiting_for_review"] == 2
    json.dumps(report)  # a DVC metrics file


def within_caps(kept, params: FeedbackParams) -> bool:
    total = len(kept)
    for share, key in (
        (params.max_share_per_source, "source"),
        (params.max_share_per_class, "label"),
    ):
        allowed = max(params.cap_floor, int(share * total))
        counts: dict = {}
        for im in kept:
            counts[getattr(im, key)] = counts.get(getattr(im, key), 0) + 1
        if any(c > allowed for c in counts.values()):
            return False
    return True


def test_caps_keep_any_source_and_class_within_its_share_the_earliest_first():
    # 10 images from a script, 4 from the page: the script may hold at most half, never below 2.
    items = [correction(i, i % 10, minute=i, source="script") for i in range(10)]
    items += [correction(100 + i, i, minute=20 + i) for i in range(4)]
    params = AUTO.model_copy(update={"max_share_per_source": 0.5, "cap_floor": 2})
    curated = curate(items, set(), {}, params)
    kept = {im.source: [] for im in curated.images}
    for im in curated.images:
        kept[im.source].append(im.time.minute)
    assert kept == {"script": [0, 1, 2, 3], "page": [20, 21, 22, 23]}
    assert within_caps(curated.images, params)
    capped = [o for o in curated.outcomes if o.outcome == "capped_source"]
    assert len(capped) == 6 and "source script has" in capped[0].reason
    # The floor: a lone source is never cut below cap_floor images.
    alone = curate(items[:10], set(), {}, params)
    assert len(alone.images) == 2
    # The class cap, counted the same way.
    shirts = [correction(200 + i, 6, minute=i) for i in range(6)]
    others = [correction(300 + i, i % 5, minute=10 + i) for i in range(4)]
    by_class = AUTO.model_copy(update={"max_share_per_class": 0.4, "cap_floor": 1})
    cut = curate(shirts + others, set(), {}, by_class)
    assert sum(im.label == 6 for im in cut.images) == 2
    assert within_caps(cut.images, by_class)
    assert {o.outcome for o in cut.outcomes} == {"accepted", "capped_class"}


def test_caps_never_displace_an_accepted_image_for_a_later_one():
    params = AUTO.model_copy(update={"max_share_per_source": 0.5, "cap_floor": 1})
    first = [correction(i, i, minute=i, source="a") for i in range(3)]
    first += [correction(10 + i, i, minute=i, source="b") for i in range(3)]
    kept = {im.sha256 for im in curate(first, set(), {}, params).images}
    more = first + [correction(20 + i, i, minute=30 + i, source="a") for i in range(5)]
    again = {im.sha256 for im in curate(more, set(), {}, params).images}
    assert kept <= again
    images, left_out = apply_caps(curate(more, set(), {}, AUTO).images, params)
    assert len(images) == 6 and len(left_out) == 5


def test_curation_is_deterministic_and_independent_of_the_review_rows_order():
    items = [correction(i % 4, i % 3, minute=i) for i in range(12)]
    review = {
        items[0].id: Decision(items[0].id, "reject"),
        items[5].id: Decision(items[5].id, "accept"),
    }
    a = curate(items, set(), review, REQUIRED)
    b = curate(items, set(), dict(reversed(review.items())), REQUIRED)
    assert [(o.item.id, o.outcome, o.reason) for o in a.outcomes] == [
        (o.item.id, o.outcome, o.reason) for o in b.outcomes
    ]


def test_pending_rows_number_the_tiles_of_the_contact_sheet():
    items = [correction(1, 3, minute=2, id="x"), correction(2, 4, minute=1, id="y")]
    items.append(correction(3, 0, minute=3, id="z"))
    items.append(correction(3, 1, minute=4, id="z2"))
    held = waiting(curate(items, set(), {}, REQUIRED))
    rows = pending_rows(held)
    assert [(r["id"], r["tile"], r["status"]) for r in rows] == [
        ("y", 0, "pending"),
        ("x", 1, "pending"),
        ("z", 2, "conflict"),
        ("z2", 3, "conflict"),
    ]
    assert rows[0]["label_class"] == "Coat" and rows[0]["predicted_class"] == "Sandal"
    assert captions(held)[2] == ("#2 T-shirt/top (c)", "model: Trouser")


def test_items_csv_lists_every_correction_and_unreadable_line():
    items = [correction(1, 3, id="a")]
    text = items_csv(curate(items, set(), {}, AUTO), ["s1.jsonl"], [("s1.jsonl:2", "bad json")])
    lines = text.splitlines()
    assert lines[0].startswith("id,time,source,predicted,label,final_label,pixels_sha256,outcome")
    assert lines[1].startswith("a,2026-12-01T09:00:00.000Z,page,4,3,3,")
    assert lines[2] == ",,,,,,,unreadable,bad json,s1.jsonl:2"


def test_review_file_parses_strictly_and_names_the_line():
    sha = "ab" * 32
    text = f'id,decision,label,note\nc1,accept,,fine\n{sha},accept,Shirt,\nc2,reject,,"no, not a shoe"\n'
    decisions = parse_review(text)
    assert decisions["c1"] == Decision("c1", "accept", None, "fine")
    assert decisions[sha].label == 6
    assert decisions["c2"].note == "no, not a shoe"
    header = "id,decision,label,note\n"
    for body, message in [
        ("c1,maybe,,\n", r"review.csv:2: decision 'maybe' is not accept or reject"),
        ("c1,reject,3,\n", r"review.csv:2: a label only goes with accept"),
        ("c1,accept,12,\n", r"review.csv:2: label '12' is not a class"),
        ("c1,accept,,\nc1,reject,,\n", r"review.csv:3: c1 is decided twice"),
        (",accept,,\n", r"review.csv:2: no id"),
    ]:
        with pytest.raises(ReviewError, match=message):
            parse_review(header + body)
    with pytest.raises(ReviewError, match="the first line must be the header"):
        parse_review("key,decision\n")
    assert parse_review(header) == {}
    assert (REPO / "feedback" / "review.csv").read_text() == header  # committed with a header only
    assert parse_label("ankle BOOT") == 9 and parse_label(" 0 ") == 0 and parse_label("") is None


def test_review_file_round_trips_and_a_new_decision_replaces_its_row_in_place():
    rows = [Decision("a", "accept", 3, "x"), Decision("b", "reject")]
    text = render_review(rows)
    assert parse_review(text) == {d.id: d for d in rows}
    again = updated(
        parse_review(text),
        [Decision("a", "reject", None, "changed my mind"), Decision("c", "accept")],
    )
    assert [(d.id, d.decision) for d in again] == [
        ("a", "reject"),
        ("b", "reject"),
        ("c", "accept"),
    ]


def test_archive_copies_each_new_shard_once_and_never_changes_an_archived_one(tmp_path):
    records, archive = tmp_path / "records", tmp_path / "archive"
    first = write_shard(records, shard_name(T0, "h", 1, 0), [correction(1, 3)])
    assert archive_shards(records, archive) == ([first.name], [])
    assert (archive / first.name).read_bytes() == first.read_bytes()
    (records / ".feedback-x.jsonl.tmp").write_text("half written")
    second = write_shard(records, shard_name(T0, "h", 1, 1), [correction(2, 4)])
    assert archive_shards(records, archive) == ([second.name], [])
    archived = (archive / first.name).read_bytes()
    first.write_text("tampered\n")  # a shard never changes; if one does, the archive keeps its copy
    assert archive_shards(records, archive) == ([], [first.name])
    assert (archive / first.name).read_bytes() == archived
    assert sorted(p.name for p in archive.iterdir()) == sorted([first.name, second.name])
    assert archive_shards(tmp_path / "missing", archive) == ([], [])


def test_read_shard_keeps_good_lines_and_names_bad_ones(tmp_path):
    path = write_shard(tmp_path, shard_name(T0, "h", 1, 0), [correction(1, 3), correction(2, 4)])
    path.write_text(path.read_text() + '{"id": "x"}\n\n{"cut sh\n')
    items, bad = read_shard(path)
    assert [i.label for i in items] == [3, 4]
    assert [where for where, _ in bad] == [f"{path.name}:3", f"{path.name}:5"]
    assert "missing fields" in bad[0][1]


def test_records_dir_resolves_like_make_monitor(monkeypatch):
    monkeypatch.delenv("FASHION_MNIST_MONITORING_DIR", raising=False)
    assert records_dir(None, "records") == Path("records")
    assert records_dir(None, None) == Path("monitoring")
    monkeypatch.setenv("FASHION_MNIST_MONITORING_DIR", "/srv/records")
    assert records_dir(None, "records") == Path("/srv/records")
    assert records_dir(Path("given"), "records") == Path("given")


def test_corrections_file_round_trips_and_the_empty_one_is_always_the_same_bytes(tmp_path):
    items = [correction(1, 3), correction(2, 9, source=None)]
    c = corrections_from(
        [i.pixels for i in items],
        [i.label for i in items],
        [i.pixels_sha256 for i in items],
        ["page", ""],
        ["2026-12-01T09:00:00.000Z", "2026-12-01T09:01:00.000Z"],
    )
    save_corrections(c, tmp_path / "c.npz")
    back = load_corrections(tmp_path / "c.npz")
    assert np.array_equal(back.x, c.x) and back.y.tolist() == [3, 9]
    assert back.sha256.tolist() == [i.pixels_sha256 for i in items]
    assert back.source.tolist() == ["page", ""]
    empty = corrections_from([], [], [], [], [])
    save_corrections(empty, tmp_path / "e1.npz")
    save_corrections(empty, tmp_path / "e2.npz")
    assert (tmp_path / "e1.npz").read_bytes() == (tmp_path / "e2.npz").read_bytes()
    assert load_corrections(tmp_path / "e1.npz").x.shape == (0, 28, 28)
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(DataError, match=r"other\.npz: not a corrections file"):
        load_corrections(tmp_path / "other.npz")


def test_feedback_params_name_the_bad_key():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    # fmt: skip on this list: a table, one row per bad key (formatted: four lines each).
    for path, value, message in [
        (("feedback", "review"), "sometimes", "feedback.review: Input should be 'required' or 'auto'"),
        (("feedback", "max_share_per_class"), 0, "feedback.max_share_per_class: Input should be greater than 0"),
        (("prepare", "feedback", "slice_permille"), 1001, "prepare.feedback.slice_permille: Input should be less than or equal to 1000"),
        (("prepare", "feedback", "repeat"), 0, "prepare.feedback.repeat: Input should be greater than or equal to 1"),
    ]:  # fmt: skip
        changed = copy.deepcopy(raw)
        node = changed
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
        with pytest.raises(ParamsError, match=message):
            parse_params(changed)
