"""Tests for pneumolab.data.patients: patient IDs and the patient-grouped validation split."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from pneumolab.data.layout import Sample
from pneumolab.data.patients import (
    duplicate_groups,
    grouped_split,
    patient_id,
    split_groups,
)
from pneumolab.errors import DataLayoutError
from pneumolab.files import sha256_of


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("IM-0115-0001.jpeg", "im-0115"),
        ("NORMAL2-IM-0413-0001.jpeg", "normal2-im-0413"),
        ("person1000_bacteria_2931.jpeg", "person1000"),
        ("person1000_virus_1681.jpeg", "person1000"),
        ("normal2-im-0413-0002.JPEG", "normal2-im-0413"),
        ("scan_of_someone.png", "scan_of_someone"),
        ("Weird.Name.jpeg", "weird.name"),
        # Mendeley's version-2 names: one patient's images were each their own patient
        ("NORMAL-1049278-0001.jpeg", "id-1049278"),
        ("BACTERIA-40699-0002.jpeg", "id-40699"),
        ("virus-40699-0001.JPEG", "id-40699"),
        # no image suffix: a dotted tail is part of the name (all were one patient "scan")
        ("scan.001", "scan.001"),
        ("scan.002", "scan.002"),
    ],
)
def test_patient_id(name: str, expected: str) -> None:
    assert patient_id(name) == expected


def test_bacteria_and_virus_images_of_one_person_grouped() -> None:
    assert patient_id("person1000_bacteria_2931.jpeg") == patient_id("person1000_virus_1681.jpeg")
    assert patient_id("person1000_bacteria_2931.jpeg") != patient_id("person100_bacteria_1.jpeg")


def test_normal2_and_plain_im_are_different_patients() -> None:
    assert patient_id("IM-0413-0001.jpeg") != patient_id("NORMAL2-IM-0413-0001.jpeg")


def test_unrecognised_names_are_their_own_patient() -> None:
    assert patient_id("a.jpeg") != patient_id("b.jpeg")
    assert patient_id("IM-0115.jpeg") == "im-0115"  # no image number: falls back to the stem


def test_names_without_a_scheme_are_warned_of_where_the_split_is_carved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Such names became one patient per image without a word: a patient-grouped split that
    could put one child on both sides."""
    from pneumolab.data.patients import unnamed_patients

    samples = _make_samples(tmp_path, n_normal=25, n_pneumonia=25, per_patient=2)
    assert unnamed_patients(samples) == []
    odd = [
        Sample(_write(tmp_path / f"scan{i}.png", b"%d" % i), i % 2, f"scan{i}") for i in range(4)
    ]
    assert unnamed_patients(samples + odd) == odd
    grouped_split(samples + odd, val_fraction=0.2, seed=0)
    assert "4 of 104 images carry no patient ID" in caplog.text
    assert "first: scan0.png" in caplog.text


def test_one_image_under_two_classes_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Training took it with both labels, without a word (`data check` named it)."""
    samples = _make_samples(tmp_path, n_normal=25, n_pneumonia=25, per_patient=2)
    a = Sample(_write(tmp_path / "n" / "IM-0900-0001.jpeg", b"same"), 0, "im-0900")
    b = Sample(_write(tmp_path / "p" / "person900_virus_1.jpeg", b"same"), 1, "person900")
    grouped_split([*samples, a, b], val_fraction=0.2, seed=0)
    assert "one image filed under two classes, so trained with both labels" in caplog.text
    assert "IM-0900-0001.jpeg" in caplog.text and "person900_virus_1.jpeg" in caplog.text


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _make_samples(
    root: Path, n_normal: int = 30, n_pneumonia: int = 40, per_patient: int = 3
) -> list[Sample]:
    """Distinct small files: NORMAL patients IM-XXXX, PNEUMONIA patients personN."""
    samples = []
    for p in range(n_normal):
        for k in range(per_patient):
            name = f"IM-{p:04d}-{k + 1:04d}.jpeg"
            path = _write(root / "NORMAL" / name, f"normal {p} {k}".encode())
            samples.append(Sample(path=path, label=0, patient=patient_id(name)))
    for p in range(n_pneumonia):
        for k in range(per_patient):
            kind = "bacteria" if k % 2 else "virus"
            name = f"person{p}_{kind}_{k}.jpeg"
            path = _write(root / "PNEUMONIA" / name, f"pneumonia {p} {k}".encode())
            samples.append(Sample(path=path, label=1, patient=patient_id(name)))
    return samples


@pytest.fixture
def samples(tmp_path: Path) -> list[Sample]:
    return _make_samples(tmp_path)


def _patients(samples: list[Sample]) -> set[str]:
    return {s.patient for s in samples}


def test_grouped_split_partitions_samples(samples: list[Sample]) -> None:
    train, val = grouped_split(samples, val_fraction=0.2, seed=0)
    assert len(train) + len(val) == len(samples)
    assert {s.path for s in train} | {s.path for s in val} == {s.path for s in samples}
    assert not {s.path for s in train} & {s.path for s in val}


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("val_fraction", [0.1, 0.15, 0.2, 0.3])
def test_grouped_split_no_patient_on_both_sides(
    samples: list[Sample], val_fraction: float, seed: int
) -> None:
    train, val = grouped_split(samples, val_fraction=val_fraction, seed=seed)
    assert not _patients(train) & _patients(val)
    assert {s.label for s in train} == {0, 1}
    assert {s.label for s in val} == {0, 1}
    # n_splits = round(1 / val_fraction) folds, so the validation share is roughly the request.
    share = len(val) / len(samples)
    assert abs(share - val_fraction) < 0.07, share


def test_grouped_split_is_stratified(samples: list[Sample]) -> None:
    train, val = grouped_split(samples, val_fraction=0.2, seed=3)
    overall = sum(s.label for s in samples) / len(samples)
    assert abs(sum(s.label for s in val) / len(val) - overall) < 0.15
    assert abs(sum(s.label for s in train) / len(train) - overall) < 0.15


def test_grouped_split_same_seed_same_split(samples: list[Sample]) -> None:
    first = grouped_split(samples, val_fraction=0.15, seed=42)
    second = grouped_split(samples, val_fraction=0.15, seed=42)
    assert first == second


def test_grouped_split_different_seed_different_split(samples: list[Sample]) -> None:
    vals = {
        frozenset(s.path for s in grouped_split(samples, val_fraction=0.15, seed=seed)[1])
        for seed in (0, 1, 2)
    }
    assert len(vals) > 1


def test_duplicate_files_across_patients_stay_together(tmp_path: Path) -> None:
    samples = _make_samples(tmp_path, n_normal=25, n_pneumonia=25, per_patient=2)
    pairs = []
    for i in range(10):
        data = f"duplicate image {i}".encode()
        # Same bytes filed under two unrelated patient names (and in one case across classes).
        a_name, b_name = f"IM-{900 + i:04d}-0001.jpeg", f"NORMAL2-IM-{900 + i:04d}-0001.jpeg"
        b_label = 1 if i == 0 else 0
        a = Sample(_write(tmp_path / "dupA" / a_name, data), 0, patient_id(a_name))
        b = Sample(_write(tmp_path / "dupB" / b_name, data), b_label, patient_id(b_name))
        assert a.patient != b.patient
        pairs.append((a, b))
        samples += [a, b]
    for seed in range(4):
        train, val = grouped_split(samples, val_fraction=0.2, seed=seed)
        train_paths = {s.path for s in train}
        for a, b in pairs:
            assert (a.path in train_paths) == (b.path in train_paths), (seed, a, b)
        assert not _patients(train) & _patients(val)
        train_digests = {sha256_of(s.path) for s in train}
        assert not train_digests & {sha256_of(s.path) for s in val}


def test_duplicate_groups_and_split_groups(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.jpeg", b"same")
    b = _write(tmp_path / "b.jpeg", b"same")
    c = _write(tmp_path / "c.jpeg", b"other")
    d = _write(tmp_path / "d.jpeg", b"same")
    groups = duplicate_groups([a, b, c, d])
    assert len(groups) == 1
    assert sorted(groups[0]) == [a, b, d]
    gone = tmp_path / "unreadable.jpeg"  # e.g. no read permission: reported by the decoder
    assert duplicate_groups([a, gone, b]) == [[a, b]]
    assert sha256_of(a) == sha256_of(b) != sha256_of(c)

    # Patient p2 shares a file with p1 and p3 (chained): all three end up in one group.
    e = _write(tmp_path / "e.jpeg", b"chain")
    samples = [
        Sample(a, 0, "p1"),
        Sample(b, 0, "p2"),
        Sample(e, 0, "p2"),
        Sample(_write(tmp_path / "f.jpeg", b"chain"), 0, "p3"),
        Sample(c, 1, "p4"),
    ]
    keys = split_groups(samples)
    assert keys[0] == keys[1] == keys[2] == keys[3]
    assert keys[4] == "p4"


@pytest.mark.filterwarnings("ignore:The least populated class:UserWarning")
def test_too_few_patients_is_a_clear_error(tmp_path: Path) -> None:
    # 1 normal patient cannot make round(1 / 0.15) = 7 patient-grouped folds.
    samples = _make_samples(tmp_path, n_normal=1, n_pneumonia=2, per_patient=4)
    with pytest.raises(DataLayoutError, match="only 1 NORMAL patient"):
        grouped_split(samples, val_fraction=0.15)


@pytest.mark.parametrize("val_fraction", [0.0, -0.1, 0.4, 0.5, 0.9, 1.0, 1.5])
def test_invalid_val_fraction(samples: list[Sample], val_fraction: float) -> None:
    with pytest.raises(ValueError, match="val_fraction"):
        grouped_split(samples, val_fraction=val_fraction)


_layouts = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=1),  # label of the patient
        st.integers(min_value=1, max_value=4),  # images of the patient
        st.lists(st.integers(min_value=0, max_value=15), max_size=2),  # duplicate contents
    ),
    min_size=10,
    max_size=20,
)


@settings(max_examples=25)
@given(
    layout=_layouts,
    val_fraction=st.sampled_from([0.15, 0.2, 0.25, 0.3]),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
)
def test_property_no_patient_or_duplicate_crosses_split(
    layout: list[tuple[int, int, list[int]]], val_fraction: float, seed: int
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        samples = []
        for p, (label, n_images, dup_ids) in enumerate(layout):
            for k in range(n_images):
                name = f"person{p}_bacteria_{k}.jpeg"
                samples.append(
                    Sample(_write(root / name, f"{p}/{k}".encode()), label, patient_id(name))
                )
            for k, dup in enumerate(dup_ids):
                # Shared bytes between random patients: their groups must be merged.
                name = f"person{p}_virus_{100 + k}.jpeg"
                samples.append(
                    Sample(_write(root / name, f"dup {dup}".encode()), label, patient_id(name))
                )
        # A grouped split needs at least n_splits = round(1 / val_fraction) groups per class.
        groups = split_groups(samples)
        for label in (0, 1):
            in_class = {g for g, s in zip(groups, samples, strict=True) if s.label == label}
            assume(len(in_class) >= round(1 / val_fraction))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # sklearn: tiny classes
            try:
                train, val = grouped_split(samples, val_fraction=val_fraction, seed=seed)
            except DataLayoutError as refused:  # duplicates merged patients across classes
                assert "has no" in str(refused)
                return
        assert len(train) + len(val) == len(samples)
        assert not _patients(train) & _patients(val)
        assert not {sha256_of(s.path) for s in train} & {sha256_of(s.path) for s in val}


def test_a_split_that_cannot_hold_both_classes_is_refused_by_name():
    """Seven patients per class pass the fold-count check, but one patient holds most of each
    class's images: the validation fold was that one NORMAL patient, with no PNEUMONIA image,
    and the run failed after training (a ValueError traceback in the threshold choice)."""
    sizes = {0: [1] * 6 + [50], 1: [1] * 6 + [300]}
    samples = [
        Sample(Path(f"/x/{label}_{patient}_{i}.png"), label, f"{label}_{patient}")
        for label, counts in sizes.items()
        for patient, n in enumerate(counts)
        for i in range(n)
    ]
    with pytest.raises(DataLayoutError, match=r"validation split .* has no PNEUMONIA image"):
        grouped_split(samples, val_fraction=0.15, seed=0)


def test_dicom_patient_id_tags_group_a_childs_files(tmp_path: Path) -> None:
    """PACS exports name files by UID: each file was its own patient, so one child's films could
    fall on both sides of the split. The PatientID tag now groups them; a blank tag or a broken
    header falls back to the name."""
    from corpus import tiny_dicom
    from pneumolab.data.layout import scan_split
    from pneumolab.data.patients import unnamed_patients

    def dicom(name: str, patient: str | None, seed: int) -> None:
        _write(tmp_path / name, tiny_dicom(bytes([seed]) * 64, patient_id=patient))

    dicom("NORMAL/1.2.840.1", "P-0042", 1)
    dicom("NORMAL/1.2.840.2", "P-0042", 2)
    dicom("PNEUMONIA/1.2.840.3", " ", 3)  # blank: no ID
    _write(tmp_path / "PNEUMONIA" / "1.2.840.4.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 64)
    samples = {s.path.name: s for s in scan_split(tmp_path)}
    assert samples["1.2.840.1"].patient == samples["1.2.840.2"].patient == "dicom:P-0042"
    assert samples["1.2.840.3"].patient == "1.2.840.3"
    assert samples["1.2.840.4.dcm"].patient == "1.2.840.4"
    assert {s.path.name for s in unnamed_patients(list(samples.values()))} == {
        "1.2.840.3",
        "1.2.840.4.dcm",
    }


def test_one_anonymised_patient_id_for_every_file_is_named(tmp_path: Path) -> None:
    from corpus import tiny_dicom
    from pneumolab.data.patients import patient_of

    samples = []
    for index in range(20):
        path = _write(tmp_path / f"{index}.dcm", tiny_dicom(bytes([index]) * 64, patient_id="ANON"))
        samples.append(Sample(path, index % 2, patient_of(path)))
    with pytest.raises(DataLayoutError, match=r"only 1 NORMAL patient.*DICOM PatientID tags"):
        grouped_split(samples, val_fraction=0.2)


def test_a_placeholder_patient_id_that_starves_the_split_is_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """280 of 300 files per class under one anonymised ID: a 15% split came out at 1%."""
    samples = []
    for label in (0, 1):
        for index in range(60):
            patient = "dicom:ANONYMOUS" if index < 50 else f"p{label}-{index}"
            path = _write(tmp_path / f"{label}-{index}.png", b"%d %d" % (label, index))
            samples.append(Sample(path, label, patient))
    _, val = grouped_split(samples, val_fraction=0.15)
    assert len(val) < 0.15 * len(samples) / 2
    assert "patient dicom:ANONYMOUS holds 100 of 120 images" in caplog.text
