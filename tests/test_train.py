"Contract tests for cxr_notebooks.train.learner: exact resume, determinism, NaN handling, early stopping, accumulation."
import functools
import math
import re
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

import cxr_notebooks.train.learner as train_mod
from cxr_notebooks.core import CXRDataError, seed_everything
from cxr_notebooks.train.learner import (Learner, NonFiniteLossError, atomic_save, create_optimizer, create_scheduler,
                                 predict)

COLS = ['epoch', 'train_loss', 'val_loss', 'val_auroc', 'lr']


class Toy(Dataset):
    "Dict samples: 1x6x6 noise with a bright pixel per positive label; `label_mask` zeros where asked."
    def __init__(self, n, seed, masked=False):
        g = torch.Generator().manual_seed(seed)
        self.y = (torch.rand(n, 2, generator=g) < 0.5).float()
        self.x = torch.randn(n, 1, 6, 6, generator=g)
        self.x[:, 0, 1, 1] += 2 * self.y[:, 0]; self.x[:, 0, 4, 4] += 2 * self.y[:, 1]
        self.m = torch.ones(n, 2)
        if masked: self.m[::3, 1] = 0
    def __len__(self): return len(self.y)
    def __getitem__(self, i): return {'image': self.x[i], 'label': self.y[i], 'label_mask': self.m[i], 'index': i}


def cnn():
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(108, 2))


def make(out_dir, opt='adam', sched='cosine', generator=False, init_seed=0, loss=None, horizon=4, sched_kw=None,
         valid=None, named=False, **kw):
    "A fresh model/loaders/optimizer/scheduler (built for `horizon` epochs, or by name in `fit` if `named`)/Learner."
    seed_everything(init_seed)
    model = cnn()
    gen = torch.Generator().manual_seed(5) if generator else None
    tdl = DataLoader(Toy(40, 1), batch_size=8, shuffle=True, generator=gen)
    vdl = DataLoader(valid or Toy(24, 2), batch_size=12)
    o = create_optimizer(opt, model, lr=1e-2)
    scheduler = sched if named else create_scheduler(sched, o, horizon, **(sched_kw or {}))
    return Learner(model, tdl, vdl, loss or nn.BCEWithLogitsLoss(), o, scheduler, out_dir=out_dir, progress=False, **kw)


def weights(learn):
    return [t.clone() for t in learn.model.state_dict().values()]


def same_weights(a, b):
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


class Killed(Exception): pass


def killing_loss(at_call, loss=nn.BCEWithLogitsLoss(), value=None):
    "A loss that raises `Killed` (or returns `value`, e.g. NaN) at its `at_call`-th training call."
    calls = [0]
    def f(logits, target):
        if torch.is_grad_enabled():
            calls[0] += 1
            if calls[0] == at_call:
                if value is None: raise Killed()
                return loss(logits, target) * value
        return loss(logits, target)
    return f


@pytest.mark.parametrize('opt,sched,generator,how', [
    ('ranger', 'cosine', False, 'kill'), ('adam', 'plateau', True, 'kill'), ('sgd', 'step', False, 'fit2')])
def test_resume_equals_uninterrupted(tmp_path, opt, sched, generator, how):
    full = make(tmp_path / 'full', opt, sched, generator)
    h_full = full.fit(4)
    if how == 'kill':  # killed in the middle of epoch 3 (5 batches per epoch): last.pt is epoch 2's
        with pytest.raises(Killed): make(tmp_path / 'cut', opt, sched, generator, loss=killing_loss(13)).fit(4)
    else:
        make(tmp_path / 'cut', opt, sched, generator).fit(2)
    assert torch.load(tmp_path / 'cut' / 'last.pt', weights_only=True)['epoch'] == 2
    assert len(pd.read_csv(tmp_path / 'cut' / 'history.csv')) == 2
    resumed = make(tmp_path / 'cut', opt, sched, generator, init_seed=123)  # other init: weights must come from last.pt
    h_res = resumed.fit(4, resume=True)
    pd.testing.assert_frame_equal(h_res[COLS], h_full[COLS])
    assert same_weights(weights(resumed), weights(full))
    assert resumed.best_epoch == full.best_epoch
    assert not list((tmp_path / 'cut').glob('*.tmp*'))


def test_determinism_and_files(tmp_path):
    a, b = make(tmp_path / 'a'), make(tmp_path / 'b')
    ha, hb = a.fit(3), b.fit(3)
    pd.testing.assert_frame_equal(ha[COLS], hb[COLS])
    assert same_weights(weights(a), weights(b))
    assert ha.columns.tolist() == COLS + ['seconds', 'best_epoch'] and ha['epoch'].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / 'a' / 'history.csv')[COLS], ha[COLS], check_exact=False)
    assert pd.read_json(tmp_path / 'a' / 'history.json')['epoch'].tolist() == [1, 2, 3]
    ck = torch.load(tmp_path / 'a' / 'last.pt', weights_only=True)
    assert {'model', 'optimizer', 'scaler', 'epoch', 'history', 'best_metric', 'best_epoch',
            'bad_epochs', 'rng'} <= set(ck)  # no scheduler state: fit rebuilds/rewinds it and replays the history
    best = torch.load(tmp_path / 'a' / 'best.pt', weights_only=True)
    assert best['epoch'] == a.best_epoch == int(ha.loc[ha['val_auroc'].idxmax(), 'epoch'])
    assert same_weights(list(best['model'].values()), weights(a))  # model selection: best weights loaded


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    make(tmp_path).fit(2)
    files = {n: (tmp_path / n).read_bytes() for n in ('last.pt', 'best.pt', 'history.csv')}
    bad = make(tmp_path, loss=killing_loss(2, value=float('nan')))
    with pytest.raises(NonFiniteLossError, match=r'epoch 3, batch 1'):
        bad.fit(4, resume=True)
    assert {n: (tmp_path / n).read_bytes() for n in files} == files
    inf = make(tmp_path / 'inf', loss=killing_loss(7, value=float('inf')))
    with pytest.raises(NonFiniteLossError, match=r'epoch 2, batch 1'):
        inf.fit(2)
    assert torch.load(tmp_path / 'inf' / 'last.pt', weights_only=True)['epoch'] == 1


def scripted(values):
    it = iter(values)
    return ('score', lambda y, p: next(it))


def test_early_stopping_restores_best(tmp_path):
    es = make(tmp_path / 'es', metric=scripted([0.5, 0.9, 0.8, 0.85, 0.95, 0.99]), early_stopping_patience=2)
    h = es.fit(6)
    assert h['epoch'].tolist() == [1, 2, 3, 4] and es.stopped_early and es.best_epoch == 2 and es.best_metric == 0.9
    two = make(tmp_path / 'two', metric=scripted([0.5, 0.9]))
    two.fit(2)  # the weights after epoch 2 of the same run
    assert same_weights(weights(es), weights(two))
    again = make(tmp_path / 'es', metric=scripted([]), early_stopping_patience=2)
    assert len(again.fit(6, resume=True)) == 4  # a stopped run stays stopped
    assert same_weights(weights(again), weights(two))


def test_min_mode_and_val_loss_metric(tmp_path):
    learn = make(tmp_path, metric=('val_loss', None), mode='min')
    h = learn.fit(3)
    assert (h['val_loss'] == h['val_loss']).all() and learn.best_epoch == int(h.loc[h['val_loss'].idxmin(), 'epoch'])


def test_nan_metric_never_best(tmp_path):
    learn = make(tmp_path, metric=scripted([0.5, float('nan'), 0.4]))
    learn.fit(3)
    assert learn.best_epoch == 1


def linear_run(tmp_path, batch_size, accum, n=8, clip=None):
    seed_everything(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 2))
    w0 = [p.detach().clone() for p in model.parameters()]
    dl = DataLoader(Toy(n, 1), batch_size=batch_size)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    steps = [0]; opt.register_step_post_hook(lambda *a: steps.__setitem__(0, steps[0] + 1))
    Learner(model, dl, DataLoader(Toy(8, 2), batch_size=8), nn.BCEWithLogitsLoss(), opt, out_dir=tmp_path,
            grad_accum_steps=accum, clip_grad_norm=clip, progress=False).fit(1)
    return [p.detach() for p in model.parameters()], w0, steps[0]


def test_grad_accumulation_matches_big_batch(tmp_path):
    w_acc, w0, s_acc = linear_run(tmp_path / 'a', 4, 2)
    w_big, _, s_big = linear_run(tmp_path / 'b', 8, 1)
    assert s_acc == s_big == 1
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w_acc, w_big))
    assert not all(torch.equal(a, b) for a, b in zip(w_acc, w0))
    _, _, s = linear_run(tmp_path / 'c', 4, 2, n=12)  # 3 batches: a step after 2 and one at the epoch end
    assert s == 2


def test_clip_grad_norm_bounds_the_step(tmp_path):
    w, w0, _ = linear_run(tmp_path, 8, 1, clip=1e-3)  # SGD lr 0.5: the step norm is at most 0.5 * 1e-3
    step = torch.cat([(a - b).flatten() for a, b in zip(w, w0)]).norm()
    assert 0 < step <= 0.5e-3 * (1 + 1e-5)


def masked_bce(logits, target, mask=None):
    l = nn.functional.binary_cross_entropy_with_logits(logits, target, reduction='none')
    return l.mean() if mask is None else (l * mask).sum() / mask.sum()


def test_label_mask_passed_or_clear_error(tmp_path):
    seed_everything(0); model = cnn()
    dl = DataLoader(Toy(12, 1, masked=True), batch_size=6)
    opt = create_optimizer('adam', model, 1e-3)
    with pytest.raises(TypeError, match='label_mask'):
        Learner(model, dl, dl, nn.BCEWithLogitsLoss(), opt, out_dir=tmp_path / 'a', progress=False).fit(1)
    seen = []
    def spy(logits, target, mask=None):
        seen.append(mask is not None); return masked_bce(logits, target, mask)
    Learner(model, dl, dl, spy, opt, out_dir=tmp_path / 'b', progress=False).fit(1)
    assert all(seen) and len(seen) == 4  # 2 train + 2 valid batches, every one with zeros in its mask
    ok = DataLoader(Toy(12, 1), batch_size=6)  # all-ones mask: the 2-argument call
    Learner(model, ok, ok, nn.BCEWithLogitsLoss(), opt, out_dir=tmp_path / 'c', progress=False).fit(1)


def test_create_optimizer_names():
    m = nn.Linear(3, 2)
    r = create_optimizer('ranger', m, lr=1e-3, weight_decay=1e-4)
    assert type(r).__name__ == 'Lookahead' and type(r._base_optimizer).__name__ == 'RAdam'
    assert r.param_groups[0]['lr'] == 1e-3
    assert isinstance(create_optimizer('AdamW', m, 1e-3), torch.optim.AdamW)
    assert isinstance(create_optimizer('sgd', m, 1e-1), torch.optim.SGD)
    with pytest.raises(ValueError, match='nosuch'): create_optimizer('nosuch', m, 1e-3)


def test_create_scheduler():
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0)
    p = create_scheduler('plateau', opt, 100)
    assert (p.mode, p.factor, p.patience) == ('max', 0.1, 10)
    assert create_scheduler('plateau', opt, 100, patience=3, mode='min').patience == 3
    assert create_scheduler('cosine', opt, 9).T_max == 9 and create_scheduler('step', opt, 9).step_size == 3
    assert create_scheduler(None, opt, 9) is None
    with pytest.raises(ValueError, match="'onecycle'"): create_scheduler('onecycle', opt, 9)


def test_predict_shapes():
    seed_everything(0); model = cnn()
    dl = DataLoader(Toy(10, 3), batch_size=4)
    probs, labels = predict(model, dl)
    assert probs.shape == labels.shape == (10, 2) and probs.dtype == np.float32
    assert ((probs > 0) & (probs < 1)).all() and np.array_equal(labels, Toy(10, 3).y.numpy())
    soft, _ = predict(model, dl, device='cpu', activation='softmax')
    assert np.allclose(soft.sum(1), 1, atol=1e-6)
    with pytest.raises(KeyError, match="'label'"): predict(model, [{'image': torch.zeros(2, 1, 6, 6)}])
    with pytest.raises(ValueError, match='no batches'): predict(model, [])
    with pytest.raises(ValueError, match='activation'): predict(model, dl, activation='relu')


def test_atomic_save_survives_kill_mid_write(tmp_path, monkeypatch):
    path = tmp_path / 'last.pt'
    atomic_save({'epoch': 1}, path)
    def dies(obj, f):
        open(f, 'wb').write(b'half a checkpo'); raise KeyboardInterrupt
    monkeypatch.setattr(train_mod.torch, 'save', dies)
    with pytest.raises(KeyboardInterrupt): atomic_save({'epoch': 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {'epoch': 1}


def test_bad_arguments(tmp_path):
    model = cnn(); opt = create_optimizer('adam', model, 1e-3)
    args = (model, [], [], nn.BCEWithLogitsLoss(), opt)
    with pytest.raises(ValueError, match="mode='maximum'"): Learner(*args, mode='maximum', out_dir=tmp_path)
    with pytest.raises(ValueError, match='grad_accum_steps=0'): Learner(*args, grad_accum_steps=0, out_dir=tmp_path)
    with pytest.raises(ValueError, match="amp='fp8'"): Learner(*args, amp='fp8', out_dir=tmp_path)
    with pytest.raises(ValueError, match='activation'): Learner(*args, activation='tanh', out_dir=tmp_path)


def test_resume_without_checkpoint_starts_fresh(tmp_path, capsys):
    h = make(tmp_path / 'new').fit(1, resume=True)
    assert len(h) == 1 and 'not found' in capsys.readouterr().out


# --- Defects: resume after SIGKILL with loader workers, extended horizon, plateau mode, last accumulation group,
# --- a validation split without positives.

KILL_SCRIPT = textwrap.dedent('''
    "Train 3 epochs with one-worker loaders and random augmentation; argv: out_dir, resume (0/1), SIGKILL at training call."
    import os, random, signal, sys
    import numpy as np
    import torch
    from torch import nn
    from cxr_notebooks.core import seed_everything
    from cxr_notebooks.data.datasets import make_dataloader
    from cxr_notebooks.train.learner import Learner, create_optimizer, create_scheduler

    class Jittered(torch.utils.data.Dataset):
        "A bright pixel per positive label under noise, brightness and flips drawn in the worker (torch, NumPy, random)."
        def __init__(self, n, seed):
            self.y = (torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) < 0.5).float()
        def __len__(self): return len(self.y)
        def __getitem__(self, i):
            x = torch.randn(1, 6, 6) * 0.5 + float(np.random.rand())
            x[0, 1, 1] += 2 * self.y[i, 0]; x[0, 4, 4] += 2 * self.y[i, 1]
            return {'image': x.flip(-2) if random.random() < 0.5 else x, 'label': self.y[i], 'label_mask': torch.ones(2), 'index': i}

    if __name__ == '__main__':
        out, resume, kill_at = sys.argv[1], sys.argv[2] == '1', int(sys.argv[3])
        torch.set_num_threads(1); seed_everything(0)
        model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.2), nn.Linear(108, 2))
        train = make_dataloader(Jittered(40, 1), 8, shuffle=True, seed=3, num_workers=1)
        valid = make_dataloader(Jittered(24, 2), 12, shuffle=False, seed=4, num_workers=1)
        calls = [0]
        def loss(logits, target):
            if torch.is_grad_enabled():
                calls[0] += 1
                if calls[0] == kill_at: os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no cleanup, no finally
            return nn.functional.binary_cross_entropy_with_logits(logits, target)
        opt = create_optimizer('adam', model, 1e-2)
        learn = Learner(model, train, valid, loss, opt, create_scheduler('cosine', opt, 3), out_dir=out, progress=False)
        learn.fit(3, resume=resume)
        torch.save(learn.model.state_dict(), os.path.join(out, 'final.pt'))
''')


@pytest.mark.slow
def test_resume_after_sigkill_with_loader_workers(tmp_path):
    script = tmp_path / 'train.py'; script.write_text(KILL_SCRIPT)
    def run(name, resume=False, kill_at=0):
        log = tmp_path / f'{name}-{int(resume)}.log'
        with open(log, 'w') as f:  # not a pipe: an orphaned loader worker must not hold the call open
            rc = subprocess.run([sys.executable, str(script), str(tmp_path / name), str(int(resume)), str(kill_at)],
                                stdout=f, stderr=subprocess.STDOUT, timeout=600).returncode
        return rc, log.read_text()
    rc, log = run('full'); assert rc == 0, log
    rc, log = run('cut', kill_at=6)  # 5 batches per epoch: killed at epoch 2's first step, right after epoch 1's last.pt
    assert rc == -9, log
    assert torch.load(tmp_path / 'cut' / 'last.pt', weights_only=True)['epoch'] == 1
    rc, log = run('cut', resume=True); assert rc == 0, log
    hist = {n: pd.read_csv(tmp_path / n / 'history.csv').drop(columns='seconds') for n in ('full', 'cut')}
    assert len(hist['full']) == 3
    pd.testing.assert_frame_equal(hist['cut'], hist['full'], check_exact=True)
    for f in ('final.pt', 'last.pt'):
        a, b = (torch.load(tmp_path / n / f, weights_only=True) for n in ('full', 'cut'))
        if f == 'last.pt': a, b = a['model'], b['model']
        assert same_weights(list(a.values()), list(b.values())), f


def test_extending_a_finished_run_follows_the_new_horizon(tmp_path):
    h_full = make(tmp_path / 'full', horizon=3).fit(3)
    assert h_full['lr'].round(6).tolist() == [0.01, 0.0075, 0.0025]
    make(tmp_path / 'ext', horizon=1).fit(1)  # the run as first planned: 1 epoch, cosine over 1 epoch
    h_ext = make(tmp_path / 'ext', horizon=3).fit(3, resume=True)  # then extended to 3 (scheduler built for 3)
    pd.testing.assert_frame_equal(h_ext[COLS], h_full[COLS])


def test_named_scheduler_is_built_for_each_fit_horizon(tmp_path):
    full = make(tmp_path / 'full', horizon=3)
    h_full = full.fit(3)
    learn = make(tmp_path / 'ext', named=True)
    learn.fit(1)
    h_ext = learn.fit(3, resume=True)  # the same object: the named scheduler follows fit's horizon
    pd.testing.assert_frame_equal(h_ext[COLS], h_full[COLS])
    assert same_weights(weights(learn), weights(full))


def test_plateau_follows_the_learner_mode(tmp_path):
    falling = [0.9, 0.8, 0.7, 0.6]
    with pytest.raises(ValueError, match="mode 'max'.*mode='min'"):  # an instance watching the wrong direction
        make(tmp_path / 'a', sched='plateau', sched_kw={'patience': 0}, metric=scripted(falling), mode='min')
    ok = make(tmp_path / 'b', sched='plateau', sched_kw={'patience': 0, 'mode': 'min'}, metric=scripted(falling), mode='min')
    assert ok.fit(4)['lr'].tolist() == [0.01] * 4  # a falling loss never cuts the LR
    factory = functools.partial(create_scheduler, 'plateau', patience=0)  # built in fit with the learner's mode
    named = make(tmp_path / 'c', 'adam', factory, named=True, metric=scripted(falling), mode='min')
    assert named.fit(4)['lr'].tolist() == [0.01] * 4
    rising = make(tmp_path / 'd', 'adam', factory, named=True, metric=scripted(falling[::-1]), mode='max')
    assert rising.fit(4)['lr'].tolist() == [0.01] * 4
    cut = make(tmp_path / 'e', 'adam', factory, named=True, metric=scripted(falling), mode='max')
    assert cut.fit(4)['lr'].round(6).tolist() == [0.01, 0.01, 0.001, 0.0001]


def test_partial_accumulation_group_is_averaged_over_its_batches(tmp_path):
    # 5 batches of 4 with grad_accum_steps=2: groups of 2, 2 and 1 batches = big batches of 8, 8 and 4
    w_acc, w0, s_acc = linear_run(tmp_path / 'a', 4, 2, n=20)
    w_big, _, s_big = linear_run(tmp_path / 'b', 8, 1, n=20)
    assert s_acc == s_big == 3
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(w_acc, w_big))


def test_validation_without_positives_stops_before_a_second_epoch(tmp_path):
    empty = Toy(24, 2); empty.y.zero_()
    calls = []
    def loss(logits, target):
        if torch.is_grad_enabled(): calls.append(1)
        return nn.functional.binary_cross_entropy_with_logits(logits, target)
    learn = make(tmp_path, valid=empty, loss=loss)
    with pytest.raises(CXRDataError, match=r"val_auroc.*no class with both positive and negative labels"):
        learn.fit(3)
    assert len(calls) <= 5 and learn.epoch == 0 and not (tmp_path / 'last.pt').exists()


def test_validation_table_without_positives_stops_before_training(tmp_path, sample_table):
    from cxr_notebooks.data.datasets import CXRDataset, make_dataloader
    from cxr_notebooks.data.labels import NIH_LABELS
    healthy = sample_table[sample_table[list(NIH_LABELS)].sum(axis=1) == 0].head(4)
    valid = make_dataloader(CXRDataset(healthy, NIH_LABELS, image_size=32), 2, shuffle=False, num_workers=0)
    model = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, len(NIH_LABELS)))
    calls = []
    def loss(logits, target):
        calls.append(1); return nn.functional.binary_cross_entropy_with_logits(logits, target)
    learn = Learner(model, valid, valid, loss, create_optimizer('adam', model, 1e-3), out_dir=tmp_path, progress=False)
    with pytest.raises(CXRDataError, match='val_auroc'):
        learn.fit(1)
    assert calls == []


# --- The open step, registries, device handling.

class TwoHeads(nn.Module):
    "cnn() features under the label head and an auxiliary 'any label' head; returns a dict."
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten())
        self.head, self.any = nn.Linear(108, 2), nn.Linear(108, 1)
    def forward(self, x):
        h = self.features(x)
        return {'logits': self.head(h), 'any': self.any(h)}


def two_head_step(model, batch, loss_fn):
    assert type(batch['image']) is torch.Tensor and batch['image'].device.type == 'cpu'
    out = model(batch['image'])
    if loss_fn is None: return None, out
    ce, aux = loss_fn(out['logits'], batch['label']), loss_fn(out['any'], batch['label'].amax(1, keepdim=True))
    return ce + 0.5 * aux, {'logits': out['logits'], 'loss_terms': {'ce': ce, 'aux': aux}}


def test_custom_step_with_dict_outputs_and_loss_terms(tmp_path):
    seed_everything(0); model = TwoHeads()
    tdl, vdl = DataLoader(Toy(40, 1), batch_size=8, shuffle=True), DataLoader(Toy(24, 2), batch_size=12)
    learn = Learner(model, tdl, vdl, nn.BCEWithLogitsLoss(), create_optimizer('adam', model, 1e-2), 'cosine',
                    step=two_head_step, out_dir=tmp_path, progress=False)
    h = learn.fit(4)
    assert h.columns.tolist() == ['epoch', 'train_loss', 'train_ce', 'train_aux', 'val_loss', 'val_ce', 'val_aux',
                                  'val_auroc', 'lr', 'seconds', 'best_epoch']
    assert np.allclose(h['train_loss'], h['train_ce'] + 0.5 * h['train_aux'], atol=1e-6)
    assert np.allclose(h['val_loss'], h['val_ce'] + 0.5 * h['val_aux'], atol=1e-6)
    assert h['train_ce'].iloc[-1] < h['train_ce'].iloc[0] and h['val_auroc'].iloc[-1] > 0.6, h
    assert pd.read_csv(tmp_path / 'history.csv').columns.tolist() == h.columns.tolist()
    probs, labels = predict(learn.model, vdl, step=two_head_step)
    assert probs.shape == labels.shape == (24, 2)
    again = Learner(TwoHeads(), tdl, vdl, nn.BCEWithLogitsLoss(), create_optimizer('adam', model, 1e-2), 'cosine',
                    step=two_head_step, out_dir=tmp_path, progress=False)
    pd.testing.assert_frame_equal(again.fit(4, resume=True), h)  # the terms survive a resume


def test_evaluation_step_may_enable_grad(tmp_path):
    "A Grad-CAM-like step: at evaluation it needs the gradient of the logits w.r.t. the input."
    saliency = []
    def step(model, batch, loss_fn):
        with torch.enable_grad():
            x = batch['image'].clone().requires_grad_(True)
            logits = model(x)
            if not model.training:
                (g,) = torch.autograd.grad(logits.sum(), x)
                saliency.append(g.abs().sum().item())
        loss = None if loss_fn is None else loss_fn(logits, batch['label'])
        return loss, {'logits': logits.detach() if not model.training else logits}
    learn = make(tmp_path, step=step)
    h = learn.fit(1)
    assert len(saliency) == 2 and all(s > 0 for s in saliency) and np.isfinite(h['val_loss']).all()
    probs, _ = predict(learn.model, DataLoader(Toy(10, 3), batch_size=5), step=step)
    assert probs.shape == (10, 2) and len(saliency) == 4


def test_step_outputs_are_checked(tmp_path):
    with pytest.raises(TypeError, match="'logits'"):
        make(tmp_path / 'a', step=lambda m, b, f: (f(m(b['image']), b['label']), {'probs': 0})).fit(1)
    def bad_term(m, b, f):
        z = m(b['image']); return f(z, b['label']), {'logits': z, 'loss_terms': {'per_sample': z.sum(1)}}
    with pytest.raises(ValueError, match="'per_sample'"): make(tmp_path / 'b', step=bad_term).fit(1)


def test_batch_moved_with_tv_tensors_unwrapped_and_channels_last(tmp_path):
    from torchvision import tv_tensors
    class Wrapped(Toy):
        def __getitem__(self, i):
            s = super().__getitem__(i); s['image'] = tv_tensors.Image(s['image']); return s
    seen = []
    def step(model, batch, loss_fn):
        seen.append((type(batch['image']), batch['image'].is_contiguous(memory_format=torch.channels_last)))
        return train_mod.classification_step(model, batch, loss_fn)
    seed_everything(0); model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    dl = DataLoader(Wrapped(8, 1), batch_size=4)
    Learner(model, dl, dl, nn.BCEWithLogitsLoss(), create_optimizer('adam', model, 1e-3), step=step, channels_last=True,
            out_dir=tmp_path, progress=False).fit(1)
    assert seen == [(torch.Tensor, True)] * 4
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)


def test_registries():
    assert train_mod.SCHEDULERS.names() == ['plateau', 'step', 'cosine']
    assert train_mod.OPTIMIZERS.get('Ranger') == 'lookahead_radam'
    assert set(train_mod.ACTIVATIONS.names()) == {'sigmoid', 'softmax', 'none'}
    opt = torch.optim.SGD(nn.Linear(2, 1).parameters(), lr=1.0)
    assert create_scheduler('reduce-on-plateau', opt, 5, mode='min').mode == 'min'
    with pytest.raises(ValueError, match="mode='up'"): create_scheduler('plateau', opt, 5, mode='up')
    z = torch.tensor([[0.0, 2.0]])
    probs, _ = predict(nn.Identity(), [{'image': z, 'label': z}], activation=None)
    assert np.array_equal(probs, z.numpy())
    with pytest.raises(ValueError, match='scheduler=3'):
        Learner(cnn(), [], [], nn.BCEWithLogitsLoss(), opt, scheduler=3, out_dir='unused')
    with pytest.raises(ValueError, match="unknown scheduler 'linear'"):
        Learner(cnn(), [], [], nn.BCEWithLogitsLoss(), opt, scheduler='linear', out_dir='unused')


def test_step_sees_the_epoch_also_after_resume(tmp_path):
    "Steps whose loss changes over training (seed 000's adaptive λ) read `batch['epoch']`; a resumed run continues it."
    seen = []
    def step(model, batch, loss_fn):
        if model.training: seen.append(batch['epoch'])
        return train_mod.classification_step(model, batch, loss_fn)
    make(tmp_path, step=step).fit(2)
    make(tmp_path, step=step).fit(3, resume=True)
    assert sorted(set(seen)) == [1, 2, 3] and seen[-1] == 3 and seen.count(3) == seen.count(1)


def test_loss_module_moves_to_the_learners_device(tmp_path):
    "A loss with buffers (seed 002/004's class weights) is moved to the learner's device, as the model is (reported from seed 004)."
    from cxr_notebooks.losses.classification import WeightedBCELoss
    class Spy(WeightedBCELoss):
        def to(self, *args, **kw):
            self.moved_to = args
            return super().to(*args, **kw)
    learn = make(tmp_path, loss=Spy(w_pos=torch.tensor([2., 3.]), w_neg=torch.ones(2)), device='cpu')
    assert learn.loss_fn.moved_to == (learn.device,)
    assert learn.fit(1)['train_loss'].notna().all()


def _marked_epochs(fig) -> list[float]:
    "The epochs marked by vertical lines on the metric panel of `plot_training_curves`."
    return [l.get_xdata()[0] for l in fig.axes[1].get_lines() if len(set(l.get_xdata())) == 1 and len(l.get_xdata()) == 2]


def test_best_epoch_marked_on_the_curve_is_the_checkpoint_kept(tmp_path):
    """Defect (seed 001): with loss terms in the history, the curve marked 'best epoch 1' (the maximum of the first
    train_<term> column) while best.pt held epoch 8. The mark must be the kept checkpoint, read back from the files too."""
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    from cxr_notebooks.viz.plots import plot_training_curves
    def step(model, batch, loss_fn):   # a loss term that falls every epoch: its maximum is epoch 1
        loss, out = two_head_step(model, batch, loss_fn)
        return loss, out if loss is None else {**out, 'loss_terms': {**out['loss_terms'], 'lam': torch.tensor(1.0 / batch['epoch'])}}
    seed_everything(0); model = TwoHeads()
    learn = Learner(model, DataLoader(Toy(40, 1), batch_size=8, shuffle=True), DataLoader(Toy(24, 2), batch_size=12),
                    nn.BCEWithLogitsLoss(), create_optimizer('adam', model, 1e-2), None, step=step, out_dir=tmp_path,
                    progress=False, metric=scripted([0.5, 0.6, 0.9, 0.7, 0.8]))
    h = learn.fit(5)
    kept = torch.load(tmp_path / 'best.pt', weights_only=True)['epoch']
    assert kept == learn.best_epoch == 3 and h['train_lam'].idxmax() == 0
    for history in (h, pd.read_csv(tmp_path / 'history.csv'), pd.read_json(tmp_path / 'history.json')):
        fig = plot_training_curves(history)
        assert _marked_epochs(fig) == [kept] and fig.axes[1].get_ylabel() == 'score', (history.columns, _marked_epochs(fig))
        plt.close(fig)
    stages = pd.concat([h.assign(stage=1), h.assign(stage=2, best_epoch=2)], ignore_index=True)   # as train_stages writes it
    fig = plot_training_curves(stages)
    assert _marked_epochs(fig) == [3, 2]
    plt.close('all')


def test_one_line_per_epoch_on_stdout_unless_quiet(tmp_path, capsys):
    "A papermill run streams the kernel's stdout: one line per epoch says epoch, train loss, the metric, the kept epoch, seconds."
    make(tmp_path / 'run' / 'stage1').fit(2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0].startswith('run/stage1 epoch 1/2: train_loss ') and ', val_auroc ' in lines[0]
    assert re.search(r'\(best( \d)?\), \d+\.\d s$', lines[1]), lines
    make(tmp_path / 'quiet', verbose=False).fit(2)
    assert capsys.readouterr().out == ''
