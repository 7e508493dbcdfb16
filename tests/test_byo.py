"""cxr_notebooks.data.byo: user CSVs and class folders, on files generated in tmp_path."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr_notebooks.data.byo import box_format_of, read_class_folders, read_image_table_csv
from cxr_notebooks.core import CXRDataError
from cxr_notebooks.data.labels import NIH_LABELS


def png(path: Path, size=(32, 24)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('L', size).save(path, format='PNG')   # content PNG whatever the suffix: only names matter here
    return path


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text.strip() + '\n')
    return path


@pytest.fixture
def imgs(tmp_path):
    for n in ('a.png', 'b.png', 'c.png', 'm_a.png'): png(tmp_path / 'img' / n)
    return tmp_path


# --- CSV: labels -------------------------------------------------------------------------------

def test_label_columns(imgs):
    c = write(imgs / 'mine.csv', 'image,Effusion,Infiltrate,pid,age,site\nimg/a.png,1,0,p1,61,A\nimg/b.png,0.0,1.0,p2,,B')
    t, boxes = read_image_table_csv(c, label_cols=['Effusion', 'Infiltrate'], patient_col='pid', label_names=NIH_LABELS)
    assert boxes is None
    assert t.columns.tolist() == ['image', 'path', 'patient_id', 'Effusion', 'Infiltration', 'age', 'site']
    assert t['path'][0] == str(imgs / 'img/a.png') and t['patient_id'].tolist() == ['p1', 'p2']
    assert t['Effusion'].dtype == np.float32 and t[['Effusion', 'Infiltration']].to_numpy().tolist() == [[1, 0], [0, 1]]
    assert t['age'][0] == 61 and math.isnan(t['age'][1]) and t['site'].tolist() == ['A', 'B']
    t2, _ = read_image_table_csv(c, label_cols=['Effusion'])          # no label_names: names as written, no patient
    assert t2.columns[3] == 'Effusion' and t2['patient_id'].isna().all()


def test_labels_column(imgs):
    c = write(imgs / 'x.csv', 'path,labels,patient_id\na.png,Effusion|Mass,1\nb.png,No Finding,2\nc.png,Pleural Thickening,2')
    t, _ = read_image_table_csv(c, image_root=imgs / 'img')
    assert t.columns[3:].tolist() == list(NIH_LABELS) and t['path'][1] == str(imgs / 'img/b.png')
    assert t[list(NIH_LABELS)].sum(axis=1).tolist() == [2, 0, 1] and t['Pleural_Thickening'][2] == 1
    three = ('No Finding', 'Effusion', 'Pneumothorax')               # seed 000's 3-class task
    t3, _ = read_image_table_csv(write(imgs / 'y.csv', 'image,label\nimg/a.png,No Finding\nimg/b.png,Effusion'),
                                 label_names=three)
    assert t3[list(three)].to_numpy().tolist() == [[1, 0, 0], [0, 1, 0]]


def test_absolute_paths_and_masks(imgs):
    c = write(imgs / 'sub' / 'm.csv', f'image,labels,mask\n{imgs / "img/a.png"},Mass,../img/m_a.png\n{imgs / "img/b.png"},Mass,')
    t, _ = read_image_table_csv(c, mask_col='mask')
    assert t['path'][0] == str(imgs / 'img/a.png') and t['mask_path'][0] == str(imgs / 'sub/../img/m_a.png')
    assert pd.isna(t['mask_path'][1])
    bad = write(imgs / 'sub' / 'm2.csv', 'image,labels,mask\n../img/a.png,Mass,nomask.png')
    with pytest.raises(CXRDataError, match=r'm2\.csv: 1 of 1 mask files not found'):
        read_image_table_csv(bad, mask_col='mask')


@pytest.mark.parametrize('value', ['2', 'yes', ''])
def test_non_binary_label(imgs, value):
    c = write(imgs / 'bad.csv', f'image,Effusion,Mass\nimg/a.png,1,0\nimg/b.png,0,{value}')
    with pytest.raises(CXRDataError, match=rf"bad\.csv row 1 \(line 3\), column 'Mass': label value '{value}'"):
        read_image_table_csv(c, label_cols=['Effusion', 'Mass'])


def test_unknown_label_name(imgs):
    c = write(imgs / 'u.csv', 'image,labels\nimg/a.png,Mass\nimg/b.png,Effusion|Flu')
    with pytest.raises(CXRDataError, match=r"u\.csv row 1 \(line 3\), column 'labels': unknown label 'Flu'"):
        read_image_table_csv(c)
    with pytest.raises(CXRDataError, match=r"u2\.csv, column 'Mass': unknown label 'Mass'"):
        read_image_table_csv(write(imgs / 'u2.csv', 'image,Mass\nimg/a.png,1'), label_cols=['Mass'], label_names=['Effusion'])
    with pytest.raises(CXRDataError, match=r"e\.csv row 0 \(line 2\), column 'labels': empty labels"):
        read_image_table_csv(write(imgs / 'e.csv', 'image,labels,x\nimg/a.png,,1'))


def test_missing_columns(imgs):
    with pytest.raises(CXRDataError, match=r"m\.csv: missing column\(s\) \['Mass', 'pid'\]"):
        read_image_table_csv(write(imgs / 'm.csv', 'image,Effusion\nimg/a.png,1'), label_cols=['Effusion', 'Mass'], patient_col='pid')
    with pytest.raises(CXRDataError, match=r"n\.csv: no image column; expected 'image' or 'path'"):
        read_image_table_csv(write(imgs / 'n.csv', 'file,labels\na.png,Mass'))
    with pytest.raises(CXRDataError, match=r"o\.csv: no labels; pass label_cols"):
        read_image_table_csv(write(imgs / 'o.csv', 'image,site\nimg/a.png,A'))
    with pytest.raises(CXRDataError, match=r"p\.csv row 1 \(line 3\), column 'image': empty image path"):
        read_image_table_csv(write(imgs / 'p.csv', 'image,labels\nimg/a.png,Mass\n,Mass'))


def test_missing_files_and_duplicates(imgs):
    c = write(imgs / 'f.csv', 'image,labels\nimg/a.png,Mass\nimg/zz1.png,Mass\nimg/zz2.png,Mass')
    with pytest.raises(CXRDataError, match=r"f\.csv: 2 of 3 image files not found, first 2: .*zz1\.png.*zz2\.png"):
        read_image_table_csv(c)
    assert len(read_image_table_csv(c, check_files=False)[0]) == 3
    with pytest.raises(CXRDataError, match=r"d\.csv row 2 \(line 4\), column 'image': image 'img/a.png' already listed at row 0"):
        read_image_table_csv(write(imgs / 'd.csv', 'image,labels\nimg/a.png,Mass\nimg/b.png,Mass\nimg/a.png,Mass'))


# --- CSV: boxes --------------------------------------------------------------------------------

def test_boxes_xywh_nih_header_and_labels_from_boxes(imgs):
    c = write(imgs / 'bb.csv', 'image,label,Bbox [x,y,w,h]\nimg/a.png,Mass,1,2,10,5\nimg/a.png,Nodule,0,0,4,4\nimg/b.png,Mass,3,3,2,2\nimg/c.png,,,,,')
    t, b = read_image_table_csv(c, box_cols=True)
    assert t['image'].tolist() == ['img/a.png', 'img/b.png', 'img/c.png']
    assert t[['Mass', 'Nodule']].to_numpy().tolist() == [[1, 1], [1, 0], [0, 0]]
    assert b.columns.tolist() == ['image', 'label', 'x_min', 'y_min', 'x_max', 'y_max']
    assert b.iloc[0].tolist() == ['img/a.png', 'Mass', 1.0, 2.0, 11.0, 7.0] and len(b) == 3
    assert b['x_min'].dtype == float


def test_boxes_xyxy_with_labels_column(imgs):
    c = write(imgs / 'xy.csv', 'image,labels,label,x_min,y_min,x_max,y_max,pid\n'
                               'img/a.png,Effusion|Mass,Mass,1,2,10,5,p\nimg/a.png,Effusion|Mass,Effusion,0,0,4,4,p\nimg/b.png,No Finding,,,,,,q')
    t, b = read_image_table_csv(c, box_cols=['x_min', 'y_min', 'x_max', 'y_max'], patient_col='pid')
    assert t['Effusion'].tolist() == [1, 0] and t['patient_id'].tolist() == ['p', 'q'] and 'label' not in t
    assert b[['x_max', 'y_max']].to_numpy().tolist() == [[10, 5], [4, 4]]


def test_box_format_detection():
    assert box_format_of(['x', 'y', 'width', 'height']) == 'xywh' and box_format_of(['xmin', 'ymin', 'xmax', 'ymax']) == 'xyxy'
    with pytest.raises(CXRDataError, match=r"z\.csv: cannot tell XYWH from XYXY"):
        box_format_of(['a', 'b', 'c', 'd'], 'z.csv')


def test_box_errors(imgs):
    def rows(*lines, name='b.csv'): return write(imgs / name, 'image,label,x,y,w,h\n' + '\n'.join(lines))
    with pytest.raises(CXRDataError, match=r"b\.csv row 1 \(line 3\), column 'w': box value 'ten'"):
        read_image_table_csv(rows('img/a.png,Mass,1,1,2,2', 'img/b.png,Mass,1,1,ten,2'), box_cols=True)
    with pytest.raises(CXRDataError, match=r"b\.csv row 0 \(line 2\), column 'h': box value ''"):
        read_image_table_csv(rows('img/a.png,Mass,1,1,2,'), box_cols=True)
    with pytest.raises(CXRDataError, match=r"b\.csv row 0 \(line 2\): box .* is empty or has negative"):
        read_image_table_csv(rows('img/a.png,Mass,1,1,0,2'), box_cols=True)
    with pytest.raises(CXRDataError, match=r"b\.csv row 1 \(line 3\): box \(30, 1, 34, 3\) reaches outside image 'img/b.png' of 32x24"):
        read_image_table_csv(rows('img/a.png,Mass,1,1,2,2', 'img/b.png,Mass,30,1,4,2'), box_cols=True)
    with pytest.raises(CXRDataError, match=r"b\.csv row 0 \(line 2\), column 'label': unknown label 'Tumour'"):
        read_image_table_csv(rows('img/a.png,Tumour,1,1,2,2'), box_cols=True)
    with pytest.raises(CXRDataError, match=r"b\.csv: box_cols=True but no box columns found"):
        read_image_table_csv(write(imgs / 'b.csv', 'image,label,left,top\nimg/a.png,Mass,1,1'), box_cols=True)
    c = write(imgs / 'g.csv', 'image,labels,label,x,y,w,h\nimg/a.png,Mass,Mass,1,1,2,2\nimg/a.png,Mass|Nodule,Nodule,1,1,2,2')
    with pytest.raises(CXRDataError, match=r"g\.csv row 1 \(line 3\): labels of image 'img/a.png' differ from its row 0"):
        read_image_table_csv(c, box_cols=True)


# --- class folders -----------------------------------------------------------------------------

def folders(root: Path, layout: dict) -> Path:
    for rel, names in layout.items():
        (root / rel).mkdir(parents=True, exist_ok=True)
        for n in names: png(root / rel / n, (4, 4))
    return root


@pytest.fixture
def ottawa(tmp_path):
    return folders(tmp_path / 'ottawa', {
        'train/No Finding': ['00000001_000.png', '00000002_001.PNG'], 'train/Effusion': ['00000003_000.jpg', 'x.txt', '.hidden.png'],
        'val/No Finding': ['00000004_000.png'], 'val/Effusion': ['00000001_000.png']})


def test_class_folders(ottawa):
    t = read_class_folders(ottawa)
    assert t.columns.tolist() == ['image', 'path', 'patient_id', 'Effusion', 'No Finding', 'split']
    assert t['image'].tolist() == ['train/Effusion/00000003_000.jpg', 'train/No Finding/00000001_000.png',
                                   'train/No Finding/00000002_001.PNG', 'val/Effusion/00000001_000.png',
                                   'val/No Finding/00000004_000.png']
    assert t['split'].tolist() == ['train'] * 3 + ['val'] * 2
    assert t['patient_id'].tolist() == ['00000003', '00000001', '00000002', '00000001', '00000004']   # NIH's PPPPPPPP_NNN names by default
    assert (t[['Effusion', 'No Finding']].sum(axis=1) == 1).all() and t['Effusion'].dtype == np.float32
    assert Path(t['path'][0]) == ottawa / 'train/Effusion/00000003_000.jpg'


def test_class_folder_options(ottawa):
    t = read_class_folders(ottawa, split='val', classes=['No Finding', 'Effusion'], patient_from_name='nih')
    assert t.columns[3:5].tolist() == ['No Finding', 'Effusion'] and t['patient_id'].tolist() == ['00000004', '00000001']
    assert len(read_class_folders(ottawa, split=['train'], extensions=('.png', '.JPG'))) == 3   # any case; not x.txt, .hidden.png
    with pytest.raises(CXRDataError, match=r"train/Effusion: empty class folder \(no \.png files\)"):
        read_class_folders(ottawa, extensions=('.png',))
    assert read_class_folders(ottawa, patient_from_name=r'^(\d+)_')['patient_id'][0] == '00000003'
    assert read_class_folders(ottawa, patient_from_name=lambda n: n[:3])['patient_id'][0] == '000'
    assert len(read_class_folders(ottawa, classes=['Effusion'])) == 2
    flat = read_class_folders(ottawa / 'train')
    assert len(flat) == 3 and flat['split'].isna().all()


def test_class_folder_errors(ottawa, tmp_path):
    with pytest.raises(CXRDataError, match=r"x\.png: file name does not match the patient pattern"):
        folders(ottawa, {'val/Effusion': ['x.png']}); read_class_folders(ottawa, patient_from_name='nih')
    with pytest.raises(CXRDataError, match=r"val/No Finding: empty class folder .* 'No Finding'"):
        folders(tmp_path / 'e', {'train/No Finding': ['a.png'], 'val/No Finding': []}); read_class_folders(tmp_path / 'e')
    (ottawa / 'val' / 'Pneumothorax').mkdir()
    with pytest.raises(CXRDataError, match=r"class folders differ between splits: .*train lacks \['Pneumothorax'\]"):
        read_class_folders(ottawa)
    with pytest.raises(CXRDataError, match=r"train: class folder\(s\) \['Pneumothorax'\] not found"):
        read_class_folders(ottawa, classes=['Effusion', 'Pneumothorax'])
    with pytest.raises(CXRDataError, match=r"split folder\(s\) \['test'\] not found; it has \['train', 'val'\]"):
        read_class_folders(ottawa, split='test')
    with pytest.raises(CXRDataError, match=r"holds class folders directly"):
        read_class_folders(ottawa / 'train', split='train')
    with pytest.raises(CXRDataError, match=r"nowhere: folder not found"):
        read_class_folders(tmp_path / 'nowhere')
    with pytest.raises(CXRDataError, match=r"no sub-folders"):
        (tmp_path / 'bare').mkdir(); read_class_folders(tmp_path / 'bare')


def test_class_folders_without_patients_cannot_be_split_by_patient(ottawa):
    "Without patient ids (patient_from_name=None) a patient split says how to fix it."
    from cxr_notebooks.data.splits import patient_train_val_split
    t = read_class_folders(ottawa, patient_from_name=None)
    with pytest.raises(CXRDataError, match=r"5 of 5 images have no patient_id.*patient_from_name=.*patient_id"):
        patient_train_val_split(t, 0.4)
    s = patient_train_val_split(read_class_folders(ottawa, patient_from_name='nih'), 0.4)
    assert len(s['val']) > 0 and not set(s['val'].patient_id) & set(s['train'].patient_id)


# --- issue 18 item 7 and "clear messages": the same file twice, patients from file names, masks, 1-pixel images ---

def test_the_same_file_under_two_spellings_is_one_image(imgs):
    "Defect: `img/a.png` and `./img/a.png` with opposite labels were accepted as two images."
    c = write(imgs / 'd.csv', 'image,Mass\nimg/a.png,1\nimg/b.png,0\n./img/a.png,0')
    with pytest.raises(CXRDataError) as e: read_image_table_csv(c, label_cols=['Mass'])
    msg = str(e.value)
    assert "d.csv row 2 (line 4), column 'image': image './img/a.png' already listed at row 0 (line 2) as 'img/a.png'" in msg
    assert "{'image': './img/a.png', 'Mass': '0'}" in msg and "{'image': 'img/a.png', 'Mass': '1'}" in msg   # both rows
    absolute = write(imgs / 'e.csv', f'image,Mass\nimg/a.png,1\n{imgs / "img" / "a.png"},1')
    with pytest.raises(CXRDataError, match='already listed at row 0'): read_image_table_csv(absolute, label_cols=['Mass'])
    t, b = read_image_table_csv(write(imgs / 'bx.csv', 'image,label,x,y,w,h\nimg/a.png,Mass,1,1,2,2\n./img/a.png,Mass,3,3,2,2'), box_cols=True)
    assert len(t) == 1 and b['image'].tolist() == ['img/a.png', 'img/a.png']   # boxes of one image, however it is spelt


def test_class_folder_patients_from_nih_names_catch_leakage(ottawa):
    "Defect: a class-folder tree gave every image its own patient, so a patient in train and test was never caught."
    from cxr_notebooks.data.splits import check_patient_disjoint
    t = read_class_folders(ottawa)
    with pytest.raises(CXRDataError, match=r"between splits 'train' and 'val': 1 patients in both \(e.g. \['00000001'\]\)"):
        check_patient_disjoint({s: g for s, g in t.groupby('split')})


def test_class_folders_say_when_no_patient_id_is_available(tmp_path):
    root = folders(tmp_path / 'o', {'train/A': ['scan1.png', '00000002_000.png'], 'val/A': ['scan3.png']})
    with pytest.warns(UserWarning, match=r"no patient ids: 2 of 3 file names .*'scan1.png'.* NIH's PPPPPPPP_NNN.png.*patient_from_name="):
        t = read_class_folders(root)
    assert t['patient_id'].isna().all()
    assert read_class_folders(root, patient_from_name=r'(\d)\.png$')['patient_id'].tolist() == ['0', '1', '3']


def test_masks_of_another_size_and_one_pixel_images_are_refused(imgs):
    png(imgs / 'img' / 'm_small.png', (16, 12)); png(imgs / 'img' / 'm_tall.png', (24, 32)); png(imgs / 'img' / 'dot.png', (1, 1))
    for mask in ('m_small.png', 'm_tall.png'):
        c = write(imgs / f'{mask}.csv', f'image,labels,mask\nimg/a.png,Mass,img/{mask}')
        with pytest.raises(CXRDataError, match=rf"{mask}\.csv row 0 \(line 2\): mask .*{mask} is .* pixels but its image .*a\.png is 32x24"):
            read_image_table_csv(c, mask_col='mask')
    with pytest.raises(CXRDataError, match=r"dot\.png is 1x1 pixels; expected an image at least 2 pixels on each side"):
        read_image_table_csv(write(imgs / 'dot.csv', 'image,labels\nimg/dot.png,Mass'))
    root = folders(imgs / 'tree', {'train/A': ['00000001_000.png']}); png(root / 'train' / 'A' / '00000002_000.png', (1, 5))
    with pytest.raises(CXRDataError, match=r"00000002_000\.png is 1x5 pixels"): read_class_folders(root)
