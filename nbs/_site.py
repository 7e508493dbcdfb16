"""Build the documentation site into `_docs/` from the notebooks in `nbs/`: `nbdev_docs` (Quarto) where the
`quarto` binary exists, else the same pages offline without Quarto: nbdev's own notebook processing
(directives, `show_doc` of every export), with every library notebook EXECUTED as `nbdev_test` runs it (cells
flagged `slow` and `#| eval: false` skipped; each page in a forked process of its own, so that no notebook's state
reaches the next) so the pages show their outputs and figures (about 10 min on 2 CPU cores), and each reproduction
notebook rendered from a run at its smallest setting (`cxr-reproduce run NNN` with the notebook's declared
`smallest` parameters; the run folders are kept in DIR/../runs/docs and resumed by the next build), then
nbconvert HTML with the sidebar of `nbs/sidebar.yml`. nbdev's front matter takes a notebook's whole first
cell; here it takes only the title and the `>` description, and the rest of that cell (the reproduction
notebooks' paper, claim, profiles and badge) stays on the page. `pip install quarto-cli` downloads Quarto from
GitHub while it installs, so it does not install offline; this fallback needs nothing beyond the dev extra.

Usage: python nbs/_site.py [--no-quarto] [--strict] [--out DIR] [--exec GLOBS] [--repro SEEDS]  (from the repository
root; `make docs`). DIR default: _docs (nbdev's processed notebooks go to DIR/../_proc). GLOBS: comma-separated
page globs of the library notebooks to execute (default `*`: all; `none`: show them unexecuted). SEEDS:
comma-separated reproduction notebooks to run (default: all; `none`: show them unexecuted). A page that fails
to execute is shown unexecuted with a warning (`--strict`: the build fails)."""
from __future__ import annotations
import fnmatch, html, os, re, shutil, subprocess, sys, time, warnings
from pathlib import Path
from urllib.parse import unquote

import nbformat, yaml
from execnb.nbio import mk_cell, read_nb, write_nb
from fastcore.xtras import working_directory
from nbconvert import HTMLExporter
from nbconvert.preprocessors import TagRemovePreprocessor
from nbdev.config import get_config
from nbdev.processors import FilterDefaults, exec_show_docs
from nbdev.quarto import refresh_quarto_yml


def sidebar_sections(nbs: Path) -> list[tuple[str | None, list[str]]]:
    "(section title or None, notebook paths relative to `nbs`) from sidebar.yml, globs expanded as Quarto does."
    out = []
    for entry in yaml.safe_load((nbs / 'sidebar.yml').read_text())['website']['sidebar']['contents']:
        title, pats = (None, [entry]) if isinstance(entry, str) else (entry['section'], entry['contents'])
        pats = [pats] if isinstance(pats, str) else pats
        out.append((title, [p.relative_to(nbs).as_posix() for pat in pats for p in sorted(nbs.glob(pat))]))
    return out


def html_name(page: str) -> str:
    "The page's file in the site: numeric prefix dropped as nbdev's doc links expect (`viz/71_explorers.ipynb` -> `viz/explorers.html`)."
    parent, _, name = page.rpartition('/')
    return (parent + '/' if parent else '') + re.sub(r'^\d+_', '', name[:-len('.ipynb')]) + '.html'


def front_matter(nb) -> dict:
    "The title/description nbdev's processing put in the notebook's first raw cell."
    if nb.cells and nb.cells[0].cell_type == 'raw':
        m = re.match(r'^---\n(.*?)\n---', nb.cells[0].source, re.S)
        if m: return yaml.safe_load(m.group(1)) or {}
    return {}


def nav(sections, page: str, titles: dict[str, str]) -> str:
    "The sidebar as HTML, links relative to `page`."
    up = '../' * page.count('/')
    items = []
    for title, pages in sections:
        links = ''.join(f'<li{" class=current" if p == page else ""}><a href="{up}{html_name(p)}">{html.escape(titles[p])}</a></li>'
                        for p in pages)
        items.append(f'<li><b>{html.escape(title)}</b><ul>{links}</ul></li>' if title else links)
    return f'<nav class="cxr-sidebar"><a href="{up}index.html"><b>{html.escape(get_config().title)}</b></a><ul>{"".join(items)}</ul></nav>'


STYLE = """<style>.cxr-sidebar{position:fixed;top:0;left:0;bottom:0;width:17rem;overflow-y:auto;padding:1rem;
background:#f7f7f9;border-right:1px solid #ddd;font:14px/1.4 system-ui,sans-serif}.cxr-sidebar ul{list-style:none;
padding-left:.8rem;margin:.2rem 0}.cxr-sidebar li.current>a{font-weight:bold}.cxr-sidebar a{text-decoration:none;
color:#2c6ca3}body{margin-left:18rem!important}div.description{font-style:italic;font-size:125%;opacity:70%}.jp-OutputArea-output{padding-left:.6rem}</style>"""


class _NoShowDocExec(FilterDefaults):
    "nbdev's processors less `exec_show_docs`: the page keeps its prose and code (and any outputs it has), without rendered API signatures."
    def base_procs(self): return [p for p in super().base_procs() if p is not exec_show_docs]


class _exec_all(exec_show_docs):
    "Execute every code cell as `nbdev_test` does (not `#| eval: false`, not flagged with a `tst_flags` flag such as `slow`), show_doc cells included."
    def __call__(self, cell):
        if cell.cell_type != 'code' or not hasattr(self, 'k'): return
        direc = getattr(cell, 'directives_', {}) or {}
        if direc.get('eval:', [''])[0].lower() == 'false' or set(get_config().tst_flags.split()) & direc.keys(): return
        self.k.cell(cell)
        if self.k.exc: raise Exception(f"cell {cell.idx_}: {type(self.k.exc).__name__}: {self.k.exc}") from self.k.exc


class _ExecAll(FilterDefaults):
    "nbdev's processors with `exec_show_docs` replaced by `_exec_all`: the page shows every output and figure."
    def base_procs(self): return [_exec_all if p is exec_show_docs else p for p in super().base_procs()]


def keep_intro(nb) -> None:
    "Leave the first markdown cell only its `# title` and `> description` (what nbdev's front matter takes); the rest becomes the next cell."
    c = nb.cells[0] if nb.cells else None
    m = re.match(r'\s*(#\s+[^\n]*\n(?:[ \t]*\n)*(?:>\s+[^\n]*\n?)?)(.*)', c.source, re.S) if c is not None and c.cell_type == 'markdown' else None
    if not m or not m.group(2).strip(): return
    c.source = m.group(1).rstrip()
    nb.cells.insert(1, mk_cell(m.group(2).strip(), 'markdown'))
    for i, cell in enumerate(nb.cells): cell.idx_ = i


def repro_run(p: str, runs: Path) -> Path:
    "The reproduction notebook `p` (e.g. `repro/002_aggregate_method.ipynb`) executed at its declared smallest setting into `runs/<seed>`."
    from cxr_notebooks.reproduce.runner import repro_notebooks, run_reproduction
    nb = next(n for n in repro_notebooks().values() if n.path.name == Path(p).name)
    return run_reproduction(nb.seed, runs / nb.seed, nb.smallest, html=False, progress=False)


def _process_page(src: Path, page: Path, dest: Path, tries: list) -> str | None:
    "nbdev-process the notebook `src` (shown as the page `page`) into `dest` with the first processor set of `tries` that runs; the first failure, or None."
    why = None
    for procs in tries:
        nb = read_nb(src); nb['path_'] = str(page); keep_intro(nb)
        try:
            with working_directory(page.parent): procs().nb_proc(nb).process()
            break
        except Exception as e:                         # a failing cell: the page without outputs (or without API docs)
            lines = str(e).splitlines()
            why = why or lines[0][:300] + ' ' + (lines[1][:200] if len(lines) > 1 else '')
    dest.parent.mkdir(parents=True, exist_ok=True); write_nb(nb, dest)
    return why


def _forked(fn, *args):
    "`fn(*args)` in a forked child process: notebooks executed one after another in one process leak state (registries, patches) into each other."
    import multiprocessing
    with multiprocessing.get_context('fork').Pool(1) as pool: return pool.apply(fn, args)


def process(nbs: Path, cache: Path, pages: list[str], execute: list[str] | None = None, repro: list[str] | None = None,
            runs: Path | None = None) -> dict[str, str]:
    """nbdev's docs processing of each page into `cache`, executing the library pages matching a glob of `execute` and
    rendering the reproduction notebooks of the seeds in `repro` from a run in `runs` (None: all); returns {page: what went wrong}."""
    degraded = {}
    os.environ['IN_TEST'] = '1'                        # as nbdev's own driver: notebooks may skip work under it
    try:
        for p in pages:
            t0, src, tries = time.time(), nbs / p, [FilterDefaults, _NoShowDocExec]   # tried in turn: the first that runs
            if p.startswith('repro/'):
                tries = [_NoShowDocExec]
                if repro is None or Path(p).name.split('_')[0] in repro:
                    try: src = repro_run(p, runs)
                    except Exception as e: degraded[p] = f'not run ({type(e).__name__}: {str(e).splitlines()[0][:300]})'
            elif execute is None or any(fnmatch.fnmatch(p, g) for g in execute): tries = [_ExecAll, *tries]
            why = _forked(_process_page, src, nbs / p, cache / p, tries)
            if why: degraded.setdefault(p, why)
            how = 'from its run' if src != nbs / p else 'not executed' if tries[0] is not _ExecAll else 'NOT executed' if why else 'executed'
            print(f"{p}: {how}, {time.time() - t0:.0f} s", flush=True)
    finally: del os.environ['IN_TEST']
    return degraded


def build_offline(cfg, nbs: Path, out: Path, execute: list[str] | None = None,
                  repro: list[str] | None = None) -> tuple[list[Path], dict[str, str]]:
    "Render every sidebar page to `out` as HTML (see `process` for `execute` and `repro`); returns the pages written and {page: what went wrong}."
    cache = out.parent / '_proc'
    shutil.rmtree(cache, ignore_errors=True)
    sections = sidebar_sections(nbs)
    pages = [p for _, ps in sections for p in ps]
    degraded = process(nbs, cache, pages, execute, repro, out.parent / 'runs' / 'docs')
    nbs_ = {p: nbformat.read(cache / p, as_version=4) for p in pages}
    titles = {p: front_matter(nb).get('title') or Path(p).stem for p, nb in nbs_.items()}
    exporter = HTMLExporter(template_name='lab', exclude_input_prompt=True, exclude_output_prompt=True)
    exporter.register_preprocessor(TagRemovePreprocessor(remove_input_tags={'remove-input'}), enabled=True)
    shutil.rmtree(out, ignore_errors=True)
    written = []
    for p, nb in nbs_.items():
        fm = front_matter(nb)
        if fm: nb.cells = nb.cells[1:]
        for c in nb.cells:                             # Quarto's `#| echo: false` and link attributes, for nbconvert
            if c.cell_type == 'code' and re.match(r'#\|\s*echo:\s*false', c.source): c.metadata.setdefault('tags', []).append('remove-input')
            for o in c.get('outputs', []):
                md = o.get('data', {}).get('text/markdown')
                if md: o['data']['text/markdown'] = re.sub(r'\{target="_blank"[^}]*\}', '', md if isinstance(md, str) else ''.join(md))
        head = f'<div style="padding:0 1.5rem"><h1>{html.escape(titles[p])}</h1>' + (f'<div class="description">{html.escape(fm["description"])}</div>' if fm.get('description') else '') + '</div>'
        body, _ = exporter.from_notebook_node(nb, resources={'metadata': {'name': titles[p]}})
        up = '../' * p.count('/')
        body = body.replace(f'href="{cfg.doc_host}{cfg.doc_baseurl}/', f'href="{up}')   # nbdev's doc links: to this copy
        body = re.sub(r'href="(?!https?:|#|/)([^"#]+?\.ipynb)', lambda m: f'href="{html_name(m.group(1))}', body)  # as Quarto does
        body = re.sub(r'href="(?![a-z]+:|#|/)([^"#]+)"', lambda m: repo_link(cfg, nbs, p, m), body)   # repository files: on GitHub
        body = body.replace('</head>', STYLE + '</head>', 1)
        body = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav(sections, p, titles) + head, body, count=1)
        dest = out / html_name(p); dest.parent.mkdir(parents=True, exist_ok=True); dest.write_text(body)
        written.append(dest)
    shutil.copy(nbs / 'styles.css', out / 'styles.css')
    return written, degraded


def repo_link(cfg, nbs: Path, page: str, m: re.Match) -> str:
    "A relative link to a file of the repository that the site does not hold (README's `data/PROVENANCE.md`): to its page on GitHub."
    target = unquote(m.group(1))
    if target.endswith('.html'): return m.group(0)
    root = Path(cfg.config_path).resolve()
    for base in (nbs / Path(page).parent, root):                # as the notebook sees it, or as README (the repository root) does
        f = (base / target).resolve()
        if f.exists() and f.is_relative_to(root): return f'href="{cfg.git_url}/blob/{cfg.branch}/{f.relative_to(root).as_posix()}"'
    return m.group(0)


def _option(argv: list[str], name: str) -> list[str] | None:
    "A comma-separated option's values (None: not given, i.e. all; `none`: [])."
    if name not in argv: return None
    v = argv[argv.index(name) + 1]
    return [] if v == 'none' else v.split(',')


def main(argv: list[str]) -> None:
    cfg = get_config()
    nbs, out = cfg.nbs_path, Path(argv[argv.index('--out') + 1]).resolve() if '--out' in argv else cfg.config_path / cfg.doc_path.name
    warnings.filterwarnings('ignore', 'Found cells containing imports')   # the pages that fail are reported below
    if shutil.which('quarto') and '--no-quarto' not in argv:
        subprocess.run([sys.executable, '-c', 'from nbdev.quarto import nbdev_docs; nbdev_docs.__wrapped__()'], check=True)
    else:
        refresh_quarto_yml()
        written, degraded = build_offline(cfg, nbs, out, _option(argv, '--exec'), _option(argv, '--repro'))
        print(f"{len(written)} pages in {out} (offline build: no quarto binary)")
        for p, why in degraded.items(): print(f"WARNING {p}: shown without outputs or API docs ({why})")
        if degraded and '--strict' in argv: sys.exit(1)


if __name__ == '__main__': main(sys.argv[1:])
