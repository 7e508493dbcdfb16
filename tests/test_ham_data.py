"""HAM data (seed 001, data.ham): the authors' split files, their patient leakage (pinned), the box JSON, patient-level folds."""
import itertools
import numpy as np
import pandas as pd
import pytest
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.ham import (ham_split, ham_split_names, localization_parts, patient_ham_folds, patient_of,
                                    patient_overlap, read_chexpert_box_json, read_ham_list, read_nih_box_json)
from cxr_notebooks.data.splits import check_patient_disjoint

MAIN = 'NIHChestXray14/ImageSets/Main'


def test_official_lists_and_counts():
    off = ham_split_names('official')
    assert (len(off['train']), len(off['test'])) == (86524, 25596) and off['val'] == off['test'] and off['helper'] == []
    assert len(read_ham_list(f'{MAIN}/train_wo_bbox')) == 111240 and len(read_ham_list(f'{MAIN}/test_bboxs')) == 880
    assert not patient_of(off['train']) & patient_of(off['test'])                       # NIH's split is patient-disjoint


@pytest.mark.parametrize('fold, sizes', [(1, (73127, 604, 12331, 26662)), (5, (78594, 616, 14543, 18983))])
def test_fold_files(fold, sizes):
    p = ham_split_names('cv_classification', fold)
    assert (len(p['train']), len(p['helper']), len(p['val']), len(p['test'])) == sizes
    assert not set(p['train']) & set(p['test']) and len(set(p['train']) | set(p['val']) | set(p['test'])) == 112120
    loc = ham_split_names('cv_localization', fold)
    assert set(loc['helper']) <= set(loc['train']) and loc['val'] == loc['test']       # the authors select on the test images


def test_five_fold_files_leak_patients_pinned():
    "Reported: the 5-fold files are split by image; these counts are what they contain."
    p = ham_split_names('cv_classification', 1)
    ov = patient_overlap({k: p[k] for k in ('train', 'val', 'test')}).set_index(['a', 'b'])
    assert ov.loc[('train', 'test'), 'shared_patients'] == 8179 and ov.loc[('train', 'test'), 'patients_b'] == 12350
    assert ov.loc[('train', 'val'), 'shared_patients'] == 5439 and ov['shared_images'].eq(0).all()
    tests = {f: read_ham_list(f'{MAIN}/fold{{fold}}/test_0.2_0.2', f) for f in range(1, 6)}
    pairs = patient_overlap(tests)
    assert (pairs.shared_patients.min(), pairs.shared_patients.max(), pairs.shared_images.sum()) == (4815, 5634, 0)
    loc = ham_split_names('cv_localization', 1)
    assert len(patient_of(loc['train']) & patient_of(loc['test'])) == 172
    wo = ham_split_names('without_bboxes')
    assert len(patient_of(wo['train']) & patient_of(wo['test'])) == 668


def test_nih_box_json():
    b = read_nih_box_json()
    assert (len(b), b.image.nunique()) == (984, 880)
    assert b.label.value_counts().to_dict() == {'Atelectasis': 180, 'Effusion': 153, 'Cardiomegaly': 146, 'Infiltration': 123,
                                                'Pneumonia': 120, 'Pneumothorax': 98, 'Mass': 85, 'Nodule': 79}
    b256 = read_nih_box_json(stored_size=256)
    assert np.allclose(b256[['x_min', 'x_max']].to_numpy() * 4, b[['x_min', 'x_max']].to_numpy())
    assert (b.x_max > b.x_min).all() and (b.y_max > b.y_min).all()


def test_chexpert_box_counts_pinned():
    b = read_chexpert_box_json()
    assert (len(b), b.image.nunique()) == (6101, 2347)                                  # 2,348 keys, one empty; the paper says 2,345 / 6,099
    assert b.label.value_counts().to_dict() == {'Pleural Effusion': 1785, 'Edema': 1098, 'Atelectasis': 723, 'Cardiomegaly': 659,
                                                'Consolidation': 400, 'Enlarged Cardiomediastinum': 386, 'Fracture': 378,
                                                'Pneumonia': 371, 'Pneumothorax': 301}
    assert b.image.str.startswith('valid/').sum() and b.image.str.contains('lateral').any()
    assert int((b.groupby(['image', 'label']).size() > 1).sum()) == 1349


def test_chexpert_rescale_and_bad_files(tmp_path):
    key = 'train/patient40093/study4/view1_frontal.jpg'
    b = read_chexpert_box_json(original_sizes={key: (2828, 2320)}, stored_sizes={key: (390, 320)})
    assert b.image.unique().tolist() == [key]
    row = b[b.label == 'Cardiomegaly'].iloc[0]
    assert row.x_min == pytest.approx(1417 * 390 / 2828) and row.y_max == pytest.approx(1565 * 320 / 2320)
    with pytest.raises(ValueError): read_chexpert_box_json(original_sizes={key: (1, 1)})
    (tmp_path / 'bad.json').write_text('{"a.png": {"Edema": [[10, 10, 5, 20]]}}')
    with pytest.raises(CXRDataError, match='no area'): read_chexpert_box_json(tmp_path / 'bad.json')
    (tmp_path / 'typo.json').write_text('{"a.png": {"Masss": [[1, 1, 5, 5]]}}')
    with pytest.raises(CXRDataError): read_nih_box_json(tmp_path / 'typo.json')


def test_bad_setting_and_fold():
    with pytest.raises(ValueError, match='setting'): ham_split_names('fivefold')
    with pytest.raises(ValueError, match='fold'): ham_split_names('cv_classification', 6)
    with pytest.raises(CXRDataError, match='split files'): read_ham_list('nope/list')


def test_ham_split_on_the_embedded_sample(sample_table):
    parts = ham_split(sample_table, 'without_bboxes')
    boxed = set(read_nih_box_json().image)
    assert set(parts['test'].image) <= boxed and len(parts['test']) == len(boxed & set(sample_table.image))
    assert not set(parts['train'].image) & boxed


@pytest.fixture(scope='module')
def names_table():
    off = ham_split_names('official')
    names = sorted(set(off['train']) | set(off['test']))
    return pd.DataFrame({'image': names, 'patient_id': [n.split('_')[0] for n in names]})


def test_patient_level_folds_keep_the_proportions(names_table):
    boxed = read_nih_box_json().image.unique()
    folds = patient_ham_folds(names_table, boxed, seed=0)
    assert len(folds) == 5
    tests = [set(f['test'].image) for f in folds]
    assert all(not a & b for a, b in itertools.combinations(tests, 2)) and len(set().union(*tests)) == len(names_table)
    for f in folds:
        check_patient_disjoint(f)
        share = {k: len(v) / len(names_table) for k, v in f.items()}
        assert 0.68 < share['train'] < 0.72 and 0.09 < share['val'] < 0.11
        n_boxed = {k: v.image.isin(boxed).sum() / len(boxed) for k, v in f.items()}
        assert 0.6 < n_boxed['train'] < 0.8 and 0.1 < n_boxed['test'] < 0.3                 # annotated images spread too
    loc = localization_parts(folds[0], boxed, seed=0)
    check_patient_disjoint(loc)
    assert loc['test'].image.isin(boxed).all()
    unann = sum((~t.image.isin(boxed)).sum() for t in (loc['train'], loc['val']))
    assert 0.49 < unann / 111240 < 0.52
    with pytest.raises(ValueError, match='k=5'): patient_ham_folds(names_table, boxed, k=4)


# ---- CheXpert for Tables VIII-X, on the fabricated stand-in folder (conftest.chexpert_stand_in) -------------------

def test_load_chexpert_reads_both_csvs_with_u_ones_and_scales_boxes(chexpert_stand_in):
    from cxr_notebooks.data.ham import CHEXPERT_BOX_LABELS, image_sizes, load_chexpert
    import csv
    d = load_chexpert(chexpert_stand_in, original_sizes=chexpert_stand_in / 'original_sizes.csv')
    assert (len(d.train), len(d.valid)) == (54, 14) and d.labels == ['Atelectasis', 'Cardiomegaly', 'Consolidation', 'Edema', 'Pleural Effusion']
    rows = list(csv.DictReader(open(chexpert_stand_in / 'CheXpert-v1.0-small' / 'train.csv')))
    uncertain = [r['Path'].split('/', 1)[1] for r in rows if r['Edema'] == '-1.0']
    assert uncertain and (d.train.set_index('image').loc[uncertain, 'Edema'] == 1).all()                    # U-Ones
    assert (d.train['view'] == 'lateral').sum() == sum('lateral' in r['Path'] for r in rows)                  # laterals kept
    assert d.boxes['image'].nunique() == 32 and set(d.boxes['label']) <= set(CHEXPERT_BOX_LABELS)
    sizes = {**image_sizes(d.train), **image_sizes(d.valid)}
    orig = pd.read_csv(chexpert_stand_in / 'original_sizes.csv').set_index('image')
    b = d.boxes.iloc[0]; raw = read_chexpert_box_json()
    r0 = raw[(raw.image == b.image) & (raw.label == b.label)].iloc[0]
    assert b.x_max == pytest.approx(r0.x_max * sizes[b.image][0] / orig.loc[b.image, 'width'])                # original -> stored pixels
    assert (d.boxes.x_max <= 1.01 * d.boxes.image.map(lambda i: sizes[i][0])).all()


def test_load_chexpert_fails_loudly_naming_the_path(chexpert_stand_in, tmp_path):
    "Missing data_root, folder, CSV, images or original sizes: a ValueError/CXRDataError naming the path and what was expected."
    import shutil
    from cxr_notebooks.data.ham import load_chexpert
    with pytest.raises(ValueError, match='needs data_root'): load_chexpert(None)
    with pytest.raises(CXRDataError, match="not a folder; expected the CheXpert download"): load_chexpert(tmp_path / 'nowhere')
    with pytest.raises(CXRDataError, match=r"no train\.csv; expected CheXpert's train\.csv at one of"): load_chexpert(tmp_path)
    with pytest.raises(CXRDataError, match='original_sizes'): load_chexpert(chexpert_stand_in)   # small files, original-pixel boxes
    copy = shutil.copytree(chexpert_stand_in, tmp_path / 'copy')
    gone = next((copy / 'CheXpert-v1.0-small' / 'valid').rglob('*.jpg'))
    gone.unlink()
    with pytest.raises(CXRDataError, match=r"valid\.csv: 1 of 14 image files not found") as e:
        load_chexpert(copy, original_sizes=copy / 'original_sizes.csv')
    assert str(gone) in str(e.value)
    shutil.copy(chexpert_stand_in / gone.relative_to(copy), gone)
    pd.read_csv(copy / 'original_sizes.csv').iloc[1:].to_csv(copy / 'original_sizes.csv', index=False)
    with pytest.raises(CXRDataError, match='original_sizes: no size for 1 boxed image'):
        load_chexpert(copy, original_sizes=copy / 'original_sizes.csv')


def test_chexpert_localization_parts_hold_out_boxed_patients(chexpert_stand_in):
    from cxr_notebooks.data.ham import CHEXPERT_BOX_LABELS, CHEXPERT_BOXED_TRAIN_SHARE, chexpert_localization_parts, load_chexpert
    d = load_chexpert(chexpert_stand_in, list(CHEXPERT_BOX_LABELS), original_sizes=chexpert_stand_in / 'original_sizes.csv')
    boxed = set(d.boxes['image'])
    p = chexpert_localization_parts(d.train, d.valid, boxed, seed=0)
    check_patient_disjoint(p)
    assert p['test']['image'].isin(boxed).all() and p['test']['image'].str.startswith('valid/').sum() == 8
    n_train_boxed = sum(int(p[k]['image'].isin(boxed).sum()) for k in ('train', 'val'))
    assert CHEXPERT_BOXED_TRAIN_SHARE * 24 <= n_train_boxed < 24 / 2 and n_train_boxed + len(p['test']) - 8 == 24
    assert len(p['train']) + len(p['val']) >= 30   # the unboxed training patients stay
    assert CHEXPERT_BOXED_TRAIN_SHARE == pytest.approx(457 / 2197)
