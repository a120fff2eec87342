"""DICOM header scope checks: modality, body part, view, presentation intent, age."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from pneumolab.scope.dicom_header import age_in_years, dicom_file_checks, header_checks


def header(**tags: str) -> Dataset:
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


def test_a_frontal_chest_radiograph_of_a_young_child_passes():
    checks = header_checks(
        header(Modality="DX", BodyPartExamined="CHEST", ViewPosition="PA", PatientAge="003Y")
    )
    assert checks.reasons == () and checks.warnings == ()
    assert checks.tags["Modality"] == "DX"


@pytest.mark.parametrize(
    "part", ["THORAX", "LUNG", "TORAX", "PECHO", "CHEST_PA", "chest ap", "LUNGS"]
)
def test_the_chest_in_the_words_vendors_write_passes(part):
    """TORAX, PECHO, CHEST_PA and LUNGS were refused as 'not a chest'."""
    assert header_checks(header(Modality="CR", BodyPartExamined=part)).reasons == ()


def test_missing_tags_are_not_errors():
    assert header_checks(Dataset()).reasons == ()


@pytest.mark.parametrize(
    ("tags", "message"),
    [
        ({"Modality": "CT"}, "Modality CT"),
        ({"Modality": "MR"}, "Modality MR"),
        ({"Modality": "MG"}, "Modality MG"),
        ({"Modality": "OT"}, "Modality OT"),
        ({"Modality": "CR", "BodyPartExamined": "SKULL"}, "BodyPartExamined SKULL"),
        ({"Modality": "CR", "BodyPartExamined": "BREAST"}, "BodyPartExamined BREAST"),
        ({"Modality": "CR", "BodyPartExamined": "ABDOMEN"}, "BodyPartExamined ABDOMEN"),
        ({"Modality": "CR", "BodyPartExamined": "BRUST WIRBELSAEULE"}, "not a chest"),
        ({"Modality": "CR", "BodyPartExamined": "THORACIC SPINE"}, "not a chest"),
        ({"Modality": "CR", "BodyPartExamined": "CHEST_ABDOMEN"}, "not a chest"),
        ({"Modality": "DX", "ViewPosition": "LL"}, "ViewPosition LL"),
        ({"Modality": "DX", "ViewPosition": "LATERAL"}, "not a frontal view"),
        ({"Modality": "DX", "PresentationIntentType": "FOR PROCESSING"}, "raw detector data"),
        ({"Modality": "CR", "ImageType": ["DERIVED", "LOCALIZER"]}, "LOCALIZER"),
    ],
)
def test_out_of_scope_tags_are_reasons(tags, message):
    (reason,) = header_checks(header(**tags)).reasons
    assert message in reason


@pytest.mark.parametrize(
    ("tags", "years"),
    [
        ({"PatientAge": "034Y"}, 34.0),
        ({"PatientAge": "018M"}, 1.5),
        ({"PatientAge": "000Y"}, None),  # the usual anonymised placeholder
        ({"PatientBirthDate": "19800101", "StudyDate": "20200101"}, 40.0),
        ({"PatientBirthDate": "20200101"}, None),  # no date to count to
        ({"PatientAge": "garbage"}, None),
        ({"PatientAge": "45Y"}, 45.0),  # not padded to three digits: adults went unwarned
        ({"PatientAge": "45 Y"}, 45.0),
        ({"PatientAge": "045"}, 45.0),  # no unit: years
        ({"PatientAge": "0"}, None),
        ({"PatientAge": "45YY"}, None),
    ],
)
def test_age_from_the_age_tag_or_the_birth_date(tags, years):
    age = age_in_years(header(**tags))
    assert age == pytest.approx(years, abs=0.01) if years is not None else age is None


def test_adults_are_warned_but_stay_in_scope():
    checks = header_checks(header(Modality="CR", PatientAge="045Y"))
    assert checks.reasons == ()
    (warning,) = checks.warnings
    assert "adult" in warning and "1–5" in warning


@pytest.mark.parametrize(("name", "modality"), [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")])
def test_pydicom_ct_and_mr_files_are_out_of_scope_from_the_header(name, modality):
    (reason,) = dicom_file_checks(get_testdata_file(name)).reasons
    assert f"Modality {modality}" in reason


def test_an_unreadable_file_gives_no_checks_here(tmp_path):
    path = tmp_path / "x.dcm"
    path.write_bytes(np.zeros(10, dtype=np.uint8).tobytes())
    assert dicom_file_checks(path).reasons == ()


def test_one_unreadable_value_costs_only_its_own_check():
    ds = header(
        Modality="CT", ViewPosition="LL", PatientAge="0²5Y"
    )  # a digit Python reads, int() not
    ds.add_new(0x00280010, "US", b"\x01\x02\x03")  # Rows: three bytes where a US has two
    checks = header_checks(ds)
    assert any("Modality CT" in reason for reason in checks.reasons)
    assert any("ViewPosition LL" in reason for reason in checks.reasons)
    assert age_in_years(ds) is None


@pytest.mark.parametrize(
    ("tags", "warning"),
    [
        ({"PatientAge": "005Y"}, None),
        ({"PatientAge": "065M"}, None),  # 5 years and 5 months: 5 completed years, as 005Y
        ({"PatientBirthDate": "20200101", "StudyDate": "20250601"}, None),  # was "5.4 years"
        ({"PatientBirthDate": "20200101", "StudyDate": "20250101"}, None),  # the 5th birthday
        ({"PatientBirthDate": "20210101", "StudyDate": "20220101"}, None),  # the 1st birthday
        ({"PatientAge": "364D"}, "patient age 11 months: a child"),  # was "1.0 years"
        ({"PatientAge": "072M"}, "patient age 6 years: a child"),
        ({"PatientBirthDate": "20160229", "StudyDate": "20220228"}, None),  # 6 on 1 March
        ({"PatientBirthDate": "20160229", "StudyDate": "20220301"}, "patient age 6 years"),
        ({"PatientBirthDate": "20200101", "StudyDate": "20201201"}, "patient age 11 months"),
    ],
)
def test_ages_are_judged_and_stated_in_completed_years(tags, warning):
    """One child got opposite verdicts from PatientAge and from the birth date, and a warning
    could state an age inside the range it said the child was outside of."""
    warnings = header_checks(header(**tags)).warnings
    if warning is None:
        assert warnings == ()
    else:
        (text,) = warnings
        assert text.startswith(warning)


def test_film_radiographs_and_worded_frontal_views_are_in_scope():
    for view in ("AP SUPINE", "AP SEMI-ERECT", "PA"):
        assert header_checks(header(Modality="RG", ViewPosition=view)).reasons == ()
    for view in ("LATERAL", "PA LATERAL", "AP-LLD"):  # the first word alone let these in
        (reason,) = header_checks(header(Modality="CR", ViewPosition=view)).reasons
        assert f"ViewPosition {view}" in reason
