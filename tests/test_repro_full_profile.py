"""The `full` profile's loading path (what runs on Kaggle/Colab) end to end through papermill, on a stand-in download:
the 646 embedded real NIH images laid out like Kaggle's `/kaggle/input/data`, at tiny training settings."""
import gzip, json, shutil
from pathlib import Path
import pandas as pd
import pytest
from cxr_notebooks.core import embedded_data_dir
from cxr_notebooks.data.nih import nih_sample_table
from cxr_notebooks.reproduce.kit import check_record
from cxr_notebooks.reproduce.runner import run_reproduction

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
    run_reproduction(seed, tmp_path, {**TINY, 'data_root': str(nih_download), **extra}, html=False, progress=False)
    rec = json.loads((tmp_path / 'metrics.json').read_text())
    check_record(rec, str(tmp_path / 'metrics.json'))
    assert rec['profile'] == 'full' and f'NIH ChestX-ray14 at {nih_download}' in rec['data']['name']
    assert 0 <= rec['headline']['value'] <= 1 and rec['headline']['low'] <= rec['headline']['high']


def test_full_profile_without_data_root_is_a_short_error(tmp_path):
    from cxr_notebooks.reproduce.runner import ReproductionFailed
    with pytest.raises(ReproductionFailed) as e:
        run_reproduction('003', tmp_path, {**TINY, 'backbone': 'mobilenetv2_100'}, html=False, progress=False)
    assert e.value.ename == 'ValueError' and 'needs data_root' in e.value.evalue
