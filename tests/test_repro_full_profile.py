"""The `full` profile's loading path (what runs on Kaggle/Colab) end to end through papermill, on a stand-in download:
the 646 embedded real NIH images laid out like Kaggle's `/kaggle/input/data` (every seed), and for seed 001 also the
fabricated CheXpert-v1.0-small folder (`conftest.chexpert_stand_in`), at tiny training settings. Each executed notebook
is also scanned for tracebacks, errors and warnings (`conftest.notebook_output_problems`)."""
import gzip, json, shutil
from pathlib import Path
import pandas as pd
import pytest
from cxr_notebooks.core import embedded_data_dir
from cxr_notebooks.data.nih import nih_sample_table
from cxr_notebooks.reproduce.kit import check_record
from cxr_notebooks.reproduce.runner import run_reproduction
from conftest import check_headline, notebook_output_problems

TINY = dict(profile='full', image_size=32, epochs=1, batch_size=16, max_images=200, n_bootstrap=20, num_workers=0, pretrained=False)


@pytest.fixture(scope='module')
def nih_download(tmp_path_factory):
    """A folder laid out like Kaggle's NIH download (`Data_Entry_2017.csv`, `BBox_List_2017.csv`, the two list files,
    `images_001/images/*.png`) holding the 646 embedded real images. They are stored at 256 px, so the box file is
    rescaled from NIH's 1024 px to 256; the metadata rows are the real ones of those images; the list files are NIH's."""
    nih, root = embedded_data_dir() / 'nih', tmp_path_factory.mktemp('nih_download')
    images = root / 'images_001' / 'images'; images.mkdir(parents=True)
    sample = nih_sample_table(256)
    for p in sample['path']: shutil.copy(p, images / Path(p).name)
    entry = pd.read_csv(nih / 'Data_Entry_2017_v2020.csv.gz')
    entry[entry['Image Index'].isin(sample['image'])].to_csv(root / 'Data_Entry_2017.csv', index=False)
    boxes = pd.read_csv(nih / 'BBox_List_2017.csv')
    boxes.iloc[:, 2:6] = boxes.iloc[:, 2:6] / 4
    boxes.to_csv(root / 'BBox_List_2017.csv', index=False)
    for name in ('train_val_list.txt', 'test_list.txt'):
        (root / name).write_bytes(gzip.open(nih / f'{name}.gz').read())
    return root


@pytest.mark.slow
@pytest.mark.parametrize('seed,extra', [
    ('002', dict(compare_baseline=False)),
    ('003', dict(backbone='mobilenetv2_100', attention='with')),
    ('004', dict(model='chest_xray_attention', fraction=1.0, trained_epochs=0)),
])
def test_full_profile_reads_a_kaggle_layout(tmp_path, nih_download, seed, extra):
    "profile=full with data_root: the download's own metadata, lists and boxes are read (not the embedded copies)."
    rec = _full_run(seed, tmp_path, {**TINY, 'data_root': str(nih_download), **extra})
    assert f'NIH ChestX-ray14 at {nih_download}' in rec['data']['name']


def _full_run(seed: str, out, params: dict, measured: bool | None = None) -> dict:
    "Run `seed` at `params`; the checked metrics.json (profile full, an honest headline: `conftest.check_headline`) of a notebook that shows no problem."
    out_nb = run_reproduction(seed, out, params, html=False, progress=False)
    rec = json.loads((out / 'metrics.json').read_text())
    check_record(rec, str(out / 'metrics.json'))
    assert rec['profile'] == 'full'
    check_headline(rec['headline'], measured)
    assert notebook_output_problems(out_nb) == []
    return rec


#: seed 000 at tiny settings: a light backbone, lambda 1 and 0.5 with the authors' published loss, the shipped lung U-Net
TINY_000 = {**{k: v for k, v in TINY.items() if k != 'max_images'}, 'backbone': 'mobilenetv2_100', 'lam': '1,0.5', 'variant': 'published'}


@pytest.mark.slow
@pytest.mark.parametrize('task,classes', [('effusion', ['No Finding', 'Effusion']), ('pneumothorax', ['No Finding', 'Pneumothorax']),
                                          ('3class', ['No Finding', 'Effusion', 'Pneumothorax'])])
def test_seed000_nih_tasks_from_a_kaggle_layout(tmp_path, nih_download, task, classes):
    "Seed 000, profile=full: the task is cut from the download's own Data_Entry (single-label images), lung boxes by the U-Net."
    # the 646 images hold a few single-label images of each task (3class: no Effusion in the test part): too few to measure, no headline
    rec = _full_run('000', tmp_path, {**TINY_000, 'data_root': str(nih_download), 'task': task}, measured=False)
    assert 'toy test part' in rec['setup'] and '-p profile phantom' in rec['setup']
    assert f'NIH ChestX-ray14 at {nih_download}' in rec['data']['name'] and f', task {task}; toy test part' in rec['data']['name']
    summary = pd.read_csv(tmp_path / 'data_summary.csv', index_col=0)   # classes x parts, from the download's single-label rows
    assert list(summary.index[:len(classes)]) == classes and (summary.loc[classes].sum(axis=1) > 0).all()
    assert (summary.loc[classes, 'test'] == 0).any() == (task == '3class')
    single = pd.read_csv(nih_download / 'Data_Entry_2017.csv')['Finding Labels'].isin(classes).sum()
    assert summary.loc['images'].sum() <= single


#: seed 001 at tiny settings: the CPU backbone of the smoke profile instead of ResNet-50 at 512 px
TINY_001 = {**{k: v for k, v in TINY.items() if k != 'max_images'}, 'image_size': 48, 'backbone': 'resnet18', 'encoder_channels': 32,
            'show_test_selection': False, 'compare_baseline': False}


@pytest.mark.slow
def test_seed001_nih_official_split_from_a_kaggle_layout(tmp_path, nih_download):
    "Seed 001, profile=full, NIH official split: train_val/test from the download's list files, boxes from its BBox_List."
    rec = _full_run('001', tmp_path, {**TINY_001, 'data_root': str(nih_download), 'split': 'official'})
    test_list = set((nih_download / 'test_list.txt').read_text().split())
    assert rec['data']['split_sizes']['test'] == len(test_list & set(pd.read_csv(nih_download / 'Data_Entry_2017.csv')['Image Index']))
    assert f'NIH ChestX-ray14 at {nih_download}' in rec['setup']


@pytest.mark.slow
def test_seed001_chexpert_layout_at_the_full_profile(tmp_path, chexpert_stand_in):
    "Seed 001, profile=full, dataset=chexpert: CheXpert-v1.0-small's train.csv/valid.csv and the radiologist boxes' original sizes."
    rec = _full_run('001', tmp_path, {**TINY_001, 'dataset': 'chexpert', 'data_root': str(chexpert_stand_in),
                                      'original_sizes': str(chexpert_stand_in / 'original_sizes.csv')})
    assert rec['data']['dataset'] == 'chexpert' and rec['data']['split_sizes']['test'] == 14 and 'CheXpert at' in rec['setup']


def test_full_profile_without_data_root_is_a_short_error(tmp_path):
    from cxr_notebooks.reproduce.runner import ReproductionFailed
    with pytest.raises(ReproductionFailed) as e:
        run_reproduction('003', tmp_path, {**TINY, 'backbone': 'mobilenetv2_100'}, html=False, progress=False)
    assert e.value.ename == 'ValueError' and 'needs data_root' in e.value.evalue
