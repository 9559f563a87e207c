"""Discovery: what counts as a sequence, frame order, and safe, stable ids."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.decode import decode_sequence
from pipeline.discovery import discover, sanitize_id, short_hash
from pipeline.errors import InputError, SpecError

from .conftest import make_spec, write_sequence


def _spec(prefix, **fields):
    return make_spec(prefix, "/unused/out", "/unused/ckpt.pt", **fields)


def test_folders_and_videos_are_sequences(tmp_path):
    write_sequence(tmp_path / "scene_a", 3, seed=0)
    write_sequence(tmp_path / "scene b", 2, seed=1, ext=".jpg")
    (tmp_path / "walk.MP4").write_bytes(b"\x00")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    (tmp_path / "stray.png").write_bytes(b"")  # files at the top level are not sequences
    write_sequence(tmp_path / "deep" / "nested", 2, seed=2)  # only immediate sub-folders count
    found = {s.sequence_id: s for s in discover(_spec(tmp_path))}
    assert set(found) == {"scene_a", "scene_b", "walk"}
    assert found["walk"].kind == "video" and found["walk"].num_frames is None
    assert found["scene_b"].num_frames == 2 and found["scene_b"].frames[0].endswith("frame1.jpg")


def test_frames_in_natural_order(tmp_path):
    folder = tmp_path / "seq"
    write_sequence(folder, 12, seed=0)  # frame1 ... frame12
    (seq,) = discover(_spec(tmp_path))
    names = [p.rsplit("/", 1)[-1] for p in seq.frames]
    assert names == [f"frame{i}.png" for i in range(1, 13)]


@pytest.mark.parametrize(
    "rel, expected",
    [
        ("scene 1", "scene_1"),
        ("a/b/c", "a_b_c"),
        ("../../etc/passwd", "etc_passwd"),
        ("/abs/path", "abs_path"),
        ("..hidden", "hidden"),
        ("x..y", "x.y"),
        ("ünïcode✓", "_n_code_"),
        ("007", "seq-007"),
        ("0x1f", "seq-0x1f"),
        ("", "seq"),
    ],
)
def test_sanitize_id(rel, expected):
    sid = sanitize_id(rel)
    assert sid == expected
    assert ".." not in sid and not sid.startswith((".", "/", "-"))


def test_colliding_ids_get_a_stable_hash(tmp_path):
    write_sequence(tmp_path / "scene 1", 2, seed=0)
    write_sequence(tmp_path / "scene_1", 2, seed=1)
    first = sorted(s.sequence_id for s in discover(_spec(tmp_path)))
    second = sorted(s.sequence_id for s in discover(_spec(tmp_path)))
    assert first == second and len(set(first)) == 2
    assert all(sid.startswith("scene_1-") and len(sid) == len("scene_1-") + 8 for sid in first)


def test_manifest_parquet_and_csv(tmp_path):
    write_sequence(tmp_path / "data" / "one", 2, seed=0)
    write_sequence(tmp_path / "data" / "two", 3, seed=1)
    pq.write_table(
        pa.table({"uri": ["data/one", str(tmp_path / "data" / "two")], "sequence_id": ["first", None]}),
        tmp_path / "m.parquet",
    )
    (tmp_path / "m.csv").write_text("uri\ndata/one\n")
    spec = make_spec(tmp_path, "/o", "/c.pt", input__prefix="null", input__manifest=str(tmp_path / "m.parquet"))
    found = {s.sequence_id: s.num_frames for s in discover(spec)}
    assert found == {"first": 2, str(tmp_path / "data" / "two").strip("/").replace("/", "_"): 3}
    spec = make_spec(tmp_path, "/o", "/c.pt", input__prefix="null", input__manifest=str(tmp_path / "m.csv"))
    assert [s.sequence_id for s in discover(spec)] == ["data_one"]


def test_bad_sequences_raise_input_errors(tmp_path):
    write_sequence(tmp_path / "short", 1, seed=0)
    write_sequence(tmp_path / "mixed", 2, seed=0)
    write_sequence(tmp_path / "mixed", 1, seed=1, size=(98, 70), ext=".jpg")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "0.png").write_bytes(b"not a png")
    (tmp_path / "broken" / "1.png").write_bytes(b"")
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 16)
    spec = _spec(tmp_path)
    errors = {}
    for seq in discover(spec):
        with pytest.raises(InputError) as exc:
            decode_sequence(seq, spec)
        errors[seq.sequence_id] = str(exc.value)
    assert "fewer than min_frames=2" in errors["short"]
    assert "one image size" in errors["mixed"]
    assert "0.png" in errors["broken"]
    try:
        import av  # noqa: F401
    except ImportError:
        assert "install av to read videos" in errors["clip"]


def test_decode_matches_load_images_and_ships_uint8(tmp_path):
    import torch

    from zipmap_core.images import load_images

    paths = write_sequence(tmp_path / "s", 4, seed=3)
    spec = _spec(tmp_path, input__frame_stride=2)
    (seq,) = discover(spec)
    decoded = decode_sequence(seq, spec)
    assert decoded.pixels.dtype.name == "uint8"  # lossless and 4x smaller than float32
    expected = load_images([str(p) for p in paths[::2]], size=112)
    assert torch.equal(decoded.images(), expected)
    assert decoded.frame_uris == [str(p) for p in paths[::2]] and decoded.source_sizes == [(112, 84)] * 2


def test_video_frames_with_av(tmp_path):
    av = pytest.importorskip("av")
    import numpy as np

    container = av.open(str(tmp_path / "walk.mp4"), "w")
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 112, 84, "yuv420p"
    for i in range(5):
        img = np.zeros((84, 112, 3), np.uint8)
        img[..., 0] = 40 * i
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    spec = _spec(tmp_path, input__frame_stride=2)
    (seq,) = discover(spec)
    decoded = decode_sequence(seq, spec)
    assert seq.sequence_id == "walk" and decoded.num_frames == 3
    assert decoded.frame_uris[1].endswith("walk.mp4#frame=2") and decoded.source_sizes[0] == (112, 84)


def test_ids_stay_unique_when_a_folder_is_named_like_a_hashed_id(tmp_path):
    """`p q` and `p_q` both sanitise to p_q, so one gets p_q-<hash of its uri>; a third folder
    already named that way must not take the same id (issue 20, item 1)."""
    hashed = f"p_q-{short_hash(str(tmp_path / 'p q'))}"
    write_sequence(tmp_path / "p q", 2, seed=0)
    write_sequence(tmp_path / "p_q", 2, seed=1)
    write_sequence(tmp_path / hashed, 2, seed=2)
    write_sequence(tmp_path / "Scene", 2, seed=3)  # the same name on a case-insensitive disk
    write_sequence(tmp_path / "scene", 2, seed=4)
    first = {s.uri: s.sequence_id for s in discover(_spec(tmp_path))}
    assert len(first) == 5
    assert len({sid.casefold() for sid in first.values()}) == 5
    assert first[str(tmp_path / hashed)] == hashed  # a plain name keeps its id; the hashed one moves on
    assert {s.uri: s.sequence_id for s in discover(_spec(tmp_path))} == first  # stable


def test_ids_given_out_by_earlier_sessions_are_kept_and_never_reused(tmp_path):
    write_sequence(tmp_path / "p q", 2, seed=0)
    write_sequence(tmp_path / "p_q", 2, seed=1)
    # an earlier session saw only `p q` (id p_q), and a folder since removed as `gone`
    known = {"p_q": str(tmp_path / "p q"), "gone": str(tmp_path / "gone")}
    write_sequence(tmp_path / "gone_", 2, seed=2)
    write_sequence(tmp_path / "GONE", 2, seed=3)
    ids = {s.uri.rsplit("/", 1)[-1]: s.sequence_id for s in discover(_spec(tmp_path), known=known)}
    assert ids["p q"] == "p_q"
    assert ids["p_q"].startswith("p_q-") and ids["GONE"].startswith("GONE-")  # p_q and gone stay taken
    assert ids["gone_"] == "gone_"


def test_manifest_ids_that_clash_are_refused(tmp_path):
    for name in ("one", "two"):
        write_sequence(tmp_path / name, 2, seed=0)

    def manifest(rows):
        pq.write_table(pa.table({"uri": [r[0] for r in rows], "sequence_id": [r[1] for r in rows]}), tmp_path / "m.pq")
        return make_spec(tmp_path, "/o", "/c.pt", input__prefix="null", input__manifest=str(tmp_path / "m.pq"))

    with pytest.raises(SpecError, match=r"sequence_id 'same' of .*two clashes with the id of .*one"):
        discover(manifest([("one", "same"), ("two", "same")]))
    with pytest.raises(SpecError, match="clashes"):
        discover(manifest([("one", "Same"), ("two", "same")]))  # one file on a case-insensitive disk
    with pytest.raises(SpecError, match=r"rows 1 and 2 list .*one with two sequence_ids"):
        discover(manifest([("one", "a"), ("one", "b")]))
    # the same row twice is one sequence; a derived id never takes an explicit one
    found = {s.sequence_id: s.uri for s in discover(manifest([("one", "two"), ("one", None), ("two", None)]))}
    assert found.keys() == {"two", f"two-{short_hash(str(tmp_path / 'two'))}"}
    assert found["two"] == str(tmp_path / "one")
