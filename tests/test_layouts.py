"""Discovery and selection behind ``gbmmet manifest`` (gbmmet.manifest_builder): BraTS namings,
the seeded stratified split, the DICOM rules and the choice of series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from gbmmet import constants as C
from gbmmet.errors import ConfigError, ManifestError
from gbmmet.manifest_builder import Case
from gbmmet.manifest_builder.boxes import read_box_table
from gbmmet.manifest_builder.brats import discover_brats
from gbmmet.manifest_builder.dicom import (
    Series,
    age_years,
    assess,
    choose,
    contrast_state,
    find_roi,
)
from gbmmet.manifest_builder.rules import load_rules
from gbmmet.manifest_builder.splits import assign_splits, largest_remainder, parse_fractions
from tests.conftest import SHARED

BRATS = SHARED / "data" / "brats2018"


def tiny_nifti(path: Path, rng: np.random.Generator) -> Path:
    """A 4 x 4 x 3 volume of noise: enough for discovery and for the manifest's checks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(rng.uniform(0, 100, (3, 4, 4)).astype(np.float32)), str(path))
    return path


def old_case(root: Path, case: str, rng, seqs=("t1", "t1ce", "t2", "flair", "seg")) -> None:
    for seq in seqs:
        tiny_nifti(root / case / f"{case}_{seq}.nii.gz", rng)


def new_case(root: Path, case: str, rng, seqs=("t1n", "t1c", "t2w", "t2f", "seg")) -> None:
    for seq in seqs:
        tiny_nifti(root / case / f"{case}-{seq}.nii.gz", rng)


# --- BraTS namings -------------------------------------------------------------------------------

def test_brats_2018_naming_gives_t1ce_t2_and_seg_of_each_case(tmp_path, rng):
    for case in ("Brats18_CBICA_AAB_1", "Brats18_TCIA01_131_1"):
        old_case(tmp_path / "HGG", case, rng)
    cases, problems, _ = discover_brats(tmp_path, C.GBM)
    assert problems == []
    assert [c.patient_id for c in cases] == ["Brats18_CBICA_AAB_1", "Brats18_TCIA01_131_1"]
    c = cases[0]
    assert (c.t1c.name, c.t2.name, c.roi.name) == ("Brats18_CBICA_AAB_1_t1ce.nii.gz",
                                                   "Brats18_CBICA_AAB_1_t2.nii.gz",
                                                   "Brats18_CBICA_AAB_1_seg.nii.gz")


def test_brats_2023_naming_gives_t1c_t2w_and_seg(tmp_path, rng):
    new_case(tmp_path, "BraTS-GLI-00002-000", rng)
    cases, problems, _ = discover_brats(tmp_path, C.GBM)
    assert problems == []
    assert [(c.patient_id, c.t1c.name, c.t2.name, c.roi.name, c.label) for c in cases] == [
        ("BraTS-GLI-00002-000", "BraTS-GLI-00002-000-t1c.nii.gz", "BraTS-GLI-00002-000-t2w.nii.gz",
         "BraTS-GLI-00002-000-seg.nii.gz", C.GBM)]


def test_time_points_of_one_brats_subject_share_a_group(tmp_path, rng):
    for case in ("BraTS-MET-00005-000", "BraTS-MET-00005-001", "BraTS-MET-00007-000"):
        new_case(tmp_path, case, rng)
    cases, problems, _ = discover_brats(tmp_path, C.MET)
    assert problems == []
    assert [c.group for c in cases] == ["BraTS-MET-00005", "BraTS-MET-00005", "BraTS-MET-00007"]


def test_a_case_without_its_t2_is_a_problem_naming_the_case_and_the_file(tmp_path, rng):
    old_case(tmp_path, "Brats18_2013_2_1", rng, seqs=("t1ce", "seg"))
    old_case(tmp_path, "Brats18_2013_3_1", rng)
    cases, problems, _ = discover_brats(tmp_path, C.GBM)
    assert [c.patient_id for c in cases] == ["Brats18_2013_3_1"]
    assert len(problems) == 1
    assert "case Brats18_2013_2_1" in problems[0] and "Brats18_2013_2_1_t2.nii.gz" in problems[0]


def test_a_case_without_segmentation_needs_none_when_its_boxes_are_given(tmp_path, rng):
    new_case(tmp_path, "BraTS-GLI-00009-000", rng, seqs=("t1c", "t2w"))
    assert "no roi file" in discover_brats(tmp_path, C.GBM)[1][0]
    cases, problems, _ = discover_brats(tmp_path, C.GBM, frozenset({"BraTS-GLI-00009-000"}))
    assert problems == [] and cases[0].roi is None


def test_a_metastasis_case_is_refused_under_the_glioblastoma_label(tmp_path, rng):
    new_case(tmp_path, "BraTS-MET-00001-000", rng)
    cases, problems, _ = discover_brats(tmp_path, C.GBM)
    assert cases == [] and "--layout brats-mets" in problems[0]


def test_a_case_under_a_low_grade_glioma_folder_is_refused_as_glioblastoma(tmp_path, rng):
    old_case(tmp_path / "LGG", "Brats18_TCIA10_103_1", rng)
    cases, problems, _ = discover_brats(tmp_path, C.GBM)
    assert cases == [] and "low-grade" in problems[0]


def test_hidden_copies_left_by_macos_are_not_taken_for_a_second_file(tmp_path, rng):
    old_case(tmp_path, "Brats18_2013_3_1", rng)
    (tmp_path / "Brats18_2013_3_1" / "._Brats18_2013_3_1_t2.nii.gz").write_bytes(b"\0" * 10)
    cases, problems, _ = discover_brats(tmp_path, C.GBM)
    assert problems == [] and len(cases) == 1


@pytest.mark.skipif(not BRATS.is_dir(), reason=f"real cases not found at {BRATS}")
def test_the_two_real_brats_2018_cases_are_found_with_their_files():
    cases, problems, _ = discover_brats(BRATS, C.GBM)
    assert problems == []
    assert [c.patient_id for c in cases] == ["Brats18_2013_3_1", "Brats18_TCIA03_265_1"]
    assert all(c.t1c.is_file() and c.t2.is_file() and c.roi.is_file() for c in cases)


# --- splits --------------------------------------------------------------------------------------

FRACTIONS = {C.TRAIN: 0.7, C.VAL: 0.1, C.TEST: 0.2}


def cohort(n_gbm: int, n_met: int) -> list[Case]:
    """Patients g000... (GBM) and m000... (MET), each its own group."""
    ids = [(f"g{i:03d}", C.GBM) for i in range(n_gbm)] + [(f"m{i:03d}", C.MET) for i in range(n_met)]
    return [Case(pid, label, Path("a"), Path("b"), Path("c"), group=pid) for pid, label in ids]


def test_largest_remainder_deals_hand_worked_counts():
    assert largest_remainder(10, FRACTIONS) == {C.TRAIN: 7, C.VAL: 1, C.TEST: 2}
    assert largest_remainder(2, FRACTIONS) == {C.TRAIN: 1, C.VAL: 0, C.TEST: 1}  # 1.4, 0.2, 0.4
    assert largest_remainder(5, FRACTIONS) == {C.TRAIN: 4, C.VAL: 0, C.TEST: 1}  # 3.5, 0.5, 1.0: tie to train


def test_the_split_is_stratified_by_label():
    split_of, counts = assign_splits(cohort(30, 20), "siteX", FRACTIONS, seed=3)
    assert counts == {"siteX/GBM": {C.TRAIN: 21, C.VAL: 3, C.TEST: 6},
                      "siteX/MET": {C.TRAIN: 14, C.VAL: 2, C.TEST: 4}}
    assert sum(s == C.TEST for pid, s in split_of.items() if pid.startswith("m")) == 4


def test_the_same_seed_gives_the_same_split_and_another_seed_another():
    a, _ = assign_splits(cohort(30, 20), "siteX", FRACTIONS, seed=7)
    b, _ = assign_splits(cohort(30, 20), "siteX", FRACTIONS, seed=7)
    c, _ = assign_splits(cohort(30, 20), "siteX", FRACTIONS, seed=8)
    assert a == b and a != c


def test_a_label_split_alone_equals_its_part_of_a_split_over_both_labels():
    both, _ = assign_splits(cohort(30, 20), "siteX", FRACTIONS, seed=1)
    gbm_only, _ = assign_splits(cohort(30, 0), "siteX", FRACTIONS, seed=1)
    assert gbm_only == {pid: s for pid, s in both.items() if pid.startswith("g")}


def test_each_patient_lands_in_each_split_at_its_fraction_over_seeds():
    hits = {s: 0 for s in FRACTIONS}
    seeds = 400
    for seed in range(seeds):
        split_of, _ = assign_splits(cohort(10, 0), "siteX", FRACTIONS, seed)
        hits[split_of["g004"]] += 1
    # binomial standard error at 400 draws is at most 0.025: 4 of them
    assert all(abs(hits[s] / seeds - f) < 0.1 for s, f in FRACTIONS.items())


def test_the_time_points_of_a_subject_land_in_one_split():
    cases = [Case(f"BraTS-MET-{i:05d}-{t:03d}", C.MET, Path("a"), Path("b"), Path("c"), group=f"BraTS-MET-{i:05d}")
             for i in range(20) for t in range(2)]
    split_of, _ = assign_splits(cases, "brats", FRACTIONS, seed=0)
    assert all(split_of[f"BraTS-MET-{i:05d}-000"] == split_of[f"BraTS-MET-{i:05d}-001"] for i in range(20))


@pytest.mark.parametrize("text", ["train=0.7,val=0.1", "train=0.7,dev=0.3", "train=0.7,train=0.3", "train=x"])
def test_split_fractions_that_do_not_make_a_split_are_refused(text):
    with pytest.raises(ConfigError, match="--splits"):
        parse_fractions(text)


# --- DICOM rules and choice ----------------------------------------------------------------------

RULES = load_rules()


def series(number: str, description: str, te=None, tr=None, ti=None, agent="", images=24,
           image_type=("ORIGINAL", "PRIMARY"), seq=("SE",), orientation="axial") -> Series:
    return Series(uid=f"1.2.{number}", folder=Path(f"/p/s{number}"), images=images, shared_folder=False,
                  number=number, description=description, modality="MR", image_type=image_type,
                  scanning_sequence=seq, sequence_name="", echo_time=te, repetition_time=tr, inversion_time=ti,
                  contrast_agent=agent, orientation=orientation, age="", sex="")


CE_T1 = series("5", "AX T1 SE +C", te=12, tr=500, agent="Gadovist")
PRE_T1 = series("2", "AX T1 SE", te=12, tr=500)
T2 = series("3", "AX T2 TSE", te=100, tr=4000)
FLAIR = series("4", "AX T2 FLAIR", te=120, tr=9000, ti=2500, seq=("SE", "IR"))
LOCALIZER = series("1", "3-plane loc", te=2, tr=8, images=3, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"))


def test_the_ce_t1_and_the_t2_are_chosen_among_five_series():
    choice = choose([LOCALIZER, PRE_T1, T2, FLAIR, CE_T1], RULES)
    assert choice.left_out is None
    assert (choice.t1c, choice.t2) == (CE_T1, T2)


def test_a_pre_contrast_t1_is_refused_as_ce_t1_for_want_of_contrast():
    score, why = assess(PRE_T1, C.T1C, RULES)
    assert score is None and why.startswith("contrast required")


def test_flair_is_refused_as_t2():
    score, why = assess(FLAIR, C.T2, RULES)
    assert score is None and "flair" in why


def test_flair_without_a_telling_description_is_refused_as_t2_by_its_inversion_time():
    score, why = assess(series("4", "AX 2D", te=120, tr=9000, ti=2500), C.T2, RULES)
    assert score is None and why == "InversionTime 2500 ms outside 0-0"


def test_a_localizer_is_refused_for_every_role():
    assert all(assess(LOCALIZER, role, RULES)[0] is None for role in (C.T1C, C.T2))


def test_a_description_alone_is_enough_evidence_when_timing_tags_are_missing():
    choice = choose([series("7", "T1 post gd"), series("8", "T2 ax")], RULES)
    assert choice.left_out is None and (choice.t1c.number, choice.t2.number) == ("7", "8")


def test_two_equally_good_ce_t1_leave_the_patient_out_naming_both():
    twin = series("6", "AX T1 SE POST", te=12, tr=500, agent="Gadovist")
    choice = choose([CE_T1, twin, T2], RULES)
    assert choice.t1c is None and choice.t2 == T2
    assert choice.left_out.startswith("2 t1c candidates equally good") and "'AX T1 SE POST'" in choice.left_out


def test_no_t2_at_all_leaves_the_patient_out():
    choice = choose([CE_T1, FLAIR], RULES)
    assert choice.left_out == "no t2 candidate"


def test_an_axial_ce_t1_is_preferred_to_a_coronal_one():
    coronal = series("9", "COR T1 SE +C", te=12, tr=500, agent="Gadovist", orientation="coronal")
    assert choose([coronal, CE_T1, T2], RULES).t1c == CE_T1


def test_a_winner_sharing_its_folder_with_another_series_leaves_the_patient_out():
    shared = Series(**{**CE_T1.__dict__, "shared_folder": True})
    assert "shares its folder" in choose([shared, T2], RULES).left_out


def test_contrast_tag_set_on_a_series_described_as_pre_contrast_is_unknown():
    state, why = contrast_state(series("2", "T1 pre", agent="Dotarem"), RULES)
    assert state is None and "Dotarem" in why


def test_a_site_rules_file_changes_one_key_and_keeps_the_rest(tmp_path):
    site = tmp_path / "rules.toml"
    site.write_text("[t2]\necho_time_ms = [150, 400]\n")
    rules = load_rules(site)
    assert rules.roles[C.T2].echo_time_ms == (150.0, 400.0)
    assert rules.roles[C.T2].inversion_time_ms == RULES.roles[C.T2].inversion_time_ms
    assert assess(T2, C.T2, rules) == (None, "EchoTime 100 ms outside 150-400")


@pytest.mark.parametrize("text, message", [("[t2]\necho_time = [1, 2]\n", "unknown key 't2.echo_time'"),
                                           ("[t1c]\ncontrast = 'maybe'\n", "contrast must be one of"),
                                           ("[t2]\ndescription = ['(']\n", "not a regular expression"),
                                           ("min_images = [\n", "not a valid UTF-8 TOML")])
def test_a_site_rules_file_with_a_mistake_is_refused_saying_which(tmp_path, text, message):
    site = tmp_path / "rules.toml"
    site.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_rules(site)


def test_the_roi_pattern_that_matches_two_files_decides_nothing(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/lesion_roi.nii.gz", "tumour_roi.nii.gz"):
        (tmp_path / name).write_bytes(b"x")
    roi, why = find_roi(tmp_path, RULES.roi_mask)
    assert roi is None and why.startswith("2 files match ROI pattern '**/*roi*.nii*'")
    (tmp_path / "roi.nii.gz").write_bytes(b"x")
    assert find_roi(tmp_path, RULES.roi_mask)[0] == tmp_path / "roi.nii.gz"


@pytest.mark.parametrize("text, years", [("063Y", 63), ("018M", 1), ("006W", 0), ("", None), ("63", None),
                                          ("130Y", None)])
def test_dicom_ages_become_whole_years(text, years):
    assert age_years(text) == years


# --- boxes of many patients ----------------------------------------------------------------------

def test_boxes_come_from_one_csv_or_a_folder_of_one_csv_per_patient(tmp_path):
    one = tmp_path / "boxes.csv"
    one.write_text("patient_id,slice_index,i_min,i_max,j_min,j_max\nP1,3,0,4,1,5\nP2,0,1,1,1,1\nP1,4,0,4,1,5\n")
    folder = tmp_path / "boxes"
    folder.mkdir()
    (folder / "P1.csv").write_text("slice_index,i_min,i_max,j_min,j_max\n3,0,4,1,5\n4,0,4,1,5\n")
    (folder / "P2.csv").write_text("slice_index,i_min,i_max,j_min,j_max\n0,1,1,1,1\n")
    assert read_box_table(one) == read_box_table(folder)
    assert [b["slice_index"] for b in read_box_table(one)["P1"]] == ["3", "4"]


def test_a_box_file_without_a_column_is_refused_naming_it(tmp_path):
    bad = tmp_path / "boxes.csv"
    bad.write_text("patient_id,slice_index,i_min,i_max,j_min\nP1,3,0,4,1\n")
    with pytest.raises(ManifestError, match=r"missing columns \['j_max'\]"):
        read_box_table(bad)
