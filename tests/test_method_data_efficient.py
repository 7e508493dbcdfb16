"""Seed 004's method module (methods.data_efficient): the report's numbers against data/reference, rare labels, the
weighted BCE, the memory-replay step under the Learner's contract, epoch snapshots, and the threshold comparisons."""
import warnings
import numpy as np
import pandas as pd
import pytest
import torch
from cxr_notebooks.core import embedded_data_dir
from cxr_notebooks.eval.predictions import predict_table
from cxr_notebooks.data.labels import NIH_LABELS
from cxr_notebooks.methods import data_efficient as de
from cxr_notebooks.models.data_efficient import ProbabilityEnsemble
from cxr_notebooks.reproduce.reference import reference_values
from cxr_notebooks.train.learner import Learner, create_optimizer


def test_report_numbers_match_the_reference_csv():
    summary, section = de.REPORT['summary']
    for metric in de.SUMMARY_METRICS:
        ref = reference_values('004', 'Sec. 4.3', 'comparative summary', metric, split='test')
        assert ref.to_dict() == {m: v[metric] for m, v in summary.items()}
    assert reference_values('004', 'Sec. 4.2.1', 'trainable parameters', 'parameters', split='all')['All'] == de.REPORT['advanced_resnet_parameters'][0]
    assert reference_values('004', 'Sec. 4.2.1', 'pos_weight', 'pos_weight', split='train')['Hernia'] == de.REPORT['pos_weight'][0]['Hernia']
    sizes = {s: reference_values('004', 'Sec. 4.1.3', 'split sizes', 'images', split=s)['All'] for s in ('train', 'val', 'test')}
    assert sizes == de.REPORT['split_sizes'][0]
    for model, section in de.SECTIONS.items():   # every model's section has its per-class AUROCs
        assert len(reference_values('004', section, '2 epochs, threshold 0.5', 'auroc', split='test')) >= 1


def _table(counts: dict, n: int) -> pd.DataFrame:
    return pd.DataFrame({l: [1] * p + [0] * (n - p) for l, p in counts.items()})


def test_rare_labels_by_training_prevalence():
    t = _table({'A': 1, 'B': 2, 'C': 30}, 100)
    assert de.rare_labels(t, ['A', 'B', 'C'], 0.02) == ['A', 'B']
    assert de.rare_labels(t, ['A', 'B', 'C'], 0.015) == ['A']
    with pytest.raises(ValueError, match='no label'): de.rare_labels(t, ['C'], 0.02)
    with pytest.raises(ValueError, match='every label'): de.rare_labels(t, ['A', 'B'], 0.5)
    with pytest.raises(ValueError, match='max_prevalence'): de.rare_labels(t, ['A'], 0)


def test_loss_weights_are_the_reports_and_absent_classes_get_one():
    t = _table({'Hernia': 5, 'Edema': 60}, 3460)
    w = de.pos_weight_table(t, ['Hernia', 'Edema'])
    assert w.loc['Hernia', 'pos_weight'] == pytest.approx(690.9986, abs=1e-4) and w.loc['Hernia', 'report'] == '690.9986'
    assert 50 <= w.loc['Edema', 'pos_weight'] <= 66 and w.loc['Edema', 'report'] == '50–66'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        loss = de.seed004_loss(_table({'A': 3, 'B': 0}, 10), ['A', 'B'])
    assert loss.w_pos.tolist() == pytest.approx([7 / (3 + 1e-5), 1.0])


def test_loss_warning_says_the_weight_it_uses():
    "A class without training positives is warned about with the weight the loss gives it (1), not the formula's n/eps."
    with pytest.warns(UserWarning) as rec:
        loss = de.seed004_loss(_table({'A': 3, 'B': 0}, 10), ['A', 'B'])
    msgs = [str(w.message) for w in rec]
    assert len(msgs) == 1 and "['B']" in msgs[0] and 'pos_weight 1' in msgs[0] and 'n/eps' not in msgs[0]
    assert loss.w_pos.tolist() == pytest.approx([7 / (3 + 1e-5), 1.0])


def _batch(n=4, classes=6, rare=(1, 4)):
    y = torch.zeros(n, classes); y[0, rare[0]] = 1; y[1, rare[1]] = 1; y[2, 0] = 1
    return dict(image=torch.randn(n, 3, 32, 32), label=y, label_mask=torch.ones(n, classes), index=torch.arange(n))


def _rare_model(classes=6, rare=('b', 'e')):
    labels = list('abcdef')[:classes]
    m = de.build_model('rare_disease', labels, rare=list(rare), memory_size=4)
    return m, labels


def test_memory_replay_step_follows_the_learner_contract():
    torch.manual_seed(0)
    m, labels = _rare_model()
    loss_fn = torch.nn.BCEWithLogitsLoss()
    b = _batch()
    loss, out = de.memory_replay_step(m.train(), b, loss_fn)
    assert out['logits'].shape == (4, 6) and set(out['loss_terms']) == {'supervised', 'replay'}
    assert out['loss_terms']['replay'] == 0 and m.memory.writes.tolist() == [1, 1]   # replayed before storing this batch
    loss, out = de.memory_replay_step(m, b, loss_fn)
    assert out['loss_terms']['replay'] > 0
    assert loss.item() == pytest.approx((out['loss_terms']['supervised'] + m.replay_weight * out['loss_terms']['replay']).item(), rel=1e-5)
    m.eval()
    with torch.no_grad():
        val_loss, logits = de.memory_replay_step(m, b, loss_fn)
        none, logits2 = de.memory_replay_step(m, b, None)
    assert torch.is_tensor(logits) and val_loss.ndim == 0 and none is None and torch.equal(logits, logits2)
    assert m.memory.writes.tolist() == [2, 2]      # evaluation neither stores nor replays
    assert de.training_step('rare_disease') is de.memory_replay_step and de.training_step('advanced_resnet') is not de.memory_replay_step


def test_memory_replay_step_in_a_learner_records_the_replay_term(tmp_path):
    torch.manual_seed(0)
    m, labels = _rare_model()
    batches = [_batch(), _batch()]
    learner = Learner(m, batches, [_batch()], torch.nn.BCEWithLogitsLoss(), create_optimizer('adam', m, 1e-3), metric=('val_loss', None),
                      mode='min', out_dir=tmp_path, device='cpu', progress=False, step=de.memory_replay_step)
    h = learner.fit(2)
    assert {'train_supervised', 'train_replay', 'val_loss'} <= set(h.columns) and h['train_replay'].iloc[-1] > 0
    assert m.memory.writes.tolist() == [4, 4]      # 2 epochs x 2 batches x one positive per rare class


def test_build_model_names():
    with pytest.raises(ValueError, match='trained members'): de.build_model('ensemble', ['a', 'b'])
    with pytest.raises(ValueError, match='rare'): de.build_model('rare_disease', ['a', 'b'], rare=['z'])
    m = de.build_model('chest_xray_attention', ['a', 'b', 'c'])
    assert m.head.out_features == 3 and m.cxr_backbone == 'chest_xray_attention_net'
    ens = de.ensemble_of([m, de.build_model('chest_xray_attention', ['a', 'b', 'c'])])
    assert isinstance(ens, ProbabilityEnsemble) and not ens.training


class _Images(torch.utils.data.Dataset):
    "Random images whose first channel's mean carries label 0."
    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.y = (torch.rand(n, 2, generator=g) < 0.4).float(); self.y[0] = 1; self.y[1] = 0
        self.x = torch.randn(n, 3, 32, 32, generator=g) + self.y[:, :1, None, None]
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return dict(image=self.x[i], label=self.y[i], label_mask=torch.ones(2), index=i)


@pytest.mark.slow
def test_snapshots_continue_one_run_and_equal_a_shorter_run(tmp_path):
    "The 1-epoch snapshot of a (1, 3)-epoch run is the model a 1-epoch run selects; the later snapshot continues it."
    kw = dict(loss_fn=torch.nn.BCEWithLogitsLoss(), batch_size=8, lr=1e-3, num_workers=0, device='cpu', progress=False, seed=0)
    torch.manual_seed(0); a = de.build_model('chest_xray_attention', ['x', 'y'])
    h, snaps = de.train_snapshots(a, _Images(24, 0), _Images(16, 1), out_dir=tmp_path / 'a', epochs=(3, 1), **kw)
    torch.manual_seed(0); b = de.build_model('chest_xray_attention', ['x', 'y'])
    _, short = de.train_snapshots(b, _Images(24, 0), _Images(16, 1), out_dir=tmp_path / 'b', epochs=(1,), **kw)
    assert sorted(snaps) == [1, 3] and len(h) == 3 and list(h['epoch']) == [1, 2, 3]
    for p, q in zip(snaps[1].state_dict().values(), short[1].state_dict().values()): assert torch.equal(p, q)
    assert any(not torch.equal(p, q) for p, q in zip(snaps[1].state_dict().values(), snaps[3].state_dict().values()))
    table = pd.DataFrame({'image': list('abcdefghijklmnop'), 'patient_id': range(16),
                          'x': _Images(16, 1).y[:, 0].numpy(), 'y': _Images(16, 1).y[:, 1].numpy()})
    pred = predict_table(snaps[3], table, ['x', 'y'], dataset=_Images(16, 1), num_workers=0)
    assert list(pred.columns) == ['image', 'patient_id', 'y_x', 'y_y', 'p_x', 'p_y'] and ((pred[['p_x', 'p_y']] >= 0) & (pred[['p_x', 'p_y']] <= 1)).all().all()


def _pred(n, seed, low=0.05, high=0.35):
    "A prediction table whose scores rank the truth well but all lie below 0.5 (a fixed 0.5 threshold calls nothing)."
    rng = np.random.default_rng(seed)
    y = (rng.random((n, 3)) < [0.3, 0.1, 0.05]).astype(float); y[:2] = [[1, 1, 1], [0, 0, 0]]
    p = low + (high - low) * np.clip(0.35 * y + 0.65 * rng.random(y.shape), 0, 1)
    return pd.DataFrame({'image': [f'i{k}' for k in range(n)], 'patient_id': np.arange(n),
                         **{f'y_{l}': y[:, k] for k, l in enumerate('abc')}, **{f'p_{l}': p[:, k] for k, l in enumerate('abc')}})


def test_validation_thresholds_fix_the_zero_f1_rows():
    val, test = _pred(300, 0), _pred(300, 1)
    t = de.threshold_comparison(val, test, list('abc'), n_resamples=30)
    fixed = t[(t.method == 'fixed') & t.label.isin(list('abc'))]
    assert (fixed.f1 == 0).all() and (fixed.threshold == 0.5).all()
    for m in ('youden', 'f1'):
        chosen = t[(t.method == m) & t.label.isin(list('abc'))]
        assert (chosen.f1 > 0).all() and (chosen.threshold < 0.5).all()
        assert chosen.auroc.tolist() == fixed.auroc.tolist()
    grid = de.training_comparison({'run': (val, test)}, list('abc'), ('fixed', 'youden'), n_resamples=30).set_index('thresholds')
    assert grid.loc['fixed', 'zero_f1_classes'] == 3 and grid.loc['youden', 'zero_f1_classes'] == 0
    assert grid.loc['youden', 'f1_low'] <= grid.loc['youden', 'f1'] <= grid.loc['youden', 'f1_high']
    s = de.summary_vs_report(t, 'ensemble', 'setup line', method='youden')
    assert s.label.tolist() == list(de.SUMMARY_METRICS) and s.paper.tolist() == [0.5228, 0.0245, 0.0432, 0.0365]
    assert s.attrs['setup'] == 'setup line' and '4.3' in s.attrs['paper_source'] and 'ensemble' in s.attrs['paper_source']
    with pytest.raises(ValueError, match='summary'): de.summary_vs_report(t, 'densenet', 'x')


def test_class_distribution_beside_the_report():
    parts = {'train': _table({'Hernia': 1, 'Effusion': 10}, 100), 'test': _table({'Hernia': 0, 'Effusion': 20}, 50)}
    d = de.class_distribution(parts, ['Hernia', 'Effusion'], {'train': pd.Series({'Hernia': 0.1, 'Effusion': 10.3})})
    assert d.loc['Effusion', 'train'] == 10 and d.loc['Effusion', 'test'] == 40
    assert d.loc['Hernia', 'train difference'] == pytest.approx(0.9) and 'test (report)' not in d.columns


@pytest.mark.slow
def test_notebook_rare_disease_run_with_snapshots_and_folds(tmp_path):
    "The reproduction notebook with the memory-replay model, the report's epochs and a continued run, and 2 folds."
    import json
    from cxr_notebooks.reproduce.kit import check_record
    from cxr_notebooks.reproduce.runner import repro_notebooks, run_reproduction
    smallest = repro_notebooks()['004'].smallest
    run_reproduction('004', tmp_path, {**smallest, 'model': 'rare_disease', 'trained_epochs': 2, 'folds': 2, 'threshold': 'f1'},
                     html=False, progress=False)
    rec = json.loads((tmp_path / 'metrics.json').read_text())
    check_record(rec)
    r = rec['results']
    assert r['snapshots'] == [1, 2] and r['rare_labels'] and r['kfold_auc'] is not None
    assert r['history']['rare_disease']['train_replay'][-1] > 0
    assert [g['run'] for g in r['epochs_thresholds_grid']] == ['1 epochs', '1 epochs', '2 epochs', '2 epochs']
    assert {g['thresholds'] for g in r['epochs_thresholds_grid']} == {'fixed', 'f1'}
    summary = rec['comparisons']['summary_rare_disease']
    assert [row['paper'] for row in summary['rows']] == [0.5298, 0.1345, 0.0645, 0.8405] and '4.3' in summary['paper_source']
    assert (tmp_path / 'predictions_rare_disease_2epochs.csv').is_file() and (tmp_path / 'cv_auroc.csv').is_file()


def test_the_5_percent_protocol_on_all_nih_metadata_beside_the_report():
    "The 004 notebook's full-metadata table at seed 0: within 5 points of every §4.1.4 percentage; 6 Hernia in train (the report's weight implies 5)."
    from cxr_notebooks.data.nih import embedded_data_entry
    from cxr_notebooks.data.splits import seed004_subsample_split
    from cxr_notebooks.reproduce import reference
    nih = embedded_data_dir() / 'nih'
    parts = seed004_subsample_split(embedded_data_entry(), nih / 'train_val_list.txt.gz', nih / 'test_list.txt.gz', seed=0)
    report = {s: reference.reference_values('004', 'Sec. 4.1.4', 'class distribution', 'percent', split=s) for s in parts}
    d = de.class_distribution(parts, NIH_LABELS, report)
    diffs = d[[f'{s} difference' for s in parts]].stack()
    assert len(diffs) >= 12 and diffs.abs().max() < 5
    assert round(d.loc['Infiltration', 'train'], 2) == 15.35 and int(parts['train']['Hernia'].sum()) == 6


def test_run_plan_names_members_and_snapshots_and_stops_on_bad_values():
    assert de.run_plan('ensemble', 2, 40) == (list(de.MODELS), [2, 40])
    assert de.run_plan('rare_disease', 2, 0) == (['rare_disease'], [2])
    for args, word in ((('resnet', 2), 'model'), (('ensemble', 2, 1), 'trained_epochs')):
        with pytest.raises(ValueError, match=word): de.run_plan(*args)
