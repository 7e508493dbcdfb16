"Contract and pinned counts of cxr_notebooks.data.splits (patient-safe splits of NIH ChestX-ray14)."
import gzip, math, warnings
import numpy as np
import pandas as pd
import pytest
from cxr_notebooks.core import CXRDataError, embedded_data_dir
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.data.nih import embedded_data_entry
from cxr_notebooks.data.splits import (check_no_empty_class, check_patient_disjoint, chexnet_split, nih_official_split,
                                  patient_kfold, patient_train_val_split, seed004_subsample_split, stratified_subsample)

NIH = embedded_data_dir() / 'nih'
TV, TEST = NIH / 'train_val_list.txt.gz', NIH / 'test_list.txt.gz'


@pytest.fixture(scope='module')
def entry():
    return embedded_data_entry()


def _patients(splits):
    return {k: set(v.patient_id) for k, v in splits.items()}


def _disjoint(splits):
    p = list(_patients(splits).values())
    return all(not (a & b) for i, a in enumerate(p) for b in p[i + 1:])


def _toy(n_patients=60, per_patient=3, seed=0):
    "A synthetic image table: `per_patient` images per patient, random multi-labels."
    rng = np.random.default_rng(seed)
    pid = np.repeat([f'{p:08d}' for p in range(n_patients)], per_patient)
    t = pd.DataFrame({'image': [f'{p}_{i % per_patient:03d}.png' for i, p in enumerate(pid)], 'patient_id': pid})
    for j, l in enumerate(NIH_LABELS): t[l] = (rng.random(len(t)) < 0.3 / (j + 1)).astype(np.float32)
    return t


def test_official_split_pinned(entry):
    s = nih_official_split(entry, TV, TEST)
    assert (len(s['train_val']), len(s['test'])) == (86_524, 25_596) and _disjoint(s)
    assert int(s['train_val'].Pneumonia.sum()) == 876  # seed 001 Section IV-E
    t = entry.head(20)
    first = t.patient_id == t.patient_id.iloc[0]
    names = nih_official_split(t, list(t.image[first]), list(t.image[~first]))  # names instead of files
    assert [len(v) for v in names.values()] == [first.sum(), (~first).sum()]


def test_official_split_bad_lists(entry):
    t = entry.head(10)
    with pytest.raises(CXRDataError, match=r'3 images of the table are in none of'):
        nih_official_split(t, list(t.image[:5]), list(t.image[5:7]))
    with pytest.raises(CXRDataError, match=rf'image {t.image.iloc[4]} is in both'):
        nih_official_split(t, list(t.image[:5]), list(t.image[4:]))
    # lists that put one patient on both sides (patient 00000001 has several images)
    with pytest.raises(CXRDataError, match=r"between splits 'train_val' and 'test': 1 patients in both \(e\.g\. \['00000001'\]\)"):
        nih_official_split(t, list(t.image[:1]), list(t.image[1:]))


def test_chexnet_split_pinned(entry):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        s = chexnet_split(entry, NIH / 'splits', on_label_mismatch='warn')
    assert {k: len(v) for k, v in s.items()} == {'train': 78_468, 'val': 11_219, 'test': 22_433} and _disjoint(s)
    assert len(w) == 3 and 'chexnet_val_list.txt.gz: labels of 18 images differ' in str(w[1].message)
    f = chexnet_split(entry, NIH / 'splits', on_label_mismatch='file')
    line1 = gzip.open(NIH / 'splits' / 'chexnet_val_list.txt.gz', 'rt').readline().split()
    row = f['val'][f['val'].image == line1[0]]
    assert row[list(NIH_LABELS)].to_numpy().ravel().tolist() == [float(v) for v in line1[1:]]


def test_chexnet_split_label_mismatch_names_file_and_line(entry, tmp_path):
    t = entry.head(6)
    y = t[list(NIH_LABELS)].to_numpy().astype(int)
    y[4, 13] = 1 - y[4, 13]
    lines = [f'{n} ' + ' '.join(map(str, r)) for n, r in zip(t.image, y)]
    for split, sl in [('train', slice(0, 3)), ('val', slice(3, 5)), ('test', slice(5, 6))]:
        (tmp_path / f'chexnet_{split}_list.txt').write_text('\n'.join(lines[sl]))
    with pytest.raises(CXRDataError, match=rf"chexnet_val_list\.txt: labels of 1 images differ .*line 2 \({t.image.iloc[4]}: \['Hernia'\]\)"):
        chexnet_split(t, tmp_path)
    (tmp_path / 'chexnet_test_list.txt').write_text(f'{t.image.iloc[5]} 0 1')
    with pytest.raises(CXRDataError, match=r'chexnet_test_list\.txt line 1: .*expected an image name and 14 0/1 labels'):
        chexnet_split(t, tmp_path, on_label_mismatch='warn')
    (tmp_path / 'chexnet_test_list.txt').unlink()
    with pytest.raises(CXRDataError, match='no chexnet_test_list.txt'):
        chexnet_split(t, tmp_path)


def test_leakage_detection_names_both_splits():
    t = _toy()
    check_patient_disjoint({'a': t.iloc[:30], 'b': t.iloc[30:]})
    with pytest.raises(CXRDataError, match=r"between splits 'train' and 'test': 2 patients in both \(e\.g\. \['00000009', '00000010'\]\)"):
        check_patient_disjoint({'train': t.iloc[:32], 'val': t.iloc[40:50], 'test': t.iloc[29:40]})
    with pytest.raises(CXRDataError, match="split 'x' has no patient_id"):
        check_patient_disjoint({'x': t.drop(columns='patient_id'), 'y': t})


def test_empty_class_error():
    t = _toy()
    t['Hernia'] = 0.0
    with pytest.raises(CXRDataError, match=r"split 'val' \(180 images\) has no positive image of \['Hernia'\]"):
        check_no_empty_class(t, NIH_LABELS, 'val')
    with pytest.raises(CXRDataError, match=r"split 'val' has no label column\(s\) \['Flu'\]"):
        check_no_empty_class(t, ['Flu'], 'val')
    with pytest.raises(CXRDataError, match="has no positive image of"):
        patient_train_val_split(t, require_all_classes=True)
    assert len(patient_train_val_split(t)['val']) == 36  # not checked unless asked


def test_patient_train_val_split_exact_and_seeded():
    t = _toy(n_patients=101, per_patient=1)
    t = pd.concat([t, _toy(n_patients=20, per_patient=4, seed=1).assign(patient_id=lambda d: 'x' + d.patient_id)], ignore_index=True)
    for frac in (0.1, 0.2, 0.33):
        s = patient_train_val_split(t, frac, seed=3)
        assert len(s['val']) == math.ceil(frac * len(t)) and len(s['train']) + len(s['val']) == len(t) and _disjoint(s)
    a, b, c = (patient_train_val_split(t, 0.2, seed=k)['val'].image.tolist() for k in (5, 5, 6))
    assert a == b and a != c
    with pytest.raises(CXRDataError, match='val_fraction=1.5'):
        patient_train_val_split(t, 1.5)
    with pytest.raises(CXRDataError, match='no patient_id column'):
        patient_train_val_split(t.drop(columns='patient_id'))


def test_patient_kfold_covers_each_image_once():
    t = _toy(n_patients=53, per_patient=2)
    folds = patient_kfold(t, k=5, seed=0)
    vals = pd.concat([f['val'] for f in folds])
    assert sorted(vals.image) == sorted(t.image) and vals.image.is_unique
    for f in folds:
        assert _disjoint(f) and len(f['train']) + len(f['val']) == len(t)
    assert max(len(f['val']) for f in folds) - min(len(f['val']) for f in folds) <= 2
    again, other = patient_kfold(t, 5, seed=0), patient_kfold(t, 5, seed=1)
    assert [f['val'].image.tolist() for f in again] == [f['val'].image.tolist() for f in folds]
    assert [f['val'].image.tolist() for f in other] != [f['val'].image.tolist() for f in folds]
    with pytest.raises(CXRDataError, match='k=1'):
        patient_kfold(t, k=1)


def test_stratified_subsample(entry):
    sub = stratified_subsample(entry, 0.05, NIH_LABELS, seed=0)
    assert len(sub) == round(0.05 * len(entry)) and sub.image.is_unique
    assert (sub[list(NIH_LABELS)].sum() > 0).all()
    assert np.allclose(sub[list(NIH_LABELS)].mean(), entry[list(NIH_LABELS)].mean(), atol=0.01)
    again = stratified_subsample(entry, 0.05, NIH_LABELS, seed=0)
    other = stratified_subsample(entry, 0.05, NIH_LABELS, seed=1)
    assert again.image.tolist() == sub.image.tolist() and other.image.tolist() != sub.image.tolist()
    tiny = stratified_subsample(_toy(), 0.05, NIH_LABELS)  # 9 of 180: each present rarest-label key kept
    assert len(tiny) == 9
    with pytest.raises(CXRDataError, match='fraction=0'):
        stratified_subsample(entry, 0, NIH_LABELS)
    with pytest.raises(CXRDataError, match=r"no label column\(s\) \['Flu'\]"):
        stratified_subsample(entry, 0.1, ['Flu'])


def test_seed004_protocol_pinned(entry):
    s = seed004_subsample_split(entry, TV, TEST, seed=0)
    assert {k: len(v) for k, v in s.items()} == {'train': 3460, 'val': 866, 'test': 1280} and _disjoint(s)
    test = set(gzip.open(TEST, 'rt').read().split())
    assert set(s['test'].image) <= test and not (set(s['train'].image) | set(s['val'].image)) & test
    s1 = seed004_subsample_split(entry, TV, TEST, seed=1)
    assert {k: len(v) for k, v in s1.items()} == {'train': 3460, 'val': 866, 'test': 1280}
    assert s1['train'].image.tolist() != s['train'].image.tolist()


# patient ids (defects: '00000003' vs 3 missed; NaN ids gave an empty validation split) -------------
def test_leakage_check_normalises_patient_ids():
    a = pd.DataFrame({'image': ['x.png'], 'patient_id': ['00000003']})
    for other in (3, 3.0, '3', ' 0003 ', '3.0', '00000003.00', 3.0000):   # '3.0': ids a CSV wrote as floats
        b = pd.DataFrame({'image': ['y.png'], 'patient_id': [other]})
        with pytest.raises(CXRDataError, match=r"between splits 'train' and 'val': 1 patients in both"):
            check_patient_disjoint({'train': a, 'val': b})
    check_patient_disjoint({'train': a, 'val': a.assign(patient_id='00000004')})
    check_patient_disjoint({'train': a.assign(patient_id='p3'), 'val': a.assign(patient_id='p03')})   # not numbers: as written
    check_patient_disjoint({'train': a, 'val': a.assign(patient_id='3.5')})                          # not a whole number: another id
    with pytest.raises(CXRDataError, match=r"1 patients in both \(e.g. \['3.0'\]\)"):
        check_patient_disjoint({'train': a.assign(patient_id='3.0'), 'val': a.assign(patient_id=3)})


def test_split_keeps_a_patient_written_two_ways_together():
    t = _toy(n_patients=20, per_patient=2)
    t['patient_id'] = [int(p) if i % 2 else p for i, p in enumerate(t['patient_id'])]   # '00000001' and 1: one patient
    ids = lambda d: {int(p) for p in d['patient_id']}
    for s in [patient_train_val_split(t, 0.3, seed=1), *patient_kfold(t, 4, seed=1)]:
        assert len(s['val']) > 0 and not ids(s['train']) & ids(s['val'])


def test_missing_patient_ids_stop_a_patient_split():
    t = _toy(n_patients=10, per_patient=2)
    t.loc[[1, 4, 7], 'patient_id'] = np.nan
    for split in (lambda: patient_train_val_split(t, 0.2), lambda: patient_kfold(t, 3)):
        with pytest.raises(CXRDataError, match=r"3 of 20 images have no patient_id.*patient_from_name="):
            split()
    allnan = t.assign(patient_id=np.nan)
    with pytest.raises(CXRDataError, match=r"20 of 20 images have no patient_id"):
        patient_train_val_split(allnan, 0.2)
