"""The documentation site (`make docs`: nbs/_site.py, Quarto's `nbdev_docs` where the binary exists, else the
offline nbconvert build) and the README generated from nbs/index.ipynb. `make docs` executes every library notebook
(about 10 min on 2 shared CPU cores) and runs every reproduction notebook at its smallest setting (a few more minutes);
to keep this test to about 2-5 minutes (slow), the site here executes a subset: the Plots page (EXECUTED) and seed
002's notebook (RUN); the other pages are built unexecuted, which the executed build shares."""
import json, re, subprocess, sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / 'nbs'


class _Links(HTMLParser):
    def __init__(self):
        super().__init__(); self.links = []
    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ('href', 'src') and v]


def local_targets(page: Path) -> list[str]:
    "The href/src values of `page` that point inside the site (no scheme, no host, not a bare fragment)."
    p = _Links(); p.feed(page.read_text())
    return [l for l in p.links if not urlparse(l).scheme and not l.startswith(('#', '//'))]


def index_markdown() -> str:
    return '\n\n'.join(''.join(c['source']) for c in json.loads((NBS / 'index.ipynb').read_text())['cells'] if c['cell_type'] == 'markdown')


def words(markdown: str) -> list[str]:
    "The words of a markdown text, without link targets and comments: what a reader sees, however it is rendered."
    return re.findall(r'\w+', re.sub(r'\]\([^)]*\)|<!--.*?-->', ' ', markdown, flags=re.S))


def test_readme_has_the_content_of_index_notebook():
    "README.md is generated from nbs/index.ipynb (`nbdev_readme`, which adds doc links); both say the same words."
    assert words((ROOT / 'README.md').read_text()) == words(index_markdown())


def test_sidebar_covers_every_notebook_and_nbdev_test_skips_repro():
    listed = sidebar_pages()
    on_disk = sorted(p.relative_to(NBS).as_posix() for p in NBS.rglob('*.ipynb') if not any(s.startswith(('_', '.')) for s in p.relative_to(NBS).parts))
    assert sorted(listed) == on_disk and len(listed) == len(set(listed))
    assert listed[0] == 'index.ipynb' and any(p.startswith('repro/') for p in listed)
    assert (NBS / 'repro' / '.notest').is_file()                      # nbdev_test skips the reproduction notebooks


def sidebar_pages() -> list[str]:
    sys.path.insert(0, str(NBS))
    from _site import sidebar_sections
    return [p for _, ps in sidebar_sections(NBS) for p in ps]


EXECUTED, RUN = ['viz/70_plots.ipynb'], ['002']


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp('docs') / '_docs'
    pages = sidebar_pages()                                            # before the build: notebooks may be added meanwhile
    r = subprocess.run([sys.executable, str(NBS / '_site.py'), '--no-quarto', '--out', str(out), '--exec', ','.join(EXECUTED),
                        '--repro', ','.join(RUN)], cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return out, pages


@pytest.mark.slow
def test_site_pages_and_no_broken_local_links(site):
    site, listed = site
    pages = sorted(site.rglob('*.html'))
    from _site import html_name
    assert {html_name(p) for p in listed} <= {p.relative_to(site).as_posix() for p in pages}
    broken = [(p.relative_to(site).as_posix(), l) for p in pages for l in local_targets(p)
              if not (p.parent / unquote(urlparse(l).path)).resolve().exists()]
    assert not broken, broken[:10]


@pytest.mark.slow
def test_site_home_module_and_repro_pages(site):
    site, _ = site
    home = (site / 'index.html').read_text()
    for s in ('Two commands', 'Where each paper lives', 'NIH ChestX-ray14', 'href="viz/explorers.html"'): assert s in home
    ex = (site / 'viz' / 'explorers.html').read_text()
    assert 'ThresholdExplorer' in ex and 'show_doc(' not in ex and 'target="_blank" style' not in ex.replace('&quot;', '"')


OUTPUT = r'class="[^"]*jp-OutputArea-output'


@pytest.mark.slow
def test_executed_pages_show_outputs_and_figures(site):
    "Issue 22: none of the site's code cells showed an output; the Plots page had no plot."
    site, _ = site
    plots = (site / 'viz' / 'plots.html').read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', plots)) >= 3 and re.search(OUTPUT, plots)
    assert 'Each function returns a matplotlib' in plots                 # the prose of the first cell, under the title


@pytest.mark.slow
def test_repro_pages_keep_their_intro_and_show_a_smoke_run(site):
    "Issue 22: the five reproduction pages lost their first cell (paper, claim, profiles, badge); the one run here shows its outputs."
    site, _ = site
    for page in ('aggregate_method', 'ham', 'lung_attention', 'spatial_attention', 'data_efficient'):
        html = (site / 'repro' / f'{page}.html').read_text()
        assert 'colab-badge.svg' in html and '<h1>Seed 00' in html, page
    run = (site / 'repro' / 'aggregate_method.html').read_text()
    assert 'An Aggregate Method for Thorax Diseases Classification' in run
    assert re.search(OUTPUT, run) and re.search(r'<img [^>]*src="data:image/png;base64,', run) and 'mean AUROC over' in run   # the smoke run's
    assert not re.search(OUTPUT, (site / 'repro' / 'ham.html').read_text())                                    # not run here


@pytest.mark.slow
@pytest.mark.parametrize('page,expected', [('index.html', 'Where each paper lives'), ('viz/explorers.html', 'ThresholdExplorer')])
def test_site_pages_render_in_chromium(site, chromium, tmp_path, page, expected):
    "The home page and a module page, opened in headless Chromium: no console error, the text is there, the screenshot is not blank."
    from PIL import Image
    from conftest import browse, console_errors
    site, _ = site
    run = browse(chromium, site / page, tmp_path, '--dump-dom')
    assert run.returncode == 0 and expected in run.stdout and not console_errors(run.stderr), console_errors(run.stderr)[:3]
    shot = tmp_path / 'page.png'
    browse(chromium, site / page, tmp_path, f'--screenshot={shot}', '--window-size=1280,1600', '--hide-scrollbars')
    img = Image.open(shot).convert('L')
    assert img.size == (1280, 1600) and len(img.getcolors(maxcolors=1 << 16) or range(99)) > 20   # text and layout, not blank


def test_repository_files_are_linked_on_github():
    "README's `data/PROVENANCE.md` is not part of the site: the page links to the file on GitHub; site pages and web links stay."
    sys.path.insert(0, str(NBS))
    from _site import repo_link
    from nbdev.config import get_config
    cfg, pat = get_config(), re.compile(r'href="(?![a-z]+:|#|/)([^"#]+)"')
    link = lambda page, href: repo_link(cfg, NBS, page, pat.search(f'href="{href}"'))
    assert link('index.ipynb', 'data/PROVENANCE.md') == f'href="{cfg.git_url}/blob/{cfg.branch}/data/PROVENANCE.md"'
    assert link('repro/002_aggregate_method.ipynb', '../../settings.ini') == f'href="{cfg.git_url}/blob/{cfg.branch}/settings.ini"'
    assert link('index.ipynb', 'viz/explorers.html') == 'href="viz/explorers.html"'
    assert link('index.ipynb', 'no/such/file.md') == 'href="no/such/file.md"'
