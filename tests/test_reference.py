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
    assert t.attrs['source'] == 'Nugroho, "An Aggregate Method for Thorax Diseases Classification", Table 8'   # the paper by reference
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


# ---------------------------------------------------------------------------------------------------------------------
# Every stored paper number against the paper's text, under its label (table, row, column): the seed texts are parsed
# here, independently of the CSVs, so a number moved to another row, column or table fails.

import re
from pathlib import Path

SEEDS = Path(__file__).resolve().parents[2] / 'shared' / 'seeds'
needs_seeds = pytest.mark.skipif(not SEEDS.is_dir(), reason='the seed texts are not beside this checkout')


def _key(s) -> str:
    "A name reduced to lower-case letters and digits, 'Mean'/'Mean AUC' as 'average': how the texts and the CSVs are compared."
    s = re.sub(r'<[^>]+>|\$|\\|_\{|\}|\*', '', str(s)).lower()
    s = re.sub(r'[^a-z0-9]', '', s)
    return 'average' if s in ('mean', 'meanauc') else s


def _num(s: str) -> float:
    return float(re.sub(r'<[^>]+>|\*', '', s).strip())


def _sections(text: str, prefix: str = 'TABLE ') -> dict[str, str]:
    "'Table IX' -> the text from its 'TABLE IX' line to the next table heading."
    heads = [(m.start(), m.group(1)) for m in re.finditer(rf'^{prefix}([IVX]+)\s*$', text, re.M)]
    return {f'Table {n}': text[a:(heads[k + 1][0] if k + 1 < len(heads) else len(text))] for k, (a, n) in enumerate(heads)}


SEED000_METRICS = {'accrec': 'accuracy', 'prec': 'precision', 'f1': 'f1', 'auc': 'auc', 'ppv': 'ppv', 'sensitivity': 'sensitivity',
                   'specificity': 'specificity', 'fdr': 'fdr', 'for': 'for', 'youdensindex': 'youden', 'dp': 'dp'}
SEED000_MODELS = ('PVT', 'VGG16', 'ResNet50')
SEED000_TASKS = {'Effusion vs No Finding': {'effusion'}, 'Pneumothorax vs No Finding': {'pneumothorax'},
                 'Subcutaneous emphysema vs No Finding': {'subcutaneous'},
                 'No Finding vs Effusion vs Pneumothorax': {'effusion', 'pneumothorax'}}


def _task_of(heading: str) -> str:
    "The CSV label of a task heading (a line or two of the text, OCR noise included)."
    words = {w for w in ('effusion', 'pneumothorax', 'subcutaneous') if w in heading.lower()}
    return next(label for label, w in SEED000_TASKS.items() if w == words)


def seed000_text_values() -> dict[tuple, float]:
    "(table, setting, split, model, label, metric) -> value, read from the seed 000 text."
    text, out = (SEEDS / '000_b327a660d03fbc7d.txt').read_text(), {}
    for table, sec in _sections(text).items():
        if table in ('Table I', 'Table II'):   # blocks 'Ottawa: <task>' / 'Metric PVT VGG16 ResNet50' / 'Sensitivity a/b ...'
            split = 'ottawa' if table == 'Table I' else 'nih'
            for block in re.split(r'^(?=(?:Ottawa|NIH):)', sec, flags=re.M)[1:]:
                lines = [l for l in block.strip().splitlines() if l.strip()]
                label = _task_of(lines[0])
                header = [c.strip() for c in lines[1].split('\t')]
                assert header == ['Metric', *SEED000_MODELS], (table, header)
                for line in lines[2:]:
                    cells = [c.strip() for c in line.split('\t')]
                    if _key(cells[0]) not in SEED000_METRICS: break
                    for model, cell in zip(SEED000_MODELS, cells[1:]):
                        for setting, v in zip(('cross-entropy', 'proposed loss'), cell.split('/')):
                            out[(table, setting, split, model, label, SEED000_METRICS[_key(cells[0])])] = _num(v)
            continue
        split = 'ottawa' if 'Ottawa dataset' in sec else 'nih'
        head, body = sec.split('Model\tMetric', 1)
        label = _task_of(head.split('being used.', 1)[1])
        settings = ['lambda=' + ('adaptive' if s == '*' else s) for s in re.findall(r'\\lambda = ([0-9.*]+)', body.splitlines()[0])]
        assert len(settings) == 5, (table, settings)
        block, first = -1, None
        for line in body.splitlines()[1:]:
            cells = [c.strip() for c in line.split('\t')]
            m = next(((k, c) for k, c in enumerate(cells) if _key(c) in SEED000_METRICS), None)
            if m is None: continue
            metric, values = SEED000_METRICS[_key(m[1])], [c for c in cells[m[0] + 1:] if c]
            first = first or metric
            block += metric == first                 # each model's block starts again at the first metric
            for setting, v in zip(settings, values, strict=True):
                out[(table, setting, split, SEED000_MODELS[block], label, metric)] = _num(v)
        assert block == 2, (table, block)            # three models, in the paper's order
    return out


@needs_seeds
@pytest.mark.parametrize('csv', ['seed000_supplement.csv', 'seed000_tables.csv'])
def test_every_seed000_value_is_the_papers_under_its_label(csv):
    text = seed000_text_values()
    ref = pd.read_csv(embedded_data_dir() / 'reference' / csv)
    keys = [(r.table, r.setting, r.split, r.model, r.label, r.metric) for r in ref.itertuples()]
    missing = [k for k in keys if k not in text]
    assert not missing, missing[:5]
    wrong = [(k, r.value, text[k]) for k, r in zip(keys, ref.itertuples()) if abs(r.value - text[k]) > 1e-9]
    assert not wrong, wrong[:5]
    in_text = {k for k in text if k[0] in set(ref.table)}
    assert set(keys) == in_text                     # and every number of those tables is stored


def _seed001_cells(cell: str, metric: str) -> dict[str, float]:
    "'0.77 (0.77, 0.78)' -> auc, auc_low, auc_high; '0.80 ± 0.00' -> auc, auc_std; '0.71' -> metric."
    if m := re.fullmatch(r'([0-9.]+) \(([0-9.]+), ([0-9.]+)\)', cell): return {metric: _num(m[1]), f'{metric}_low': _num(m[2]), f'{metric}_high': _num(m[3])}
    if m := re.fullmatch(r'([0-9.]+) ± ([0-9.]+)', cell): return {metric: _num(m[1]), f'{metric}_std': _num(m[2])}
    return {metric: _num(cell)}


def seed001_text_values() -> dict[tuple, float]:
    "(table, setting key, label key, metric) -> value, read from the seed 001 text."
    text, out = (SEEDS / '001_346aec97e7be795c.txt').read_text(), {}
    for table, sec in _sections(text).items():
        lines = [l for l in sec.splitlines() if '\t' in l]
        header = [c.strip() for c in lines[0].split('\t')]
        if header[0] == 'Abnormality':             # Tables I, II: a row per class, a column per method
            for line in lines[1:]:
                cells = [c.strip() for c in line.split('\t')]
                for setting, cell in zip(header[1:], cells[1:], strict=True):
                    for metric, v in _seed001_cells(cell, 'auc').items(): out[(table, _key(setting), _key(cells[0]), metric)] = v
        elif header[0] == 'Model' and table == 'Table VIII':    # a row per method, a column per class
            for line in lines[1:]:
                cells = [c.strip() for c in line.split('\t')]
                for label, cell in zip(header[1:], cells[1:], strict=True): out[(table, _key(cells[0]), _key(label), 'auc')] = _num(cell)
        elif header[0] == 'Model':                  # Table VI: Mean AUC, then T(IoU) = 0.1 per class on the next header line
            labels = [c.strip() for c in lines[1].split('\t') if c.strip()] + [header[-1]]   # 'Mean' ends the first header line
            for line in lines[2:]:
                cells = [c.strip() for c in line.split('\t') if c.strip()]
                out[(table, _key(cells[0]), 'average', 'auc')] = _num(cells[1])
                for label, cell in zip(labels, cells[2:], strict=True): out[(table, _key(cells[0]), _key(label), 'loc_iou_0.1')] = _num(cell)
        else:                                       # '$T(IoU)$ Model <classes> Mean': a threshold, then a row per method
            kind = 'loc_iou' if 'IoU' in header[0] else 'loc_ior'
            labels, thr = header[2:], None
            for line in lines[1:]:
                cells = [c.strip() for c in line.split('\t')]
                while cells and not cells[-1]: cells.pop()
                if re.fullmatch(r'[0-9.]+', cells[0]): thr, cells = cells[0], cells[1:]
                elif not cells[0]: cells = cells[1:]
                for label, cell in zip(labels, cells[1:], strict=True): out[(table, _key(cells[0]), _key(label), f'{kind}_{thr}')] = _num(cell)
    return out


@needs_seeds
def test_every_seed001_value_is_the_papers_under_its_label():
    text = seed001_text_values()
    ref = pd.read_csv(embedded_data_dir() / 'reference' / 'seed001_tables.csv')
    keys = [(r.table, _key(r.setting), _key(r.label), r.metric) for r in ref.itertuples()]
    missing = [k for k in keys if k not in text]
    assert not missing, missing[:5]
    wrong = [(k, r.value, text[k]) for k, r in zip(keys, ref.itertuples()) if abs(r.value - text[k]) > 1e-9]
    assert not wrong, wrong[:5]
    assert set(keys) == set(text)                   # every number of every table is stored, Table VII included
    assert len(keys) == len(set(keys))


def test_a_number_moved_to_another_row_fails(tmp_path):
    "The check is by label: swapping two values of one column (the same numbers, other rows) is caught."
    if not SEEDS.is_dir(): pytest.skip('the seed texts are not beside this checkout')
    text = seed001_text_values()
    ref = pd.read_csv(embedded_data_dir() / 'reference' / 'seed001_tables.csv')
    i, j = ref.index[(ref.table == 'Table I') & (ref.setting == 'Ours') & (ref.metric == 'auc')][:2]
    ref.loc[[i, j], 'value'] = ref.loc[[j, i], 'value'].to_numpy()
    wrong = [r for r in ref.itertuples() if abs(r.value - text[(r.table, _key(r.setting), _key(r.label), r.metric)]) > 1e-9]
    assert len(wrong) == 2


def test_seed000_cells_whose_youden_or_dp_do_not_recompute_are_flagged():
    "Tables I-II: a Youden's J or DP outside what the printed sensitivity and specificity (3 decimals) allow carries a note, and only those."
    ref = pd.read_csv(embedded_data_dir() / 'reference' / 'seed000_supplement.csv')
    dp = lambda se, sp: np.sqrt(3) / np.pi * (np.log10(se / (1 - se)) + np.log10(sp / (1 - sp)))
    h = 5e-4                                                                     # half a unit of the third decimal
    flagged, off = set(), set()
    for key, g in ref.groupby(['table', 'setting', 'split', 'model', 'label']):
        v = g.set_index('metric')['value']; se, sp = v['sensitivity'], v['specificity']
        if not se + sp - 1 - 3 * h <= v['youden'] <= se + sp - 1 + 3 * h: off.add((*key, 'youden'))
        if not dp(se - h, sp - h) - h <= v['dp'] <= dp(se + h, sp + h) + h: off.add((*key, 'dp'))
        flagged |= {(*key, m) for m, n in zip(g['metric'], g['note'].fillna('')) if 'does not recompute' in n}
    assert flagged == off and len(off) == 14
    assert ('Table I', 'cross-entropy', 'ottawa', 'VGG16', 'Effusion vs No Finding', 'youden') in off            # 0.410 printed, 0.346 implied
    assert ('Table II', 'cross-entropy', 'nih', 'ResNet50', 'Effusion vs No Finding', 'dp') in off               # 0.789 printed, 0.717 implied


# Seed 004 is a report: its numbers stand in prose, in numbered sections, and one table (Sec. 4.3). A number is "in its row"
# when it stands in its section, after its metric's name in the same sentence, and is said of its class: the class named
# just before it (or a list of classes ending there; a 'Class (AUROC: v)' parenthesis; 'v for Class'), or, in the
# Sec. 4.3 table, in its model's row and its metric's column.

SEED004_NAMES = {'common classes': 'common', 'rare classes': 'rare', 'Pleural_Thickening': 'Pleural Thickening'}
SEED004_METRIC = {'auroc': r'AUROC|AUC', 'f1': r'F1', 'precision': r'precision', 'recall': r'recall', 'percent': '%', 'images': 'images',
                  'parameters': 'parameters', 'auroc_epoch1': 'AUROC', 'auroc_epoch2': 'AUROC', 'pos_weight': 'weight',
                  'pos_weight_low': 'weight', 'pos_weight_high': 'weight'}


def _seed004_sections() -> dict[str, str]:
    "'4.2.1' -> its text (the body's heading, not the table of contents')."
    text = (SEEDS / '004_63ef8d8233eceb4f.txt').read_text()
    heads = [(m.start(), m.group(1)) for m in re.finditer(r'^(\d\.\d(?:\.\d)?)\.? [A-Z]', text, re.M)]
    return {n: text[a:(heads[k + 1][0] if k + 1 < len(heads) else len(text))] for k, (a, n) in enumerate(heads)}


def _said_of(s: str, h: int, n: int, label: str, labels: set[str]) -> bool:
    "Is the number at s[h:h+n] said of `label`?"
    named = lambda t: [(m.start(), m.end(), l) for l in labels for m in re.finditer(rf'\b{re.escape(l)}\b', t, re.I)]
    before, after = s[max(s.rfind('\n', 0, h), s.rfind('. ', 0, h)) + 1:h], s[h + n:h + n + 25]
    if before.rfind('(') > before.rfind(')'):           # 'Label (AUROC: 0.4990)': the label just before the parenthesis
        lead = re.sub(r'[*\s]+$', '', before[:before.rfind('(')])
        at_end = [l for _, e, l in named(lead) if e == len(lead)]
        if at_end: return at_end[0].lower() == label.lower()
    if follows := named(re.split(r'[),;]', after)[0]): return label.lower() in {l.lower() for *_, l in follows}   # '0.0688 for Consolidation'
    flat = re.sub(r'\([^()]*\)', '', before)            # parenthesised asides name no row
    found = sorted(named(flat))
    if not found: return False
    row, k = {found[-1][2].lower()}, len(found) - 1     # the last class named before the number, and a list it ends
    while k > 0 and not re.search(r'(?<![A-Za-z\d])\d', flat[found[k - 1][1]:found[k][0]]): k -= 1; row.add(found[k][2].lower())
    return label.lower() in row


def seed004_misplaced(ref: pd.DataFrame) -> list[tuple]:
    "The rows of `ref` (seed004_report.csv) whose non-zero value does not stand in its row of the report."
    from cxr_notebooks.data.labels import NIH_LABELS
    sections = _seed004_sections()
    labels = {SEED004_NAMES.get(l, l) for l in [*NIH_LABELS, *ref['label']]} - {'All', 'Average', 'Pleural_Thickening'}
    bad = []
    for r in ref[ref['value'] != 0].itertuples():
        s = sections[r.table.replace('Sec. ', '')]
        forms = dict.fromkeys(f for f in (f'{r.value:.4f}', f'{r.value:,.0f}', f'{r.value:.1f}', f'{r.value:.2f}', f'{r.value:g}')
                              if float(f.replace(',', '')) == r.value)   # as printed: no rounding of the stored number
        ok = False
        for h, n in [(m.start(), len(f)) for f in forms for m in re.finditer(r'(?<![\d.,])' + re.escape(f) + r'(?!\d)', s)]:
            if r.setting == 'comparative summary':     # the Sec. 4.3 table: row = model, column = metric
                cells = [c.strip() for c in s[s.rfind('\n', 0, h) + 1:s.find('\n', h)].split('\t')]
                ok |= cells[0] == r.label and cells[1 + ['auroc', 'f1', 'precision', 'recall'].index(r.metric)] == f'{r.value:.4f}'
                continue
            sentence = s[max(s.rfind('\n', 0, h), s.rfind('. ', 0, h)) + 1:h + n + 30]
            ok |= (re.search(SEED004_METRIC[r.metric], sentence, re.I) is not None
                   and (r.label in ('All', 'Average') or _said_of(s, h, n, SEED004_NAMES.get(r.label, r.label), labels)))
        if not ok: bad.append((r.table, r.setting, r.model, r.label, r.metric, r.value))
    return bad


@needs_seeds
def test_every_seed004_value_stands_in_its_row_of_the_report():
    "Tightened from 'the number appears somewhere in the report': in its section, after its metric, said of its class or model."
    ref = pd.read_csv(embedded_data_dir() / 'reference' / 'seed004_report.csv')
    assert len(ref) > 100 and set(ref.seed_file) == {'004_63ef8d8233eceb4f.txt'}
    assert seed004_misplaced(ref) == []


@needs_seeds
def test_a_seed004_value_moved_to_another_class_or_section_fails():
    ref = pd.read_csv(embedded_data_dir() / 'reference' / 'seed004_report.csv')
    sel = lambda lab, sec='Sec. 4.2.1', m='auroc': ref.index[(ref.table == sec) & (ref.label == lab) & (ref.metric == m)][0]
    moved = ref.copy()
    a, b = sel('Atelectasis'), sel('Consolidation')                          # 0.4990 and 0.5200 trade classes
    moved.loc[[a, b], 'value'] = moved.loc[[b, a], 'value'].to_numpy()
    c, d = sel('Edema', 'Sec. 4.2.4'), sel('Hernia', 'Sec. 4.2.4')          # 0.5839 and 0.5606, in one list of the ensemble's AUCs
    moved.loc[[c, d], 'value'] = moved.loc[[d, c], 'value'].to_numpy()
    e = sel('advanced_resnet', 'Sec. 4.3', 'f1'); moved.loc[e, 'metric'] = 'precision'   # another column of the Sec. 4.3 table
    f = sel('Hernia', 'Sec. 4.2.3'); moved.loc[f, 'table'] = 'Sec. 4.2.1'    # the rare model's Hernia AUROC filed under 4.2.1
    assert len(seed004_misplaced(moved)) == 6
