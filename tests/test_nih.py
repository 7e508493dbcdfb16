"Contract and pinned facts of cxr_notebooks.data.nih (NIH ChestX-ray14 metadata and image files)."
import gzip, shutil, warnings
from pathlib import Path
import numpy as np
import pandas as pd
import pytest
from cxr_notebooks.core import CXRDataError, embedded_data_dir
from cxr_notebooks.data.labels import NIH_LABELS, NIH_BOX_LABELS
from cxr_notebooks.data.contract import BOX_COLUMNS
from cxr_notebooks.data.nih import (GOOGLE2019_LABELS, attach_image_paths, embedded_data_entry, find_nih_images,
                               load_nih, nih_sample_table, read_data_entry, read_google2019_labels, read_id_list,
                               read_nih_boxes)

NIH = embedded_data_dir() / 'nih'
SEED002_TABLE3 = {'No Finding': 60361, 'Hernia': 227, 'Pneumonia': 1431, 'Fibrosis': 1686, 'Edema': 2303,
                  'Emphysema': 2516, 'Cardiomegaly': 2776, 'Pleural_Thickening': 3385, 'Consolidation': 4667,
                  'Pneumothorax': 5302, 'Mass': 5782, 'Nodule': 6331, 'Atelectasis': 11559, 'Effusion': 13317,
                  'Infiltration': 19894}
KAGGLE_HEADER = ('Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,'
                 'OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],')


@pytest.fixture(scope='module')
def entry():
    return embedded_data_entry()


@pytest.fixture(scope='module')
def some_pngs():
    return sorted((NIH / 'images256').glob('*.png'))[:5]


def test_data_entry_schema_and_counts(entry):
    assert len(entry) == 112_120 and entry.image.is_unique
    assert entry.patient_id.nunique() == 30_805
    assert list(entry.columns[:8]) == ['image', 'patient_id', 'follow_up', 'age', 'gender', 'view', 'orig_w', 'orig_h']
    assert list(entry.columns[-14:]) == list(NIH_LABELS) and 'finding_labels' in entry and 'path' not in entry
    assert (entry.patient_id.str.len() == 8).all() and (entry.image.str[:8] == entry.patient_id).all()
    assert all(entry[l].dtype == np.float32 for l in NIH_LABELS)
    y = entry[list(NIH_LABELS)]
    counts = y.sum().astype(int).to_dict() | {'No Finding': int((y.sum(axis=1) == 0).sum())}
    assert counts == SEED002_TABLE3
    assert ((y.sum(axis=1) == 0) == (entry.finding_labels == 'No Finding')).all()


def test_embedded_data_entry_is_a_copy(entry):
    a = embedded_data_entry(); a.loc[0, 'Mass'] = 7
    assert embedded_data_entry().loc[0, 'Mass'] == entry.loc[0, 'Mass'] != 7


def _write_kaggle(path, rows):
    path.write_text(KAGGLE_HEADER + '\n' + ''.join(f'{r},\n' for r in rows))
    return path


def test_kaggle_2017_format_with_trailing_column_and_age_suffix(tmp_path):
    f = _write_kaggle(tmp_path / 'Data_Entry_2017.csv', [
        '00000001_000.png,Cardiomegaly,0,1,058Y,M,PA,2682,2749,0.143,0.143',
        '00000002_000.png,No Finding,0,2,081Y,M,PA,2500,2048,0.171,0.171',
        '00000003_000.png,Hernia|Infiltrate,0,3,76,F,AP,2048,2500,0.168,0.168'])
    t = read_data_entry(f)
    assert t.patient_id.tolist() == ['00000001', '00000002', '00000003'] and t.age.tolist() == [58, 81, 76]
    assert t[list(NIH_LABELS)].sum(axis=1).tolist() == [1, 0, 2] and t.loc[2, 'Infiltration'] == 1
    assert (t.orig_w.tolist(), t.view.tolist()) == ([2682, 2500, 2048], ['PA', 'PA', 'AP'])


def test_data_entry_missing_columns(tmp_path):
    f = tmp_path / 'entry.csv'
    f.write_text('Image Index,Finding Labels,Patient ID\n00000001_000.png,Mass,1\n')
    with pytest.raises(CXRDataError, match=r'entry\.csv: missing column.*Follow-up #.*expected columns'):
        read_data_entry(f)


def test_data_entry_unknown_label_names_file_and_row(tmp_path):
    f = _write_kaggle(tmp_path / 'labels.csv', ['00000001_000.png,Mass,0,1,58,M,PA,1,1,0.1,0.1',
                                                '00000001_001.png,Mass|Flu,1,1,58,M,PA,1,1,0.1,0.1'])
    with pytest.raises(CXRDataError, match=r"labels\.csv row 2: unknown label 'Flu'"):
        read_data_entry(f)


def test_data_entry_patient_mismatch_and_duplicates(tmp_path):
    f = _write_kaggle(tmp_path / 'pid.csv', ['00000001_000.png,Mass,0,2,58,M,PA,1,1,0.1,0.1'])
    with pytest.raises(CXRDataError, match=r'pid\.csv row 1: Patient ID 00000002'):
        read_data_entry(f)
    f = _write_kaggle(tmp_path / 'dup.csv', ['00000001_000.png,Mass,0,1,58,M,PA,1,1,0.1,0.1'] * 2)
    with pytest.raises(CXRDataError, match=r'dup\.csv: 1 duplicated Image Index.*row 2'):
        read_data_entry(f)


@pytest.mark.parametrize('name', ['BBox_List_2017.csv', 'BBox_List_2017_kaggle_rounded.csv.gz'])
def test_boxes_pinned(name):
    raw = read_nih_boxes(NIH / name)
    assert tuple(raw.columns) == BOX_COLUMNS and (len(raw), raw.image.nunique()) == (984, 880)
    assert set(raw.label) == set(NIH_BOX_LABELS) and 'Infiltrate' not in set(raw.label)
    assert set(raw.image) <= set(read_id_list(NIH / 'test_list.txt.gz'))
    for size in (256, 64):
        b = read_nih_boxes(NIH / name, stored_size=size)
        np.testing.assert_allclose(b[list(BOX_COLUMNS[2:])], raw[list(BOX_COLUMNS[2:])] * size / 1024)
        assert (b.x_min >= 0).all() and (b.y_min >= 0).all() and (b.x_max <= size).all() and (b.y_max <= size).all()
        assert (b.x_max > b.x_min).all() and (b.y_max > b.y_min).all()


def test_boxes_per_image_sizes():
    raw = read_nih_boxes(NIH / 'BBox_List_2017.csv')
    a, b = raw.image.iloc[0], raw.image[raw.image != raw.image.iloc[0]].iloc[0]
    got = read_nih_boxes(NIH / 'BBox_List_2017.csv', stored_size={a: 256, b: 64})
    assert set(got.image) == {a, b}
    np.testing.assert_allclose(got[got.image == a].x_max.values, raw[raw.image == a].x_max.values / 4)
    np.testing.assert_allclose(got[got.image == b].y_min.values, raw[raw.image == b].y_min.values / 16)


def test_boxes_bad_inputs(tmp_path):
    (tmp_path / 'hdr.csv').write_text('Image,Label,x,y,w,h\n00013118_008.png,Atelectasis,1,2,3,4\n')
    with pytest.raises(CXRDataError, match=r'hdr\.csv: header .* expected'):
        read_nih_boxes(tmp_path / 'hdr.csv')
    (tmp_path / 'lab.csv').write_text('Image Index,Finding Label,Bbox [x,y,w,h],,,\n00013118_008.png,Hernia,1,2,3,4\n')
    with pytest.raises(CXRDataError, match=r"lab\.csv row 1: unknown label 'Hernia'"):
        read_nih_boxes(tmp_path / 'lab.csv')
    (tmp_path / 'num.csv').write_text('Image Index,Finding Label,Bbox [x,y,w,h]\na.png,Mass,1,2,3,4\nb.png,Mass,1,2,0,4\n')
    with pytest.raises(CXRDataError, match=r'num\.csv row 2: box'):
        read_nih_boxes(tmp_path / 'num.csv')


def test_read_id_list(tmp_path):
    (tmp_path / 'l.txt').write_text('a.png\nb.png')  # no trailing newline
    with gzip.open(tmp_path / 'l.txt.gz', 'wt') as f: f.write('a.png\nb.png\n')
    assert read_id_list(tmp_path / 'l.txt') == read_id_list(tmp_path / 'l.txt.gz') == ['a.png', 'b.png']
    assert len(read_id_list(NIH / 'train_val_list.txt.gz')) == 86_524


def test_google2019(tmp_path):
    g = read_google2019_labels(NIH / 'google2019_nih-chest-xray-labels.csv.gz')
    assert len(g) == 4376 and set(g.set_id) == {'val', 'test'}
    assert all(g[l].dtype == np.float32 and set(g[l].unique()) <= {0, 1} for l in GOOGLE2019_LABELS)
    (tmp_path / 'g.csv').write_text('Image Index,Patient ID,Fracture,Pneumothorax,Airspace opacity,Nodule or mass,Set Id\n'
                                    'x.png,1,NO,YES,maybe,NO,val\n')
    with pytest.raises(CXRDataError, match=r"g\.csv row 1: column 'Airspace opacity' is 'maybe'"):
        read_google2019_labels(tmp_path / 'g.csv')


def test_find_images_kaggle_nih_and_flat_layouts(tmp_path, some_pngs):
    for i, f in enumerate(some_pngs):
        for d in (tmp_path / 'kaggle' / f'images_{i % 3 + 1:03d}' / 'images', tmp_path / 'nih' / 'images', tmp_path / 'flat'):
            d.mkdir(parents=True, exist_ok=True); shutil.copy(f, d / f.name)
    names = sorted(f.name for f in some_pngs)
    for layout, parent in [('kaggle', 'images'), ('nih', 'images'), ('flat', 'flat')]:
        found = find_nih_images(tmp_path / layout)
        assert sorted(found) == names and {p.parent.name for p in found.values()} == {parent}
    with pytest.raises(CXRDataError, match='found twice'):
        find_nih_images(tmp_path)
    (tmp_path / 'empty').mkdir()
    with pytest.raises(CXRDataError, match='no .png files under .*empty'):
        find_nih_images(tmp_path / 'empty')
    with pytest.raises(CXRDataError, match='is not a folder'):
        find_nih_images(tmp_path / 'nowhere')


def test_attach_image_paths(tmp_path, entry, some_pngs):
    for f in some_pngs: shutil.copy(f, tmp_path / f.name)
    have = entry[entry.image.isin([f.name for f in some_pngs])]
    t = attach_image_paths(have, tmp_path)
    assert all(Path(p).is_file() and Path(p).name == n for p, n in zip(t.path, t.image)) and isinstance(t.path.iloc[0], str)
    table = pd.concat([have, entry.head(7)])
    absent = entry.head(7).image[~entry.head(7).image.isin(t.image)]
    n_missing = len(absent)
    with pytest.raises(CXRDataError, match=rf"{n_missing} of {len(table)} images have no file in {tmp_path}.*{absent.iloc[0]}"):
        attach_image_paths(table, tmp_path)
    with pytest.warns(UserWarning, match=f'{n_missing} of {len(table)}'):
        assert len(attach_image_paths(table, tmp_path, missing='drop')) == len(table) - n_missing
    with pytest.raises(CXRDataError, match='missing='):
        attach_image_paths(table, tmp_path, missing='ignore')


def test_load_nih_kaggle_tree(tmp_path, some_pngs):
    for i, f in enumerate(some_pngs):
        d = tmp_path / f'images_{i % 2 + 1:03d}' / 'images'; d.mkdir(parents=True, exist_ok=True); shutil.copy(f, d / f.name)
    for n in ['Data_Entry_2017_v2020.csv.gz', 'train_val_list.txt.gz', 'test_list.txt.gz']:
        shutil.copy(NIH / n, tmp_path / n)
    with pytest.raises(CXRDataError, match='have no file in'):
        load_nih(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        t = load_nih(tmp_path, missing='drop')
    assert sorted(t.image) == sorted(f.name for f in some_pngs) and set(t.official_split) <= {'train_val', 'test'}
    with pytest.raises(CXRDataError, match='no Data_Entry_2017.csv'):
        load_nih(tmp_path / 'images_001')


def test_sample_tables():
    for size, n, tv in [(256, 646, 563), (64, 1000, 690)]:
        s = nih_sample_table(size)
        assert len(s) == n and (s.official_split == 'train_val').sum() == tv and (s.stored_px == size).all()
        assert all(Path(p).is_file() and Path(p).parent.name == f'images{size}' for p in s.path)
        assert list(s.columns[:2]) == ['image', 'patient_id'] and s[list(NIH_LABELS)].notna().all().all()
    with pytest.raises(CXRDataError, match='no images stored at 128 px'):
        nih_sample_table(128)
