"""cxr_notebooks.data.chexpert: CheXpert CSV reader on generated CSVs in the real column order."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_notebooks.data.chexpert import (CHEXPERT_META_COLUMNS, CHEXPERT_UNCERTAINTY_POLICIES, apply_uncertainty,
                                    read_chexpert_csv)
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.labels import CHEXPERT_COMPETITION_LABELS, CHEXPERT_LABELS

P = 'CheXpert-v1.0-small/{}/patient{:05d}/study{}/view{}_{}.jpg'
ROWS = [  # (split, patient, study, view number, view, AP/PA, {label: value})
    ('train', 1, 1, 1, 'frontal', 'AP', {'No Finding': '1.0', 'Edema': '0.0'}),
    ('train', 2, 1, 1, 'frontal', 'AP', {'Cardiomegaly': '-1.0', 'Edema': '-1.0', 'Pleural Effusion': '1.0'}),
    ('train', 2, 1, 2, 'lateral', '', {'Cardiomegaly': '-1.0', 'Pleural Effusion': '1.0'}),
    ('train', 3, 2, 1, 'frontal', 'PA', {'Consolidation': '1.0', 'Atelectasis': '-1', 'Fracture': '-1.0'}),
]


def write_csv(path: Path, rows=ROWS, strip_prefix=False, drop=(), cell=None) -> Path:
    "A CheXpert-shaped CSV written as text (exact spelling: 1.0, -1.0, blank); `cell=(row, col, value)` overrides."
    cols = [c for c in [*CHEXPERT_META_COLUMNS, *CHEXPERT_LABELS] if c not in drop]
    lines = [','.join(cols)]
    for k, (split, pat, study, v, view, appa, labs) in enumerate(rows):
        rel = P.format(split, pat, study, v, view)
        vals = {'Path': rel.split('/', 1)[1] if strip_prefix else rel, 'Sex': 'Female', 'Age': str(50 + k),
                'Frontal/Lateral': view.capitalize(), 'AP/PA': appa, **labs}
        if cell and cell[0] == k: vals[cell[1]] = cell[2]
        lines.append(','.join(vals.get(c, '') for c in cols))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + '\n')
    return path


def write_images(dataset_dir: Path, rows=ROWS) -> None:
    for split, pat, study, v, view, *_ in rows:
        f = dataset_dir / P.format(split, pat, study, v, view).split('/', 1)[1]
        f.parent.mkdir(parents=True, exist_ok=True)
        Image.new('L', (8, 8)).save(f)


@pytest.fixture
def csv(tmp_path):
    return write_csv(tmp_path / 'CheXpert-v1.0-small' / 'train.csv')


def test_contract(csv, tmp_path):
    t = read_chexpert_csv(csv)
    assert t.columns.tolist() == ['image', 'path', 'patient_id', 'study', 'view', 'ap_pa', 'sex', 'age',
                                  *CHEXPERT_COMPETITION_LABELS]
    assert len(t) == 3 and (t['view'] == 'frontal').all()
    assert t['image'].tolist()[2] == 'train/patient00003/study2/view1_frontal.jpg'
    assert t['patient_id'].tolist() == ['patient00001', 'patient00002', 'patient00003']
    assert t['study'].tolist() == ['study1', 'study1', 'study2']
    assert t['path'][0] == str(tmp_path / 'CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg')
    assert t['ap_pa'].tolist() == ['AP', 'AP', 'PA'] and t['age'].tolist() == [50, 51, 53]
    assert all(t[c].dtype == np.float32 for c in CHEXPERT_COMPETITION_LABELS)
    full = read_chexpert_csv(csv, frontal_only=False)
    assert len(full) == 4 and full['view'][2] == 'lateral' and pd.isna(full['ap_pa'][2])


def test_policies(csv):
    t = {u: read_chexpert_csv(csv, uncertainty=u) for u in CHEXPERT_UNCERTAINTY_POLICIES}
    assert t['U-Ones']['Cardiomegaly'].tolist() == [0, 1, 0]
    assert t['U-Zeros']['Cardiomegaly'].tolist() == [0, 0, 0]
    assert t['U-Ignore']['Cardiomegaly'][0] == 0 and math.isnan(t['U-Ignore']['Cardiomegaly'][1])
    assert t['U-Ignore']['Atelectasis'].isna().tolist() == [False, False, True]   # '-1' spelt without '.0'
    for u in t:  # blank = not mentioned = 0; positives stay 1 under every policy
        assert t[u]['Pleural Effusion'].tolist()[:2] == [0, 1] and t[u]['Consolidation'].tolist() == [0, 0, 1]
    mixed = read_chexpert_csv(csv, uncertainty={'Edema': 'U-Zeros', 'Cardiomegaly': 'U-Ignore'})
    assert mixed['Edema'][1] == 0 and math.isnan(mixed['Cardiomegaly'][1]) and mixed['Atelectasis'][2] == 1
    assert np.isnan(apply_uncertainty([-1, np.nan], 'U-Ignore')[0]) and apply_uncertainty([-1, np.nan], 'U-Ignore')[1] == 0


def test_label_sets(csv):
    assert read_chexpert_csv(csv, labels='all').columns[8:].tolist() == list(CHEXPERT_LABELS)
    t = read_chexpert_csv(csv, labels=['Fracture', 'No Finding'], uncertainty='U-Zeros')
    assert t.columns[8:].tolist() == ['Fracture', 'No Finding'] and t['No Finding'].tolist() == [1, 0, 0]


def test_layouts(tmp_path):
    # 1. standard: data_root contains CheXpert-v1.0-small/, CSV elsewhere
    write_images(tmp_path / 'data' / 'CheXpert-v1.0-small')
    c = write_csv(tmp_path / 'csvs' / 'valid.csv')
    t = read_chexpert_csv(c, data_root=tmp_path / 'data', check_files=True)
    assert Path(t['path'][0]).is_file()
    # 2. prefix stripped on disk (mount holds train/ directly), CSV paths still prefixed, CSV in the mount
    mount = tmp_path / 'kaggle' / 'chexpert'
    write_images(mount)
    c2 = write_csv(mount / 'train.csv')
    t2 = read_chexpert_csv(c2, check_files=True)
    assert t2['path'][0] == str(mount / 'train/patient00001/study1/view1_frontal.jpg')
    # 3. data_root is the CheXpert-v1.0-small folder itself
    t3 = read_chexpert_csv(c, data_root=tmp_path / 'data' / 'CheXpert-v1.0-small', check_files=True)
    assert t3['path'].tolist() == t['path'].tolist()
    # 4. CSV paths without the prefix
    c4 = write_csv(tmp_path / 'stripped.csv', strip_prefix=True)
    t4 = read_chexpert_csv(c4, data_root=mount, check_files=True)
    assert t4['image'].tolist() == t['image'].tolist() and t4['path'].tolist() == t2['path'].tolist()


def test_missing_files_report(csv, tmp_path):
    with pytest.raises(CXRDataError, match=r'train\.csv: 3 of 3 image files not found, first 3') as e:
        read_chexpert_csv(csv, check_files=True)
    assert 'patient00001/study1/view1_frontal.jpg' in str(e.value)


def test_missing_columns(tmp_path):
    c = write_csv(tmp_path / 'valid.csv', drop=('Edema', 'AP/PA'))
    with pytest.raises(CXRDataError, match=r"valid\.csv: missing column\(s\) \['AP/PA', 'Edema'\]"):
        read_chexpert_csv(c)


@pytest.mark.parametrize('value', ['2.0', 'yes', '0.5'])
def test_bad_label_value(tmp_path, value):
    c = write_csv(tmp_path / 'valid.csv', cell=(1, 'Edema', value))
    with pytest.raises(CXRDataError, match=rf"valid\.csv row 1 \(line 3\), column 'Edema': label value '{value}'"):
        read_chexpert_csv(c)


def test_bad_metadata(tmp_path):
    c = write_csv(tmp_path / 'a.csv', cell=(2, 'Frontal/Lateral', 'Oblique'))
    with pytest.raises(CXRDataError, match=r"a\.csv row 2 \(line 4\), column 'Frontal/Lateral': 'Oblique'"):
        read_chexpert_csv(c)
    c = write_csv(tmp_path / 'b.csv', cell=(0, 'Path', 'CheXpert-v1.0-small/train/img1.jpg'))
    with pytest.raises(CXRDataError, match=r"b\.csv row 0 \(line 2\), column 'Path'"):
        read_chexpert_csv(c)


def test_bad_arguments(csv):
    with pytest.raises(CXRDataError, match=r"train\.csv: labels: unknown label 'Effusion'"):
        read_chexpert_csv(csv, labels=['Edema', 'Effusion'])
    with pytest.raises(CXRDataError, match="'competition', 'all'"):
        read_chexpert_csv(csv, labels='everything')
    with pytest.raises(CXRDataError, match=r"unknown policy 'U-MultiClass'.*'U-Ones', 'U-Zeros', 'U-Ignore'"):
        read_chexpert_csv(csv, uncertainty='U-MultiClass')
    with pytest.raises(CXRDataError, match=r"\['Fracture'\] are not among the requested labels"):
        read_chexpert_csv(csv, uncertainty={'Fracture': 'U-Zeros'})


@pytest.fixture(scope='module')
def real_train():
    "CheXpert's real train.csv (no images) from the torchxrayvision wheel, all views, U-Ones."
    from cxr_notebooks.data.chexpert import xrv_chexpert_train_csv
    return read_chexpert_csv(xrv_chexpert_train_csv(), data_root='/nonexistent', frontal_only=False)


@pytest.mark.slow
def test_real_train_metadata_counts(real_train):
    "The reader on the real file: 223,414 rows (HAM's 221,674 + 1,740), 64,540 patients, U-Ones positives pinned."
    assert (len(real_train), real_train['patient_id'].nunique(), int((real_train['view'] == 'frontal').sum())) == (223_414, 64_540, 191_027)
    assert real_train[list(CHEXPERT_COMPETITION_LABELS)].sum().astype(int).to_dict() == {
        'Atelectasis': 67_115, 'Cardiomegaly': 35_087, 'Consolidation': 42_525, 'Edema': 65_230, 'Pleural Effusion': 97_815}


@pytest.mark.slow
def test_the_radiologist_boxes_of_training_images_are_in_the_real_train_csv(real_train):
    "HAM's CheXpert boxes: every boxed training image is a row of the real train.csv (2,199; the paper's 457 + 1,740 = 2,197)."
    from cxr_notebooks.data.ham import read_chexpert_box_json
    boxed = set(read_chexpert_box_json()['image'])
    boxed_train = {b for b in boxed if b.startswith('train/')}
    assert len(boxed_train) == 2_199 and boxed_train <= set(real_train['image'])
    assert not {b for b in boxed if b.startswith('valid/')} & set(real_train['image'])


def test_missing_torchxrayvision_metadata_is_a_loud_error(monkeypatch):
    import importlib.util
    from cxr_notebooks.data.chexpert import xrv_chexpert_train_csv
    monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(CXRDataError, match='pip install torchxrayvision'): xrv_chexpert_train_csv()
