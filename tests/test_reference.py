"Contract and error paths of cxr_notebooks.reproduce.reference and the seed 002 transcription."
import numpy as np
import pandas as pd
import pytest
from cxr_notebooks.core import CXRDataError, embedded_data_dir
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.reproduce.reference import (REFERENCE_COLUMNS, average_check, load_reference, reference_table,
                                     reference_values)

SEED002 = embedded_data_dir() / 'reference' / 'seed002_tables.csv'


@pytest.fixture(scope='module')
def ref():
    return load_reference(SEED002)


def test_seed002_csv_schema_exact():
    head = SEED002.read_text(encoding='utf-8').splitlines()[0]
    assert head == ','.join(REFERENCE_COLUMNS)


def test_load_default_dir_reads_all_csvs(ref):
    allref = load_reference()
    assert len(allref) >= len(ref) == 345
    assert set(allref.source_file) >= {'seed002_tables.csv'}


def test_pinned_seed002_numbers(ref):
    t4 = reference_table('002', 'Table 4', ref=ref)
    assert t4.loc['Average', 'weighted focal loss beta=0.9998 EfficientNet-B3 two-stage'] == 0.8313
    assert t4.loc['Pleural_Thickening', 'Wang et al. [3]'] == 0.684
    assert list(t4.index) == list(NIH_LABELS) + ['Average']
    t7 = reference_table('002', 'Table 7', ref=ref)
    assert t7.loc['Hernia', 'weighted focal loss beta=0.9998 EfficientNet-B3 two-stage'] == pytest.approx(0.92)
    sd = reference_values('002', 'Table 7', 'Baltruschat et al. [6]', metric='auc_sd', ref=ref)
    assert sd['Hernia'] == pytest.approx(0.044)
    t3 = reference_table('002', 'Table 3', metric='count', ref=ref).iloc[:, 0]
    assert t3['No Finding'] == 60361 and t3['Hernia'] == 227
    t9 = reference_table('002', 'Table 9', metric='improvement_pct', ref=ref).iloc[:, 0]
    assert t9['Edema'] == -1.14 and t9['Average'] == 2.10


def test_source_is_carried(ref):
    t = reference_table('002', 'Table 8', ref=ref)
    assert t.attrs['source'] == 'seed 002 (002_ebbdae81f59a347f.txt), Table 8'
    s = reference_values('002', 'Table 5', 'focal loss DenseNet-121', split='chexnet_val', ref=ref)
    assert s.attrs['source'].endswith('Table 5, chexnet_val') and s.attrs['seed_file'] == ['002_ebbdae81f59a347f.txt']
    assert s['Hernia'] == 0.8614


def test_table5_columns_carry_split(ref):
    t = reference_table('002', 'Table 5', ref=ref)
    assert list(t.columns) == ['focal loss DenseNet-121 [chexnet_val]', 'focal loss DenseNet-121 [chexnet_test]',
                               'weighted focal loss beta=0.9998 DenseNet-121 [chexnet_val]',
                               'weighted focal loss beta=0.9998 DenseNet-121 [chexnet_test]']


def test_average_mismatches_are_exactly_the_known_ones(ref):
    bad = []
    for t in ['Table 4', 'Table 5', 'Table 7', 'Table 8']:
        c = average_check('002', t, ref=ref)
        bad += [(t, s) for s in c.index[c.difference.abs() > 0.0005]]
    assert bad == [('Table 4', 'Baltruschat et al. [6]'), ('Table 4', 'Gündel et al. [4]')]


def test_setting_filter_and_unknown_setting(ref):
    t = reference_table('002', 'Table 4', setting=['Wang et al. [3]'], ref=ref)
    assert t.shape == (15, 1)
    with pytest.raises(CXRDataError, match='no setting'):
        reference_table('002', 'Table 4', setting='Nobody et al.', ref=ref)
    with pytest.raises(CXRDataError, match='no setting'):
        reference_values('002', 'Table 4', 'Nobody et al.', ref=ref)


def test_unknown_table_or_metric_lists_what_exists(ref):
    with pytest.raises(CXRDataError, match=r"available \(table, metric\)"):
        reference_table('002', 'Table 6', ref=ref)
    with pytest.raises(CXRDataError, match='several splits'):
        reference_values('002', 'Table 5', 'focal loss DenseNet-121', ref=ref)


def _write(tmp_path, df, name='x.csv'):
    p = tmp_path / name
    df.to_csv(p, index=False)
    return p


def test_missing_column_names_file_and_column(tmp_path, ref):
    p = _write(tmp_path, ref[list(REFERENCE_COLUMNS)].drop(columns=['split', 'note']).head(3), 'broken.csv')
    with pytest.raises(CXRDataError, match=r"broken\.csv: missing column\(s\) \['split', 'note'\]"):
        load_reference(tmp_path)


def test_non_numeric_value_names_file_and_row(tmp_path, ref):
    d = ref[list(REFERENCE_COLUMNS)].head(4).astype({'value': object}).copy()
    d.loc[d.index[2], 'value'] = '0.8x'
    p = _write(tmp_path, d, 'typo.csv')
    with pytest.raises(CXRDataError, match=r"typo\.csv: row 4 .*'0\.8x'"):
        load_reference(p)


def test_duplicate_key_and_empty_dir(tmp_path, ref):
    d = ref[list(REFERENCE_COLUMNS)].head(2)
    _write(tmp_path, pd.concat([d, d.head(1)]), 'dup.csv')
    with pytest.raises(CXRDataError, match='dup.csv: .*more than once'):
        load_reference(tmp_path)
    empty = tmp_path / 'empty'; empty.mkdir()
    with pytest.raises(CXRDataError, match='no reference CSV'):
        load_reference(empty)


def test_reference_values_by_model():
    "Seed 000 reports each table per backbone: `model=` picks one, and leaving it out says which to pass."
    s = reference_values('000', 'Table I', 'cross-entropy', metric='sensitivity', split='ottawa', model='PVT')
    assert s['Effusion vs No Finding'] == pytest.approx(0.654) and s.attrs['model'] == 'PVT'
    with pytest.raises(CXRDataError, match=r"pass model= one of \['PVT', 'ResNet50', 'VGG16'\]"):
        reference_values('000', 'Table I', 'cross-entropy', metric='sensitivity', split='ottawa')


def test_average_row_comes_last_after_non_nih_labels():
    "Defect (reported from seed 001): Tables IX-X listed `Average` before Enlarged Cardiomediastinum, Pleural Effusion and Fracture."
    order = reference_table('001', 'Table X', metric='loc_ior_0.5').index.tolist()
    assert order[-1] == 'Average' and order.index('Fracture') < order.index('Average')
